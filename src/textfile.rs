//! Reading one text input — a policy, a plugin script, a data file — so that a wrong path never
//! hangs or exhausts the process and every refusal says what the path really is: a directory,
//! a named pipe (opening one blocks until a writer comes), a device (`/dev/zero` never ends), a
//! file too large for its role, or text that is not UTF-8 (with the line and column of the first
//! bad byte).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A data file may be large, but not without end (`/dev/zero`, or a path swapped for a log).
pub const MAX_DATA_BYTES: u64 = 64 << 30;

/// A plugin script is a few kilobytes; a file far larger is refused before it is read.
pub const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// Why a text input could not be read.
#[derive(Debug)]
pub struct TextFileError {
    pub path: PathBuf,
    /// 1-based line of the problem, when it has one (invalid UTF-8).
    pub line: Option<usize>,
    /// Byte offset of the first invalid byte (invalid UTF-8).
    pub offset: Option<usize>,
    pub message: String,
}

impl fmt::Display for TextFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for TextFileError {}

/// What a path is when it is not a regular file, in words.
fn not_a_file(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a named pipe (FIFO)");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// Checks that `path` is a regular file of at most `max_bytes`, without opening it.
pub fn check_regular(path: &Path, what: &str, max_bytes: u64) -> Result<u64, TextFileError> {
    let err = |message: String| TextFileError {
        path: path.to_path_buf(),
        line: None,
        offset: None,
        message,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(format!("no such file (the {what})")))
        }
        Err(e) => return Err(err(format!("cannot read the {what}: {e}"))),
    };
    if let Some(kind) = not_a_file(&meta) {
        return Err(err(format!(
            "is {kind}, not a {what} file; give the path of a regular file"
        )));
    }
    if meta.len() > max_bytes {
        return Err(err(format!(
            "{} bytes, more than the {} a {what} may have; is this the right file?",
            meta.len(),
            max_bytes
        )));
    }
    Ok(meta.len())
}

/// Opens `path` for reading only if it is a regular file of at most `max_bytes`. The open itself
/// never blocks: it is non-blocking (a FIFO swapped in after [`check_regular`] would otherwise
/// wait for a writer), and the type is checked again on the open descriptor, so what is read is
/// the regular file that was checked. Returns the file and its length.
pub fn open_regular(
    path: &Path,
    what: &str,
    max_bytes: u64,
) -> Result<(std::fs::File, u64), TextFileError> {
    check_regular(path, what, max_bytes)?;
    let err = |message: String| TextFileError {
        path: path.to_path_buf(),
        line: None,
        offset: None,
        message,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts
        .open(path)
        .map_err(|e| err(format!("cannot read the {what}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read the {what}: {e}")))?;
    if let Some(kind) = not_a_file(&meta) {
        return Err(err(format!(
            "is {kind}, not a {what} file; give the path of a regular file"
        )));
    }
    if meta.len() > max_bytes {
        return Err(err(format!(
            "{} bytes, more than the {max_bytes} a {what} may have; is this the right file?",
            meta.len()
        )));
    }
    Ok((file, meta.len()))
}

/// The longest line a line-oriented data file may have: one example's text is at most a few
/// kilobytes, and a line this long is a file that is not what it should be (a binary, or one
/// JSON document without newlines).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The lines of a UTF-8 text file, read one at a time so memory stays bounded by the longest
/// line (at most [`MAX_LINE_BYTES`]) rather than the file, and an error on line 1 of a huge file
/// is found at once. Yields `(line number, line without its "\n" or "\r\n")`.
pub struct Lines {
    path: PathBuf,
    what: String,
    reader: std::io::BufReader<std::io::Take<std::fs::File>>,
    line: usize,
    read: u64,
    max_bytes: u64,
    buf: Vec<u8>,
}

/// Opens `path` (a regular file of at most `max_bytes`) for reading line by line.
pub fn lines(path: &Path, what: &str, max_bytes: u64) -> Result<Lines, TextFileError> {
    let (file, _) = open_regular(path, what, max_bytes)?;
    Ok(Lines {
        path: path.to_path_buf(),
        what: what.to_string(),
        reader: std::io::BufReader::with_capacity(1 << 16, file.take(max_bytes.saturating_add(1))),
        line: 0,
        read: 0,
        max_bytes,
        buf: Vec::new(),
    })
}

impl Lines {
    fn error(&self, line: Option<usize>, message: String) -> TextFileError {
        TextFileError {
            path: self.path.clone(),
            line,
            offset: None,
            message,
        }
    }

    /// The next line, `None` at the end of the file.
    pub fn next_line(&mut self) -> Option<Result<(usize, String), TextFileError>> {
        use std::io::BufRead;
        self.buf.clear();
        self.line += 1;
        let n = self.line;
        // At most one byte past the cap, so an endless line is refused without being held.
        let mut limited = (&mut self.reader).take(MAX_LINE_BYTES as u64 + 1);
        let got = match limited.read_until(b'\n', &mut self.buf) {
            Ok(got) => got,
            Err(e) => {
                let what = self.what.clone();
                return Some(Err(
                    self.error(Some(n), format!("cannot read the {what}: {e}"))
                ));
            }
        };
        if got == 0 {
            return None;
        }
        self.read += got as u64;
        if self.read > self.max_bytes {
            let max = self.max_bytes;
            return Some(Err(
                self.error(None, format!("grew past {max} bytes while being read"))
            ));
        }
        if self.buf.len() > MAX_LINE_BYTES && !self.buf.ends_with(b"\n") {
            return Some(Err(self.error(
                Some(n),
                format!(
                    "a line longer than {MAX_LINE_BYTES} bytes; one example per line is expected \
                     (is this a binary file, or a document without line breaks?)"
                ),
            )));
        }
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Some(match String::from_utf8(bytes) {
            Ok(s) => Ok((n, s)),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let bytes = e.as_bytes();
                let col = String::from_utf8_lossy(&bytes[..at]).chars().count() + 1;
                let what = self.what.clone();
                Err(self.error(
                    Some(n),
                    format!(
                        "column {col}: byte 0x{:02x} is not valid UTF-8; the {what} must be UTF-8 \
                         text (re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`)",
                        bytes[at]
                    ),
                ))
            }
        })
    }
}

