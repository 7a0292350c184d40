//! What each arm of a checked policy will cost, before anything is allocated: memory by ledger
//! kind at the start and at its peak, GEMM FLOPs per step and the step time they bound on a
//! device. One model of memory serves `adarank plan` and the run's pre-flight check
//! ([`preflight`]), so the two never disagree.
//!
//! The way through: checked arm → [`shapes::arm_shape`] (model, head, batch shapes, ranks) →
//! [`memory::memory`] and [`flops::step_flops`] → [`ArmCosts`].

pub mod devices;
pub mod flops;
pub mod memory;
mod preflight;
pub mod shapes;

pub use devices::DeviceSpec;
pub use flops::{pass_flops, PassFlops};
pub use memory::{ByKind, Host, Memory};
pub use preflight::{check_device, device_memory, preflight};
pub use shapes::{arm_shape, ArmShape, BatchShape, TaskKind, TaskShape};

use super::arm::method_label;
use super::report::fmt_bytes;
use crate::backend::MemKind;
use crate::policy::Policy;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write;
use std::path::PathBuf;

/// Trainable parameters (elements) at the start and at the peak rank plan.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    pub start: u64,
    pub peak: u64,
}

/// The costs of one arm (every seed of it costs the same).
#[derive(Clone, Debug, Serialize)]
pub struct ArmCosts {
    pub arm: String,
    pub method: String,
    pub shape: ArmShape,
    pub trainable_params: Params,
    pub memory: Memory,
    /// GEMM FLOPs of one optimizer step at the start ranks.
    pub flops_per_step: PassFlops,
    /// … and with the peak rank plan.
    pub flops_per_step_peak: PassFlops,
    /// Step time if the GEMMs ran at the device's rate (a lower bound), seconds.
    pub step_seconds: f64,
    pub train_seconds: Option<f64>,
    /// The peak fits the device's memory.
    pub fits: bool,
}

/// The costs of every arm of a policy on one device.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub experiment: String,
    pub source: PathBuf,
    pub seeds: usize,
    pub device: DeviceSpec,
    pub arms: Vec<ArmCosts>,
}

/// The costs of `arm` (by name) on `device`.
pub fn arm_costs(policy: &Policy, arm: &str, device: &DeviceSpec) -> Result<ArmCosts> {
    let plan = policy
        .arm(arm)
        .ok_or_else(|| anyhow::anyhow!("no arm named {arm}"))?;
    let shape = arm_shape(plan)?;
    let memory = memory::memory(&shape);
    let params = |ranks: &[usize]| {
        (memory::params(&shape, ranks).of(MemKind::Trainable) / 4.0).round() as u64
    };
    let flops = flops::step_flops(&shape, &shape.start_ranks);
    let step_seconds = flops.total() / device.flops_per_s;
    Ok(ArmCosts {
        arm: arm.to_string(),
        method: method_label(plan),
        trainable_params: Params {
            start: params(&shape.start_ranks),
            peak: params(&shape.peak_ranks),
        },
        flops_per_step_peak: flops::step_flops(&shape, &shape.peak_ranks),
        flops_per_step: flops,
        step_seconds,
        train_seconds: shape.steps.map(|s| s as f64 * step_seconds),
        fits: device.needs(&memory) <= device.memory,
        memory,
        shape,
    })
}

/// The costs of every arm of `policy` on `device`.
pub fn plan(policy: &Policy, device: &DeviceSpec) -> Result<PlanReport> {
    Ok(PlanReport {
        experiment: policy.name.clone(),
        source: policy.source_path.clone(),
        seeds: policy.seeds.len(),
        device: device.clone(),
        arms: policy
            .arms
            .iter()
            .map(|a| arm_costs(policy, &a.name, device))
            .collect::<Result<_>>()?,
    })
}

fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn fmt_flops(f: f64) -> String {
    if f >= 1e12 {
        format!("{:.2} TFLOP", f / 1e12)
    } else if f >= 1e9 {
        format!("{:.2} GFLOP", f / 1e9)
    } else {
        format!("{:.2} MFLOP", f / 1e6)
    }
}

/// Columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pad = width[i] - s.chars().count();
                // Names left, figures right.
                if i == 0 || i == 1 && !s.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn describe_shape(s: &ArmShape) -> String {
    let m = &s.model;
    format!(
        "{:?} of {} layers, hidden {}, {} heads, FFN {}, vocab {}, {} positions; train batch {} × \
         {} tokens{}, evaluation batch {} × {}",
        m.flavour,
        m.layers,
        m.hidden,
        m.heads,
        m.ffn,
        m.vocab,
        m.max_positions,
        s.train.batch,
        s.train.seq,
        if s.accum > 1 {
            format!(" (× {} accumulated)", s.accum)
        } else {
            String::new()
        },
        s.eval.batch,
        s.eval.seq
    )
    .to_lowercase()
}

