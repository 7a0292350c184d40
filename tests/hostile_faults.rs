//! Faults around a run, each with real `adarank` processes: a cell's lock folder deleted under
//! a live run, `--out` into someone's folder, a report merging two experiments, a resume over
//! truncated records, a deleted cell folder or a deleted run.json, FIFOs and devices where files
//! belong, a cell whose process died shown as running, Slurm values that would write into the
//! sbatch script, and accepted input whose size comes from the input (memory must not follow it).
//! Every refusal must say what is wrong with exit status 1 or 2, never hang, and keep finished
//! work.

use adarank::experiment::{CellStatus, MetricRecord, RunDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Two arms of one seed on a tiny planted task, checkpointed every 5 steps.
const POLICY: &str = r#"
experiment NAME {
  model encoder { layers = 1, hidden = 16, heads = 2, ffn = 32, vocab = 32, max_positions = 8 }
  data planted { ranks = [0, 3, 1, 2], samples = 512, eval_samples = 32, seq = 8, seed = 2 }
  lora { targets = [q, v], alpha = 4, budget = 4, init_rank = 2, max_rank = 4 }
  train { steps = STEPS, batch = 4, lr = 1e-2, checkpoint_every = 5 }
  complexity = plugin "spectral_gradient"
  allocator = plugin "log_rule"
  phase warmup until step 25% {}
  phase adapt until step 75% { every 2 steps: reallocate }
  phase settle {}
  baseline arm fixed { phase adapt {} }
}
"#;

fn policy(dir: &Path, name: &str, steps: usize) -> PathBuf {
    let p = dir.join(format!("{name}.rank"));
    let text = POLICY
        .replace("NAME", name)
        .replace("STEPS", &steps.to_string());
    std::fs::write(&p, text).unwrap();
    p
}

fn adarank(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adarank"));
    c.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs to the end, killed at `limit` (a hang is a failure, not a stuck test).
fn output_within(mut c: Command, limit: Duration) -> Output {
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_to_end(policy: &Path, out: &Path) {
    let o = adarank(&[
        "run",
        policy.to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
    ])
    .args(["--out", out.to_str().unwrap()])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

fn resume(out: &Path, extra: &[&str]) -> Command {
    let mut c = adarank(&["run", "--resume", out.to_str().unwrap(), "--device", "cpu"]);
    c.args(extra);
    c
}

/// (arm, seed) → sorted steps of metrics.jsonl.
fn steps_by_cell(rd: &RunDir) -> BTreeMap<(String, u64), Vec<u64>> {
    let m: Vec<MetricRecord> = rd.load_metrics().unwrap();
    let mut by: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    for r in &m {
        by.entry((r.arm.clone(), r.seed)).or_default().push(r.step);
    }
    for v in by.values_mut() {
        v.sort();
    }
    by
}

#[test]
fn deleting_the_lock_folder_under_a_live_cell_does_not_let_a_second_process_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "locks_gone", 600);
    let out = dir.path().join("run");
    let o = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
        .args(["--out", out.to_str().unwrap(), "--arm", "adaptive"])
        .args(["--stop-after-steps", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let a = resume(&out, &["--quiet"]).spawn().unwrap();
    // Once the first process holds the cell, the user deletes every lock file.
    let lock = adarank::experiment::lock::cell_lock_path(&out, "adaptive", 1);
    let t0 = Instant::now();
    while std::fs::read(&lock).map_or(true, |b| b.is_empty()) {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first resume never took the cell"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_dir_all(out.join("locks")).unwrap();
    let b = resume(&out, &["--quiet"]).output().unwrap();
    let a = a.wait_with_output().unwrap();
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(
        b.status.code(),
        Some(2),
        "the second must leave the cell: {}",
        text(&b)
    );
    assert!(text(&b).contains("being run by"), "{}", text(&b));
    let by = steps_by_cell(&RunDir::open(&out).unwrap());
    assert_eq!(
        by[&("adaptive".to_string(), 1)],
        (1..=600).collect::<Vec<u64>>(),
        "every step exactly once"
    );
}

#[test]
fn a_run_into_a_folder_of_other_files_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "foreign", 4);
    let out = dir.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("report.md"), "my own notes").unwrap();
    let o = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is not empty") && text(&o).contains("report.md"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        "my own notes"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "nothing written beside it"
    );
    // A file in place of the folder is named too; an empty folder is fine.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
        .args(["--out", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is a file"), "{}", text(&o));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    run_to_end(&p, &empty);
}

#[test]
fn a_report_refuses_to_pool_two_experiments_unless_told_and_then_says_what_it_merged() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_to_end(&policy(dir.path(), "first", 4), &a);
    run_to_end(&policy(dir.path(), "second", 4), &b);
    let merged = dir.path().join("merged");
    let o = adarank(&["report", a.to_str().unwrap(), b.to_str().unwrap()])
        .args(["--out", merged.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("different experiments") && text(&o).contains("--mixed"),
        "{}",
        text(&o)
    );
    assert!(!merged.exists(), "a refused merge wrote a folder");
    // Same experiment name, but an arm of the same name trained differently: never pooled.
    let c = dir.path().join("c");
    let changed = policy(dir.path(), "first", 6);
    run_to_end(&changed, &c);
    let o = adarank(&["report", a.to_str().unwrap(), c.to_str().unwrap()])
        .args(["--out", merged.to_str().unwrap(), "--mixed"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("plans in policy.json differ"),
        "{}",
        text(&o)
    );
    // Told to, it merges and says what it merged and what it left out.
    let o = adarank(&["report", a.to_str().unwrap(), b.to_str().unwrap()])
        .args(["--out", merged.to_str().unwrap(), "--mixed"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("merged 2 runs (first + second)"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("left out, an earlier run already has it"),
        "{}",
        text(&o)
    );
}

#[test]
fn resume_rebuilds_cells_whose_records_or_folder_are_gone_and_refuses_without_run_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "damaged", 12);
    let out = dir.path().join("run");
    run_to_end(&p, &out);
    let rd = RunDir::open(&out).unwrap();
    let before = rd.load_summary().unwrap();
    // Cut metrics.jsonl after the fixed arm's 5th record; delete adaptive's folder.
    let text_m = std::fs::read_to_string(rd.metrics()).unwrap();
    let mut kept = String::new();
    let mut fixed = 0;
    for line in text_m.lines() {
        let r: MetricRecord = serde_json::from_str(line).unwrap();
        if r.arm == "fixed" {
            fixed += 1;
            if fixed > 5 {
                continue;
            }
        }
        kept.push_str(line);
        kept.push('\n');
    }
    std::fs::write(rd.metrics(), kept).unwrap();
    std::fs::remove_dir_all(rd.adapters("adaptive", 1)).unwrap();
    let o = output_within(resume(&out, &["--quiet"]), Duration::from_secs(120));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("arm fixed seed 1: finished, but metrics.jsonl holds 5 of its 12 steps")
            && t.contains("arm adaptive seed 1: finished, but")
            && t.contains("running it again"),
        "{t}"
    );
    let after = rd.load_summary().unwrap();
    for arm in ["fixed", "adaptive"] {
        let (x, y) = (before.cell(arm, 1).unwrap(), after.cell(arm, 1).unwrap());
        assert_eq!(y.status, CellStatus::Done);
        assert_eq!(
            x.metric, y.metric,
            "{arm}: the rebuilt cell measures the same"
        );
        assert_eq!(x.peak_bytes, y.peak_bytes, "{arm}: the same peak");
    }
    let by = steps_by_cell(&rd);
    for arm in ["fixed", "adaptive"] {
        assert_eq!(
            by[&(arm.to_string(), 1)],
            (1..=12).collect::<Vec<u64>>(),
            "{arm}"
        );
    }
    assert!(rd.adapters("adaptive", 1).join("adarank.json").is_file());
    // Without run.json nothing vouches for the finished cells' plan: refused, said why.
    std::fs::remove_file(out.join("run.json")).unwrap();
    let o = resume(&out, &["--quiet"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("run.json is missing"), "{}", text(&o));
}

#[test]
fn a_resumed_cell_reports_the_peak_memory_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "peaks", 20);
    let whole = dir.path().join("whole");
    run_to_end(&p, &whole);
    let cut = dir.path().join("cut");
    for after in [3, 9, 14] {
        let mut c = adarank(&["run", "--quiet", "--device", "cpu"]);
        if after == 3 {
            c.args([p.to_str().unwrap(), "--out", cut.to_str().unwrap()]);
        } else {
            c.args(["--resume", cut.to_str().unwrap()]);
        }
        let o = c
            .args(["--stop-after-steps", &after.to_string()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
    let o = resume(&cut, &["--quiet"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (w, c) = (
        RunDir::open(&whole).unwrap().load_summary().unwrap(),
        RunDir::open(&cut).unwrap().load_summary().unwrap(),
    );
    for arm in ["fixed", "adaptive"] {
        let (x, y) = (w.cell(arm, 1).unwrap(), c.cell(arm, 1).unwrap());
        assert_eq!(x.peak_bytes, y.peak_bytes, "{arm}");
        assert_eq!(x.peak_by_kind, y.peak_by_kind, "{arm}");
    }
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo failed");
}

#[test]
fn fifos_and_devices_where_files_belong_are_named_never_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "pipes", 20);
    let out = dir.path().join("run");
    let o = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
        .args(["--out", out.to_str().unwrap(), "--stop-after-steps", "7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let rd = RunDir::open(&out).unwrap();
    // The base arm runs first: its checkpoint is the one left.
    let ck = rd.checkpoint("adaptive", 1);
    assert!(ck.is_file(), "no checkpoint to replace");
    std::fs::remove_file(&ck).unwrap();
    mkfifo(&ck);
    let o = output_within(resume(&out, &["--quiet"]), Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("named pipe"), "{}", text(&o));
    // fmt: a FIFO and /dev/zero are refused at once, a real file beside them still formatted.
    let fifo = dir.path().join("pipe.rank");
    mkfifo(&fifo);
    let messy = dir.path().join("messy.rank");
    std::fs::write(&messy, "experiment m {\ntrain{steps=4}\n}\n").unwrap();
    let o = output_within(
        {
            let mut c = adarank(&["fmt"]);
            c.arg(&fifo).arg("/dev/zero").arg(&messy);
            c
        },
        Duration::from_secs(20),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("named pipe") && t.contains("/dev/zero: is a device"),
        "{t}"
    );
    assert!(std::fs::read_to_string(&messy)
        .unwrap()
        .contains("train { steps = 4 }"));
}

/// The run's own logs are checked like its checkpoints: a metrics.jsonl appended to itself
/// (every step recorded twice) makes the finished cells untrustworthy, so resume runs them again
/// and says why; a FIFO in the log's place is named, never waited on, by `run --resume` and by
/// `status`.
#[test]
fn logs_written_twice_or_replaced_by_a_fifo_are_caught_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "twice", 12);
    let out = dir.path().join("run");
    run_to_end(&p, &out);
    let rd = RunDir::open(&out).unwrap();
    let before = rd.load_summary().unwrap();
    let log = std::fs::read_to_string(rd.metrics()).unwrap();
    std::fs::write(rd.metrics(), format!("{log}{log}")).unwrap();
    let o = output_within(resume(&out, &["--quiet"]), Duration::from_secs(120));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("arm fixed seed 1: finished, but metrics.jsonl repeats 12 of its steps"),
        "{t}"
    );
    let after = rd.load_summary().unwrap();
    for arm in ["fixed", "adaptive"] {
        assert_eq!(
            steps_by_cell(&rd)[&(arm.to_string(), 1)],
            (1..=12).collect::<Vec<u64>>(),
            "{arm}: each step once"
        );
        let (x, y) = (before.cell(arm, 1).unwrap(), after.cell(arm, 1).unwrap());
        assert_eq!(
            x.metric, y.metric,
            "{arm}: the rebuilt cell measures the same"
        );
    }
    std::fs::remove_file(rd.metrics()).unwrap();
    mkfifo(&rd.metrics());
    let o = output_within(resume(&out, &["--quiet"]), Duration::from_secs(60));
    let t = text(&o);
    assert!(matches!(o.status.code(), Some(1 | 2)), "{t}");
    assert!(t.contains("metrics.jsonl: is a named pipe"), "{t}");
    let o = output_within(
        adarank(&["status", out.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(matches!(o.status.code(), Some(0..=2)), "{}", text(&o));
}

/// A cell recorded as running by `holder`, on a run stopped after 2 steps.
fn running_by(dir: &Path, holder: adarank::experiment::lock::Holder) -> PathBuf {
    let p = policy(dir, "stale", 10);
    let out = dir.join("run");
    let o = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
        .args(["--out", out.to_str().unwrap(), "--stop-after-steps", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let rd = RunDir::open(&out).unwrap();
    rd.update_summary(|s| {
        let mut c = s.cell("fixed", 1).unwrap().clone();
        c.status = CellStatus::Running;
        c.holder = Some(holder);
        s.put(c);
    })
    .unwrap();
    out
}

#[test]
fn status_tells_a_dead_cell_from_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    // A process that has exited (and been reaped): its pid names no process now.
    let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
    let mut dead = adarank::experiment::lock::Holder::me();
    dead.pid = child.id();
    dead.start = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
        .ok()
        .and_then(|s| {
            s[s.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .nth(19)?
                .parse()
                .ok()
        });
    child.wait().unwrap();
    let out = running_by(dir.path(), dead);
    let o = adarank(&["status", out.to_str().unwrap()])
        .output()
        .unwrap();
    let t = text(&o);
    let fixed = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("fixed seed 1"))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        fixed(&t).contains("lost") && fixed(&t).contains("has ended"),
        "{t}"
    );
    // The same cell held by a live process (this test) reads as running.
    let live = tempfile::tempdir().unwrap();
    let out = running_by(live.path(), adarank::experiment::lock::Holder::me());
    let o = adarank(&["status", out.to_str().unwrap()])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        fixed(&t).contains("running") && !fixed(&t).contains("lost"),
        "{t}"
    );
}

#[test]
fn slurm_values_that_would_write_into_the_script_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "slurm_values", 4);
    for (flag, value) in [
        ("--partition", "gpu\necho INJECTED"),
        ("--time", "1:00:00; rm -rf ~"),
        ("--gres", "gpu:1 --wrap=id"),
        // Our own: a carriage return (which would also hide the value on the terminal), a
        // Unicode line separator, command substitution.
        ("--time", "1:00:00\r#SBATCH --wrap=id"),
        ("--partition", "gpu\u{2028}id"),
        ("--gres", "gpu:$(id)"),
    ] {
        let out = dir.path().join("never");
        let o = adarank(&["run", p.to_str().unwrap(), "--slurm", "--dry-run"])
            .args(["--out", out.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(t.contains(flag) && t.contains("not allowed"), "{t}");
        assert!(
            !t.contains('\r'),
            "a control character reached the terminal: {t:?}"
        );
        assert!(!out.exists(), "a refused submission made a run directory");
    }
    // A folder whose name holds a newline cannot go into `#SBATCH --output`.
    let out = dir.path().join("run\necho INJECTED");
    let o = adarank(&["run", p.to_str().unwrap(), "--slurm", "--dry-run"])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("control character"), "{}", text(&o));
    // A good submission prints the sbatch command shell-quoted, ready to paste.
    let ok_out = dir.path().join("ok");
    let o = adarank(&["run", p.to_str().unwrap(), "--slurm", "--dry-run"])
        .args([
            "--out",
            ok_out.to_str().unwrap(),
            "--partition",
            "gpu,debug",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let script = std::fs::read_to_string(ok_out.join("slurm/adarank.sbatch")).unwrap();
    assert!(
        script.contains("#SBATCH --partition=gpu,debug\n"),
        "{script}"
    );
    assert!(
        text(&o).contains("# sbatch --parsable --array=0-1 --partition=gpu,debug "),
        "{}",
        text(&o)
    );
}

#[test]
fn a_billion_planted_samples_train_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.rank");
    std::fs::write(
        &p,
        POLICY
            .replace("NAME", "billion")
            .replace("STEPS", "4")
            .replace("samples = 512", "samples = 1e9"),
    )
    .unwrap();
    let out = dir.path().join("run");
    let mut child = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
        .args(["--out", out.to_str().unwrap(), "--arm", "fixed"])
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let t0 = Instant::now();
    loop {
        // SAFETY: our own child's pid, valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::mem::forget(child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    // ru_maxrss is in KiB: an epoch table of a billion indices alone would be 8 GB.
    let mib = usage.ru_maxrss as u64 / 1024;
    assert!(mib < 512, "peak resident memory {mib} MiB");
}

/// Arms run apart (`--arm`) merge even when one run's policy changed an arm the other never
/// ran — that run has no cell of it to pool — but an arm both runs finished, trained
/// differently, is still refused.
#[test]
fn a_report_merges_arms_run_apart_and_refuses_an_arm_both_ran_differently() {
    let dir = tempfile::tempdir().unwrap();
    let first = policy(dir.path(), "first", 8);
    let changed = dir.path().join("changed.rank");
    std::fs::write(
        &changed,
        std::fs::read_to_string(&first)
            .unwrap()
            .replace("every 2 steps", "every 3 steps"),
    )
    .unwrap();
    let run_arm = |p: &Path, out: &Path, arm: &str| {
        let o = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"])
            .args(["--out", out.to_str().unwrap(), "--arm", arm])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    };
    let (fixed, adaptive) = (dir.path().join("fixed"), dir.path().join("adaptive"));
    run_arm(&first, &fixed, "fixed");
    run_arm(&changed, &adaptive, "adaptive");
    let merged = dir.path().join("merged");
    let o = adarank(&[
        "report",
        fixed.to_str().unwrap(),
        adaptive.to_str().unwrap(),
    ])
    .args(["--out", merged.to_str().unwrap()])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = RunDir::open(&merged).unwrap().load_summary().unwrap();
    let mut arms: Vec<&str> = s.cells.iter().map(|c| c.arm.as_str()).collect();
    arms.sort();
    assert_eq!(arms, ["adaptive", "fixed"]);
    // The first policy's adaptive arm, finished too: two different arms under one name.
    let both = dir.path().join("both");
    run_to_end(&first, &both);
    let o = adarank(&["report", adaptive.to_str().unwrap(), both.to_str().unwrap()])
        .args(["--out", dir.path().join("refused").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("arm `adaptive`") && text(&o).contains("plans in policy.json differ"),
        "{}",
        text(&o)
    );
}

/// metrics.jsonl records and results.csv rows without what the wall clock sets.
fn comparable(out: &Path) -> (Vec<String>, Vec<String>) {
    let mut metrics: Vec<String> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    metrics.sort();
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let rows = csv
        .lines()
        .map(|l| {
            l.split(',')
                .zip(&header)
                .filter(|(_, h)| !matches!(**h, "wall_s" | "tokens_per_s"))
                .map(|(v, _)| v)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    (metrics, rows)
}

/// A real `kill -9` (ADARANK_TEST_KILL_AFTER_STEP, a hook in experiment/sink.rs) of a cell whose
/// `checkpoint_every` divides its steps, at the last checkpoint (step 5 of 10) and after the
/// last step (step 10: its record waits for the final evaluation; no checkpoint is written at
/// the last step, whose state the final export holds), then `--resume`: the same records and
/// results.csv rows as an uninterrupted run, each step recorded once.
#[test]
fn a_kill_at_the_last_checkpoint_or_the_last_step_resumes_to_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "last", 10);
    let whole = dir.path().join("whole");
    run_to_end(&p, &whole);
    let want = comparable(&whole);
    assert_eq!(want.0.len(), 2 * 10, "two cells of 10 steps");
    for at in [5, 10] {
        let cut = dir.path().join(format!("cut{at}"));
        let o = output_within(
            {
                let mut c = adarank(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"]);
                c.args(["--out", cut.to_str().unwrap()])
                    .env("ADARANK_TEST_KILL_AFTER_STEP", at.to_string());
                c
            },
            Duration::from_secs(120),
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", text(&o));
        let ck = std::fs::read_dir(cut.join("checkpoints")).unwrap().count();
        assert_eq!(ck, 1, "kill after step {at}: one checkpoint (step 5) left");
        let o = output_within(resume(&cut, &["--quiet"]), Duration::from_secs(120));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let got = comparable(&cut);
        assert_eq!(got.0, want.0, "kill after step {at}: metrics.jsonl differs");
        assert_eq!(got.1, want.1, "kill after step {at}: results.csv differs");
        let steps = steps_by_cell(&RunDir::open(&cut).unwrap());
        for (cell, s) in steps {
            assert_eq!(s, (1..=10).collect::<Vec<u64>>(), "{cell:?}");
        }
    }
}
