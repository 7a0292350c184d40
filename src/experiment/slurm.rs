//! Sweeps as Slurm job arrays: one array task per cell (arm × seed), each running that one cell
//! into the shared run directory with `adarank run --resume DIR --arm A --seed S`, so a task that
//! Slurm requeues continues from the cell's last checkpoint. The scheduler is Slurm's own:
//! adarank writes the sbatch script, submits it, and reads the queue back with `squeue`.
//!
//! `RUN_DIR/slurm/` holds `adarank.sbatch` (the script: array index → cell), `job.json` (the
//! cells and every submission's job id) and one log per task (`<job>_<index>.out`).

use super::fsio::{read_json, write_atomic, write_json_atomic};
use super::records::CellStatus;
use super::run::{check_filters, start_run_dir, DeviceChoice};
use super::rundir::{file_safe, RunDir};
use crate::policy::Policy;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `adarank run --slurm` settings: the sbatch options it writes, and how tasks run.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// Wall-clock limit per task, in any form sbatch accepts (`30`, `2:00:00`, `1-0`).
    pub time: Option<String>,
    /// Generic resources per task, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// Write the run directory and the script, print them, submit nothing.
    pub dry_run: bool,
    /// The `--device` every task runs with.
    pub device: DeviceChoice,
    /// The adarank binary the tasks run (default: this one).
    pub exe: Option<PathBuf>,
}

impl SlurmOptions {
    /// Refuses a `--partition`, `--time` or `--gres` value that is not a plain Slurm value.
    /// They go into `#SBATCH` lines, which sbatch reads without shell quoting, and into the
    /// command line printed for the user: a newline there would start a line of the script (a
    /// command the job would run), and spaces or quotes would change what sbatch parses.
    pub fn validate(&self) -> Result<()> {
        for (flag, value) in [
            ("--partition", &self.partition),
            ("--time", &self.time),
            ("--gres", &self.gres),
        ] {
            if let Some(v) = value {
                slurm_value(flag, v)?;
            }
        }
        Ok(())
    }
}

/// A Slurm option value: letters, digits and `_ - . , : = + @ %` (partition and account names,
/// lists of them, `2:00:00`, `1-0`, `gpu:a100:2`), at most 200 characters.
fn slurm_value(flag: &str, v: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.,:=+@%".contains(c);
    if v.is_empty() || v.len() > 200 {
        bail!("{flag}: must be 1 to 200 characters, found {}", v.len());
    }
    if let Some(c) = v.chars().find(|&c| !ok(c)) {
        bail!(
            "{flag} {}: the character {c:?} is not allowed in a Slurm value (letters, digits \
             and _ - . , : = + @ % only); it would be written into the sbatch script",
            shown(v)
        );
    }
    Ok(())
}

/// A refused value as an error shows it: shell-quoted, or escaped (`"1:00\r#SBATCH"`) when it
/// holds a control character, which printed as it is would act on the user's terminal (a
/// carriage return hides what came before it).
fn shown(v: &str) -> String {
    if v.chars().any(char::is_control) {
        format!("{v:?}")
    } else {
        sh_quote(v)
    }
}

/// A path written into the sbatch script (`#SBATCH --output`, `--chdir`, the command): sbatch
/// reads `#SBATCH` lines unquoted, so a control character (a newline above all) would end the
/// line and make the rest a line of the script.
fn script_path(what: &str, p: &Path) -> Result<()> {
    let s = p.to_str().with_context(|| {
        format!(
            "{what} {}: not valid UTF-8; Slurm scripts need a UTF-8 path",
            p.display()
        )
    })?;
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        bail!(
            "{what} {}: holds the control character {c:?}; a path written into an sbatch \
             script must not (rename the folder)",
            shown(s)
        );
    }
    if what != "the adarank binary" && s.chars().any(|c| c.is_whitespace()) {
        bail!(
            "{what} {}: holds white space, which `#SBATCH --output`/`--chdir` lines cannot quote; \
             use a path without spaces",
            sh_quote(s)
        );
    }
    Ok(())
}

/// One cell of the array and its index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArrayCell {
    pub index: usize,
    pub arm: String,
    pub seed: u64,
}

/// One `sbatch` of (some of) the array's tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: String,
    /// The `--array` indices submitted, e.g. `0-7` or `3,5`.
    pub array: String,
    pub at: String,
}

/// `RUN_DIR/slurm/job.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    pub script: PathBuf,
    pub cells: Vec<ArrayCell>,
    #[serde(default)]
    pub submissions: Vec<Submitted>,
}

