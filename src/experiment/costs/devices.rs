//! Devices a plan is costed on: this machine's CPU (its cores at a measured or stated GEMM rate,
//! its available memory) or a named GPU (its memory and its peak f32 rate from the vendor's data
//! sheet). adarank's kernels are f32 without tensor cores, so the f32 peak is the ceiling that
//! applies, and a real step reaches a fraction of it.

use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Gemm, MemKind};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

/// A device to cost a plan on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceSpec {
    /// As the user names it (`cpu`, `h100`, …).
    pub name: String,
    /// What it is, for the output.
    pub description: String,
    /// Bytes a cell may hold on it (a GPU's memory; for the CPU, the machine's available memory).
    pub memory: f64,
    /// GEMM rate the step times assume, FLOP/s.
    pub flops_per_s: f64,
    /// Where the rate comes from.
    pub rate_source: String,
    /// The device's memory is the host's (the CPU, a software adapter): what a cell holds on
    /// the host beside the ledger counts against it too (`Memory::process`).
    pub host: bool,
}

impl DeviceSpec {
    /// A device known only by its memory (the run's pre-flight check: times are not needed).
    pub fn memory_only(memory: f64, description: &str) -> Self {
        Self {
            name: String::new(),
            description: description.into(),
            memory,
            flops_per_s: f64::INFINITY,
            rate_source: String::new(),
            host: true,
        }
    }

    /// A GPU known only by its memory: host buffers do not count against it.
    pub fn gpu_memory_only(memory: f64, description: &str) -> Self {
        Self {
            host: false,
            ..Self::memory_only(memory, description)
        }
    }

    /// What a cell with `m` needs of this device's memory.
    pub fn needs(&self, m: &super::Memory) -> f64 {
        if self.host {
            m.process
        } else {
            m.peak.total()
        }
    }
}

/// A GPU adarank knows by name: memory in GB (10⁹ bytes) and dense f32 peak in TFLOP/s (without
/// tensor cores), from the vendors' data sheets.
struct NamedGpu {
    names: &'static [&'static str],
    full_name: &'static str,
    memory_gb: f64,
    fp32_tflops: f64,
}

const GPUS: &[NamedGpu] = &[
    NamedGpu {
        names: &["h200"],
        full_name: "NVIDIA H200 SXM",
        memory_gb: 141.0,
        fp32_tflops: 67.0,
    },
    NamedGpu {
        names: &["h100", "h100-sxm"],
        full_name: "NVIDIA H100 SXM 80GB",
        memory_gb: 80.0,
        fp32_tflops: 67.0,
    },
    NamedGpu {
        names: &["h100-pcie"],
        full_name: "NVIDIA H100 PCIe 80GB",
        memory_gb: 80.0,
        fp32_tflops: 51.0,
    },
    NamedGpu {
        names: &["a100", "a100-80gb"],
        full_name: "NVIDIA A100 80GB",
        memory_gb: 80.0,
        fp32_tflops: 19.5,
    },
    NamedGpu {
        names: &["a100-40gb"],
        full_name: "NVIDIA A100 40GB",
        memory_gb: 40.0,
        fp32_tflops: 19.5,
    },
    NamedGpu {
        names: &["l40s"],
        full_name: "NVIDIA L40S",
        memory_gb: 48.0,
        fp32_tflops: 91.6,
    },
    NamedGpu {
        names: &["a10"],
        full_name: "NVIDIA A10",
        memory_gb: 24.0,
        fp32_tflops: 31.2,
    },
    NamedGpu {
        names: &["v100", "v100-32gb"],
        full_name: "NVIDIA V100 SXM2 32GB",
        memory_gb: 32.0,
        fp32_tflops: 15.7,
    },
    NamedGpu {
        names: &["t4"],
        full_name: "NVIDIA T4",
        memory_gb: 16.0,
        fp32_tflops: 8.1,
    },
    NamedGpu {
        names: &["rtx4090"],
        full_name: "NVIDIA GeForce RTX 4090",
        memory_gb: 24.0,
        fp32_tflops: 82.6,
    },
];

/// The names `--device` accepts besides `cpu`.
pub fn gpu_names() -> Vec<&'static str> {
    GPUS.iter().flat_map(|g| g.names.iter().copied()).collect()
}

