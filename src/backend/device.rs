//! Choosing where a run computes: `--device auto|gpu|cpu`.
//!
//! `auto` takes a real GPU when wgpu finds one and the CPU backend otherwise — a software Vulkan
//! adapter (lavapipe) is slower than the CPU backend, so it is only used when asked for with
//! `gpu`. Generic code is dispatched with a `match` on [`Device`].

use super::cpu::Cpu;
use super::gpu::{AdapterFilter, Gpu};
use super::Backend;
use anyhow::{bail, Result};
use std::sync::Arc;

/// Also a policy's `train.device` (re-exported as `policy::DeviceChoice`), so the plan and the
/// command line share it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A real GPU if there is one, else the CPU backend.
    #[default]
    Auto,
    /// Any wgpu adapter, software ones (lavapipe) included; an error when there is none.
    Gpu,
    /// The CPU backend.
    Cpu,
}

#[derive(Clone)]
pub enum Device {
    Cpu(Arc<Cpu>),
    Gpu(Arc<Gpu>),
}

impl Device {
    /// Opens the device `choice` asks for and prints (to stderr) which it took and why.
    pub fn open(choice: DeviceChoice) -> Result<Device> {
        let (d, why) = Self::open_explained(choice)?;
        eprintln!("device: {} ({why})", d.describe());
        Ok(d)
    }

    /// Opens the device and returns, with it, the reason it was taken.
    pub fn open_explained(choice: DeviceChoice) -> Result<(Device, String)> {
        match choice {
            DeviceChoice::Cpu => Ok((
                Device::Cpu(Arc::new(Cpu::new())),
                "--device cpu".to_string(),
            )),
            DeviceChoice::Gpu => match Gpu::open(AdapterFilter::AllowCpu)? {
                Some(g) => {
                    let why = if g.is_cpu_adapter() {
                        "--device gpu; this is a software adapter, expect it to be slow"
                    } else {
                        "--device gpu"
                    };
                    Ok((Device::Gpu(Arc::new(g)), why.to_string()))
                }
                None => bail!(
                    "--device gpu: wgpu found no adapter (install a Vulkan driver — e.g. \
                     scripts/install-vulkan for lavapipe — or use --device cpu)"
                ),
            },
            DeviceChoice::Auto => match Gpu::open(AdapterFilter::RealGpu)? {
                Some(g) => Ok((
                    Device::Gpu(Arc::new(g)),
                    "auto: a real GPU adapter was found".to_string(),
                )),
                None => {
                    let soft = super::gpu::adapters()
                        .iter()
                        .map(|a| a.get_info().name)
                        .collect::<Vec<_>>();
                    let why = if soft.is_empty() {
                        "auto: no GPU adapter found".to_string()
                    } else {
                        format!(
                            "auto: only software adapters found ({}), slower than the CPU backend; \
                             use --device gpu to run on them anyway",
                            soft.join(", ")
                        )
                    };
                    Ok((Device::Cpu(Arc::new(Cpu::new())), why))
                }
            },
        }
    }

    /// "gpu: NVIDIA … (Vulkan, DiscreteGpu)" or "cpu: cpu (8 threads)".
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu(c) => format!("cpu backend: {}", c.name()),
            Device::Gpu(g) => format!(
                "gpu backend: {} ({:?}, {:?}, gemm kernel {})",
                g.info().name,
                g.info().backend,
                g.info().device_type,
                g.gemm_kernel().name()
            ),
        }
    }

    pub fn kind(&self) -> super::BackendKind {
        match self {
            Device::Cpu(_) => super::BackendKind::Cpu,
            Device::Gpu(_) => super::BackendKind::Gpu,
        }
    }

    pub fn ledger(&self) -> &super::Ledger {
        match self {
            Device::Cpu(c) => c.ledger(),
            Device::Gpu(g) => g.ledger(),
        }
    }
}

/// Keeps the Vulkan loader quiet where there is no desktop session. Mesa's device-select layer
/// (installed with every Mesa Vulkan driver, lavapipe included) asks the Wayland compositor for
/// the default GPU; without `XDG_RUNTIME_DIR`, libwayland prints "error: XDG_RUNTIME_DIR is
/// invalid or not set in the environment." on stderr for every instance created — two to four
/// lines per `--device auto` run, though nothing is wrong. The layer only reorders adapters, and
/// adarank ranks adapters itself, so it is switched off (`NODEVICE_SELECT=1`) when there is no
/// session to ask. A user's own setting of `NODEVICE_SELECT` is left alone.
///
/// Call it at the start of `main`, before any thread exists: changing the environment is only
/// sound while no other thread can read it.
pub fn quiet_vulkan_loader() {
    let session = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .is_some_and(|d| std::path::Path::new(&d).is_dir());
    if !session && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