impl JobFile {
    pub fn path(rd: &RunDir) -> PathBuf {
        rd.root.join("slurm").join("job.json")
    }
    /// The job file of a run directory, when its cells were submitted to Slurm.
    pub fn load(rd: &RunDir) -> Result<Option<Self>> {
        let p = Self::path(rd);
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }
    fn save(&self, rd: &RunDir) -> Result<()> {
        write_json_atomic(&Self::path(rd), self)
    }
    /// Where task `index` of job `job_id` logs.
    pub fn log(rd: &RunDir, job_id: &str, index: usize) -> PathBuf {
        rd.root.join("slurm").join(format!("{job_id}_{index}.out"))
    }
}

/// What a submission did.
#[derive(Debug)]
pub struct Submission {
    pub run_dir: PathBuf,
    pub script: PathBuf,
    /// The indices submitted (`--array=`).
    pub array: String,
    /// `None` for a dry run.
    pub job_id: Option<String>,
    /// The command that submits (or submitted) it.
    pub command: Vec<String>,
}

/// `'text'` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `0-3,5,7-8` for sorted indices.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            indices[i].to_string()
        } else {
            format!("{}-{}", indices[i], indices[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn device_flag(d: DeviceChoice) -> &'static str {
    match d {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Gpu => "gpu",
        DeviceChoice::Cpu => "cpu",
    }
}

/// The sbatch script of `cells` for the run in `rd` (absolute paths: tasks may start anywhere).
pub fn script(
    experiment: &str,
    rd: &Path,
    workdir: &Path,
    exe: &Path,
    cells: &[ArrayCell],
    o: &SlurmOptions,
) -> String {
    let rd_s = rd.display().to_string();
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# adarank: experiment {experiment}, {} cells (arm × seed), one Slurm array task each.\n\
         # Every task runs its cell into {rd_s}; resubmit cells alone with\n\
         # `sbatch --array=I,J {}` (`adarank status {rd_s}` lists them).\n",
        cells.len(),
        rd.join("slurm").join("adarank.sbatch").display()
    ));
    let indices: Vec<usize> = cells.iter().map(|c| c.index).collect();
    let mut opt = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={v}\n"));
    opt("job-name", &format!("adarank-{}", file_safe(experiment)));
    opt("array", &array_spec(&indices));
    opt("output", &format!("{rd_s}/slurm/%A_%a.out"));
    opt("chdir", &workdir.display().to_string());
    if let Some(p) = &o.partition {
        opt("partition", p);
    }
    if let Some(t) = &o.time {
        opt("time", t);
    }
    if let Some(g) = &o.gres {
        opt("gres", g);
    }
    s.push_str("set -euo pipefail\n");
    s.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
    for c in cells {
        s.push_str(&format!(
            "  {}) arm={} seed={} ;;\n",
            c.index,
            sh_quote(&c.arm),
            c.seed
        ));
    }
    s.push_str(
        "  *) echo \"adarank: no cell has array index $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n",
    );
    s.push_str(&format!(
        "exec {} run --resume {} --arm \"$arm\" --seed \"$seed\" --device {} --quiet\n",
        sh_quote(&exe.display().to_string()),
        sh_quote(&rd_s),
        device_flag(o.device)
    ));
    s
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))
}

/// A new run directory for `policy` with its cells (those `arms` × `seeds` select; all when
/// empty) as a job array: writes the script and submits it unless `o.dry_run`.
pub fn submit_new(
    policy: &Policy,
    out: Option<&Path>,
    arms: &[String],
    seeds: &[u64],
    o: &SlurmOptions,
) -> Result<Submission> {
    check_filters(policy, arms, seeds)?;
    o.validate()?;
    let exe = match &o.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("locating the adarank binary")?,
    };
    let workdir = absolute(Path::new("."))?;
    script_path("the adarank binary", &exe)?;
    script_path("the working directory", &workdir)?;
    if let Some(out) = out {
        script_path("--out", &absolute(out)?)?;
    }
    let mut cells = Vec::new();
    for a in &policy.arms {
        for &seed in &policy.seeds {
            if (arms.is_empty() || arms.contains(&a.name))
                && (seeds.is_empty() || seeds.contains(&seed))
            {
                cells.push(ArrayCell {
                    index: cells.len(),
                    arm: a.name.clone(),
                    seed,
                });
            }
        }
    }
    let device = format!(
        "slurm job array, --device {} per task",
        device_flag(o.device)
    );
    let (rd, _) = start_run_dir(policy, out, &device, device_flag(o.device), arms, seeds)?;
    let rd = RunDir::open(&absolute(&rd.root)?)?;
    let path = rd.root.join("slurm").join("adarank.sbatch");
    let text = script(&policy.name, &rd.root, &workdir, &exe, &cells, o);
    write_atomic(&path, text.as_bytes())?;
    let mut job = JobFile {
        script: path.clone(),
        cells,
        submissions: Vec::new(),
    };
    job.save(&rd)?;
    let indices: Vec<usize> = job.cells.iter().map(|c| c.index).collect();
    submit(&rd, &mut job, &indices, o)
}

