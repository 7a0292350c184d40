//! The run: every arm × seed cell of a policy into one run directory (a cell at a time, each
//! under its lock, [`super::cell`] for the cell itself), with resume, failure records and the
//! report rebuilt after every cell.

use super::arm::method_label;
use super::cell::Cells;
use super::fsio::{read_json, read_text, write_atomic, write_json_atomic};
use super::integrity;
use super::lock::{CellLock, Claim};
use super::progress::{Progress, ProgressMode};
use super::records::*;
use super::rundir::RunDir;
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::data::prepare::Split;
use crate::policy::{ArmPlan, Policy};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::backend::device::DeviceChoice;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run directory; default `runs/<experiment>-<timestamp>`.
    pub out: Option<PathBuf>,
    /// Continue this run directory instead of starting a new one.
    pub resume: Option<PathBuf>,
    pub device: DeviceChoice,
    pub quiet: bool,
    /// Only these arms / seeds (empty: all).
    pub arms: Vec<String>,
    pub seeds: Vec<u64>,
    /// Simulates a kill: the process stops after this many training steps (for resume tests).
    pub stop_after_steps: Option<u64>,
}

/// The error of a run stopped by `stop_after_steps`.
#[derive(Debug)]
pub struct Interrupted {
    pub run_dir: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run stopped on request; continue it with `adarank run --resume {}`",
            self.run_dir.display()
        )
    }
}
impl std::error::Error for Interrupted {}

const POLICY_JSON: &str = "policy.json";

/// The device a policy asks for (`train.device` of its base arm; every arm has the same).
pub fn policy_device(p: &Policy) -> DeviceChoice {
    p.arms
        .first()
        .map_or(DeviceChoice::Auto, |a| a.train.device)
}

/// The checked policy a run directory was started with.
pub fn saved_policy(dir: &Path) -> Result<Policy> {
    read_json(&RunDir::open(dir)?.root.join(POLICY_JSON))
}

fn summary_for(policy: &Policy, env: EnvInfo) -> Summary {
    let base = policy.arms.first().map(|a| a.name.clone());
    let (name, higher) = policy
        .arms
        .first()
        .map_or(("accuracy", true), super::arm::metric_of);
    Summary {
        experiment: policy.name.clone(),
        metric: MetricSpec {
            name: name.into(),
            higher_is_better: higher,
        },
        baseline: policy.baseline.clone(),
        arms: policy
            .arms
            .iter()
            .map(|a| ArmMeta {
                name: a.name.clone(),
                method: method_label(a),
                ablation: a.ablation,
                ablation_of: if a.ablation { base.clone() } else { None },
                hparams: Some(super::arm::hparams(a)),
            })
            .collect(),
        seeds: policy.seeds.clone(),
        cells: policy
            .arms
            .iter()
            .flat_map(|a| {
                policy
                    .seeds
                    .iter()
                    .map(|&s| CellResult::pending(&a.name, s))
            })
            .collect(),
        env: Some(env),
        lr_choices: Vec::new(),
    }
}

/// Runs (or resumes) `policy` and returns the run directory. A failing cell is recorded in the
/// summary and report, then the run stops with the cell's error.
pub fn run(policy: Option<Policy>, opts: &RunOptions) -> Result<PathBuf> {
    let dev = Device::open(opts.device)?;
    // Before anything is allocated: refuse a cell that would not fit the device.
    match (&policy, &opts.resume) {
        (Some(p), _) => super::costs::check_device(&dev, p, &opts.arms)?,
        // (A directory that is no run is refused below, with its own message.)
        (None, Some(dir)) if dir.join(POLICY_JSON).is_file() => {
            let p: Policy = read_json(&dir.join(POLICY_JSON))?;
            super::costs::check_device(&dev, &p, &opts.arms)?
        }
        _ => {}
    }
    let desc = dev.describe();
    match dev {
        Device::Cpu(b) => {
            let name = b.name();
            run_on(b, &name, "cpu", policy, opts)
        }
        Device::Gpu(b) => run_on(b, &desc, "gpu", policy, opts),
    }
}

