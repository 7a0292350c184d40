//! Every WGSL file in `shaders/` parses and validates with naga — no device needed. The directory
//! is listed, so a new shader file is covered without touching this test.

use std::path::Path;

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 11,
        "expected the op-family shaders, found {files:?}"
    );
    let mut failures = Vec::new();
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let module = match naga::front::wgsl::parse_str(&src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(e.emit_to_string_with_path(&src, &path.display().to_string()));
                continue;
            }
        };
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            // Subgroup operations: the host enables them where the adapter has them and picks
            // matmul_subgroup only then.
            naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP,
        );
        if let Err(e) = validator.validate(&module) {
            failures.push(e.emit_to_string_with_path(&src, &path.display().to_string()));
            continue;
        }
        assert!(
            !module.entry_points.is_empty(),
            "{} has no entry point",
            path.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The runtime embeds the shaders with `include_str!`; every file on disk must be embedded.
#[test]
fn every_shader_file_is_embedded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "wgsl") {
            let name = p.file_stem().unwrap().to_str().unwrap().to_string();
            let embedded = adarank::backend::gpu::shaders::SHADERS
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("shaders/{name}.wgsl is not in gpu::shaders::SHADERS"));
            assert_eq!(embedded.1, std::fs::read_to_string(&p).unwrap());
        }
    }
}

#[test]
fn generated_subgroup_kernel_matches_its_generator() {
    // shaders/matmul_subgroup.wgsl is written by a script (WGSL has no macros); a hand edit or a
    // script change without regenerating would ship a kernel nobody can reproduce.
    let out = std::process::Command::new("python3")
        .arg("scripts/gen_matmul_subgroup.py")
        .arg("--check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs (scripts/fetch-assets needs it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
