//! Scaffolding for the tests, compiled only with the `test-support` feature: the tests turn it
//! on through the crate's dev-dependency on itself (Cargo.toml), so `cargo build --release`
//! does not carry it. It holds the shared GPU of a test binary, the skip-or-fail rule for
//! tests that need fetched assets, and the engine's planted-rank task on plain structs
//! ([`planted_layers`]).

pub mod planted_layers;

use crate::backend::gpu::{AdapterFilter, Gpu};
use crate::data::assets;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The shared GPU for tests: opened once per test binary (lavapipe is fine). `None`, after
/// printing why, when no adapter exists — unless `ADARANK_REQUIRE_GPU=1`, when it panics so
/// the test fails instead of skipping.
pub fn test_gpu() -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Option<Arc<Gpu>>> = OnceLock::new();
    let g = GPU.get_or_init(|| match Gpu::open(AdapterFilter::AllowCpu) {
        Ok(Some(g)) => Some(Arc::new(g)),
        Ok(None) => None,
        Err(e) => {
            eprintln!("test_gpu: opening the adapter failed: {e:#}");
            None
        }
    });
    if g.is_none() {
        let require = std::env::var("ADARANK_REQUIRE_GPU").is_ok_and(|v| v == "1");
        if require {
            panic!(
                "ADARANK_REQUIRE_GPU=1 but no wgpu adapter was found \
                 (install a Vulkan driver, e.g. scripts/install-vulkan, and set WGPU_BACKEND=vulkan)"
            );
        }
        eprintln!("skipped: no wgpu adapter found (set ADARANK_REQUIRE_GPU=1 to fail instead)");
    }
    g.clone()
}

/// For tests that need the fetched assets: `true` when they are there. When they are missing,
/// panics if `ADARANK_REQUIRE_ASSETS=1` (CI, `scripts/test`), else prints a skip line and
/// returns `false` so the test can return.
pub fn require_assets(test: &str) -> bool {
    if assets::assets_present() {
        return true;
    }
    skip_or_fail(test, &assets::assets_dir().display().to_string());
    false
}

/// For tests that need the Shakespeare splits: their folder when they are there; when they
/// are missing, panics under `ADARANK_REQUIRE_ASSETS=1` as [`require_assets`] does, else
/// prints a skip line.
pub fn require_shakespeare(test: &str) -> Option<PathBuf> {
    if assets::shakespeare_present() {
        return Some(assets::shakespeare_dir());
    }
    skip_or_fail(test, &assets::shakespeare_dir().display().to_string());
    None
}

/// For tests that need the SmolLM2 GGUF: its path when it is there; when it is missing, panics
/// under `ADARANK_REQUIRE_ASSETS=1` as [`require_assets`] does, else prints a skip line.
pub fn require_smollm2(test: &str) -> Option<PathBuf> {
    if assets::smollm2_present() {
        return Some(assets::smollm2_gguf());
    }
    skip_or_fail(test, &assets::smollm2_gguf().display().to_string());
    None
}

/// The missing-assets rule shared by the `require_*` helpers: panic under
/// `ADARANK_REQUIRE_ASSETS=1`, else print a skip line.
fn skip_or_fail(test: &str, missing: &str) {
    let msg = format!(
        "{test}: assets missing in {missing} (run `scripts/fetch-assets` or `adarank fetch`)"
    );
    if std::env::var("ADARANK_REQUIRE_ASSETS").is_ok_and(|v| v == "1") {
        panic!("{msg}; ADARANK_REQUIRE_ASSETS=1 forbids skipping");
    }
    eprintln!("SKIP {msg}");
}
