//! Several processes on one run directory: a cell is run by one process at a time (a second
//! `--resume` of it is refused), different cells run at once and every record lands exactly
//! once, a lock left by a killed process is taken over with a message, and `--resume` runs the
//! run it started — refusing a changed checkpoint, plugin or plan, and keeping the original
//! `--arm`/`--seed` filters. Processes are the built `adarank` binary.

use adarank::experiment::lock::{CellLock, Claim};
use adarank::experiment::{CellStatus, MetricRecord, RankRecord, RunDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Two arms of one seed on a tiny planted task; `adaptive` reallocates with a plugin in the
/// policy's folder (so a test can edit it).
const POLICY: &str = r#"
experiment locks {
  model encoder { layers = 1, hidden = 16, heads = 2, ffn = 32, vocab = 32, max_positions = 8 }
  data planted { ranks = [0, 3, 1, 2], samples = 512, eval_samples = 32, seq = 8, seed = 2 }
  lora { targets = [q, v], alpha = 4, budget = 4, init_rank = 2, max_rank = 4 }
  train { steps = STEPS, batch = 4, lr = 1e-2, checkpoint_every = 5 }
  complexity = plugin "spectral_gradient"
  allocator = plugin "mine.rhai"
  phase warmup until step 6 {}
  phase adapt until step 16 { every 4 steps: reallocate }
  phase settle {}
  baseline arm fixed { phase adapt {} }
}
"#;

fn setup(steps: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/log_rule.rhai");
    std::fs::copy(shipped, dir.path().join("mine.rhai")).unwrap();
    let policy = dir.path().join("locks.rank");
    std::fs::write(&policy, POLICY.replace("STEPS", &steps.to_string())).unwrap();
    (dir, policy)
}

fn adarank(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adarank"));
    c.args(args)
        .args(["--device", "cpu"])
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

/// A run directory whose cells have not finished: stopped after `after` steps.
fn started(policy: &Path, out: &Path, after: usize, extra: &[&str]) {
    let o = adarank(&["run", policy.to_str().unwrap(), "--quiet"])
        .args(["--out", out.to_str().unwrap()])
        .args(["--stop-after-steps", &after.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("run stopped on request"), "{}", text(&o));
}

fn resume(out: &Path, extra: &[&str]) -> Command {
    let mut c = adarank(&["run", "--resume", out.to_str().unwrap()]);
    c.args(extra);
    c
}

/// Two resumes of `out` started at once, with their own filters; both must succeed.
fn both_resumed(out: &Path, a: &[&str], b: &[&str]) {
    let (a, b) = (
        resume(out, a).spawn().unwrap(),
        resume(out, b).spawn().unwrap(),
    );
    for o in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
}

/// (arm, seed) → sorted steps, for metrics and rank records.
fn steps_by_cell(rd: &RunDir) -> (BTreeMap<(String, u64), Vec<u64>>, usize) {
    let m: Vec<MetricRecord> = rd.load_metrics().unwrap();
    let mut by: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    for r in &m {
        by.entry((r.arm.clone(), r.seed)).or_default().push(r.step);
    }
    for v in by.values_mut() {
        v.sort();
    }
    let ranks: Vec<RankRecord> = rd.load_ranks().unwrap();
    (by, ranks.len())
}

#[test]
fn a_cell_held_by_another_process_is_refused_and_left_untouched() {
    let (dir, policy) = setup(20);
    let out = dir.path().join("run");
    started(&policy, &out, 3, &[]);
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    // This test process holds the cell, as a running `adarank` would.
    let Claim::Got { lock, .. } = CellLock::try_claim(&out, "adaptive", 1).unwrap() else {
        panic!("the cell is free")
    };
    let o = resume(&out, &["--arm", "adaptive", "--quiet"])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("arm adaptive seed 1")
            && t.contains(&format!("pid {}", std::process::id()))
            && t.contains("being run by other processes"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(out.join("metrics.jsonl")).unwrap(),
        before,
        "a refused resume wrote to the logs"
    );
    drop(lock);
    let o = resume(&out, &["--quiet"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn two_resumes_of_the_same_cell_at_once_run_it_once() {
    // Long enough that the second process starts while the first still trains the cell.
    let (dir, policy) = setup(600);
    let out = dir.path().join("run");
    started(&policy, &out, 2, &["--arm", "adaptive"]);
    let a = resume(&out, &["--quiet"]).spawn().unwrap();
    // The second starts once the first holds the cell (its lock file names it).
    let lock = adarank::experiment::lock::cell_lock_path(&out, "adaptive", 1);
    let t0 = std::time::Instant::now();
    while std::fs::read(&lock).map_or(true, |b| b.is_empty()) {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first resume never took the cell"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let b = resume(&out, &["--quiet"]).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "exactly one runs the cell: {codes:?}\n{}\n{}",
        text(&a),
        text(&b)
    );
    let refused = if a.status.code() == Some(2) { &a } else { &b };
    assert!(
        text(refused).contains("being run by other processes") && text(refused).contains("(pid "),
        "{}",
        text(refused)
    );
    let rd = RunDir::open(&out).unwrap();
    let (by, _) = steps_by_cell(&rd);
    assert_eq!(
        by[&("adaptive".to_string(), 1)],
        (1..=600).collect::<Vec<u64>>(),
        "every step once"
    );
}

#[test]
fn different_cells_resumed_at_once_both_finish_with_every_record_once() {
    let (dir, policy) = setup(300);
    let out = dir.path().join("run");
    // Stops inside the first cell; both cells are then unfinished.
    started(&policy, &out, 2, &[]);
    both_resumed(
        &out,
        &["--arm", "adaptive", "--quiet"],
        &["--arm", "fixed", "--quiet"],
    );
    let rd = RunDir::open(&out).unwrap();
    let s = rd.load_summary().unwrap();
    for arm in ["adaptive", "fixed"] {
        assert_eq!(s.cell(arm, 1).unwrap().status, CellStatus::Done, "{arm}");
    }
    let (by, _) = steps_by_cell(&rd);
    for arm in ["adaptive", "fixed"] {
        assert_eq!(
            by[&(arm.to_string(), 1)],
            (1..=300).collect::<Vec<u64>>(),
            "{arm}: every step exactly once"
        );
    }
    let ranks = rd.load_ranks().unwrap();
    let inits = ranks.iter().filter(|r| r.reason == "init").count();
    assert_eq!(inits, 2, "one initial rank record per cell");
    let report = std::fs::read_to_string(rd.report()).unwrap();
    assert!(
        report.contains("adaptive") && report.contains("fixed"),
        "{report}"
    );
}

#[test]
fn a_lock_left_by_a_killed_process_is_taken_over_with_a_message() {
    let (dir, policy) = setup(2000);
    let out = dir.path().join("run");
    let mut child = adarank(&["run", policy.to_str().unwrap(), "--quiet"])
        .args(["--out", out.to_str().unwrap(), "--arm", "fixed"])
        .spawn()
        .unwrap();
    // Wait until it trains, then kill it without any chance to clean up.
    let metrics = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 20 {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the run never started training"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let o = adarank(&["run", "--resume", out.to_str().unwrap()])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("taking over from pid {pid}")),
        "no take-over message: {t}"
    );
    let rd = RunDir::open(&out).unwrap();
    assert_eq!(
        rd.load_summary().unwrap().cell("fixed", 1).unwrap().status,
        CellStatus::Done
    );
}

#[test]
fn a_flipped_bit_in_a_checkpoint_is_refused() {
    let (dir, policy) = setup(20);
    let out = dir.path().join("run");
    started(&policy, &out, 12, &[]);
    let ck = out.join("checkpoints/adaptive-seed1.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&ck, &bytes).unwrap();
    let o = resume(&out, &["--quiet"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("checkpoint is corrupt") && t.contains("adaptive-seed1.safetensors"),
        "{t}"
    );
}

#[test]
fn a_changed_plugin_or_plan_is_refused_and_says_how_to_start_anew() {
    let (dir, policy) = setup(20);
    let out = dir.path().join("run");
    started(&policy, &out, 12, &[]);
    let plugin = dir.path().join("mine.rhai");
    let original = std::fs::read_to_string(&plugin).unwrap();
    std::fs::write(&plugin, format!("{original}\n// tuned overnight\n")).unwrap();
    let o = resume(&out, &["--quiet"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("mine.rhai was changed after the run started") && t.contains("--out NEW_DIR"),
        "{t}"
    );
    std::fs::write(&plugin, &original).unwrap();

    let pj = out.join("policy.json");
    let plan = std::fs::read_to_string(&pj).unwrap();
    std::fs::write(&pj, plan.replacen("\"steps\": 20", "\"steps\": 40", 1)).unwrap();
    let o = resume(&out, &["--quiet"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("policy.json was changed after the run started"),
        "{t}"
    );
    std::fs::write(&pj, &plan).unwrap();

    let o = resume(&out, &["--quiet"]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "restored files resume: {}",
        text(&o)
    );
}

#[test]
fn resume_keeps_the_original_arm_and_seed_filters() {
    let (dir, policy) = setup(20);
    let out = dir.path().join("run");
    started(&policy, &out, 5, &["--arm", "fixed"]);
    let o = resume(&out, &["--quiet"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rd = RunDir::open(&out).unwrap();
    let s = rd.load_summary().unwrap();
    assert_eq!(s.cell("fixed", 1).unwrap().status, CellStatus::Done);
    assert_eq!(
        s.cell("adaptive", 1).unwrap().status,
        CellStatus::Pending,
        "the resume ran an arm the run was not started for"
    );
    let (by, _) = steps_by_cell(&rd);
    assert!(!by.contains_key(&("adaptive".to_string(), 1)));
    // Asked explicitly, the other arm runs.
    let o = resume(&out, &["--arm", "adaptive", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        RunDir::open(&out)
            .unwrap()
            .load_summary()
            .unwrap()
            .cell("adaptive", 1)
            .unwrap()
            .status,
        CellStatus::Done
    );
}

#[test]
fn seeds_run_at_once_run_each_sweep_candidate_once() {
    let (dir, policy) = setup(40);
    let src = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("lr = 1e-2", "lr = sweep [1e-2, 3e-3]")
        .replace(
            "baseline arm fixed { phase adapt {} }",
            "baseline arm fixed { phase adapt {} }\n  seeds = [1, 2]",
        );
    std::fs::write(&policy, src).unwrap();
    let out = dir.path().join("run");
    // Stops inside the first candidate, which a resume then continues from its checkpoint.
    started(&policy, &out, 2, &[]);
    // As two Slurm array tasks of one arm do: each needs the arm's rate before its seed runs.
    both_resumed(
        &out,
        &["--arm", "adaptive", "--seed", "1", "--quiet"],
        &["--arm", "adaptive", "--seed", "2", "--quiet"],
    );
    let rd = RunDir::open(&out).unwrap();
    let s = rd.load_summary().unwrap();
    let choice = s.lr_choice("adaptive").unwrap();
    assert!(choice.chosen.is_some(), "{choice:?}");
    assert!(choice
        .candidates
        .iter()
        .all(|k| k.status == CellStatus::Done));
    let (by, _) = steps_by_cell(&rd);
    let candidates: Vec<&(String, u64)> = by.keys().filter(|(arm, _)| arm.contains('@')).collect();
    assert_eq!(candidates.len(), 2, "{:?}", by.keys());
    // Every training step of every candidate and seed cell recorded exactly once: a candidate
    // run by both processes would record its steps twice.
    for key in by.keys().filter(|(arm, _)| arm.starts_with("adaptive")) {
        assert_eq!(by[key], (1..=40).collect::<Vec<u64>>(), "{key:?}");
    }
    for seed in [1, 2] {
        let cell = s.cell("adaptive", seed).unwrap();
        assert_eq!(cell.status, CellStatus::Done);
        assert_eq!(Some(cell.lr), choice.chosen);
    }
}