/// `cpu` (this machine; `gflops` states its rate, else it is measured) or a named GPU.
pub fn device(name: &str, gflops: Option<f64>) -> Result<DeviceSpec> {
    let key = name.to_ascii_lowercase();
    if key == "cpu" {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let (rate, source) = match gflops {
            Some(g) => (g * 1e9, format!("{g} GFLOP/s as stated (--gflops)")),
            None => {
                let g = measure_cpu_gflops()?;
                (
                    g * 1e9,
                    format!("{g:.0} GFLOP/s measured now on a 1024³ f32 GEMM (all cores)"),
                )
            }
        };
        return Ok(DeviceSpec {
            name: "cpu".into(),
            description: format!("this machine's CPU ({cores} cores), its available memory"),
            memory: available_memory().unwrap_or(f64::INFINITY),
            flops_per_s: rate,
            rate_source: source,
            host: true,
        });
    }
    let Some(g) = GPUS.iter().find(|g| g.names.contains(&key.as_str())) else {
        bail!(
            "--device {name}: unknown device; use `cpu` or one of {}",
            gpu_names().join(", ")
        );
    };
    let (rate, source) = match gflops {
        Some(r) => (r * 1e9, format!("{r} GFLOP/s as stated (--gflops)")),
        None => (
            g.fp32_tflops * 1e12,
            format!("{} TFLOP/s, the data sheet's f32 peak", g.fp32_tflops),
        ),
    };
    Ok(DeviceSpec {
        name: key,
        description: format!("{} ({} GB)", g.full_name, g.memory_gb),
        memory: g.memory_gb * 1e9,
        flops_per_s: rate,
        rate_source: source,
        host: false,
    })
}

/// Memory of a GPU adapter from its name, when adarank knows it: the size some adapters put in
/// their name ("NVIDIA A100-SXM4-80GB"), else the table above. `None` for anything else.
pub fn gpu_memory_by_adapter_name(adapter: &str) -> Option<f64> {
    let lower = adapter.to_ascii_lowercase();
    let in_name = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find_map(|w| {
            w.strip_suffix("gb")
                .and_then(|g| g.parse::<f64>().ok())
                .filter(|g| *g >= 1.0)
        });
    if let Some(gb) = in_name {
        return Some(gb * 1e9);
    }
    // Words of the name and adjacent pairs ("RTX 4090" → "rtx4090"), matched whole so that
    // "A10" does not match "A100"; several matches (an A100 of either size): the smallest.
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut keys: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    keys.extend(words.windows(2).map(|p| format!("{}{}", p[0], p[1])));
    GPUS.iter()
        .filter(|g| {
            // The model, without a variant: "a100-40gb" → "a100".
            let model = g.names[0].split('-').next().unwrap_or_default();
            keys.iter().any(|k| k == model)
        })
        .map(|g| g.memory_gb * 1e9)
        .reduce(f64::min)
}

/// The kernel's estimate of memory a new process can use without swapping (`MemAvailable`).
pub fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Best of three 1024³ f32 GEMMs on the CPU backend, in GFLOP/s (about 0.1 s).
pub fn measure_cpu_gflops() -> Result<f64> {
    gemm_gflops(&Cpu::new(), 1024, 1024, 1024, 3)
}

/// GFLOP/s of the best of `reps` timed runs (after one untimed) of x·Wᵀ: [m, k]·[n, k]ᵀ, the
/// GEMM of a linear layer, on `be`.
pub fn gemm_gflops<B: Backend>(be: &B, m: usize, n: usize, k: usize, reps: usize) -> Result<f64> {
    let x = be.upload(&vec![0.5; m * k], MemKind::Scratch)?;
    let w = be.upload(&vec![0.25; n * k], MemKind::Scratch)?;
    let mut y = be.zeros(m * n, MemKind::Scratch)?;
    let spec = Gemm::nt(m, n, k);
    be.matmul(&x, &w, &mut y, &spec);
    be.sync()?;
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        be.matmul(&x, &w, &mut y, &spec);
        be.sync()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(spec.flops() / best / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_memory_from_adapter_names() {
        assert_eq!(
            gpu_memory_by_adapter_name("NVIDIA A100-SXM4-40GB"),
            Some(40e9)
        );
        assert_eq!(
            gpu_memory_by_adapter_name("NVIDIA H100 80GB HBM3"),
            Some(80e9)
        );
        assert_eq!(gpu_memory_by_adapter_name("NVIDIA H200"), Some(141e9));
        assert_eq!(gpu_memory_by_adapter_name("NVIDIA L40S"), Some(48e9));
        assert_eq!(gpu_memory_by_adapter_name("NVIDIA A10"), Some(24e9));
        assert_eq!(gpu_memory_by_adapter_name("NVIDIA A100-SXM4"), Some(40e9));
        assert_eq!(
            gpu_memory_by_adapter_name("NVIDIA GeForce RTX 4090"),
            Some(24e9)
        );
        assert_eq!(
            gpu_memory_by_adapter_name("llvmpipe (LLVM 15.0.6, 256 bits)"),
            None
        );
    }

    #[test]
    fn named_devices_and_unknown_names() {
        let d = device("H100", None).unwrap();
        assert_eq!(d.memory, 80e9);
        assert_eq!(d.flops_per_s, 67e12);
        let e = device("tpu", None).unwrap_err().to_string();
        assert!(e.contains("h200") && e.contains("cpu"), "{e}");
    }
}
