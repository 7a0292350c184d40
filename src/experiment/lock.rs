//! Locks of a run directory, so that processes can share one: every arm × seed cell has its own
//! lock, held while the cell trains (one cell never runs twice, different cells run at once, as
//! Slurm array tasks do), and the files all cells write to (`summary.json`, `metrics.jsonl`,
//! `allocations.jsonl`, the report) are changed only under the directory's lock, briefly.
//!
//! The locks are the operating system's advisory file locks (`flock` on Unix, through `std`):
//! the kernel drops them when their process dies, however it dies, so no lock outlives its
//! holder. A cell lock file also records who holds it; finding a record there while the lock is
//! free means the last holder was killed, and the new holder says it takes the cell over.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The directory-wide lock: held for each short read-modify-write of a shared file.
pub struct DirLock {
    _file: File,
}

/// Waits for and takes the lock of the run directory `root` (released when dropped). The lock
/// is on the directory itself (`flock` takes a directory's descriptor), not on a file in it: a
/// lock file can be deleted while held, and the next process would lock a new file and go ahead
/// beside the holder; the directory cannot be replaced without removing the run.
pub fn lock_dir(root: &Path) -> Result<DirLock> {
    let file = File::open(root)
        .with_context(|| format!("opening the run directory {} to lock it", root.display()))?;
    file.lock()
        .with_context(|| format!("locking the run directory {}", root.display()))?;
    Ok(DirLock { _file: file })
}

/// Who holds (or last held) a cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub since: String,
    /// The process's start time (clock ticks after boot, `/proc/PID/stat`) and the boot's id:
    /// with the pid they name one process for good, so a pid reused after a crash or a reboot
    /// is not taken for the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
}

/// Start time of process `pid` in clock ticks after boot (field 22 of `/proc/PID/stat`); `None`
/// when there is no such process or no `/proc`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "this machine".into())
}

impl Holder {
    /// This process.
    pub fn me() -> Self {
        let pid = std::process::id();
        Holder {
            pid,
            host: host_name(),
            since: chrono::Utc::now().to_rfc3339(),
            start: process_start(pid),
            boot: boot_id(),
        }
    }

    /// Whether the holder still runs: `Some(false)` when it ran on this machine, since this boot,
    /// and its pid is gone or now names a process started at another time; `None` when this
    /// machine cannot tell (another host, or a record without a start time).
    pub fn alive(&self) -> Option<bool> {
        if self.host != host_name() {
            return None;
        }
        let start = self.start?;
        if self.boot.is_some() && self.boot != boot_id() {
            return Some(false);
        }
        Some(process_start(self.pid) == Some(start))
    }

    /// Is this record this very process?
    pub fn is_me(&self) -> bool {
        self.pid == std::process::id()
            && self.host == host_name()
            && self.start == process_start(self.pid)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} (since {})",
            self.pid, self.host, self.since
        )
    }
}

/// The lock of one cell, held until dropped (or until the process dies).
pub struct CellLock {
    file: File,
    path: PathBuf,
}

/// The outcome of trying a cell's lock.
pub enum Claim {
    /// Ours; `stale` names a holder that died without releasing the cell.
    Got {
        lock: CellLock,
        stale: Option<Holder>,
    },
    /// Another live process runs the cell.
    Busy(Option<Holder>),
}

pub fn cell_lock_path(root: &Path, arm: &str, seed: u64) -> PathBuf {
    root.join("locks")
        .join(format!("{}-seed{seed}.lock", super::rundir::file_safe(arm)))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

impl CellLock {
    /// Tries to take the lock of cell (`arm`, `seed`) of the run directory `root`.
    pub fn try_claim(root: &Path, arm: &str, seed: u64) -> Result<Claim> {
        let (mut file, path) = open_cell_lock(root, arm, seed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Claim::Busy(read_holder(&mut file))),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        let (lock, stale) = Self::hold(file, path)?;
        Ok(Claim::Got { lock, stale })
    }

    /// Takes the lock of cell (`arm`, `seed`), waiting while another process holds it. The wait
    /// always ends: the kernel releases a lock when its holder exits, however it exits.
    pub fn claim_waiting(root: &Path, arm: &str, seed: u64) -> Result<CellLock> {
        let (file, path) = open_cell_lock(root, arm, seed)?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Self::hold(file, path)?.0)
    }

    /// Records this process as the holder of a lock just taken; returns the lock and the
    /// holder that died without releasing it, if any.
    fn hold(mut file: File, path: PathBuf) -> Result<(CellLock, Option<Holder>)> {
        // A record left in a lock we could take is the trace of a holder that was killed.
        let stale = read_holder(&mut file);
        let me = serde_json::to_string(&Holder::me())?;
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(me.as_bytes())?;
        file.sync_data()?;
        Ok((CellLock { file, path }, stale))
    }
}

