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
