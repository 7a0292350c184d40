//! Recording kernels: the pipeline cache, the pending command encoder, parameter buffers,
//! chunked binding of tensors larger than the binding limit, and the error log.

use super::{shaders, Gpu};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Submit after this many recorded ops even without a `sync`, so the GPU starts early and
/// parameter buffers do not pile up.
const OPS_PER_SUBMIT: usize = 64;
/// Workgroups per grid dimension (the WebGPU minimum; every adapter allows it).
const MAX_GROUPS: u32 = 65535;

/// Device errors and the ops' own argument errors, reported at the next sync/download.
#[derive(Default)]
pub struct ErrorLog {
    errors: Mutex<Vec<String>>,
    /// Names of the ops recorded since the last submit, for naming what failed.
    recent: Mutex<Vec<&'static str>>,
}

impl ErrorLog {
    pub fn push_device(&self, e: wgpu::Error) {
        let recent = self.recent.lock().unwrap().join(", ");
        let kind = match e {
            wgpu::Error::OutOfMemory { .. } => "out of GPU memory",
            wgpu::Error::Validation { .. } => "GPU validation error",
            _ => "GPU internal error",
        };
        self.errors
            .lock()
            .unwrap()
            .push(format!("{kind} (ops in flight: [{recent}]): {e}"));
    }
    pub fn push(&self, msg: String) {
        self.errors.lock().unwrap().push(msg);
    }
    fn record(&self, op: &'static str) {
        let mut r = self.recent.lock().unwrap();
        if r.len() >= 16 {
            r.remove(0);
        }
        r.push(op);
    }
    fn submitted(&self) {
        self.recent.lock().unwrap().clear();
    }
    pub fn take(&self) -> Result<()> {
        let errs = std::mem::take(&mut *self.errors.lock().unwrap());
        if errs.is_empty() {
            return Ok(());
        }
        bail!("{}", errs.join("\n"))
    }
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

pub struct PipelineCache {
    device: wgpu::Device,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
}

impl PipelineCache {
    pub fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    fn get(
        &self,
        shader: &'static str,
        entry: &'static str,
        consts: &[(&'static str, f64)],
    ) -> Arc<Pipeline> {
        let key = format!("{shader}:{entry}:{consts:?}");
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = {
            let mut mods = self.modules.lock().unwrap();
            mods.entry(shader)
                .or_insert_with(|| {
                    let src = shaders::load(shader);
                    // Bounds and division checks stay on; loop bounding is off: naga's injected
                    // loop counters stop the driver from unrolling and vectorizing the k loop
                    // of the GEMM kernels.
                    let mut checks = wgpu::ShaderRuntimeChecks::checked();
                    checks.force_loop_bounding = false;
                    // SAFETY: every loop in shaders/ is bounded by a parameter the host sets
                    // from tensor sizes (see each kernel), so none can run forever.
                    unsafe {
                        self.device.create_shader_module_trusted(
                            wgpu::ShaderModuleDescriptor {
                                label: Some(shader),
                                source: wgpu::ShaderSource::Wgsl(src),
                            },
                            checks,
                        )
                    }
                })
                .clone()
        };
        // Layout from the shader (`layout: None`): only the bindings the entry point uses.
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: consts,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let layout = pipeline.get_bind_group_layout(0);
        let p = Arc::new(Pipeline { pipeline, layout });
        self.pipelines.lock().unwrap().insert(key, p.clone());
        p
    }
}

#[derive(Default)]
pub struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    ops: usize,
}

/// A range of a buffer bound at `slot`.
pub struct Bind<'a> {
    pub slot: u32,
    pub buf: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// How a buffer argument of a row-chunked op is bound for chunk [r0, r0 + rows).
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    /// `cols` f32 per row: the chunk's rows.
    Rows(&'a wgpu::Buffer),
    /// One 4-byte value per row (mean, rstd, losses, targets).
    PerRow(&'a wgpu::Buffer),
    /// The first `len` 4-byte values, whole, in every chunk (bias, gamma, a table).
    Whole(&'a wgpu::Buffer, usize),
}

/// Parameter words for a kernel's uniform `Params` struct (u32 and f32 fields, in order).
#[derive(Default)]
pub struct Params(pub Vec<u32>);

impl Params {
    pub fn u(mut self, v: usize) -> Self {
        self.0.push(v as u32);
        self
    }
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
}

/// A 2-D grid for `groups` workgroups (kernels index `wid.y * nwg.x + wid.x` and bounds-check).
pub fn grid(groups: usize) -> [u32; 3] {
    let groups = groups.max(1) as u32;
    if groups <= MAX_GROUPS {
        [groups, 1, 1]
    } else {
        [MAX_GROUPS, groups.div_ceil(MAX_GROUPS), 1]
    }
}

impl Gpu {
    /// Records into the pending encoder; submits every `OPS_PER_SUBMIT` ops.
    pub(super) fn encode(&self, op: &'static str, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut p = self.pending.lock().unwrap();
        self.errors.record(op);
        let enc = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        });
        f(enc);
        p.ops += 1;
        if p.ops >= OPS_PER_SUBMIT {
            self.submit_locked(&mut p);
        }
    }

    fn submit_locked(&self, p: &mut Pending) {
        if let Some(enc) = p.encoder.take() {
            self.queue.submit([enc.finish()]);
            super::CounterCells::add(&self.counters.submits, 1);
        }
        p.ops = 0;
        self.errors.submitted();
    }

    /// Submits recorded work without waiting.
    pub fn flush(&self) {
        let mut p = self.pending.lock().unwrap();
        self.submit_locked(&mut p);
    }

    /// Records an argument error for the next `sync`; the op is skipped.
    pub(super) fn reject(&self, msg: String) {
        self.errors.push(msg);
    }

    /// Records one dispatch of `shader::entry` with `params` and `binds`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch(
        &self,
        op: &'static str,
        shader: &'static str,
        entry: &'static str,
        consts: &[(&'static str, f64)],
        params: &Params,
        binds: &[Bind],
        groups: [u32; 3],
    ) {
        let key = self.profile.is_on().then(|| (entry.to_string(), 0.0));
        self.dispatch_keyed(key, op, shader, entry, consts, params, binds, groups)
    }

    /// `dispatch`, timed under `key` (a profile key and the dispatch's FLOPs) when profiling:
    /// the work recorded before it is submitted and waited for first, then this dispatch alone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch_keyed(
        &self,
        key: Option<(String, f64)>,
        op: &'static str,
        shader: &'static str,
        entry: &'static str,
        consts: &[(&'static str, f64)],
        params: &Params,
        binds: &[Bind],
        groups: [u32; 3],
    ) {
        let span = key.map(|(key, flops)| {
            self.flush_and_wait();
            self.profile.span(|| key, flops)
        });
        self.record_dispatch(op, shader, entry, consts, params, binds, groups);
        if span.is_some() {
            self.flush_and_wait();
        }
    }

    /// Submits recorded work and waits for the device (errors stay logged for the next sync).
    pub(super) fn flush_and_wait(&self) {
        self.flush();
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            self.errors
                .push(format!("GPU device poll failed (device lost?): {e}"));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_dispatch(
        &self,
        op: &'static str,
        shader: &'static str,
        entry: &'static str,
        consts: &[(&'static str, f64)],
        params: &Params,
        binds: &[Bind],
        groups: [u32; 3],
    ) {
        let pipe = self.pipelines.get(shader, entry, consts);
        super::CounterCells::add(&self.counters.dispatches, 1);
        let mut words = params.0.clone();
        while !words.len().is_multiple_of(4) || words.is_empty() {
            words.push(0);
        }
        let ubuf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(op),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: ubuf.as_entire_binding(),
        }];
        for b in binds {
            entries.push(wgpu::BindGroupEntry {
                binding: b.slot,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buf,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size.max(4)),
                }),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(op),
            layout: &pipe.layout,
            entries: &entries,
        });
        self.encode(op, |enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipe.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
    }

    /// Row chunks [(r0, rows)] such that `rows · cols` f32 fit one binding and every chunk
    /// starts at a 256-byte aligned offset both in row-major buffers and in per-row buffers
    /// (chunks are whole multiples of `align_rows` rows, itself a multiple of 64).
    pub(super) fn row_chunks(
        &self,
        op: &str,
        rows: usize,
        cols: usize,
        align_rows: usize,
    ) -> Result<Vec<(usize, usize)>> {
        let max_elems = (self.max_binding() / 4) as usize;
        if rows * cols <= max_elems {
            return Ok(vec![(0, rows)]);
        }
        let per = (max_elems / cols.max(1)) / align_rows * align_rows;
        if per == 0 {
            bail!(
                "{op}: rows of {cols} values are too wide to bind {align_rows} of them within the \
                 {} byte storage binding limit",
                self.max_binding()
            );
        }
        Ok((0..rows)
            .step_by(per)
            .map(|r0| (r0, per.min(rows - r0)))
            .collect())
    }

    /// Runs a row-wise kernel over `rows × cols`, chunked when the tensors exceed the binding
    /// limit. `params(r0, rows)` builds the chunk's parameters; `groups(rows)` its workgroups.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows_op(
        &self,
        op: &'static str,
        shader: &'static str,
        entry: &'static str,
        rows: usize,
        cols: usize,
        args: &[(u32, Arg)],
        params: impl Fn(usize, usize) -> Params,
        groups: impl Fn(usize) -> usize,
    ) {
        self.rows_op_consts(op, shader, entry, &[], rows, cols, args, params, groups)
    }

    /// `rows_op` with pipeline-override constants.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows_op_consts(
        &self,
        op: &'static str,
        shader: &'static str,
        entry: &'static str,
        consts: &[(&'static str, f64)],
        rows: usize,
        cols: usize,
        args: &[(u32, Arg)],
        params: impl Fn(usize, usize) -> Params,
        groups: impl Fn(usize) -> usize,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        let chunks = match self.row_chunks(op, rows, cols, 64) {
            Ok(c) => c,
            Err(e) => return self.reject(format!("{e:#}")),
        };
        for (r0, n) in chunks {
            let binds: Vec<Bind> = args
                .iter()
                .map(|&(slot, a)| match a {
                    Arg::Rows(buf) => Bind {
                        slot,
                        buf,
                        offset: (r0 * cols * 4) as u64,
                        size: (n * cols * 4) as u64,
                    },
                    Arg::PerRow(buf) => Bind {
                        slot,
                        buf,
                        offset: (r0 * 4) as u64,
                        size: (n * 4) as u64,
                    },
                    Arg::Whole(buf, len) => Bind {
                        slot,
                        buf,
                        offset: 0,
                        size: (len * 4) as u64,
                    },
                })
                .collect();
            for b in &binds {
                if b.size > self.max_binding() {
                    return self.reject(format!(
                        "{op}: an operand of {} bytes is above the {} byte storage binding limit",
                        b.size,
                        self.max_binding()
                    ));
                }
            }
            self.dispatch(
                op,
                shader,
                entry,
                consts,
                &params(r0, n),
                &binds,
                grid(groups(n)),
            );
        }
    }

    /// An elementwise kernel over `n` values (256 per workgroup); args are bound as rows of 1.
    pub(super) fn elementwise(
        &self,
        op: &'static str,
        shader: &'static str,
        entry: &'static str,
        n: usize,
        args: &[(u32, &wgpu::Buffer)],
        params: impl Fn(usize) -> Params,
    ) {
        let args: Vec<(u32, Arg)> = args.iter().map(|&(s, b)| (s, Arg::Rows(b))).collect();
        self.rows_op(
            op,
            shader,
            entry,
            n,
            1,
            &args,
            |_, count| params(count),
            |count| count.div_ceil(256),
        );
    }

    /// `elementwise` with a vec4 twin: when `n` is a multiple of 4, `entries.1` runs over n/4
    /// vec4s with each buffer bound at its second slot (`args`: ((scalar, vec4) slot, buffer)).
    pub(super) fn elementwise_vec4(
        &self,
        op: &'static str,
        shader: &'static str,
        entries: (&'static str, &'static str),
        n: usize,
        args: &[((u32, u32), &wgpu::Buffer)],
        params: impl Fn(usize) -> Params,
    ) {
        if !n.is_multiple_of(4) {
            let scalar: Vec<(u32, &wgpu::Buffer)> =
                args.iter().map(|&((s, _), b)| (s, b)).collect();
            return self.elementwise(op, shader, entries.0, n, &scalar, params);
        }
        let args: Vec<(u32, Arg)> = args.iter().map(|&((_, s), b)| (s, Arg::Rows(b))).collect();
        self.rows_op(
            op,
            shader,
            entries.1,
            n / 4,
            4,
            &args,
            |_, count| params(count),
            |count| count.div_ceil(256),
        );
    }
}