/// Whether some process holds cell (`arm`, `seed`)'s lock, tested without taking it for long
/// (`None`: no lock file, or it cannot be opened).
pub fn cell_is_held(root: &Path, arm: &str, seed: u64) -> Option<bool> {
    let path = cell_lock_path(root, arm, seed);
    let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
    match file.try_lock() {
        Ok(()) => Some(false),
        Err(TryLockError::WouldBlock) => Some(true),
        Err(TryLockError::Error(_)) => None,
    }
}

fn open_cell_lock(root: &Path, arm: &str, seed: u64) -> Result<(File, PathBuf)> {
    let path = cell_lock_path(root, arm, seed);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the cell lock {}", path.display()))?;
    Ok((file, path))
}

impl Drop for CellLock {
    fn drop(&mut self) {
        // Cleared before the kernel releases the lock: an empty record means a clean exit.
        if self.file.set_len(0).is_err() {
            eprintln!(
                "warning: could not clear the cell lock {}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_cell_is_busy_and_a_dropped_one_is_free_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let Claim::Got { lock, stale } = CellLock::try_claim(dir.path(), "a", 1).unwrap() else {
            panic!("first claim fails")
        };
        assert!(stale.is_none());
        match CellLock::try_claim(dir.path(), "a", 1).unwrap() {
            Claim::Busy(Some(h)) => assert_eq!(h.pid, std::process::id()),
            _ => panic!("a held cell must be busy, with its holder"),
        }
        assert!(matches!(
            CellLock::try_claim(dir.path(), "a", 2).unwrap(),
            Claim::Got { .. }
        ));
        drop(lock);
        // Another test of this binary that spawns a process forks with our lock's descriptor
        // open (it closes on exec), and the lock stays held until that copy closes too: allow
        // that moment, not a lock that stays held.
        for _ in 0..200 {
            match CellLock::try_claim(dir.path(), "a", 1).unwrap() {
                Claim::Got { stale, .. } => {
                    assert!(stale.is_none(), "clean release leaves no record");
                    return;
                }
                Claim::Busy(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        panic!("released cell still busy after 2 s");
    }

    #[test]
    fn a_record_left_by_a_dead_holder_is_reported_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = cell_lock_path(dir.path(), "a", 1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let dead = Holder {
            pid: 999_999,
            host: "node7".into(),
            since: "yesterday".into(),
            start: None,
            boot: None,
        };
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        match CellLock::try_claim(dir.path(), "a", 1).unwrap() {
            Claim::Got { stale, .. } => assert_eq!(stale, Some(dead)),
            Claim::Busy(_) => panic!("nobody holds it"),
        }
    }

    #[test]
    fn a_holder_is_alive_while_its_process_runs() {
        let me = Holder::me();
        assert_eq!(me.alive(), Some(true));
        assert!(me.is_me());
        // The same pid with another start time is another process (a pid reused).
        let reused = Holder {
            start: me.start.map(|s| s + 1),
            ..me.clone()
        };
        assert_eq!(reused.alive(), Some(false));
        // A child that has exited (and been reaped) is dead.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid);
        child.wait().unwrap();
        let gone = Holder {
            pid,
            start: start.or(Some(1)),
            ..me.clone()
        };
        assert_eq!(gone.alive(), Some(false));
        // Another machine's process cannot be judged from here.
        let remote = Holder {
            host: "elsewhere-node".into(),
            ..me
        };
        assert_eq!(remote.alive(), None);
    }
}
