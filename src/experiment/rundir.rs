//! The run directory: where every file of a run lives, and rebuilding its report from what is on
//! disk (used after every cell, and by `adarank report`).

use super::fsio::{read_json, read_jsonl, write_atomic, write_json_atomic};
use super::plots;
use super::records::{CellStatus, MetricRecord, RankRecord, Summary};
use super::report;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const SUMMARY: &str = "summary.json";

#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

/// A name safe for a file: letters, digits, `-`, `_`, `.`; anything else becomes `_`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl RunDir {
    /// `base/<experiment>-<UTC timestamp>`.
    pub fn default_path(base: &Path, experiment: &str) -> PathBuf {
        let ts = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        base.join(format!("{}-{ts}", file_safe(experiment)))
    }

    /// A directory for a new run; refuses one that already holds a run. The summary file is
    /// claimed with an exclusive create, so of two runs started on one `--out` at once exactly
    /// one gets it.
    pub fn create(root: &Path) -> Result<Self> {
        let taken = || {
            anyhow::anyhow!(
                "{} already holds a run; continue it with `adarank run --resume {}` or choose another --out",
                root.display(),
                root.display()
            )
        };
        if root.join(SUMMARY).exists() {
            return Err(taken());
        }
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(root.join(SUMMARY))
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(taken()),
            Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// An existing run directory (for resume and reports).
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join(SUMMARY).exists() {
            bail!("{} is not a run directory (no {SUMMARY})", root.display());
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn policy(&self) -> PathBuf {
        self.root.join("policy.rank")
    }
    /// The resolved plan the run executes (what `--resume` reads).
    pub fn policy_json(&self) -> PathBuf {
        self.root.join("policy.json")
    }
    pub fn env(&self) -> PathBuf {
        self.root.join("env.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `allocations.jsonl`: every allocation of every cell ([`RankRecord`]).
    pub fn allocations(&self) -> PathBuf {
        self.root.join("allocations.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY)
    }
    pub fn results(&self) -> PathBuf {
        self.root.join("results.csv")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("report.md")
    }
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }
    pub fn adapters(&self, arm: &str, seed: u64) -> PathBuf {
        self.root
            .join("adapters")
            .join(format!("{}-seed{seed}", file_safe(arm)))
    }
    pub fn checkpoint(&self, arm: &str, seed: u64) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("{}-seed{seed}.safetensors", file_safe(arm)))
    }

    pub fn write_summary(&self, s: &Summary) -> Result<()> {
        write_json_atomic(&self.summary(), s)
    }

    pub fn load_summary(&self) -> Result<Summary> {
        read_json(&self.summary())
    }

    /// Changes the summary on disk under the directory's lock (read, `f`, write), so cells run
    /// by other processes at the same time (a Slurm job array) keep their records; returns the
    /// summary as written and what `f` returned.
    pub fn update_summary<R>(&self, f: impl FnOnce(&mut Summary) -> R) -> Result<(Summary, R)> {
        let _lock = super::lock::lock_dir(&self.root)?;
        let mut s = self.load_summary()?;
        let r = f(&mut s);
        self.write_summary(&s)?;
        Ok((s, r))
    }

    /// Rebuilds `results.csv`, the plots and the report from what is on disk now, under the
    /// directory's lock (another process may be finishing a cell of the same run), so an older
    /// report never replaces a newer one.
    pub fn render_shared(&self) -> Result<()> {
        let _lock = super::lock::lock_dir(&self.root)?;
        let s = self.load_summary()?;
        let metrics = read_jsonl(&self.metrics())?;
        let ranks = read_jsonl(&self.allocations())?;
        self.render_with(&s, &metrics, &ranks)
    }

    pub fn load_metrics(&self) -> Result<Vec<MetricRecord>> {
        read_jsonl(&self.metrics())
    }

    pub fn load_ranks(&self) -> Result<Vec<RankRecord>> {
        read_jsonl(&self.allocations())
    }

    /// Rewrites `results.csv`, the plots and `report.md` from `s` and the logs on disk.
    pub fn render(&self, s: &Summary) -> Result<()> {
        let metrics = self.load_metrics()?;
        let ranks = self.load_ranks()?;
        self.render_with(s, &metrics, &ranks)
    }

    pub fn render_with(
        &self,
        s: &Summary,
        metrics: &[MetricRecord],
        ranks: &[RankRecord],
    ) -> Result<()> {
        write_atomic(&self.results(), report::results_csv(s).as_bytes())?;
        let mut made = Vec::new();
        let arm_names: Vec<String> = s.arms.iter().map(|a| a.name.clone()).collect();
        let finals = plots::FinalEval::of(s);
        if let Some(svg) = plots::loss_curves(&arm_names, metrics, &finals)? {
            write_atomic(&self.plots().join("loss.svg"), svg.as_bytes())?;
            made.push("plots/loss.svg".to_string());
        }
        for arm in &s.arms {
            // The first seed that has rank records, and the steps it reached.
            let Some(seed) = s
                .seeds
                .iter()
                .copied()
                .find(|&k| ranks.iter().any(|r| r.arm == arm.name && r.seed == k))
            else {
                continue;
            };
            let steps = s.cell(&arm.name, seed).map(|c| c.steps).unwrap_or(0);
            let distinct = {
                let mut v: Vec<_> = ranks
                    .iter()
                    .filter(|r| r.arm == arm.name && r.seed == seed)
                    .map(|r| r.ranks())
                    .collect();
                v.dedup();
                v.len()
            };
            // A heatmap of constant ranks says nothing the final-rank plot does not.
            if distinct < 2 {
                continue;
            }
            if let Some(svg) = plots::rank_heatmap(&arm.name, seed, ranks, steps)? {
                let name = format!("plots/ranks-{}.svg", file_safe(&arm.name));
                write_atomic(&self.root.join(&name), svg.as_bytes())?;
                made.push(name);
            }
            if let Some(svg) = plots::allocation_trajectory(&arm.name, seed, ranks, steps)? {
                let name = format!("plots/allocations-{}.svg", file_safe(&arm.name));
                write_atomic(&self.root.join(&name), svg.as_bytes())?;
                made.push(name);
            }
        }
        if let Some(svg) = plots::final_ranks(s)? {
            write_atomic(&self.plots().join("final_ranks.svg"), svg.as_bytes())?;
            made.push("plots/final_ranks.svg".to_string());
        }
        write_atomic(&self.report(), report::report_md(s, &made).as_bytes())?;
        Ok(())
    }
}

/// Merges finished runs into `out`: arms and seeds in first-seen order, cells from every run
/// (a cell present in several runs is taken from the first that finished it), logs concatenated.
pub fn merge(dirs: &[RunDir], out: &Path) -> Result<RunDir> {
    let mut merged: Option<Summary> = None;
    let mut metrics = Vec::new();
    let mut ranks = Vec::new();
    let mut names = Vec::new();
    for d in dirs {
        let s = d.load_summary()?;
        names.push(s.experiment.clone());
        let m = merged.get_or_insert_with(|| Summary {
            cells: Vec::new(),
            arms: Vec::new(),
            seeds: Vec::new(),
            ..s.clone()
        });
        if m.metric != s.metric {
            bail!(
                "cannot merge {}: its metric is {} but the first run's is {}",
                d.root.display(),
                s.metric.name,
                m.metric.name
            );
        }
        for a in &s.arms {
            if m.arm(&a.name).is_none() {
                m.arms.push(a.clone());
            }
        }
        for c in &s.lr_choices {
            if m.lr_choice(&c.arm).is_none() {
                m.lr_choices.push(c.clone());
            }
        }
        for k in &s.seeds {
            if !m.seeds.contains(k) {
                m.seeds.push(*k);
            }
        }
        let taken: Vec<(String, u64)> = s
            .cells
            .iter()
            .filter(|c| match m.cell(&c.arm, c.seed) {
                None => true,
                Some(old) => old.status != CellStatus::Done && c.status == CellStatus::Done,
            })
            .map(|c| (c.arm.clone(), c.seed))
            .collect();
        for c in &s.cells {
            if taken.contains(&(c.arm.clone(), c.seed)) {
                m.put(c.clone());
            }
        }
        metrics.extend(
            d.load_metrics()?
                .into_iter()
                .filter(|r| taken.contains(&(r.arm.clone(), r.seed))),
        );
        ranks.extend(
            d.load_ranks()?
                .into_iter()
                .filter(|r| taken.contains(&(r.arm.clone(), r.seed))),
        );
    }
    let mut s = merged.context("no run directories to merge")?;
    names.dedup();
    s.experiment = names.join(" + ");
    let rd = RunDir::create(out)?;
    let jsonl = |rs: Vec<String>| rs.join("");
    write_atomic(
        &rd.metrics(),
        jsonl(
            metrics
                .iter()
                .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
                .collect::<Result<_, _>>()?,
        )
        .as_bytes(),
    )?;
    write_atomic(
        &rd.allocations(),
        jsonl(
            ranks
                .iter()
                .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
                .collect::<Result<_, _>>()?,
        )
        .as_bytes(),
    )?;
    rd.write_summary(&s)?;
    rd.render_with(&s, &metrics, &ranks)?;
    Ok(rd)
}
