//! The run's pre-flight check: before a cell allocates anything, its planned peak is held
//! against the memory the device has, and a cell that would not fit is refused with the policy's
//! line and column of the setting that makes it large, what it would need, and what would fit.

use super::memory::ByKind;
use super::{arm_costs, devices, DeviceSpec};
use crate::backend::device::Device;
use crate::backend::MemKind;
use crate::experiment::report::fmt_bytes;
use crate::policy::{Diagnostic, Locator, Policy};
use anyhow::{anyhow, Result};

/// Memory a cell may hold on `dev`, and what to call it: the machine's available memory for
/// the CPU backend and software adapters, a known GPU's memory, `None` for a GPU adarank does
/// not know (the check is then skipped, with a note).
pub fn device_memory(dev: &Device) -> Option<(f64, String)> {
    match dev {
        Device::Cpu(_) => {
            devices::available_memory().map(|m| (m, "available on this machine".into()))
        }
        Device::Gpu(g) if g.is_cpu_adapter() => devices::available_memory().map(|m| {
            (
                m,
                format!(
                    "available to {} (a software adapter in host memory)",
                    g.info().name
                ),
            )
        }),
        Device::Gpu(g) => devices::gpu_memory_by_adapter_name(&g.info().name)
            .map(|m| (m, format!("on {}", g.info().name))),
    }
}

/// Whether the memory [`device_memory`] gives for `dev` is the host's.
fn is_host(dev: &Device) -> bool {
    match dev {
        Device::Cpu(_) => true,
        Device::Gpu(g) => g.is_cpu_adapter(),
    }
}

/// The pre-flight check of a run on `dev`: every arm among `arms` (all when empty) must fit the
/// memory `dev` has. A GPU of unknown memory is not checked (said on stderr).
pub fn check_device(dev: &Device, policy: &Policy, arms: &[String]) -> Result<()> {
    match device_memory(dev) {
        Some((memory, where_)) => {
            let device = if is_host(dev) {
                DeviceSpec::memory_only(memory, &where_)
            } else {
                DeviceSpec::gpu_memory_only(memory, &where_)
            };
            preflight(policy, arms, &device)
        }
        None => {
            eprintln!(
                "note: the memory of {} is not known to adarank; the run is not checked against \
                 it (see `adarank plan --device NAME`)",
                dev.describe()
            );
            Ok(())
        }
    }
}

/// The ledger's peak by kind and, where host buffers count, the host's named terms.
fn by_kind(m: &ByKind, all: &super::Memory, device: &DeviceSpec) -> String {
    let mut parts: Vec<String> = MemKind::ALL
        .iter()
        .filter(|&&k| m.of(k) > 0.0)
        .map(|&k| format!("{} {}", k.name(), fmt_bytes(m.of(k))))
        .collect();
    if device.host {
        let h = &all.host;
        parts.extend(
            h.held
                .iter()
                .chain(&h.building)
                .filter(|(_, b)| *b > 0.0)
                .map(|(n, b)| format!("{n} {}", fmt_bytes(*b))),
        );
    }
    parts.join(", ")
}

