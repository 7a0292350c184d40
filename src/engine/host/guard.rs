//! What the sandbox watches while a plugin call runs: its time, its heap, the statement it is
//! on, and what it printed. Read after every rhai operation, so everything here is atomics and
//! thread-locals on the hot path.
//!
//! Time is the call's own CPU time (its thread's clock), so a busy machine — a build or a
//! second run beside this one — cannot push a plugin that does its work in budget past it.
//! Reading that clock is a system call, so the wall clock (a vDSO read) is the cheap first
//! test: only when the wall-clock deadline passes is the CPU clock read, and the deadline moves
//! on by the budget the call has left. A call starved of CPU for `STARVED_FACTOR` times its
//! budget in wall-clock time is stopped all the same.

use super::heap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why the sandbox stopped a call (the error rhai returns only says "terminated").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Time,
    /// Heap grown by the call, in bytes, when it was stopped.
    Heap(u64),
    /// A size-checked built-in refused a result (the message says which); raised at the
    /// operation after it, for built-ins whose errors rhai would swallow.
    Size(String),
}

/// What a call printed, capped: past the cap, lines are counted, not kept.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    bytes: usize,
    dropped: usize,
}

/// Wall-clock multiple of the budget after which a call is stopped whatever CPU it got.
pub const STARVED_FACTOR: u64 = 20;

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec the call writes; CLOCK_THREAD_CPUTIME_ID always exists
    // on Linux. On failure `t` stays 0 and the wall clock still bounds the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub struct Guard {
    base: Instant,
    /// Nanoseconds after `base` at which the running call's CPU clock is next read.
    deadline_ns: AtomicU64,
    /// The running call's budget, its thread's CPU clock and the wall clock (after `base`) when
    /// it was armed, and the CPU time the last finished call used.
    budget_ns: AtomicU64,
    cpu_start_ns: AtomicU64,
    armed_ns: AtomicU64,
    last_cpu_ns: AtomicU64,
    /// Line << 32 | column of the statement being run (0: none yet).
    position: AtomicU64,
    max_heap: u64,
    max_log: usize,
    stop: Mutex<Option<Stop>>,
    log: Mutex<Log>,
}

impl Guard {
    pub fn new(max_heap: u64, max_log: usize) -> Self {
        Self {
            base: Instant::now(),
            deadline_ns: AtomicU64::new(u64::MAX),
            budget_ns: AtomicU64::new(u64::MAX),
            cpu_start_ns: AtomicU64::new(0),
            armed_ns: AtomicU64::new(0),
            last_cpu_ns: AtomicU64::new(0),
            position: AtomicU64::new(0),
            max_heap,
            max_log,
            stop: Mutex::new(None),
            log: Mutex::new(Log::default()),
        }
    }

    /// Arms the guard for one call of at most `budget` of CPU time, on the thread that runs it.
    pub fn arm(&self, budget: Duration) {
        let now = self.base.elapsed().as_nanos() as u64;
        let budget = budget.as_nanos() as u64;
        self.budget_ns.store(budget, Relaxed);
        self.cpu_start_ns.store(thread_cpu_ns(), Relaxed);
        self.armed_ns.store(now, Relaxed);
        self.deadline_ns.store(now.saturating_add(budget), Relaxed);
        self.position.store(0, Relaxed);
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn record(&self, s: Stop) {
        let mut g = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(s);
        }
    }

    /// Asks the running call to stop at its next operation (see [`Stop::Size`]).
    pub fn stop_with(&self, why: String) {
        self.record(Stop::Size(why));
    }

    /// The reason the running call must stop now, if any (and remembers it for the error).
    pub fn check(&self) -> Option<Stop> {
        if let Some(s @ Stop::Size(_)) = self.stopped() {
            return Some(s);
        }
        let now = self.base.elapsed().as_nanos() as u64;
        let stop = if now > self.deadline_ns.load(Relaxed) && self.out_of_cpu(now) {
            Stop::Time
        } else {
            let grown = heap::net();
            if grown > 0 && grown as u64 > self.max_heap {
                Stop::Heap(grown as u64)
            } else {
                return None;
            }
        };
        self.record(stop.clone());
        Some(stop)
    }

