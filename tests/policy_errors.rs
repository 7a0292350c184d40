//! The error corpus: each `tests/fixtures/policy/*.rank` holds one mistake; the rendered
//! diagnostics are snapshotted (paths relative, so snapshots are machine-independent).

use adarank::policy;
use std::path::{Path, PathBuf};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new("tests/fixtures/policy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rank"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_is_large_enough() {
    assert!(corpus().len() >= 30, "only {} fixtures", corpus().len());
}

#[test]
fn every_mistake_is_reported_with_position_and_help() {
    for file in corpus() {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let err = match policy::load(&file, &[]) {
            Ok(_) => panic!("{name}: expected an error"),
            Err(e) => e,
        };
        assert!(!err.is_empty(), "{name}");
        for d in &err.errors {
            assert!(d.help.is_some(), "{name}: no help for `{}`", d.message);
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("--> {}:", file.display())),
            "{name}: no file:line:col in\n{text}"
        );
        assert!(text.contains('^'), "{name}: no caret");
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn several_errors_are_reported_at_once() {
    let src = r#"experiment many {
  model encoder { layers = 2, hidden = 32, heads = 4 }
  data planted { ranks = [1] }
  train { stpes = 100, batch = "8" }
  lora { targets = [q, qq] }
  seeds = [1, 1]
}"#;
    let err = policy::load_str(src, "many.rank", Path::new("."), &[]).unwrap_err();
    let text = err.to_string();
    assert!(err.len() >= 4, "{text}");
    for needle in ["stpes", "\"8\"", "qq", "seed 1 is listed twice", "errors"] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn unreadable_file_is_an_error_not_a_panic() {
    let err = policy::load(Path::new("tests/fixtures/policy/no_such_file.rank"), &[]).unwrap_err();
    assert!(err.to_string().contains("cannot read"));
}