/// Refuses the first arm among `arms` (all when empty) whose planned peak exceeds `device`'s
/// memory (its description says whose it is, e.g. "available on this machine"; where it is the
/// host's, the cell's host terms count too).
pub fn preflight(policy: &Policy, arms: &[String], device: &DeviceSpec) -> Result<()> {
    let (memory, where_) = (device.memory, device.description.as_str());
    for arm in &policy.arms {
        if !arms.is_empty() && !arms.contains(&arm.name) {
            continue;
        }
        let c = arm_costs(policy, &arm.name, device)?;
        if c.fits {
            continue;
        }
        let peak = &c.memory.peak;
        let (train, eval) = (c.memory.train_step.total(), c.memory.evaluation.total());
        let dynamic = peak.of(MemKind::Activation) + peak.of(MemKind::Scratch);
        // Point at the setting that makes the cell large, and say what would fit.
        let (section, key, what) = if eval > train && eval > memory {
            let e = c.shape.eval;
            (
                "data",
                Some("eval_samples"),
                format!(
                    "its evaluation pass ({} sequences × {} tokens) alone needs {}, the training \
                     step {}: evaluation batches hold at most 64 sequences, fewer when \
                     `data.eval_samples` is smaller",
                    e.batch,
                    e.seq,
                    fmt_bytes(eval),
                    fmt_bytes(train)
                ),
            )
        } else if dynamic >= peak.total() / 2.0 {
            (
                "train",
                Some("batch"),
                smaller_batch(policy, &arm.name, device),
            )
        } else if c.shape.full {
            (
                "lora",
                None,
                "full fine-tuning holds every weight with its gradient and two AdamW moments; \
                 LoRA trains a small fraction of them"
                    .into(),
            )
        } else {
            (
                "model",
                None,
                "the model's frozen weights alone need more: a smaller model or a larger device"
                    .into(),
            )
        };
        let message = format!(
            "arm `{}` needs {} of memory at its peak, more than the {} {where_}",
            arm.name,
            fmt_bytes(device.needs(&c.memory)),
            fmt_bytes(memory)
        );
        let help = format!(
            "{what}; `adarank plan {}` shows every arm's memory by kind",
            policy.source_path.display()
        );
        let Some(l) = Locator::new(policy) else {
            return Err(anyhow!(
                "{message} ({}); {help}",
                by_kind(peak, &c.memory, device)
            ));
        };
        let span = l
            .setting(&arm.name, section, key)
            .or_else(|| l.setting(&arm.name, section, None))
            .unwrap_or_else(|| l.arm(&arm.name));
        let d = Diagnostic::new(span, message, by_kind(peak, &c.memory, device)).help(help);
        // The rendered diagnostic starts with its own `error: `; the binary adds one to every
        // error it prints, so it goes here (no "error: error:").
        let text = l.error(d).to_string();
        return Err(anyhow!("{}", text.strip_prefix("error: ").unwrap_or(&text)));
    }
    Ok(())
}

/// What to do: the largest micro-batch (halving) that fits, with the accumulation that keeps
/// the effective batch, or why the batch is not the problem.
fn smaller_batch(policy: &Policy, arm: &str, device: &DeviceSpec) -> String {
    let memory = device.memory;
    let Some(plan) = policy.arm(arm) else {
        return "lower train.batch".into();
    };
    let (b, accum) = (plan.train.batch, plan.train.accum);
    let mut try_b = b / 2;
    let mut smallest = None;
    while try_b >= 1 {
        let mut p = policy.clone();
        for a in p.arms.iter_mut().filter(|a| a.name == arm) {
            a.train.batch = try_b;
            a.train.accum = accum * b.div_ceil(try_b);
        }
        if let Ok(c) = arm_costs(&p, arm, device) {
            if c.fits {
                return format!(
                    "`train.batch = {try_b}` with `train.accum = {}` keeps the effective batch and \
                     needs {}",
                    accum * b.div_ceil(try_b),
                    fmt_bytes(device.needs(&c.memory))
                );
            }
            smallest = Some(c);
        }
        try_b /= 2;
    }
    match smallest {
        Some(c) if c.memory.evaluation.total() > memory => format!(
            "a smaller micro-batch does not help: the evaluation pass ({} sequences × {} tokens) \
             alone needs {} (evaluation batches hold at most 64 sequences, fewer when \
             `data.eval_samples` is smaller)",
            c.shape.eval.batch,
            c.shape.eval.seq,
            fmt_bytes(c.memory.evaluation.total())
        ),
        _ => "even a micro-batch of 1 does not fit: shorter sequences, LoRA instead of full \
              fine-tuning, a smaller model, or a device with more memory"
            .into(),
    }
}