    /// With the wall-clock deadline passed: whether the call has used its CPU budget (or was
    /// starved past `STARVED_FACTOR` budgets); if not, the deadline moves to when it could have.
    fn out_of_cpu(&self, now: u64) -> bool {
        let budget = self.budget_ns.load(Relaxed);
        let used = self.cpu_used_ns();
        let starved = now.saturating_sub(self.armed_ns.load(Relaxed)) / STARVED_FACTOR > budget;
        if used >= budget || starved {
            return true;
        }
        self.deadline_ns
            .store(now.saturating_add(budget - used), Relaxed);
        false
    }

    /// CPU time the running call has used so far (on its own thread).
    fn cpu_used_ns(&self) -> u64 {
        thread_cpu_ns().saturating_sub(self.cpu_start_ns.load(Relaxed))
    }

    /// Ends a call, on its thread: remembers the CPU time it used (see [`Guard::last_cpu`]).
    pub fn finish(&self) {
        self.last_cpu_ns.store(self.cpu_used_ns(), Relaxed);
    }

    /// CPU time of the last call [`Guard::finish`] ended.
    pub fn last_cpu(&self) -> Duration {
        Duration::from_nanos(self.last_cpu_ns.load(Relaxed))
    }

    /// Whether the running call is out of time (for adarank's own costly built-ins, which
    /// run many steps inside one rhai operation).
    pub fn out_of_time(&self) -> bool {
        matches!(self.check(), Some(Stop::Time))
    }

    pub fn stopped(&self) -> Option<Stop> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_position(&self, line: usize, col: usize) {
        self.position
            .store(((line as u64) << 32) | (col as u64 & 0xffff_ffff), Relaxed);
    }

    /// Line and column of the last statement the running call reached.
    pub fn position(&self) -> Option<(usize, usize)> {
        let p = self.position.load(Relaxed);
        (p != 0).then_some(((p >> 32) as usize, (p & 0xffff_ffff) as usize))
    }

    pub fn max_heap(&self) -> u64 {
        self.max_heap
    }

    /// Keeps a printed line while the log is under its cap.
    pub fn print(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.bytes + line.len() <= self.max_log {
            log.bytes += line.len();
            log.lines.push(line.to_string());
        } else {
            log.dropped += 1;
        }
    }

    /// The lines printed since the last take, with a last line counting what the cap dropped.
    pub fn take_log(&self) -> Vec<String> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let Log {
            mut lines, dropped, ..
        } = std::mem::take(&mut *log);
        if dropped > 0 {
            lines.push(format!(
                "... {dropped} more printed line(s) dropped: plugin output is capped at {} bytes",
                self.max_log
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_log_is_capped_and_says_so() {
        let g = Guard::new(1 << 20, 10);
        for _ in 0..5 {
            g.print("abcd");
        }
        let log = g.take_log();
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(log[2].contains("3 more printed line(s) dropped"), "{log:?}");
        assert!(g.take_log().is_empty());
    }

    #[test]
    fn deadline_and_position() {
        let g = Guard::new(1 << 20, 10);
        g.arm(Duration::from_secs(60));
        assert_eq!(g.check(), None);
        g.set_position(12, 5);
        assert_eq!(g.position(), Some((12, 5)));
        g.arm(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(g.check(), Some(Stop::Time));
        assert_eq!(g.stopped(), Some(Stop::Time));
        assert_eq!(g.position(), None, "arming resets the position");
    }

    #[test]
    fn time_is_the_calls_cpu_time_not_the_wall_clock() {
        let g = Guard::new(1 << 20, 10);
        let budget = Duration::from_millis(30);
        g.arm(budget);
        // Off the CPU past the wall-clock deadline (as a call is on a machine busy with other
        // work): not out of time.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.check(), None, "a waiting call used no CPU time");
        // Spinning: stopped once its own CPU time reaches the budget, not before.
        let start = thread_cpu_ns();
        while g.check().is_none() {
            std::hint::black_box(0u64);
        }
        let spun = thread_cpu_ns() - start;
        assert!(
            spun as u128 >= budget.as_nanos() * 9 / 10,
            "stopped after {spun} ns of CPU, budget {budget:?}"
        );
        // Starved for STARVED_FACTOR budgets of wall-clock time: stopped all the same.
        g.arm(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(STARVED_FACTOR + 5));
        assert_eq!(g.check(), Some(Stop::Time));
    }
}
