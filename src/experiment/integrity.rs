//! What a run directory commits to when it starts (`run.json`): the sha256 of its resolved
//! policy (`policy.json`) and of every plugin script its arms use, and the `--arm`/`--seed`
//! filters it was started with. `--resume` runs the same plan with the same plugins over the
//! same cells, or refuses and says what changed: otherwise two seeds of one arm could run
//! different methods and the report would compare them as one.

use super::fsio::{read_json, write_json_atomic};
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
    let policy_bytes = std::fs::read(rd.policy_json())
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
/// its record (for the original filters). A run directory made before records existed has none.
pub fn verify(rd: &RunDir, policy: &Policy) -> Result<Option<RunRecord>> {
    let path = rd.root.join(RUN_JSON);
    if !path.exists() {
        return Ok(None);
    }
    let rec: RunRecord = read_json(&path)?;
    let new_run = "start a new run instead: `adarank run POLICY.rank --out NEW_DIR`";
    let policy_bytes = std::fs::read(rd.policy_json())
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
