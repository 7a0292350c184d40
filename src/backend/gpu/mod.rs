//! The GPU backend: wgpu and the WGSL kernels in `shaders/`.
//!
//! - [`Gpu::open`] picks an adapter (real GPUs first; a CPU-type adapter such as lavapipe only
//!   when allowed), creates the device with the adapter's own limits, and installs an
//!   uncaptured-error handler so that device errors become `Err`s at the next `sync`/`download`.
//! - Ops record compute passes into one pending command encoder, submitted in batches (per-submit
//!   overhead dominates small ops); `sync`/`download` submit and wait.
//! - Pipelines are built on first use and cached per (shader, entry point, override constants).
//! - Tensors come from a buffer pool ([`pool`]) and hold a ledger guard for their bytes.
//! - Tensors larger than the storage binding limit (128 MiB on many adapters) are handled by
//!   elementwise and row ops, which bind 256-byte aligned sub-ranges and dispatch per chunk.

mod dispatch;
mod ops;
pub mod pool;
pub mod shaders;

pub use pool::{GpuBuf, GpuIds};

use super::Ledger;
use anyhow::{bail, Context, Result};
use dispatch::{ErrorLog, PipelineCache};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which GEMM kernel `matmul` runs (see `shaders/matmul.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum GemmKernel {
    /// 8×16 outputs per invocation from registers, no shared memory: for CPU-type adapters
    /// without usable subgroups, and for the shapes `Subgroup` does not take.
    RegisterBlocked,
    /// Shared-memory 64×64 tiles: fastest on real GPUs.
    Tiled,
    /// 16×64 outputs per invocation, op(B) shared across a subgroup of 8 by broadcast
    /// (shaders/matmul_subgroup.wgsl): fastest on lavapipe. Whole 128×64 tiles with k ≥ 16
    /// only; the rest of a GEMM (edge strips, small or short shapes) runs `SubgroupSmall`.
    Subgroup,
    /// The subgroup kernel on small tiles with edge guards (shaders/matmul_small.wgsl): 16×8,
    /// 1×64 or 8×32 per invocation by the block's shape. Runs what `Subgroup` does not tile:
    /// edge strips, LoRA's rank-r products, attention's per-head GEMMs.
    SubgroupSmall,
}

impl GemmKernel {
    /// The kernel that is fastest on an adapter of this type; `subgroups` says whether the
    /// device has subgroup operations with every subgroup at least 8 wide.
    pub fn default_for(device_type: wgpu::DeviceType, subgroups: bool) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu if subgroups => GemmKernel::Subgroup,
            wgpu::DeviceType::Cpu => GemmKernel::RegisterBlocked,
            _ => GemmKernel::Tiled,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::RegisterBlocked => "register-blocked",
            GemmKernel::Tiled => "tiled",
            GemmKernel::Subgroup => "subgroup",
            GemmKernel::SubgroupSmall => "subgroup-small",
        }
    }
}

/// Subgroup operations with every subgroup at least 8 invocations wide, so a workgroup of 8 is
/// one subgroup.
fn subgroups_of_8(features: &wgpu::Features, info: &wgpu::AdapterInfo) -> bool {
    features.contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8
}

/// Whether a CPU-type adapter (lavapipe, SwiftShader) may be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFilter {
    /// Discrete, integrated, virtual or other GPUs only.
    RealGpu,
    /// Also software adapters (slow, but they run the real kernels: tests, `--device gpu`).
    AllowCpu,
}

pub struct Gpu {
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    device: wgpu::Device,
    queue: wgpu::Queue,
    ledger: Ledger,
    pool: Arc<pool::Pool>,
    pipelines: PipelineCache,
    pending: Mutex<dispatch::Pending>,
    errors: Arc<ErrorLog>,
    /// The GEMM kernel `matmul` uses, chosen for the adapter when the device opens.
    gemm: GemmKernel,
    /// A one-element buffer bound where a kernel's optional input is absent.
    dummy: wgpu::Buffer,
    counters: CounterCells,
    /// Wall time per dispatch (off unless made by [`Gpu::profiled`]).
    profile: super::profile::Profile,
}

/// [`crate::backend::Counters`] as atomics (ops record from any thread).
#[derive(Default)]
pub(crate) struct CounterCells {
    pub dispatches: AtomicU64,
    pub submits: AtomicU64,
    pub read_back_bytes: AtomicU64,
    pub read_backs: AtomicU64,
    pub uploaded_bytes: AtomicU64,
}

impl CounterCells {
    pub fn add(cell: &AtomicU64, n: u64) {
        cell.fetch_add(n, Ordering::Relaxed);
    }
    fn snapshot(&self) -> crate::backend::Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::backend::Counters {
            dispatches: g(&self.dispatches),
            submits: g(&self.submits),
            read_back_bytes: g(&self.read_back_bytes),
            read_backs: g(&self.read_backs),
            uploaded_bytes: g(&self.uploaded_bytes),
        }
    }
}

/// The wgpu instance: Vulkan/Metal/DX12 unless `WGPU_BACKEND` says otherwise (a GL adapter
/// would be listed too on Linux and compiles shaders very slowly).
pub fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    wgpu::Instance::new(desc.with_env())
}

/// Every adapter the instance sees, best first (discrete, integrated, virtual, other, CPU).
pub fn adapters() -> Vec<wgpu::Adapter> {
    let inst = instance();
    let mut list = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    list.sort_by_key(|a| rank(a.get_info().device_type));
    list
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// One line per adapter property that matters here, for `adarank devices` and run records.
pub fn describe_adapter(a: &wgpu::Adapter) -> String {
    let i = a.get_info();
    let l = a.limits();
    let f = a.features();
    let mut feats: Vec<&str> = [
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::SUBGROUP, "subgroup"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (wgpu::Features::SHADER_INT64, "shader-int64"),
        (
            wgpu::Features::SHADER_FLOAT32_ATOMIC,
            "shader-float32-atomic",
        ),
    ]
    .iter()
    .filter(|(x, _)| f.contains(*x))
    .map(|(_, name)| *name)
    .collect();
    if feats.is_empty() {
        feats.push("none of interest");
    }
    format!(
        "{name} | backend {backend:?} | type {ty:?} | driver {driver} {dinfo}\n    \
         limits: max_buffer_size {mb} MiB, max_storage_buffer_binding_size {mbind} MiB, \
         workgroup storage {ws} KiB, {inv} invocations/workgroup, {wg} workgroups/dim, \
         {sb} storage buffers/stage\n    features: {feats}",
        name = i.name,
        backend = i.backend,
        ty = i.device_type,
        driver = i.driver,
        dinfo = i.driver_info,
        mb = l.max_buffer_size >> 20,
        mbind = l.max_storage_buffer_binding_size >> 20,
        ws = l.max_compute_workgroup_storage_size >> 10,
        inv = l.max_compute_invocations_per_workgroup,
        wg = l.max_compute_workgroups_per_dimension,
        sb = l.max_storage_buffers_per_shader_stage,
        feats = feats.join(", "),
    )
}

impl Gpu {
    /// Opens the best adapter `filter` allows; `Ok(None)` when there is none.
    pub fn open(filter: AdapterFilter) -> Result<Option<Gpu>> {
        let found = adapters().into_iter().find(|a| {
            filter == AdapterFilter::AllowCpu || a.get_info().device_type != wgpu::DeviceType::Cpu
        });
        match found {
            Some(a) => Ok(Some(Self::from_adapter(a)?)),
            None => Ok(None),
        }
    }

    /// Creates the device and queue on `adapter`, with the adapter's own limits (the defaults
    /// would cap buffers at 256 MiB and bindings at 128 MiB even on large GPUs).
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("adarank"),
            // Subgroups when present: the lavapipe GEMM kernel shares loads through them.
            required_features: adapter.features() & wgpu::Features::SUBGROUP,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .with_context(|| format!("creating a device on adapter {}", info.name))?;
        let features = device.features();
        let errors = Arc::new(ErrorLog::default());
        let log = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| log.push_device(e)));
        let pool = Arc::new(pool::Pool::new(device.clone(), limits.max_buffer_size));
        let dummy = pool::create_checked(
            &device,
            limits.max_buffer_size,
            pool::BUFFER_ALIGN,
            wgpu::BufferUsages::STORAGE,
            "placeholder buffer",
        )?;
        let gemm = GemmKernel::default_for(info.device_type, subgroups_of_8(&features, &info));
        Ok(Gpu {
            info,
            limits,
            features,
            pipelines: PipelineCache::new(device.clone()),
            device,
            queue,
            ledger: Ledger::new(),
            pool,
            pending: Mutex::new(dispatch::Pending::default()),
            errors,
            gemm,
            dummy,
            counters: CounterCells::default(),
            profile: super::profile::Profile::new(false),
        })
    }

    /// This device, timing every dispatch: each is submitted alone and waited for, so the
    /// profile shows what each kernel costs (and the run is slower by one submit per dispatch).
    pub fn profiled(mut self) -> Self {
        self.profile = super::profile::Profile::new(true);
        self
    }

    /// Wall time per kernel since the last call, slowest first (empty unless [`Gpu::profiled`]).
    pub fn take_profile(&self) -> Vec<super::profile::OpTotal> {
        self.profile.take()
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    pub fn features(&self) -> wgpu::Features {
        self.features
    }
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }
    /// True for software adapters (lavapipe): correct but slow.
    pub fn is_cpu_adapter(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn gemm_kernel(&self) -> GemmKernel {
        self.gemm
    }
    /// Whether `GemmKernel::Subgroup` can run here (else `matmul_with` falls back to
    /// `RegisterBlocked` for it).
    pub fn has_subgroups_of_8(&self) -> bool {
        subgroups_of_8(&self.features, &self.info)
    }

    /// Dispatches, submits and transfers since the device was opened.
    pub fn counters(&self) -> crate::backend::Counters {
        self.counters.snapshot()
    }

    /// Largest byte range one storage binding may cover.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    /// Submits pending work and waits for it; returns the device errors recorded since the last
    /// check as one error naming the ops that were running.
    pub fn wait(&self) -> Result<()> {
        self.flush_and_wait();
        self.errors.take()
    }
}

/// Fails with a clear message when `bytes` cannot be bound in one piece.
fn check_bindable(g: &Gpu, op: &str, what: &str, bytes: u64) -> Result<()> {
    if bytes > g.max_binding() {
        bail!(
            "{op}: {what} is {bytes} bytes, above this adapter's storage binding limit of {} bytes; \
             {op} does not split such tensors (split the batch)",
            g.max_binding()
        );
    }
    Ok(())
}
