//! The state of every cell of a run directory: what summary.json records, joined with Slurm's
//! queue when the cells were submitted as a job array — so a task that Slurm killed (time limit,
//! memory, a node lost) shows as lost instead of running for ever.

use super::fsio::read_jsonl;
use super::records::{CellStatus, MetricRecord};
use super::rundir::RunDir;
use super::slurm::{array_spec, queue, JobFile};
use crate::policy::{Policy, TrainLength};
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started: waiting in Slurm's queue, or never submitted.
    Pending,
    Running,
    Done,
    /// Ended with an error (summary.json has it).
    Failed,
    /// Its Slurm task is gone but the cell never recorded an end: killed (time limit, memory,
    /// node failure, cancelled). Its log says why.
    Lost,
}

#[derive(Clone, Debug, Serialize)]
pub struct CellState {
    pub arm: String,
    pub seed: u64,
    pub state: State,
    /// Steps logged so far, and of how many (when the policy fixes them).
    pub steps: u64,
    pub of: Option<u64>,
    /// The array index, when submitted to Slurm.
    pub index: Option<usize>,
    /// The error, the queue's word, or why it is lost.
    pub detail: String,
    /// The task's log (Slurm).
    pub log: Option<PathBuf>,
}

/// Every cell's state; `slurm` says whether Slurm's queue was read (`None`: not a Slurm run;
/// `Some(false)`: submitted, but squeue could not be asked, so states are summary.json's).
pub struct RunStatus {
    pub cells: Vec<CellState>,
    pub slurm: Option<bool>,
    pub script: Option<PathBuf>,
}

pub fn status(rd: &RunDir) -> Result<RunStatus> {
    let summary = rd.load_summary()?;
    let policy: Option<Policy> = super::fsio::read_json(&rd.root.join("policy.json")).ok();
    let metrics: Vec<MetricRecord> = read_jsonl(&rd.metrics()).unwrap_or_default();
    let job = JobFile::load(rd)?;
    let q = job.as_ref().map(queue);
    let mut cells = Vec::new();
    for c in &summary.cells {
        let steps = metrics
            .iter()
            .filter(|m| m.arm == c.arm && m.seed == c.seed)
            .map(|m| m.step)
            .max()
            .unwrap_or(c.steps);
        let of = policy
            .as_ref()
            .and_then(|p| p.arm(&c.arm))
            .and_then(|a| match a.train.length {
                TrainLength::Steps(n) => Some(n as u64),
                TrainLength::Epochs(_) => None,
            });
        let index = job.as_ref().and_then(|j| {
            j.cells
                .iter()
                .find(|x| x.arm == c.arm && x.seed == c.seed)
                .map(|x| x.index)
        });
        // The queue entry and the log of the latest submission that included this cell.
        let queued = match (&q, index) {
            (Some(Some(q)), Some(i)) => q.get(&i).cloned(),
            _ => None,
        };
        let log = match (&job, index) {
            (Some(j), Some(i)) => j
                .submissions
                .iter()
                .rev()
                .map(|s| JobFile::log(rd, &s.job_id, i))
                .find(|p| p.exists()),
            _ => None,
        };
        let queue_known = matches!(q, Some(Some(_)));
        let (state, detail) = match c.status {
            CellStatus::Done => (State::Done, String::new()),
            CellStatus::Failed => (
                State::Failed,
                c.error.clone().unwrap_or_else(|| "unknown error".into()),
            ),
            s => match &queued {
                Some(t) if t.state == "PENDING" => (
                    State::Pending,
                    format!("queued (job {}: {})", t.job, t.reason),
                ),
                Some(t) => (
                    State::Running,
                    format!(
                        "job {}_{} {}",
                        t.job,
                        index.unwrap_or(0),
                        t.state.to_lowercase()
                    ),
                ),
                None if queue_known && (s == CellStatus::Running || log.is_some()) => (
                    State::Lost,
                    "its Slurm task ended without recording a result (killed: time limit, \
                     memory, node failure or scancel); see its log"
                        .into(),
                ),
                None if s == CellStatus::Running => running_or_lost(rd, c),
                None if index.is_some() && queue_known => {
                    (State::Pending, "not in Slurm's queue".into())
                }
                None if job.is_some() && index.is_none() => {
                    (State::Pending, "not in the job array".into())
                }
                None => (State::Pending, String::new()),
            },
        };
        let detail = match (&state, &log) {
            (State::Lost, Some(l)) => match last_line(l) {
                Some(line) => format!("{detail}; it ends: {line}"),
                None => detail,
            },
            _ => detail,
        };
        cells.push(CellState {
            arm: c.arm.clone(),
            seed: c.seed,
            state,
            steps,
            of,
            index,
            detail,
            log,
        });
    }
    Ok(RunStatus {
        cells,
        slurm: q.map(|q| q.is_some()),
        script: job.map(|j| j.script),
    })
}

