//! The binary's diagnostics as a user and an editor see them: `adarank check` on a file with
//! several mistakes (text on stderr, sorted by position, and `--format json` on stdout, both
//! snapshotted), a missing file named as such, consistent exit statuses (0 ok, 1 policy or data
//! errors, 2 usage or runtime failures), results on stdout, no doubled `error:`, and no Vulkan
//! loader noise on a machine without a desktop session.

use std::process::{Command, Output};

fn adarank(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adarank"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

const SEVERAL: &str = "tests/fixtures/cli/several_errors.rank";

#[test]
fn check_reports_several_errors_sorted_by_position() {
    let o = adarank(&["check", SEVERAL]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    // Top to bottom: every `--> file:line:col` line after the previous one.
    let positions: Vec<(usize, usize)> = err
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("--> {SEVERAL}:")))
        .map(|lc| {
            let (l, c) = lc.split_once(':').unwrap();
            (l.parse().unwrap(), c.parse().unwrap())
        })
        .collect();
    assert!(positions.len() >= 5, "{err}");
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
    assert!(!err.contains("error: error:"), "{err}");
    insta::assert_snapshot!("check_text", err);
}

#[test]
fn check_json_is_one_document_for_editors() {
    let o = adarank(&[
        "check",
        "--format",
        "json",
        SEVERAL,
        "examples/quickstart.rank",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[1]["ok"], true);
    assert_eq!(files[1]["arms"][0], "adaptive");
    let diags = files[0]["diagnostics"].as_array().unwrap();
    assert_eq!(doc["errors"].as_u64().unwrap() as usize, diags.len());
    for d in diags {
        for key in [
            "line",
            "column",
            "end_line",
            "end_column",
            "message",
            "help",
        ] {
            assert!(!d[key].is_null(), "{key} missing in {d}");
        }
    }
    insta::assert_json_snapshot!("check_json", files[0]);
}

#[test]
fn a_missing_file_is_reported_as_such() {
    let o = adarank(&["check", "examples/no_such_file.rank"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot read examples/no_such_file.rank: no such file"),
        "{err}"
    );
    assert!(!err.contains('^') && !err.contains(":1:1"), "{err}");
    let o = adarank(&["run", "examples/no_such_file.rank", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.matches("error:").count(), 1, "{err}");
}

#[test]
fn exit_statuses_and_streams() {
    // 0, and the result on stdout.
    let o = adarank(&["check", "examples/quickstart.rank"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(
        out.contains("examples/quickstart.rank: ok (4 arms"),
        "{out}"
    );
    assert!(out.contains("fixed: 1953 trainable parameters"), "{out}");
    // Only warnings on stderr (the quickstart's LoRA arms differ in cost).
    let err = text(&o.stderr);
    assert!(err.lines().all(|l| l.starts_with("warning: ")), "{err}");
    // 2: a usage error (clap) and a failure that is not the input's fault.
    assert_eq!(adarank(&["check"]).status.code(), Some(2));
    assert_eq!(adarank(&["run", "--nosuchflag"]).status.code(), Some(2));
    let o = adarank(&["report", "/nonexistent/run"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stderr).matches("error:").count(), 1);
    // 1: a policy error on `run` (not only `check`), without a doubled "error:".
    let o = adarank(&["run", SEVERAL, "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(!err.contains("error: error:"), "{err}");
    assert!(
        err.contains("--> tests/fixtures/cli/several_errors.rank:"),
        "{err}"
    );
}

#[test]
fn no_vulkan_loader_noise_without_a_desktop_session() {
    // `devices` creates a Vulkan instance, as `--device auto` does. Mesa's device-select layer
    // prints "error: XDG_RUNTIME_DIR is invalid or not set" on every instance without a desktop
    // session unless adarank quiets it (backend/device.rs).
    let o = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}
