//! The binary on its own: copied out of the build tree and started elsewhere, with no source
//! tree, no plugins folder and no assets within reach, `check` and `run` of the quickstart still
//! succeed — shipped plugins come from the copies embedded in the binary, in `check` and `run`
//! alike, and nothing is looked up under the build tree.

use std::path::Path;
use std::process::Command;

#[test]
fn the_binary_runs_the_quickstart_outside_its_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin/adarank");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_adarank"), &bin).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The quickstart as a user would have it: the file alone, naming shipped plugins.
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.rank"),
    )
    .unwrap();
    std::fs::write(work.join("quickstart.rank"), &src).unwrap();
    // A `plugins/` folder next to the policy that is NOT the shipped one: bare names must not
    // pick it up.
    std::fs::create_dir(work.join("plugins")).unwrap();
    std::fs::write(work.join("plugins/log_rule.rhai"), "this is not rhai").unwrap();
    let home = tmp.path().join("home");
    let adarank = |args: &[&str]| {
        let o = Command::new(&bin)
            .current_dir(&work)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("ADARANK_ASSETS", tmp.path().join("no-assets"))
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        );
        assert!(o.status.success(), "adarank {args:?}:\n{out}\n{err}");
        out
    };

    let out = adarank(&["check", "quickstart.rank", "--plan"]);
    // stdout is the plan alone (the ok line goes to stderr), one JSON document per policy.
    let plan: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(plan["arms"].as_array().map(Vec::len), Some(4), "{out}");
    for p in ["spectral_gradient", "log_rule", "learn_gates"] {
        assert!(out.contains(&format!("\"builtin:{p}.rhai\"")), "{p}: {out}");
    }
    assert!(!out.contains(env!("CARGO_MANIFEST_DIR")), "{out}");

    let out = adarank(&[
        "run",
        "quickstart.rank",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--out",
        "run",
    ]);
    assert!(out.contains("report: run/report.md"), "{out}");
    for arm in ["adaptive", "fixed", "layerwise", "full"] {
        assert!(
            out.contains(arm),
            "{arm} missing from the result table:\n{out}"
        );
    }
    let summary = std::fs::read_to_string(work.join("run/summary.json")).unwrap();
    assert_eq!(
        summary.matches("\"status\": \"done\"").count(),
        4,
        "{summary}"
    );
    // The adaptive arm really re-allocated with the embedded plugins: it ends away from the
    // uniform rank 3 it started at.
    let s: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let cell = s["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["arm"] == "adaptive")
        .unwrap();
    let ranks: Vec<u64> = cell["final_ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap())
        .collect();
    assert!(ranks.iter().any(|&r| r != 3), "{ranks:?}");
    // And the embedded quickstart (no file) runs there too.
    adarank(&[
        "run", "--device", "cpu", "--arm", "adaptive", "--seed", "2", "--out", "run2",
    ]);
}
