//! Where `scripts/fetch-assets` (and `adarank fetch`) put the pretrained model and data sets,
//! and how tests that need them skip or fail.

use std::path::PathBuf;

/// The model every real-model test and example uses.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// `$ADARANK_ASSETS`, else `<repo>/assets` (the repo this crate was built from).
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("ADARANK_ASSETS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets"),
    }
}

/// The HF-cache-layout folder inside the assets folder (searched by `hf::resolve`).
pub fn assets_hf_cache() -> PathBuf {
    assets_dir().join("hf")
}

/// The movie-review sentences as SST-2-format `{train,dev,test}.tsv`.
pub fn movie_reviews_dir() -> PathBuf {
    assets_dir().join("data").join("movie_reviews")
}

/// Whether the fetched assets are all in place (the fetch script writes the stamp last).
pub fn assets_present() -> bool {
    let d = assets_dir();
    d.join(".fetch-complete").is_file()
        && movie_reviews_dir().join("train.tsv").is_file()
        && crate::data::hf::resolve(MINILM).is_ok()
}

/// For tests that need the fetched assets: `true` when they are there. When they are missing,
/// panics if `ADARANK_REQUIRE_ASSETS=1` (CI, `scripts/test`), else prints a skip line and
/// returns `false` so the test can return.
pub fn require_assets(test: &str) -> bool {
    if assets_present() {
        return true;
    }
    let msg = format!(
        "{test}: assets missing in {} (run `scripts/fetch-assets` or `adarank fetch`)",
        assets_dir().display()
    );
    if std::env::var("ADARANK_REQUIRE_ASSETS").is_ok_and(|v| v == "1") {
        panic!("{msg}; ADARANK_REQUIRE_ASSETS=1 forbids skipping");
    }
    eprintln!("SKIP {msg}");
    false
}