/// Submits again the cells of a run directory that are neither done nor in Slurm's queue
/// (failed, lost when their task was killed, or never submitted).
pub fn resubmit(run_dir: &Path, o: &SlurmOptions) -> Result<Submission> {
    o.validate()?;
    let rd = RunDir::open(&absolute(run_dir)?)?;
    let Some(mut job) = JobFile::load(&rd)? else {
        bail!(
            "{} was not submitted to Slurm (no slurm/job.json); continue it with `adarank run \
             --resume {}`",
            rd.root.display(),
            rd.root.display()
        );
    };
    let summary = rd.load_summary()?;
    let queue = queue(&job).unwrap_or_default();
    let indices: Vec<usize> = job
        .cells
        .iter()
        .filter(|c| {
            summary
                .cell(&c.arm, c.seed)
                .is_none_or(|s| s.status != CellStatus::Done)
                && !queue.contains_key(&c.index)
        })
        .map(|c| c.index)
        .collect();
    if indices.is_empty() {
        bail!(
            "every cell of {} is done or in Slurm's queue; nothing to resubmit",
            rd.root.display()
        );
    }
    submit(&rd, &mut job, &indices, o)
}

/// `sbatch --parsable --array=… [overrides] SCRIPT`, unless a dry run; records the job.
fn submit(
    rd: &RunDir,
    job: &mut JobFile,
    indices: &[usize],
    o: &SlurmOptions,
) -> Result<Submission> {
    let array = array_spec(indices);
    let mut command = vec![
        "sbatch".to_string(),
        "--parsable".to_string(),
        format!("--array={array}"),
    ];
    // Options given now override the script's (a resubmission may change them).
    for (k, v) in [
        ("partition", &o.partition),
        ("time", &o.time),
        ("gres", &o.gres),
    ] {
        if let Some(v) = v {
            command.push(format!("--{k}={v}"));
        }
    }
    command.push(job.script.display().to_string());
    let mut out = Submission {
        run_dir: rd.root.clone(),
        script: job.script.clone(),
        array: array.clone(),
        job_id: None,
        command: command.clone(),
    };
    if o.dry_run {
        return Ok(out);
    }
    let res = Command::new(&command[0])
        .args(&command[1..])
        .output()
        .with_context(|| {
            format!(
                "running sbatch (is this a Slurm login node?); the script is {} — submit it by \
                 hand, or use --dry-run to only write it",
                job.script.display()
            )
        })?;
    if !res.status.success() {
        bail!(
            "sbatch refused the job array ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&res.stdout);
    let id = stdout
        .trim()
        .split(';')
        .next()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("sbatch printed no job id: {stdout:?}"))?
        .to_string();
    job.submissions.push(Submitted {
        job_id: id.clone(),
        array,
        at: chrono::Utc::now().to_rfc3339(),
    });
    job.save(rd)?;
    out.job_id = Some(id);
    Ok(out)
}

/// A task in Slurm's queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub job: String,
    /// PENDING, RUNNING, COMPLETING, …
    pub state: String,
    /// Why it waits (Slurm's reason), when pending.
    pub reason: String,
}

/// Tasks of `job`'s submissions still in Slurm's queue, by array index (the latest submission
/// wins). `None` when `squeue` cannot be asked.
pub fn queue(job: &JobFile) -> Option<BTreeMap<usize, Queued>> {
    if job.submissions.is_empty() {
        return Some(BTreeMap::new());
    }
    let ids: Vec<&str> = job.submissions.iter().map(|s| s.job_id.as_str()).collect();
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i|%T|%r", "-j", &ids.join(",")])
        .output()
        .ok()?;
    // squeue fails for job ids it has already forgotten; that means "not queued".
    if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
        return None;
    }
    let order = |id: &str| ids.iter().position(|j| *j == id).unwrap_or(0);
    let mut tasks: BTreeMap<usize, Queued> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        let [id, state, reason] = f[..] else { continue };
        let Some((job_id, index)) = id.split_once('_') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        let newer = tasks
            .get(&index)
            .is_none_or(|q| order(&q.job) <= order(job_id));
        if newer {
            tasks.insert(
                index,
                Queued {
                    job: job_id.to_string(),
                    state: state.to_string(),
                    reason: reason.to_string(),
                },
            );
        }
    }
    Some(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_and_quoting() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[1, 3, 4, 5, 9]), "1,3-5,9");
        assert_eq!(array_spec(&[7]), "7");
        assert_eq!(sh_quote("runs/a-1"), "runs/a-1");
        assert_eq!(sh_quote("my runs/it's"), r"'my runs/it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
