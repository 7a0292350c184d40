//! `adarank devices` — list compute adapters with backend, type, limits and features.

use crate::backend::cpu::Cpu;
use crate::backend::device::{Device, DeviceChoice};
use crate::backend::gpu;
use crate::backend::Backend;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {}

pub fn main(_args: DevicesArgs) -> anyhow::Result<()> {
    let adapters = gpu::adapters();
    if adapters.is_empty() {
        println!(
            "wgpu adapters: none found (install a Vulkan driver, e.g. scripts/install-vulkan)"
        );
    } else {
        println!("wgpu adapters ({}), best first:", adapters.len());
        for (i, a) in adapters.iter().enumerate() {
            println!("  [{i}] {}", gpu::describe_adapter(a));
        }
    }
    println!("cpu backend: {}", Cpu::new().name());
    // What `--device auto` would take, and why.
    let (d, why) = Device::open_explained(DeviceChoice::Auto)?;
    println!("--device auto takes: {} ({why})", d.describe());
    Ok(())
}