impl Iterator for Lines {
    type Item = Result<(usize, String), TextFileError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_line()
    }
}

/// Reads `path` as UTF-8 text: `what` names its role in messages ("policy", "plugin script",
/// "training data"); `max_bytes` bounds what is read even if the file grows meanwhile.
pub fn read(path: &Path, what: &str, max_bytes: u64) -> Result<String, TextFileError> {
    let err = |line: Option<usize>, message: String| TextFileError {
        path: path.to_path_buf(),
        line,
        offset: None,
        message,
    };
    let (file, len) = open_regular(path, what, max_bytes)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| err(None, format!("cannot read the {what}: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(err(
            None,
            format!("grew past {max_bytes} bytes while being read"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = bytes[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&bytes[line_start..at])
            .chars()
            .count()
            + 1;
        TextFileError {
            offset: Some(at),
            ..err(
                Some(line),
                format!(
                    "column {col}: byte 0x{:02x} is not valid UTF-8; the {what} must be UTF-8 \
                     text (re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`)",
                    bytes[at]
                ),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(&p, b"sentence\tlabel\nok\t1\ncaf\xe9 au lait\t0\n").unwrap();
        let e = read(&p, "training data", 1 << 20).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(
            e.to_string().contains("t.tsv:3: column 4: byte 0xe9"),
            "{e}"
        );
    }

    #[test]
    fn directory_and_fifo_are_named_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path(), "policy", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        #[cfg(unix)]
        {
            let fifo = dir.path().join("pipe");
            // mkfifo(1) keeps this test free of a libc dependency.
            let ok = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                let e = read(&fifo, "policy", 1 << 20).unwrap_err();
                assert!(e.to_string().contains("named pipe"), "{e}");
            }
        }
        let e = read(Path::new("/dev/zero"), "policy", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
    }

    #[test]
    fn too_large_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.rhai");
        std::fs::write(&p, vec![b'x'; 2000]).unwrap();
        let e = read(&p, "plugin script", 1000).unwrap_err();
        assert!(e.to_string().contains("2000 bytes"), "{e}");
    }

    #[test]
    fn lines_stream_with_locations_and_a_line_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, b"one\r\ntwo\n\ncaf\xe9\n").unwrap();
        let mut it = lines(&p, "data", 1 << 20).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), (1, "one".to_string()));
        assert_eq!(it.next().unwrap().unwrap(), (2, "two".to_string()));
        assert_eq!(it.next().unwrap().unwrap(), (3, String::new()));
        let e = it.next().unwrap().unwrap_err();
        assert!(
            e.to_string().contains("t.jsonl:4: column 4: byte 0xe9"),
            "{e}"
        );
        // A line past the cap is refused after reading just past the cap, not the whole file.
        let big = dir.path().join("big.jsonl");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_LINE_BYTES as u64 * 4).unwrap(); // sparse: no disk used
        let e = lines(&big, "data", u64::MAX)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string().contains("big.jsonl:1: a line longer than"),
            "{e}"
        );
        // The FIFO is named at open, never waited on.
        #[cfg(unix)]
        {
            let fifo = dir.path().join("pipe");
            if std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success())
            {
                let e = lines(&fifo, "data", 1 << 20).err().unwrap();
                assert!(e.to_string().contains("named pipe"), "{e}");
            }
        }
    }
}
