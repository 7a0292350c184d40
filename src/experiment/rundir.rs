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

/// A run writes `policy.rank`, `report.md`, `results.csv`, `plots/`, `adapters/` … into its
/// folder, replacing files of those names: a folder that exists and holds anything is someone's
/// files, not a place for a new run.
fn refuse_foreign_folder(root: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let meta = if meta.file_type().is_symlink() {
        std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?
    } else {
        meta
    };
    if !meta.is_dir() {
        bail!(
            "--out {}: is a file, not a folder; give a new folder for the run",
            root.display()
        );
    }
    let mut entries =
        std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    if let Some(first) = entries.next() {
        let first = first.with_context(|| format!("reading {}", root.display()))?;
        let more = entries.count();
        bail!(
            "--out {}: the folder is not empty ({}{}) and is not a run directory; a run writes \
             policy.rank, report.md, results.csv, plots/ and adapters/ there and would replace \
             files of those names. Give a new or empty folder (or `--resume` a run directory)",
            root.display(),
            first.file_name().to_string_lossy(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(())
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
        refuse_foreign_folder(root)?;
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

/// Each arm's resolved plan in a run's policy.json, by name (empty when the file is missing).
fn arm_plans(d: &RunDir) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let path = d.policy_json();
    if !path.exists() {
        return Ok(Default::default());
    }
    let v: serde_json::Value = read_json(&path)?;
    Ok(v.get("arms")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.get("name")?.as_str()?.to_string(), a.clone())))
        .collect())
}

/// Refuses a merge that would pool unlike cells into one arm's mean and interval: runs of
/// different experiments (unless `mixed`), or an arm whose plan differs between runs that
/// both finished cells of it. A run that finished no cell of an arm (it ran other arms of the
/// policy with `--arm`) brings nothing of that arm to pool, whatever its plan says.
fn check_mergeable(dirs: &[RunDir], mixed: bool) -> Result<()> {
    let mut first: Option<(String, &RunDir)> = None;
    let mut plans: std::collections::BTreeMap<String, (serde_json::Value, &RunDir)> =
        Default::default();
    for d in dirs {
        let s = d.load_summary()?;
        match &first {
            None => first = Some((s.experiment.clone(), d)),
            Some((name, at)) if *name != s.experiment && !mixed => bail!(
                "cannot merge {} (experiment `{}`) with {} (experiment `{name}`): they are \
                 different experiments. Merging is for runs of one experiment (e.g. arms or seeds \
                 run apart); to put different experiments in one report anyway, pass --mixed",
                d.root.display(),
                s.experiment,
                at.root.display(),
            ),
            _ => {}
        }
        let finished = |arm: &str| {
            s.cells
                .iter()
                .any(|c| c.arm == arm && c.status == CellStatus::Done)
                || s.lr_choice(arm).is_some()
        };
        for (arm, plan) in arm_plans(d)? {
            if !finished(&arm) {
                continue;
            }
            match plans.get(&arm) {
                Some((p, at)) if *p != plan => bail!(
                    "cannot merge: arm `{arm}` of {} is not the arm `{arm}` of {} (their \
                     resolved plans in policy.json differ), so their cells cannot share one \
                     mean and interval; rename one of the arms, or merge runs of one policy",
                    d.root.display(),
                    at.root.display()
                ),
                Some(_) => {}
                None => {
                    plans.insert(arm, (plan, d));
                }
            }
        }
    }
    Ok(())
}

/// Merges finished runs into `out`: arms and seeds in first-seen order, cells from every run
/// (a cell present in several runs is taken from the first that finished it), logs concatenated.
/// Refuses runs of different experiments unless `mixed`, and an arm whose plan differs between
/// runs always. Returns the merged directory and, for the user, every cell left out and why.
pub fn merge(dirs: &[RunDir], out: &Path, mixed: bool) -> Result<(RunDir, Vec<String>)> {
    check_mergeable(dirs, mixed)?;
    let mut merged: Option<Summary> = None;
    let mut metrics = Vec::new();
    let mut ranks = Vec::new();
    let mut names = Vec::new();
    let mut notes = Vec::new();
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
            } else if c.status == CellStatus::Done {
                notes.push(format!(
                    "arm {} seed {} of {}: left out, an earlier run already has it",
                    c.arm,
                    c.seed,
                    d.root.display()
                ));
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
    Ok((rd, notes))
}
