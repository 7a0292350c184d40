//! Snapshots of the checked plan of every file in `examples/` and of the valid fixtures.

use adarank::policy::{self, LoadOptions, Policy};
use std::path::{Path, PathBuf};

fn rank_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rank"))
        .collect();
    files.sort();
    files
}

/// The plan as pretty JSON, without the source text (the file itself) and with the
/// checkout's absolute path (shipped plugins) replaced by `$ROOT`.
fn plan_json(p: &Policy) -> String {
    let mut p = p.clone();
    p.source_text = String::new();
    let json = serde_json::to_string_pretty(&p).unwrap();
    json.replace(env!("CARGO_MANIFEST_DIR"), "$ROOT")
}

fn snapshot_dir(dir: &str, options: &LoadOptions) {
    let files = rank_files(dir);
    assert!(!files.is_empty(), "no .rank files in {dir}");
    for file in files {
        let src = std::fs::read_to_string(&file).unwrap();
        let base = file.parent().unwrap();
        let name = file.display().to_string();
        let policy = policy::load_with(&src, &name, base, &[], options)
            .unwrap_or_else(|d| panic!("{name} does not check:\n{d}"));
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(
            format!("{}_{stem}", dir.replace('/', "_")),
            plan_json(&policy)
        );
    }
}

/// Examples reference the shipped plugins in `plugins/`. Their plan does not
/// depend on the scripts' contents, so the plan is snapshotted without compiling them;
/// `examples_check_with_plugins` checks them in full.
#[test]
fn examples_plans() {
    snapshot_dir(
        "examples",
        &LoadOptions {
            check_plugins: false,
        },
    );
}

#[test]
fn examples_check_with_plugins() {
    if !Path::new("plugins").is_dir() {
        eprintln!("plugins/ not in this checkout yet: full plugin check of examples skipped");
        return;
    }
    for file in rank_files("examples") {
        if let Err(d) = policy::load(&file, &[]) {
            panic!("{} does not check:\n{d}", file.display());
        }
    }
}

#[test]
fn valid_fixture_plans() {
    snapshot_dir("tests/fixtures/policy/valid", &LoadOptions::default());
}

#[test]
fn plan_round_trips_through_serde() {
    let p = policy::load(
        Path::new("tests/fixtures/policy/valid/everything.rank"),
        &[],
    )
    .unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let back: Policy = serde_json::from_str(&json).unwrap();
    assert_eq!(p, back);
}
