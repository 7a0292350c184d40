//! What a run directory commits to when it starts (`run.json`): the sha256 of its resolved
//! policy (`policy.json`) and of every plugin script its arms use, and the `--arm`/`--seed`
//! filters it was started with. `--resume` runs the same plan with the same plugins over the
//! same cells, or refuses and says what changed: otherwise two seeds of one arm could run
//! different methods and the report would compare them as one.

use super::fsio::{read_json, write_json_atomic};
use super::records::CellStatus;
use super::rundir::RunDir;
use crate::policy::{Policy, Until};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const RUN_JSON: &str = "run.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// sha256 of `policy.json` as written.
    pub policy_sha256: String,
    /// Plugin path (as the plan names it) → sha256 of the script the engine loads.
    pub plugins: BTreeMap<String, String>,
    /// `--arm` filters of the original command (empty: every arm).
    #[serde(default)]
    pub arms: Vec<String>,
    /// `--seed` filters of the original command (empty: every seed).
    #[serde(default)]
    pub seeds: Vec<u64>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every plugin path the policy's arms name (roles and phase conditions).
fn plugin_paths(policy: &Policy) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in &policy.arms {
        let p = &a.plugins;
        out.extend(
            [&p.complexity, &p.allocator, &p.learner]
                .into_iter()
                .flatten()
                .cloned(),
        );
        for ph in &a.phases {
            if let Until::Plugin { path } = &ph.until {
                out.push(path.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The script the engine would load for `path`, read by the engine's own resolver
/// (`engine::source`: a file, or the embedded copy of a shipped plugin).
fn script_bytes(path: &Path) -> Result<Vec<u8>> {
    crate::engine::source::read(path)
        .map(String::into_bytes)
        .map_err(|e| anyhow::anyhow!("reading plugin {}: {e}", path.display()))
}

fn plugin_hashes(policy: &Policy) -> Result<BTreeMap<String, String>> {
    plugin_paths(policy)
        .into_iter()
        .map(|p| Ok((p.display().to_string(), sha256_hex(&script_bytes(&p)?))))
        .collect()
}

/// Records the plan's hashes and the filters of a new run.
pub fn record(rd: &RunDir, policy: &Policy, arms: &[String], seeds: &[u64]) -> Result<()> {
    let policy_bytes = super::fsio::read_bytes(&rd.policy_json())
        .with_context(|| format!("reading {}", rd.policy_json().display()))?;
    let rec = RunRecord {
        policy_sha256: sha256_hex(&policy_bytes),
        plugins: plugin_hashes(policy)?,
        arms: arms.to_vec(),
        seeds: seeds.to_vec(),
    };
    write_json_atomic(&rd.root.join(RUN_JSON), &rec)
}

/// Checks that the plan and plugins of a run to resume are the ones it started with, and returns
/// its record (for the original filters). Without run.json nothing vouches for the finished
/// cells' plan and plugins: refused once any cell has a result; a run with none yet has nothing
/// to protect, and its record is rebuilt from what is there now (the caller says so).
pub fn verify(rd: &RunDir, policy: &Policy) -> Result<Option<RunRecord>> {
    let path = rd.root.join(RUN_JSON);
    if !path.exists() {
        let s = rd.load_summary()?;
        let started = s
            .cells
            .iter()
            .any(|c| matches!(c.status, CellStatus::Done | CellStatus::Failed))
            || !rd.load_metrics()?.is_empty();
        if started {
            bail!(
                "{} is missing: it holds the hashes of the plan and plugins the finished cells \
                 ran, so resuming could mix two methods in one arm. Restore it (from a backup), \
                 or start a new run: `adarank run POLICY.rank --out NEW_DIR`",
                path.display()
            );
        }
        record(rd, policy, &[], &[])?;
        eprintln!(
            "resume: {} was missing; no cell had a result yet, so it is rebuilt from \
             policy.json and the plugins as they are now",
            path.display()
        );
        return Ok(None);
    }
    let rec: RunRecord = read_json(&path)?;
    let new_run = "start a new run instead: `adarank run POLICY.rank --out NEW_DIR`";
    let policy_bytes = super::fsio::read_bytes(&rd.policy_json())
        .with_context(|| format!("reading {}", rd.policy_json().display()))?;
    let now = sha256_hex(&policy_bytes);
    if now != rec.policy_sha256 {
        bail!(
            "{} was changed after the run started (sha256 {} then, {} now): a resumed run must \
             run the plan its finished cells ran. Restore the file, or {new_run}",
            rd.policy_json().display(),
            short(&rec.policy_sha256),
            short(&now)
        );
    }
    for (p, then) in &rec.plugins {
        let now = match script_bytes(Path::new(p)) {
            Ok(b) => sha256_hex(&b),
            Err(e) => bail!(
                "plugin {p}, which this run uses, cannot be read any more ({e:#}); restore it, \
                 or {new_run}"
            ),
        };
        if &now != then {
            bail!(
                "plugin {p} was changed after the run started (sha256 {} then, {} now): its \
                 finished cells ran the old script, so resuming would mix two methods in one \
                 arm. Restore the script, or {new_run}",
                short(then),
                short(&now)
            );
        }
    }
    // Plugins the plan names that the record lacks mean policy.json and run.json disagree.
    for p in plugin_paths(policy) {
        let key = p.display().to_string();
        if !rec.plugins.contains_key(&key) {
            bail!(
                "{} names plugin {key}, which {RUN_JSON} does not record; the run directory was \
                 edited. {new_run}",
                rd.policy_json().display()
            );
        }
    }
    Ok(Some(rec))
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// What a finished cell must still have on disk for `--resume` to trust it: one metric record
/// for every step it ran, and its exported folder. Returns why not, if not.
fn damage(
    rd: &RunDir,
    c: &super::records::CellResult,
    metrics: &[super::records::MetricRecord],
) -> Option<String> {
    let ran: Vec<u64> = metrics
        .iter()
        .filter(|m| m.arm == c.arm && m.seed == c.seed && (1..=c.steps).contains(&m.step))
        .map(|m| m.step)
        .collect();
    let steps: std::collections::BTreeSet<u64> = ran.iter().copied().collect();
    // A step recorded twice (a file appended to itself, two runs writing one cell) would be
    // counted twice by every reader: the cell's records are not to be trusted either.
    if ran.len() > steps.len() {
        return Some(format!(
            "metrics.jsonl repeats {} of its steps (edited or written twice)",
            ran.len() - steps.len()
        ));
    }
    if (steps.len() as u64) < c.steps {
        return Some(format!(
            "metrics.jsonl holds {} of its {} steps (truncated or edited)",
            steps.len(),
            c.steps
        ));
    }
    let dir = rd.adapters(&c.arm, c.seed);
    for f in ["final_state.safetensors", "adarank.json"] {
        if !dir.join(f).is_file() {
            return Some(format!("{} is missing", dir.join(f).display()));
        }
    }
    None
}

/// Checks every finished cell of a run being resumed ([`damage`]); a damaged cell is reset to
/// pending (its records dropped from the logs, its folder removed) so this resume runs it again.
/// Returns one line per cell rebuilt, for the user.
pub fn reset_damaged_cells(rd: &RunDir) -> Result<Vec<String>> {
    let metrics = rd.load_metrics()?;
    let summary = rd.load_summary()?;
    let damaged: Vec<(String, u64, String)> = summary
        .cells
        .iter()
        .filter(|c| c.status == CellStatus::Done)
        .filter_map(|c| damage(rd, c, &metrics).map(|why| (c.arm.clone(), c.seed, why)))
        .collect();
    if damaged.is_empty() {
        return Ok(Vec::new());
    }
    let hit = |arm: &str, seed: u64| damaged.iter().any(|(a, s, _)| a == arm && *s == seed);
    super::fsio::filter_jsonl::<super::records::MetricRecord>(&rd.metrics(), |r| {
        !hit(&r.arm, r.seed)
    })?;
    super::fsio::filter_jsonl::<super::records::RankRecord>(&rd.allocations(), |r| {
        !hit(&r.arm, r.seed)
    })?;
    rd.update_summary(|s| {
        for (arm, seed, _) in &damaged {
            s.put(super::records::CellResult::pending(arm, *seed));
        }
    })?;
    let mut out = Vec::new();
    for (arm, seed, why) in &damaged {
        let dir = rd.adapters(arm, *seed);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        out.push(format!(
            "arm {arm} seed {seed}: finished, but {why}; running it again"
        ));
    }
    Ok(out)
}
