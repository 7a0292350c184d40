//! Where `scripts/fetch-assets` (and `adarank fetch`) put the pretrained model and data sets,
//! and how tests that need them skip or fail.

use std::path::PathBuf;

/// The model every real-model test and example uses.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// `$ADARANK_ASSETS`, else the per-user cache `$XDG_CACHE_HOME/adarank` (`~/.cache/adarank`
/// when XDG_CACHE_HOME is unset): never the source tree, so an installed binary finds the same
/// assets from any directory. `scripts/fetch-assets` applies the same rule (bash cannot ask a
/// crate, so the rule is spelt out here rather than taken from the platform's cache dir).
pub fn assets_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("ADARANK_ASSETS") {
        return PathBuf::from(d);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(c) => c.join("adarank"),
        // No home directory at all (a bare container): the working directory, said in every
        // message that names the folder.
        None => PathBuf::from("adarank-assets"),
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