/// The host terms behind the `host` column (process = what stays held + the larger of the
/// ledger's peak and its parameters with the weights handed over while the model is built),
/// one line per distinct set of terms.
fn host_lines(arms: &[ArmCosts]) -> String {
    let mut lines: Vec<(String, Vec<&str>)> = Vec::new();
    for a in arms {
        let h = &a.memory.host;
        if h.held.is_empty() && h.building.is_empty() {
            continue;
        }
        let terms = |v: &[(&str, f64)]| {
            v.iter()
                .map(|(n, b)| format!("{n} {}", fmt_bytes(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "kept: {}; while the model is built: {}",
            terms(&h.held),
            terms(&h.building)
        );
        match lines.iter_mut().find(|(t, _)| *t == text) {
            Some((_, names)) => names.push(&a.arm),
            None => lines.push((text, vec![&a.arm])),
        }
    }
    let mut out = String::new();
    if !lines.is_empty() {
        out.push_str(
            "host: bytes the task holds in host memory beside the ledger; process: the cell's \
             peak where the device's memory is the host's\n",
        );
    }
    for (text, names) in lines {
        let _ = writeln!(out, "  host of {}: {text}", names.join(", "));
    }
    out
}

impl PlanReport {
    /// The tables `adarank plan` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan of {} (experiment {}): {} arms × {} seeds",
            self.source.display(),
            self.experiment,
            self.arms.len(),
            self.seeds
        );
        let d = &self.device;
        let _ = writeln!(
            out,
            "device: {} — {}; memory {}; GEMM rate {}",
            d.name,
            d.description,
            if d.memory.is_finite() {
                fmt_bytes(d.memory)
            } else {
                "unknown".into()
            },
            d.rate_source
        );
        let mut shapes: Vec<(String, Vec<&str>)> = Vec::new();
        for a in &self.arms {
            let text = describe_shape(&a.shape);
            match shapes.iter_mut().find(|(t, _)| *t == text) {
                Some((_, arms)) => arms.push(&a.arm),
                None => shapes.push((text, vec![&a.arm])),
            }
        }
        for (text, arms) in &shapes {
            if shapes.len() == 1 {
                let _ = writeln!(out, "model: {text}");
            } else {
                let _ = writeln!(out, "model of {}: {text}", arms.join(", "));
            }
        }
        out.push_str(
            "\nmemory at the peak, by kind: f32 bytes the backend's ledger will hold (train step, \
             evaluation: each pass alone; start: with the first phase's ranks)\n",
        );
        let mut rows = vec![[
            "arm",
            "method",
            "frozen",
            "trainable",
            "gradients",
            "optimizer",
            "activations",
            "scratch",
            "peak",
            "train step",
            "evaluation",
            "start",
            "host",
            "process",
            "fits",
        ]
        .map(String::from)
        .to_vec()];
        for a in &self.arms {
            let p = &a.memory.peak;
            let mut row = vec![a.arm.clone(), a.method.clone()];
            row.extend(MemKind::ALL.iter().map(|&k| fmt_bytes(p.of(k))));
            row.push(fmt_bytes(p.total()));
            row.push(fmt_bytes(a.memory.train_step.total()));
            row.push(fmt_bytes(a.memory.evaluation.total()));
            row.push(fmt_bytes(a.memory.start.total()));
            row.push(fmt_bytes(a.memory.process - p.total()));
            row.push(fmt_bytes(a.memory.process));
            row.push(if a.fits { "yes" } else { "NO" }.into());
            rows.push(row);
        }
        out.push_str(&table(&rows));
        out.push_str(&host_lines(&self.arms));
        out.push_str(
            "\ncompute (GEMM FLOPs of one optimizer step; time = FLOPs ÷ the GEMM rate, a lower \
             bound)\n",
        );
        let mut rows = vec![[
            "arm",
            "trainable params",
            "FLOPs/step",
            "forward",
            "backward",
            "step time",
            "steps",
            "training time",
        ]
        .map(String::from)
        .to_vec()];
        for a in &self.arms {
            let p = &a.trainable_params;
            rows.push(vec![
                a.arm.clone(),
                if p.start == p.peak {
                    p.start.to_string()
                } else {
                    format!("{} → ≤ {}", p.start, p.peak)
                },
                fmt_flops(a.flops_per_step.total()),
                fmt_flops(a.flops_per_step.forward),
                fmt_flops(a.flops_per_step.backward),
                fmt_secs(a.step_seconds),
                a.shape.steps.map_or("—".into(), |s| s.to_string()),
                a.train_seconds.map_or("—".into(), fmt_secs),
            ]);
        }
        out.push_str(&table(&rows));
        let mut notes: Vec<&String> = self.arms.iter().flat_map(|a| &a.shape.notes).collect();
        notes.sort();
        notes.dedup();
        for n in notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}
