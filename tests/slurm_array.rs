//! `adarank run --slurm`: the sbatch script it writes (snapshot of `--dry-run`), and real job
//! arrays on a one-node Slurm cluster on this machine (`scripts/local-slurm`): the quickstart
//! submitted as a job array must end with the same results as a local run of the same policy
//! (the oracle), and a failing cell must show its error and be resubmitted alone.
//!
//! The cluster tests need root (to start munged, slurmctld and slurmd). Without a cluster they
//! are skipped with a message, unless `ADARANK_REQUIRE_SLURM=1` (scripts/test), when they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn adarank(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("running adarank");
    assert!(
        out.status.success(),
        "adarank {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn dry_run_writes_the_script_and_submits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = adarank(&[
        "run",
        "examples/quickstart.rank",
        "--slurm",
        "--dry-run",
        "--device",
        "cpu",
        "--partition",
        "debug",
        "--time",
        "0:10:00",
        "--gres",
        "gpu:1",
        "--out",
        run.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout)
        .replace(&tmp.path().display().to_string(), "$TMP")
        .replace(env!("CARGO_BIN_EXE_adarank"), "$ADARANK")
        .replace(&root().display().to_string(), "$CWD");
    insta::assert_snapshot!("dry_run_script", stdout);
    // The run directory is ready for the tasks: every cell pending, the array's cells recorded,
    // nothing submitted.
    let summary: serde_json::Value =
        serde_json::from_str(&text(&run.join("summary.json"))).unwrap();
    let cells = summary["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 8);
    assert!(cells.iter().all(|c| c["status"] == "pending"));
    let job: serde_json::Value = serde_json::from_str(&text(&run.join("slurm/job.json"))).unwrap();
    assert_eq!(job["cells"].as_array().unwrap().len(), 8);
    assert!(job["submissions"].as_array().unwrap().is_empty());
    // A report of a run none of whose cells has finished names what is missing.
    let out = adarank(&["report", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("8 cell(s) missing from the report: adaptive seed 1 (pending)"),
        "{err}"
    );
    let report = text(&run.join("report.md"));
    assert!(report.contains("8 cell(s) not finished"), "{report}");
}

/// `true` when a Slurm controller answers (started here by `scripts/local-slurm` if needed).
fn local_slurm() -> bool {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let ping = |conf: Option<&str>| {
            let mut c = Command::new("scontrol");
            c.arg("ping");
            if let Some(conf) = conf {
                c.env("SLURM_CONF", conf);
            }
            c.output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP"))
        };
        if std::env::var("SLURM_CONF").is_ok() && ping(None) {
            return Ok(());
        }
        let out = Command::new(root().join("scripts/local-slurm"))
            .arg("start")
            .output()
            .map_err(|e| format!("scripts/local-slurm: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .map(str::to_string);
        match conf {
            Some(conf) if out.status.success() && ping(Some(&conf)) => {
                // Every later sbatch, squeue and adarank of this process finds the cluster.
                std::env::set_var("SLURM_CONF", conf);
                Ok(())
            }
            _ => Err(format!(
                "scripts/local-slurm start failed:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    match up {
        Ok(()) => true,
        Err(e) if std::env::var("ADARANK_REQUIRE_SLURM").is_ok_and(|v| v == "1") => {
            panic!("ADARANK_REQUIRE_SLURM=1 but no Slurm cluster: {e}")
        }
        Err(e) => {
            eprintln!("SKIP: no Slurm cluster ({e}); set ADARANK_REQUIRE_SLURM=1 to fail instead");
            false
        }
    }
}

/// Polls `adarank status --json` until no cell is pending or running.
fn wait_for(run: &Path, limit: Duration) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let out = adarank(&["status", "--json", run.to_str().unwrap()]);
        let cells: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if cells
            .iter()
            .all(|c| !matches!(c["state"].as_str(), Some("pending" | "running")))
        {
            return cells;
        }
        assert!(
            t0.elapsed() < limit,
            "the job array of {} did not finish within {limit:?}:\n{}",
            run.display(),
            String::from_utf8_lossy(&adarank(&["status", run.to_str().unwrap()]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// results.csv without the columns that time the run (wall_s, tokens_per_s).
fn results_without_timings(run: &Path) -> Vec<String> {
    let csv = text(&run.join("results.csv"));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let drop: Vec<usize> = ["wall_s", "tokens_per_s"]
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    csv.lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// Lines of a JSONL log, sorted (cells of an array append in whatever order they run).
fn sorted_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = text(p).lines().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn quickstart_as_a_job_array_matches_a_local_run() {
    if !local_slurm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (local, array): (PathBuf, PathBuf) = (tmp.path().join("local"), tmp.path().join("array"));
    let policy = "examples/quickstart.rank";
    let out = adarank(&[
        "run",
        policy,
        "--slurm",
        "--device",
        "cpu",
        "--out",
        array.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(array 0-7)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The local run, while the array runs.
    adarank(&[
        "run",
        policy,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        local.to_str().unwrap(),
    ]);
    let cells = wait_for(&array, Duration::from_secs(600));
    assert!(
        cells.iter().all(|c| c["state"] == "done"),
        "{}",
        String::from_utf8_lossy(&adarank(&["status", array.to_str().unwrap()]).stdout)
    );
    assert_eq!(
        results_without_timings(&array),
        results_without_timings(&local),
        "results.csv of the job array differs from the local run's"
    );
    for log in ["metrics.jsonl", "allocations.jsonl"] {
        assert_eq!(
            sorted_lines(&array.join(log)),
            sorted_lines(&local.join(log)),
            "{log} differs"
        );
    }
    let status =
        String::from_utf8_lossy(&adarank(&["status", array.to_str().unwrap()]).stdout).to_string();
    assert!(
        status.contains("8 done, 0 running, 0 pending, 0 failed, 0 lost"),
        "{status}"
    );
    // One log per task, and every cell's adapters exported.
    let logs = std::fs::read_dir(array.join("slurm"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "out")
        })
        .count();
    assert_eq!(logs, 8);
}

#[test]
fn a_failed_cell_shows_its_error_and_is_resubmitted_alone() {
    if !local_slurm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    adarank(&[
        "run",
        "tests/experiments/failing_plugin.rank",
        "--slurm",
        "--device",
        "cpu",
        "--out",
        r,
    ]);
    let cells = wait_for(&run, Duration::from_secs(300));
    let state = |arm: &str| cells.iter().find(|c| c["arm"] == arm).unwrap().clone();
    assert_eq!(state("fixed")["state"], "done");
    let failed = state("exploding");
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["detail"].as_str().unwrap().contains("explodes.rhai"),
        "{failed}"
    );
    let status = String::from_utf8_lossy(&adarank(&["status", r]).stdout).to_string();
    assert!(status.contains("--array=1 "), "{status}");
    // The report of the partial run names what it lacks.
    let out = adarank(&["report", r]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("report.md"));
    let report = text(&run.join("report.md"));
    assert!(report.contains("## Failed cells"), "{report}");

    // Only the failed cell goes back to Slurm.
    let out = adarank(&["run", "--resume", r, "--slurm", "--device", "cpu"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(array 1)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let job: serde_json::Value = serde_json::from_str(&text(&run.join("slurm/job.json"))).unwrap();
    let subs = job["submissions"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[1]["array"], "1");
    let cells = wait_for(&run, Duration::from_secs(300));
    assert_eq!(cells.iter().filter(|c| c["state"] == "failed").count(), 1);
    assert_eq!(cells.iter().filter(|c| c["state"] == "done").count(), 1);
}