/// Every `--arm` and `--seed` must name an arm and a seed of the policy.
pub fn check_filters(policy: &Policy, arms: &[String], seeds: &[u64]) -> Result<()> {
    for a in arms {
        if policy.arm(a).is_none() {
            bail!(
                "--arm {a}: no such arm (arms: {})",
                policy
                    .arms
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for s in seeds {
        if !policy.seeds.contains(s) {
            bail!(
                "--seed {s}: not among the policy's seeds {:?}",
                policy.seeds
            );
        }
    }
    Ok(())
}

/// A new run directory for `policy` (`out`, or `runs/<experiment>-<timestamp>`): the policy
/// as written and as checked, env.json (`device`, `backend_name`), a summary with every cell
/// pending, and run.json (the plan's and plugins' hashes, the `arms`/`seeds` filters that
/// `--resume` keeps). Local runs and Slurm submissions start the same way.
pub fn start_run_dir(
    policy: &Policy,
    out: Option<&Path>,
    device: &str,
    backend_name: &str,
    arms: &[String],
    seeds: &[u64],
) -> Result<(RunDir, Summary)> {
    let root = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| RunDir::default_path(Path::new("runs"), &policy.name));
    let rd = RunDir::create(&root)?;
    write_atomic(&rd.policy(), policy.source_text.as_bytes())?;
    write_json_atomic(&rd.policy_json(), policy)?;
    let env = EnvInfo::collect(device, backend_name);
    write_json_atomic(&rd.env(), &env)?;
    let s = summary_for(policy, env);
    rd.write_summary(&s)?;
    integrity::record(&rd, policy, arms, seeds)?;
    Ok((rd, s))
}

/// Runs (or resumes) `policy` on `be`; `device` and `backend_name` describe it in env.json and
/// the report.
pub fn run_on<B: Backend>(
    be: Arc<B>,
    device: &str,
    backend_name: &str,
    policy: Option<Policy>,
    opts: &RunOptions,
) -> Result<PathBuf> {
    let (rd, policy, arms, seeds) = match &opts.resume {
        Some(dir) => reopen(dir, opts)?,
        None => {
            let policy = policy.context("no policy to run")?;
            let (rd, _) = start_run_dir(
                &policy,
                opts.out.as_deref(),
                device,
                backend_name,
                &opts.arms,
                &opts.seeds,
            )?;
            (rd, policy, opts.arms.clone(), opts.seeds.clone())
        }
    };
    check_filters(&policy, &arms, &seeds)?;
    let mut progress = Progress::new(ProgressMode::detect(opts.quiet));
    plan_progress(&mut progress, &rd, &policy, &arms, &seeds)?;
    let mut runner = Runner {
        cells: Cells {
            be,
            rd: &rd,
            progress: &progress,
            resuming: opts.resume.is_some(),
            stop_after: opts.stop_after_steps,
            pretrained: HashMap::new(),
        },
        left: Vec::new(),
    };
    for arm in &policy.arms {
        if !arms.is_empty() && !arms.contains(&arm.name) {
            continue;
        }
        runner.run_arm(arm, &policy, &seeds)?;
    }
    rd.render_shared()?;
    progress.finish();
    if !runner.left.is_empty() {
        bail!(
            "{} cell(s) of {} are being run by other processes and were left to them: {}; \
             their results join the run directory when they finish",
            runner.left.len(),
            rd.root.display(),
            runner.left.join(", ")
        );
    }
    Ok(rd.root)
}

/// Tells the progress display how many cells this process has to run.
fn plan_progress(
    p: &mut Progress,
    rd: &RunDir,
    policy: &Policy,
    arms: &[String],
    seeds: &[u64],
) -> Result<()> {
    let summary = rd.load_summary()?;
    let mut cells = 0;
    for a in policy
        .arms
        .iter()
        .filter(|a| arms.is_empty() || arms.contains(&a.name))
    {
        let left = seeds_left(&summary, policy, &a.name, seeds);
        if left > 0 {
            // An arm's learning-rate candidates run as cells of their own before its seeds.
            cells += left + super::sweep::candidates_left(a, &summary);
        }
    }
    p.plan_cells(cells as u64);
    p.println(&format!("run directory: {}", rd.root.display()));
    Ok(())
}

/// A run directory to resume, its policy and the `arms`/`seeds` filters it covers.
fn reopen(dir: &Path, opts: &RunOptions) -> Result<(RunDir, Policy, Vec<String>, Vec<u64>)> {
    let rd = RunDir::open(dir)?;
    let path = rd.policy_json();
    let text = read_text(&path)?;
    let parse = || format!("parsing {}", path.display());
    let policy: Policy = serde_json::from_str(&text).with_context(parse)?;
    // As written, for what a plan may lack (`resize_recorded`).
    let stored: serde_json::Value = serde_json::from_str(&text).with_context(parse)?;
    // The same plan and plugins as the cells already finished, or a refusal.
    let record = integrity::verify(&rd, &policy)?;
    // Finished cells whose records or folder are gone are run again, and said so.
    for line in integrity::reset_damaged_cells(&rd)? {
        eprintln!("resume: {line}");
    }
    // A resumed run covers the cells the run was started for, unless told otherwise.
    fn or<T: Clone>(given: &[T], kept: &[T]) -> Vec<T> {
        if given.is_empty() { kept } else { given }.to_vec()
    }
    let (arms, seeds) = match &record {
        Some(r) => (or(&opts.arms, &r.arms), or(&opts.seeds, &r.seeds)),
        None => (opts.arms.clone(), opts.seeds.clone()),
    };
    resize_recorded(&rd, &policy, &stored, &arms, &seeds)?;
    Ok((rd, policy, arms, seeds))
}

/// Refuses to resume an arm that resizes adapters and still has cells to run when its stored
/// plan does not say how it resizes (`lora.resize`, absent from plans written before the plan
/// recorded it). Reading it would give today's default, which has not always been the
/// default: the remaining cells would train differently from the finished ones they are
/// pooled with.
fn resize_recorded(
    rd: &RunDir,
    policy: &Policy,
    stored: &serde_json::Value,
    arms: &[String],
    seeds: &[u64],
) -> Result<()> {
    let summary = rd.load_summary()?;
    let unrecorded: Vec<&str> = policy
        .arms
        .iter()
        .filter(|a| arms.is_empty() || arms.contains(&a.name))
        // An arm with a rank engine is one whose adapters change size.
        .filter(|a| super::arm::engine_config(a, 1, 1, 0).is_some())
        .filter(|a| seeds_left(&summary, policy, &a.name, seeds) > 0)
        .filter(|a| {
            let plan = stored["arms"]
                .as_array()
                .and_then(|v| v.iter().find(|p| p["name"] == a.name.as_str()));
            plan.is_some_and(|p| p["lora"]["on"].get("resize").is_none())
        })
        .map(|a| a.name.as_str())
        .collect();
    if !unrecorded.is_empty() {
        bail!(
            "cannot resume {}: its policy.json does not record how arm(s) {} resize their \
             adapters (`lora.resize`), so the cells left would train under this version's \
             default, which may not be what the finished cells trained under. Run the policy \
             anew (`adarank run POLICY.rank`), or report the finished cells as they are \
             (`adarank report {}`)",
            rd.root.display(),
            unrecorded.join(", "),
            rd.root.display()
        );
    }
    Ok(())
}

/// The loop over a run's cells: what it needs to run one ([`Cells`]) and the cells it left to
/// other processes.
struct Runner<'r, B: Backend> {
    cells: Cells<'r, B>,
    /// Cells another process holds: left to it, and named at the end.
    left: Vec<String>,
}

impl<B: Backend> Runner<'_, B> {
    /// One arm: its learning-rate sweep (if any), then every seed not done yet.
    fn run_arm(&mut self, arm: &ArmPlan, policy: &Policy, seeds: &[u64]) -> Result<()> {
        let (rd, progress) = (self.cells.rd, self.cells.progress);
        let cells = &mut self.cells;
        let say = |m: &str| progress.println(m);
        let swept = super::sweep::choose_lr(arm, policy, rd, say, |a, seed, split| {
            cells.run_cell(a, seed, split)
        });
        let arm = &match swept {
            Ok(a) => a,
            Err(e) => {
                rd.render_shared()?;
                return Err(e);
            }
        };
        for &seed in &policy.seeds {
            if !seeds.is_empty() && !seeds.contains(&seed) {
                continue;
            }
            if is_done(&rd.load_summary()?, &arm.name, seed) {
                continue;
            }
            let Some(cell_lock) = self.claim(&arm.name, seed)? else {
                continue;
            };
            let result = self.cells.run_cell(arm, seed, Split::Test);
            self.record(&arm.name, seed, result)?;
            drop(cell_lock);
        }
        Ok(())
    }

    /// The cell's lock and its record as running, or `None` where another process finished
    /// or holds it (then it is left to that process, and said so).
    fn claim(&mut self, arm: &str, seed: u64) -> Result<Option<CellLock>> {
        let (rd, progress) = (self.cells.rd, self.cells.progress);
        let cell_lock = match CellLock::try_claim(&rd.root, arm, seed)? {
            Claim::Busy(holder) => {
                let who = holder.map_or("another process".into(), |h| h.to_string());
                progress.println(&format!(
                    "arm {arm} seed {seed}: being run by {who}; left to it"
                ));
                self.left.push(format!("arm {arm} seed {seed} ({who})"));
                return Ok(None);
            }
            Claim::Got { lock, stale } => {
                if let Some(h) = stale {
                    progress.println(&format!(
                        "arm {arm} seed {seed}: taking over from {h}, which stopped without \
                         finishing it"
                    ));
                }
                lock
            }
        };
        // Another process may have finished the cell before we got its lock, or may be
        // running it under a lock file that was deleted (then our lock is on a new file):
        // the summary's record of the running holder, checked under the directory's lock,
        // decides.
        let (_, claim) = rd.update_summary(|s| {
            if is_done(s, arm, seed) {
                return Err(None);
            }
            let mut running = s
                .cell(arm, seed)
                .cloned()
                .unwrap_or_else(|| CellResult::pending(arm, seed));
            if let Some(h) = running.holder.as_ref().filter(|h| {
                running.status == CellStatus::Running && !h.is_me() && h.alive() == Some(true)
            }) {
                return Err(Some(h.clone()));
            }
            running.status = CellStatus::Running;
            running.error = None;
            running.holder = Some(super::lock::Holder::me());
            s.put(running);
            Ok(())
        })?;
        match claim {
            Ok(()) => Ok(Some(cell_lock)),
            Err(None) => Ok(None),
            Err(Some(h)) => {
                progress.println(&format!(
                    "arm {arm} seed {seed}: being run by {h} (its lock file is gone, the summary \
                     still records it); left to it"
                ));
                self.left.push(format!("arm {arm} seed {seed} ({h})"));
                Ok(None)
            }
        }
    }

    /// A cell's outcome into the summary and the report; a failure stops the run with the
    /// cell's error.
    fn record(&mut self, arm: &str, seed: u64, result: Result<CellResult>) -> Result<()> {
        let rd = self.cells.rd;
        match result {
            Ok(cell) => {
                rd.update_summary(|s| s.put(cell))?;
                rd.render_shared()?;
                Ok(())
            }
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                rd.render_shared()?;
                Err(e)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let steps = rd
                    .load_metrics()
                    .unwrap_or_default()
                    .iter()
                    .filter(|m| m.arm == arm && m.seed == seed)
                    .map(|m| m.step)
                    .max()
                    .unwrap_or(0);
                rd.update_summary(|s| {
                    let mut failed = s
                        .cell(arm, seed)
                        .cloned()
                        .unwrap_or_else(|| CellResult::pending(arm, seed));
                    failed.status = CellStatus::Failed;
                    failed.holder = None;
                    failed.error = Some(msg);
                    failed.steps = steps;
                    s.put(failed);
                })?;
                rd.render_shared()?;
                Err(e.context(format!(
                    "arm {arm} seed {seed} failed; {} keeps everything done so far",
                    rd.root.display()
                )))
            }
        }
    }
}

/// Seeds of `arm` within the `--seed` filter `seeds` that have not finished.
fn seeds_left(s: &Summary, policy: &Policy, arm: &str, seeds: &[u64]) -> usize {
    policy
        .seeds
        .iter()
        .filter(|x| seeds.is_empty() || seeds.contains(x))
        .filter(|x| !is_done(s, arm, **x))
        .count()
}

fn is_done(s: &Summary, arm: &str, seed: u64) -> bool {
    s.cell(arm, seed)
        .is_some_and(|c| c.status == CellStatus::Done)
}
