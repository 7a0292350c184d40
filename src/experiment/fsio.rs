//! Atomic file writes and line-by-line JSONL logs: a run killed at any moment leaves every file
//! either in its previous complete state or in its new complete state, and JSONL logs lose at most
//! the line being written. Logs are shared by every process working on a run directory: each
//! append and each rewrite happens under the directory's lock (`lock.rs`), and an append opens
//! the log by name, so a rewrite by another process (which replaces the file) never swallows it.

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers never see a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Pretty JSON, written atomically.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Largest file of a run directory read whole (logs of very long runs stay far below it).
const RUN_FILE_MAX: u64 = 1 << 36;

/// The bytes of a run directory's file, opened only if it is a regular file: a FIFO put in its
/// place would block the reader for ever (`textfile::open_regular`), a device never end.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let (mut f, len) = crate::textfile::open_regular(path, "run directory's", RUN_FILE_MAX)?;
    let mut bytes = Vec::with_capacity(len as usize);
    f.read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

pub(super) fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_bytes(path)?)
        .with_context(|| format!("{}: not UTF-8 text", path.display()))
}

/// Refuses to open for writing anything that exists and is not a regular file (opening a FIFO
/// for writing waits for a reader).
fn writable(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => crate::textfile::check_regular(path, "run directory's", u64::MAX)
            .map(|_| ())
            .map_err(Into::into),
        Err(_) => Ok(()),
    }
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The directory whose lock guards `path` (a run directory's logs live at its top).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// An append-only JSON-lines log; every record is written as one line, under the lock of the
/// log's directory.
pub struct JsonlWriter {
    path: PathBuf,
}

impl JsonlWriter {
    pub fn open(path: &Path) -> Result<Self> {
        writable(path)?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let _lock = super::lock::lock_dir(dir_of(&self.path))?;
        writable(&self.path)?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .with_context(|| format!("appending to {}", self.path.display()))
    }
}

/// Reads a JSON-lines log. A last line without its newline is the trace of a process killed
/// mid-write and is dropped; any other malformed line is an error naming the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(Vec::new());
    }
    let text = read_text(path)?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: malformed record", path.display(), i + 1))
        })
        .collect()
}

/// Rewrites a JSON-lines log atomically keeping only the records `keep` accepts (used on resume
/// to drop what an interrupted cell logged after its last checkpoint).
pub fn filter_jsonl<T: DeserializeOwned + Serialize>(
    path: &Path,
    keep: impl Fn(&T) -> bool,
) -> Result<()> {
    let _lock = super::lock::lock_dir(dir_of(path))?;
    let records: Vec<T> = read_jsonl(path)?;
    // A line torn by a kill must go before anything is appended after it.
    let torn = read_bytes(path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    if !torn && records.iter().all(&keep) {
        // Nothing to drop: leave the file alone, so a cell starting fresh never rewrites a
        // log that other cells of the run are appending to.
        return Ok(());
    }
    let mut out = String::new();
    for r in records.iter().filter(|r| keep(r)) {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    #[test]
    fn jsonl_drops_torn_last_line_but_rejects_bad_middle_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        w.append(&serde_json::json!({"step": 1})).unwrap();
        w.append(&serde_json::json!({"step": 2})).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"step\": 3").unwrap();
        let v: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["step"], 2);

        fs::write(&p, "{\"step\": 1}\nnot json\n{\"step\": 3}\n").unwrap();
        let err = read_jsonl::<serde_json::Value>(&p).unwrap_err();
        assert!(format!("{err:#}").contains(":2: malformed"), "{err:#}");
    }

    #[test]
    fn filter_keeps_only_accepted_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        for s in 0..5 {
            w.append(&serde_json::json!({ "step": s })).unwrap();
        }
        filter_jsonl::<serde_json::Value>(&p, |r| r["step"].as_u64().unwrap() <= 2).unwrap();
        let v: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn filter_leaves_a_log_alone_unless_it_drops_something() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        fs::write(&p, "{\"step\": 1}\n{\"step\": 2}\n").unwrap();
        let inode = fs::metadata(&p).unwrap().ino();
        filter_jsonl::<serde_json::Value>(&p, |_| true).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            inode,
            "rewritten for nothing"
        );
        // A torn last line goes, so the next append starts on a line of its own.
        fs::write(&p, "{\"step\": 1}\n{\"step\": 2}\n{\"st").unwrap();
        filter_jsonl::<serde_json::Value>(&p, |_| true).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
    }
}