/// A cell the summary records as running, outside Slurm: its holder's process decides. A
/// holder that is gone (pid absent, or reused by a process started at another time) ended
/// without recording a result; on another machine, a free cell lock says the same.
fn running_or_lost(rd: &RunDir, c: &super::records::CellResult) -> (State, String) {
    let lost = |why: String| {
        (
            State::Lost,
            format!(
                "{why}, without recording a result (killed?); `adarank run --resume` runs it again"
            ),
        )
    };
    match c.holder.as_ref().map(|h| (h, h.alive())) {
        Some((h, Some(true))) => (State::Running, format!("pid {} on {}", h.pid, h.host)),
        Some((h, Some(false))) => lost(format!(
            "its process (pid {} on {}) has ended",
            h.pid, h.host
        )),
        _ => match super::lock::cell_is_held(&rd.root, &c.arm, c.seed) {
            Some(false) => lost("nobody holds its lock".into()),
            _ => (State::Running, String::new()),
        },
    }
}

/// The last non-empty line of a log.
fn last_line(p: &std::path::Path) -> Option<String> {
    // A regular file only: `status` never waits on a FIFO put in a log's place.
    let text = String::from_utf8(super::fsio::read_bytes(p).ok()?).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

impl RunStatus {
    /// Cells to submit again: failed, lost, or in a Slurm run never queued.
    pub fn to_resubmit(&self) -> Vec<usize> {
        self.cells
            .iter()
            .filter(|c| {
                matches!(c.state, State::Failed | State::Lost)
                    || (c.state == State::Pending && c.detail == "not in Slurm's queue")
            })
            .filter_map(|c| c.index)
            .collect()
    }

    pub fn render(&self, rd: &RunDir) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "run directory: {}", rd.root.display());
        match self.slurm {
            None => {}
            Some(true) => out.push_str("cells of a Slurm job array; queue read with squeue\n"),
            Some(false) => out.push_str(
                "cells of a Slurm job array; squeue could not be asked, so states are \
                 summary.json's alone\n",
            ),
        }
        for c in &self.cells {
            let name = format!("{} seed {}", c.arm, c.seed);
            let width = self
                .cells
                .iter()
                .filter_map(|c| c.index)
                .max()
                .map_or(0, |i| i.to_string().len() + 3);
            let index = format!(
                "{:<width$}",
                c.index.map(|i| format!("[{i}] ")).unwrap_or_default()
            );
            let steps = match c.of {
                Some(n) => format!("{}/{n} steps", c.steps),
                None => format!("{} steps", c.steps),
            };
            let state = serde_json::to_value(&c.state)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = write!(out, "{index}{name:<24} {state:<8} {steps:>14}");
            if !c.detail.is_empty() {
                let _ = write!(out, "  {}", c.detail);
            }
            if let Some(l) = &c.log {
                if matches!(c.state, State::Failed | State::Lost) {
                    let _ = write!(out, "  (log: {})", l.display());
                }
            }
            out.push('\n');
        }
        let count = |s: State| self.cells.iter().filter(|c| c.state == s).count();
        let _ = writeln!(
            out,
            "{} done, {} running, {} pending, {} failed, {} lost (of {})",
            count(State::Done),
            count(State::Running),
            count(State::Pending),
            count(State::Failed),
            count(State::Lost),
            self.cells.len()
        );
        let again = self.to_resubmit();
        if let (Some(script), false) = (&self.script, again.is_empty()) {
            let _ = writeln!(
                out,
                "resubmit them alone: `adarank run --resume {} --slurm` (or `sbatch --array={} {}`)",
                rd.root.display(),
                array_spec(&again),
                script.display()
            );
        }
        out
    }
}
