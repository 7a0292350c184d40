//! `adarank report` — rebuild or merge reports from finished run directories (issue 7).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {}

pub fn main(_args: ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank report` is not built yet")
}
