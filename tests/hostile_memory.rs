//! Hostile inputs whose memory must not follow the input: a plugin that builds and returns a
//! huge value, and a data row of many megabytes. Each runs the built `adarank` binary and
//! measures the child's peak resident memory with `wait4` (the kernel's own accounting); the
//! oracle is the same run with a harmless input, plus the bound the docs state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit status, stderr and peak RSS (MiB) of one child.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    peak_mib: u64,
}

fn run(args: &[&str], cwd: &Path, limit: Duration) -> Outcome {
    let err_path = cwd.join(".stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (mut status, t0) = (0, Instant::now());
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: our own child's pid, valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(t0.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::mem::forget(child); // reaped by wait4
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        // ru_maxrss is in KiB on Linux.
        peak_mib: usage.ru_maxrss as u64 / 1024,
    }
}

/// The corpus's learner harness around a learner whose `learn` body is `body`.
fn learner_case(dir: &Path, name: &str, body: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let plugin = d.join(format!("{name}.rhai"));
    std::fs::write(
        &plugin,
        format!("fn learn(state, adapters, ctx) {{\n    {body}\n}}\n"),
    )
    .unwrap();
    let harness = std::fs::read_to_string(root.join("tests/hostile/plugins/harness/learner.rank"))
        .unwrap()
        .replace("{PLUGIN}", &plugin.display().to_string());
    std::fs::write(d.join("harness.rank"), harness).unwrap();
    // The harness names shipped plugins, resolved beside the policy's plugins/.
    std::os::unix::fs::symlink(
        root.join("tests/fixtures/policy/plugins"),
        d.join("plugins"),
    )
    .unwrap();
    d
}

const RUN: &[&str] = &[
    "run",
    "harness.rank",
    "--device",
    "cpu",
    "--quiet",
    "--out",
    "run",
];

/// The documented heap limit of one plugin call (plugins/README.md, `Limits::max_heap_bytes`).
const PLUGIN_HEAP_MIB: u64 = 256;

#[test]
fn a_learner_returning_a_million_keys_fails_its_cell_within_the_stated_heap() {
    let dir = tempfile::tempdir().unwrap();
    let base = learner_case(dir.path(), "small", "#{alpha: 1.0, beta: 1.0}");
    let base = run(RUN, &base, Duration::from_secs(120));
    assert_eq!(base.code, Some(0), "{}", base.stderr);

    // rhai checks a map's size for literals, properties and methods, not for `m[k] = v`.
    let body = "let m = #{alpha: 1.0, beta: 1.0}; for i in 0..1000000 { m[`k${i}`] = i; } m";
    let case = learner_case(dir.path(), "million", body);
    let o = run(RUN, &case, Duration::from_secs(120));
    // A plugin failure fails its cell (exit 2), never the process, and says where and why.
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    for want in [
        "million.rhai:2:",
        "learner plugin",
        "`learn` returned a value with 1000002 keys in its maps",
        "limit of 16384",
        "max_map_size",
    ] {
        assert!(o.stderr.contains(want), "no {want:?} in: {}", o.stderr);
    }
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    // The value stays in the sandbox: peak memory is the harmless run's plus at most the heap
    // one call may grow (it was 465 MiB when the map was copied into the engine's state).
    assert!(
        o.peak_mib <= base.peak_mib + PLUGIN_HEAP_MIB,
        "peak RSS {} MiB; the harmless learner's {} MiB + {PLUGIN_HEAP_MIB} MiB",
        o.peak_mib,
        base.peak_mib
    );
    eprintln!(
        "peak RSS: harmless learner {} MiB, million-key learner {} MiB",
        base.peak_mib, o.peak_mib
    );
}

/// A policy on the corpus's tiny BERT (classification) or the tiny Llama GGUF (causal LM)
/// whose dev split is `dev.jsonl` in `dir`.
fn data_policy(dir: &Path, lm: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (model, data) = match lm {
        false => (
            format!(
                "model path {{ dir = \"{}\" }}",
                root.join("tests/hostile/model").display()
            ),
            "data jsonl { train = \"train.jsonl\", dev = \"dev.jsonl\", max_len = 16 }",
        ),
        true => (
            format!(
                "model gguf {{ path = \"{}\" }}",
                root.join("tests/fixtures/llm/tiny_llama.gguf").display()
            ),
            "data jsonl { train = \"train.jsonl\", dev = \"dev.jsonl\", metric = perplexity, \
             max_len = 32 }",
        ),
    };
    let p = dir.join("p.rank");
    std::fs::write(
        &p,
        format!(
            "experiment long_row {{\n  {model}\n  {data}\n  \
             lora {{ targets = [q, v], alpha = 8, init_rank = 2, max_rank = 4 }}\n  \
             train {{ steps = 1, batch = 2, lr = 1e-2 }}\n}}\n"
        ),
    )
    .unwrap();
    p
}

/// Writes train.jsonl (short rows) and dev.jsonl, whose first row's text is `first`.
fn write_rows(dir: &Path, lm: bool, first: &str) {
    let row = |text: &str, label: usize| match lm {
        true => serde_json::json!({ "text": text }).to_string(),
        false => serde_json::json!({ "text": text, "label": label }).to_string(),
    };
    let train: Vec<String> = (0..4)
        .map(|i| row(&format!("a short text number {i} here"), i % 2))
        .collect();
    std::fs::write(dir.join("train.jsonl"), train.join("\n") + "\n").unwrap();
    let dev = [row(first, 1), row("short text here", 0)];
    std::fs::write(dir.join("dev.jsonl"), dev.join("\n") + "\n").unwrap();
}

/// A 10 MB data row kept to 16 or 32 tokens peaked at 952 MiB (classification) and 1,888 MiB
/// (causal LM): the tokenizer saw all of it, at about 85 bytes per byte. Tokenized only as far
/// as its truncation keeps (`data::bounded`), it costs little more than its own text (read,
/// parsed and kept): the oracle is the same run with a short row, plus 16 bytes per byte of
/// the long row.
#[test]
fn a_ten_megabyte_data_row_costs_about_its_own_size() {
    let words = [
        "the",
        "movie",
        "was",
        "a",
        "quietly",
        "brilliant",
        "piece",
        "of",
        "film",
    ];
    let mut long = String::new();
    let mut i = 0usize;
    while long.len() < 10_000_000 {
        long.push_str(words[i.wrapping_mul(2654435761) % words.len()]);
        long.push(' ');
        i += 1;
    }
    let allowed = (16 * long.len() as u64) >> 20;
    for lm in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut peaks = Vec::new();
        for first in ["the movie was good", long.as_str()] {
            write_rows(dir.path(), lm, first);
            let p = data_policy(dir.path(), lm);
            let _ = std::fs::remove_dir_all(dir.path().join("run"));
            let args = [
                "run",
                p.to_str().unwrap(),
                "--device",
                "cpu",
                "--quiet",
                "--out",
                "run",
            ];
            let o = run(&args, dir.path(), Duration::from_secs(300));
            assert_eq!(o.code, Some(0), "{}", o.stderr);
            peaks.push(o.peak_mib);
        }
        eprintln!(
            "lm {lm}: peak RSS {} MiB short row, {} MiB 10 MB row",
            peaks[0], peaks[1]
        );
        assert!(
            peaks[1] <= peaks[0] + allowed,
            "lm {lm}: a 10 MB row peaked at {} MiB, a short one at {} MiB (+{allowed} allowed)",
            peaks[1],
            peaks[0]
        );
    }
}
