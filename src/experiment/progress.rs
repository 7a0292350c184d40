//! Progress of a run: an indicatif bar per arm × seed on a terminal, plain log lines otherwise
//! (every tenth of a cell or every ten seconds), nothing with `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Lines,
    Quiet,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, lines otherwise; `Quiet` when asked.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

pub struct Progress {
    mode: ProgressMode,
    multi: MultiProgress,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let multi = MultiProgress::with_draw_target(match mode {
            ProgressMode::Bars => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        });
        Self { mode, multi }
    }

    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// A message outside any bar (run directory, warnings).
    pub fn println(&self, msg: &str) {
        match self.mode {
            ProgressMode::Bars => {
                let _ = self.multi.println(msg);
            }
            ProgressMode::Lines => eprintln!("{msg}"),
            ProgressMode::Quiet => {}
        }
    }

    pub fn cell(&self, arm: &str, seed: u64, total_steps: u64, start_step: u64) -> CellProgress {
        let label = format!("{arm} seed {seed}");
        let bar = (self.mode == ProgressMode::Bars).then(|| {
            let b = self.multi.add(ProgressBar::new(total_steps));
            b.set_style(
                ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b.set_prefix(label.clone());
            b.set_position(start_step);
            b.reset_eta();
            b
        });
        CellProgress {
            mode: self.mode,
            label,
            total: total_steps,
            bar,
            started: Instant::now(),
            start_step,
            last_line: None,
        }
    }
}

pub struct CellProgress {
    mode: ProgressMode,
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    start_step: u64,
    last_line: Option<(Instant, u64)>,
}

impl CellProgress {
    pub fn update(&mut self, step: u64, loss: f64) {
        match self.mode {
            ProgressMode::Bars => {
                if let Some(b) = &self.bar {
                    b.set_position(step);
                    b.set_message(format!("loss {loss:.4}"));
                }
            }
            ProgressMode::Lines => {
                let every = (self.total / 10).max(1);
                let due = match self.last_line {
                    None => true,
                    Some((t, s)) => step - s >= every || t.elapsed() >= Duration::from_secs(10),
                } || step == self.total;
                if due {
                    let done = step.saturating_sub(self.start_step) as f64;
                    let eta = if done > 0.0 {
                        self.started.elapsed().as_secs_f64() / done
                            * self.total.saturating_sub(step) as f64
                    } else {
                        0.0
                    };
                    eprintln!(
                        "[{}] step {step}/{} loss {loss:.4} eta {eta:.0}s",
                        self.label, self.total
                    );
                    self.last_line = Some((Instant::now(), step));
                }
            }
            ProgressMode::Quiet => {}
        }
    }

    pub fn finish(&self, msg: &str) {
        match self.mode {
            ProgressMode::Bars => {
                if let Some(b) = &self.bar {
                    b.finish_with_message(msg.to_string());
                }
            }
            ProgressMode::Lines => eprintln!("[{}] {msg}", self.label),
            ProgressMode::Quiet => {}
        }
    }
}
