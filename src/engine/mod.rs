//! The rank engine: plugins (rhai scripts) decide adapter ranks from statistics the engine
//! gathers; the engine validates what they return and resizes or masks the adapters.
//!
//! Hooks the training loop calls, in order (steps are optimizer steps, not micro-batches):
//! - [`RankEngine::on_start`] once before training (W0 spectra, initial ranks). On resume, call
//!   [`RankEngine::load_state`] first; `on_start` then keeps the saved ranks.
//! - [`RankEngine::after_backward`] after every backward pass, before the optimizer step
//!   (gradient statistics; AdaLoRA importance and orthogonality gradients).
//! - [`RankEngine::reallocate`] after the optimizer step whenever the schedule says so (for
//!   AdaLoRA: every step; the engine applies ΔT, t_init and t_final itself).
//! - [`RankEngine::phase_done`] with a condition plugin to end a phase.
//!
//! [`RankEngine::calls`] counts every hook call, so a runner can assert the allocator ran.
//!
//! See docs/ARCHITECTURE.md and plugins/README.md.

pub mod adalora;
pub mod error;
pub mod hooks;
pub mod host;
pub mod planted;
pub mod rounding;
pub mod shipped;
pub mod source;
pub mod spectra;

pub use adalora::AdaLoraConfig;
pub use error::{EngineError, PluginError, PluginErrorKind, PluginResult, Result, Role};
pub use host::{Limits, Plugin, PluginHost};

use crate::adapter::{AdapterHost, AdapterInfo, AdapterStore, ModuleKind};
use adalora::TripletImportance;
use rhai::{Array, Dynamic, Map, FLOAT, INT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How ranks are chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Method {
    /// Every adapter at `init_rank` (shipped `fixed.rhai`).
    Fixed,
    /// A rank per module kind (shipped `layerwise.rhai`); kinds not named get rank 0.
    Layerwise { ranks: BTreeMap<ModuleKind, usize> },
    /// The paper's method: phase 1 uniform at `init_rank`, then at each re-allocation
    /// complexity per adapter → learner (α, β) → allocator.
    Adaptive {
        complexity: PathBuf,
        allocator: PathBuf,
        #[serde(default)]
        learner: Option<PathBuf>,
    },
    /// AdaLoRA (importance masking under the cubic budget schedule).
    AdaLora(AdaLoraConfig),
    /// Any allocator script, started at `init_rank`; complexity defaults to the shipped
    /// `spectral_gradient.rhai`.
    Script {
        allocator: PathBuf,
        #[serde(default)]
        complexity: Option<PathBuf>,
    },
}

/// Everything the engine needs, from the checked policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub method: Method,
    /// Total rank Σ r_i the allocator must meet (Adaptive, Script). For Fixed and Layerwise,
    /// 0 means unchecked; otherwise their sum must not exceed it. For AdaLoRA it is ignored
    /// (the target is target_rank × adapters).
    pub budget: usize,
    pub min_rank: usize,
    pub max_rank: usize,
    pub init_rank: usize,
    pub seed: u64,
    /// Plugin paths are relative to this directory (the policy file's).
    #[serde(default)]
    pub base_dir: Option<PathBuf>,
    /// Plugin parameters, read in scripts with `param(name)`.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub limits: Limits,
    /// Gather gradient statistics every this many `after_backward` calls (≥ 1).
    #[serde(default = "one")]
    pub stats_every: usize,
}

fn one() -> usize {
    1
}

impl EngineConfig {
    pub fn new(method: Method, budget: usize, init_rank: usize) -> Self {
        Self {
            method,
            budget,
            min_rank: 1,
            max_rank: 64,
            init_rank,
            seed: 0,
            base_dir: None,
            params: BTreeMap::new(),
            limits: Limits::default(),
            stats_every: 1,
        }
    }
}

/// What the training loop knows at a hook: handed to scripts as `ctx`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineCtx {
    pub step: usize,
    pub epoch: usize,
    pub phase: usize,
    pub total_steps: usize,
    /// Recent training losses, oldest first.
    pub losses: Vec<f64>,
    /// Latest evaluation metrics by name.
    pub metrics: BTreeMap<String, f64>,
}

/// One allocation, as a line of ranks.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankChange {
    pub step: usize,
    pub names: Vec<String>,
    pub before: Vec<usize>,
    pub after: Vec<usize>,
    /// The budget the allocator was given.
    pub budget: usize,
    /// Complexity per adapter (empty for AdaLoRA).
    pub complexity: Vec<f64>,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    /// Tensors were resized (false when AdaLoRA only masked).
    pub resized: bool,
    /// Seconds spent in this re-allocation (statistics, scripts, resizing).
    pub seconds: f64,
}

/// How often each hook ran and what it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineCalls {
    pub on_start: usize,
    pub after_backward: usize,
    pub reallocate: usize,
    /// Allocations that ran the allocator.
    pub allocations: usize,
    pub resizes: usize,
    pub masks: usize,
    pub phase_done: usize,
    /// Total seconds in `reallocate` (for the re-allocation overhead figure).
    pub reallocate_seconds: f64,
    pub after_backward_seconds: f64,
}

/// Per-adapter statistics the engine gathers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterStats {
    /// Top singular values of W0 (at most [`W0_SV_KEEP`]).
    pub w0_sv: Vec<f64>,
    pub w0_erank: f64,
    pub w0_stable_rank: f64,
    pub grad_a_norm: f64,
    pub grad_b_norm: f64,
    /// Σ (‖∇A‖² + ‖∇B‖²) / rank over the steps seen, and their count.
    pub energy_sum: f64,
    pub energy_steps: usize,
    /// Σ ∇Bᵀ∇B since the adapter last changed rank ([gram_rank × gram_rank]).
    pub gram: Vec<f64>,
    pub gram_rank: usize,
    pub gram_steps: usize,
    pub ada: Option<TripletImportance>,
    /// AdaLoRA: triplets kept (true) or masked (λ = 0).
    pub keep: Vec<bool>,
}

/// How many W0 singular values scripts see (summaries use the full spectrum).
pub const W0_SV_KEEP: usize = 64;

/// Saved with checkpoints: ranks, statistics, learner state, call counts. The random
/// allocator's stream is re-seeded from the seed and the allocation count, not continued.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub ranks: Vec<usize>,
    pub stats: Vec<AdapterStats>,
    pub learned: BTreeMap<String, f64>,
    pub calls: EngineCalls,
    pub rng_draws: u64,
}

pub struct RankEngine {
    cfg: EngineConfig,
    host: PluginHost,
    complexity: Option<Plugin>,
    allocator: Option<Plugin>,
    learner: Option<Plugin>,
    conditions: BTreeMap<PathBuf, Plugin>,
    infos: Vec<AdapterInfo>,
    stats: Vec<AdapterStats>,
    learned: BTreeMap<String, f64>,
    calls: EngineCalls,
    resumed: bool,
    rng_draws: u64,
    /// Some plugin that receives adapter maps names `input_ev`: only then does the engine fetch
    /// an input sample per adapter and take its spectrum (a device download and an SVD per
    /// adapter at every allocation — most of AdaLoRA's per-mask cost when nothing reads it).
    wants_input_ev: bool,
}

fn cfg_err(m: impl Into<String>) -> EngineError {
    EngineError::Config(m.into())
}

fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    use serde_json::Value as J;
    match v {
        J::Null => Dynamic::UNIT,
        J::Bool(b) => Dynamic::from_bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i as INT),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN) as FLOAT),
        },
        J::String(s) => Dynamic::from(s.clone()),
        J::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        J::Object(o) => {
            let m: Map = o
                .iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect();
            Dynamic::from_map(m)
        }
    }
}

fn norm2(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64) * (*x as f64)).sum()
}

impl RankEngine {
    /// Build the engine and compile its plugins (errors name the file and position).
    pub fn new(cfg: EngineConfig) -> Result<Self> {
        if cfg.min_rank > cfg.max_rank {
            return Err(cfg_err(format!(
                "min_rank {} > max_rank {}",
                cfg.min_rank, cfg.max_rank
            )));
        }
        if cfg.stats_every == 0 {
            return Err(cfg_err("stats_every must be at least 1"));
        }
        let host = PluginHost::new(cfg.limits.clone(), cfg.seed);
        let mut e = Self {
            cfg,
            host,
            complexity: None,
            allocator: None,
            learner: None,
            conditions: BTreeMap::new(),
            infos: vec![],
            stats: vec![],
            learned: BTreeMap::new(),
            calls: EngineCalls::default(),
            resumed: false,
            rng_draws: 0,
            wants_input_ev: false,
        };
        let builtin = |f: &str| PathBuf::from(format!("{}{f}", source::BUILTIN));
        let (c, a, l) = match e.cfg.method.clone() {
            Method::Fixed => (None, Some(builtin("fixed.rhai")), None),
            Method::Layerwise { .. } => (None, Some(builtin("layerwise.rhai")), None),
            Method::Adaptive {
                complexity,
                allocator,
                learner,
            } => (Some(complexity), Some(allocator), learner),
            Method::AdaLora(c) => {
                if c.total_steps == 0 || c.tinit + c.tfinal >= c.total_steps {
                    return Err(cfg_err(format!(
                        "AdaLoRA needs tinit + tfinal < total_steps (got {} + {} vs {})",
                        c.tinit, c.tfinal, c.total_steps
                    )));
                }
                if c.target_rank > c.init_rank {
                    return Err(cfg_err("AdaLoRA target_rank must not exceed init_rank"));
                }
                (
                    None,
                    Some(
                        c.allocator
                            .clone()
                            .unwrap_or_else(|| builtin("adalora.rhai")),
                    ),
                    None,
                )
            }
            Method::Script {
                allocator,
                complexity,
            } => (
                Some(complexity.unwrap_or_else(|| builtin("spectral_gradient.rhai"))),
                Some(allocator),
                None,
            ),
        };
        if let Some(p) = c {
            e.complexity = Some(e.load(&p, Role::Complexity, 2)?);
        }
        if let Some(p) = a {
            e.allocator = Some(e.load(&p, Role::Allocator, 2)?);
        }
        if let Some(p) = l {
            e.learner = Some(e.load(&p, Role::Learner, 3)?);
        }
        e.wants_input_ev = [&e.complexity, &e.allocator, &e.learner]
            .into_iter()
            .flatten()
            .any(|p| p.mentions("input_ev"));
        e.reset_params();
        Ok(e)
    }

    /// Resolves and compiles a plugin with the resolver `adarank check` uses
    /// ([`source::resolve`]): plan paths are already resolved; a relative path given through
    /// the API is taken against `base_dir`.
    fn load(&self, p: &Path, role: Role, arity: usize) -> Result<Plugin> {
        let base = self.cfg.base_dir.clone().unwrap_or_default();
        let full = source::resolve(&p.to_string_lossy(), &base);
        let plugin = source::load(&self.host, &full)?;
        self.host.require(&plugin, role, arity)?;
        Ok(plugin)
    }

    fn reset_params(&mut self) {
        let mut m: Map = self
            .cfg
            .params
            .iter()
            .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
            .collect();
        m.insert("r_min".into(), Dynamic::from_int(self.cfg.min_rank as INT));
        m.insert("r_max".into(), Dynamic::from_int(self.cfg.max_rank as INT));
        m.insert(
            "init_rank".into(),
            Dynamic::from_int(self.cfg.init_rank as INT),
        );
        match &self.cfg.method {
            Method::Fixed => {
                m.entry("rank".into())
                    .or_insert(Dynamic::from_int(self.cfg.init_rank as INT));
            }
            Method::Layerwise { ranks } => {
                let r: Map = ranks
                    .iter()
                    .map(|(k, v)| (k.name().into(), Dynamic::from_int(*v as INT)))
                    .collect();
                m.insert("ranks".into(), Dynamic::from_map(r));
            }
            _ => {}
        }
        // Until a learner has run, the log rule starts from α = 1, β = 0 (policy may override).
        for (k, d) in [("alpha", 1.0), ("beta", 0.0)] {
            m.entry(k.into()).or_insert(Dynamic::from_float(d));
        }
        for (k, v) in &self.learned {
            m.insert(k.as_str().into(), Dynamic::from_float(*v as FLOAT));
        }
        self.host.set_params(m);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn calls(&self) -> &EngineCalls {
        &self.calls
    }
    pub fn stats(&self) -> &[AdapterStats] {
        &self.stats
    }
    /// The adapters as the engine last saw them (after its own resizes).
    pub fn adapters(&self) -> &[AdapterInfo] {
        &self.infos
    }
    /// Current ranks (AdaLoRA: unmasked triplets).
    pub fn ranks(&self) -> Vec<usize> {
        self.infos
            .iter()
            .zip(&self.stats)
            .map(|(a, s)| {
                if s.keep.len() == a.rank && !s.keep.is_empty() {
                    s.keep.iter().filter(|k| **k).count()
                } else {
                    a.rank
                }
            })
            .collect()
    }
    /// The learner's state (alpha, beta, ...).
    pub fn learned(&self) -> &BTreeMap<String, f64> {
        &self.learned
    }
    /// Lines scripts printed since the last call.
    pub fn take_log(&self) -> Vec<String> {
        self.host.take_log()
    }
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    pub fn state(&self) -> EngineState {
        EngineState {
            ranks: self.ranks_raw(),
            stats: self.stats.clone(),
            learned: self.learned.clone(),
            calls: self.calls.clone(),
            rng_draws: self.rng_draws,
        }
    }

    fn ranks_raw(&self) -> Vec<usize> {
        self.infos.iter().map(|a| a.rank).collect()
    }

    /// Restore from a checkpoint; call before `on_start`, which then checks the store's ranks
    /// against the saved ones instead of assigning initial ranks.
    pub fn load_state(&mut self, st: EngineState) -> Result<()> {
        if st.ranks.len() != st.stats.len() {
            return Err(cfg_err("engine state: ranks and stats differ in length"));
        }
        self.learned = st.learned;
        self.calls = st.calls;
        self.stats = st.stats;
        self.rng_draws = st.rng_draws;
        self.host.reseed(self.cfg.seed.wrapping_add(self.rng_draws));
        self.infos = st
            .ranks
            .iter()
            .map(|r| AdapterInfo {
                name: String::new(),
                layer: 0,
                kind: ModuleKind::Q,
                rows: 0,
                cols: 0,
                rank: *r,
            })
            .collect();
        self.resumed = true;
        self.reset_params();
        Ok(())
    }

    /// W0 spectra once, then initial ranks (phase 1: uniform `init_rank`).
    pub fn on_start(&mut self, store: &mut dyn AdapterStore) -> Result<()> {
        self.calls.on_start += 1;
        let infos = store.adapters();
        if infos.is_empty() {
            return Err(cfg_err("the model has no adapter slots"));
        }
        if self.resumed {
            let saved = self.ranks_raw();
            let now: Vec<usize> = infos.iter().map(|a| a.rank).collect();
            if saved != now {
                return Err(cfg_err(format!(
                    "resumed engine state has ranks {saved:?} but the model has {now:?}"
                )));
            }
            self.infos = infos;
            return Ok(());
        }
        self.infos = infos;
        self.stats = w0_spectra(store, &self.infos)?;
        let n = self.infos.len();
        let ranks: Vec<usize> = match &self.cfg.method {
            Method::Fixed | Method::Layerwise { .. } => {
                let alloc = self.allocator.clone().expect("allocator set in new");
                let maps = self.adapter_maps(store, &[])?;
                let budget = if self.cfg.budget > 0 {
                    self.cfg.budget
                } else {
                    self.infos.iter().map(|a| a.rows.min(a.cols)).sum()
                };
                let r = self.call_allocator(&alloc, maps, budget, 0, None)?;
                if let Method::Layerwise { ranks } = &self.cfg.method {
                    if let Some(k) = ranks
                        .keys()
                        .find(|k| !self.infos.iter().any(|a| a.kind == **k))
                    {
                        return Err(cfg_err(format!(
                            "layerwise rank given for module kind `{k}`, which no adapter has"
                        )));
                    }
                }
                r
            }
            Method::AdaLora(c) => vec![c.init_rank; n],
            Method::Adaptive { .. } | Method::Script { .. } => {
                if self.cfg.budget > 0
                    && (self.cfg.budget < n * self.cfg.min_rank
                        || self.cfg.budget > n * self.cfg.max_rank)
                {
                    return Err(cfg_err(format!(
                        "budget {} cannot be met by {n} adapters with ranks in [{}, {}]",
                        self.cfg.budget, self.cfg.min_rank, self.cfg.max_rank
                    )));
                }
                vec![self.cfg.init_rank; n]
            }
        };
        for (i, r) in ranks.iter().enumerate() {
            let lim = self.infos[i].rows.min(self.infos[i].cols);
            if *r > lim {
                return Err(cfg_err(format!(
                    "rank {r} for adapter {} exceeds min(rows, cols) = {lim}",
                    self.infos[i].name
                )));
            }
        }
        self.apply_ranks(store, &ranks)?;
        if let Method::AdaLora(_) = &self.cfg.method {
            for i in 0..n {
                let h = store.adapter_host(i)?;
                if h.lambda.is_none() && self.infos[i].rank > 0 {
                    return Err(cfg_err(format!(
                        "AdaLoRA needs adapters in SVD form (λ); adapter {} has none",
                        self.infos[i].name
                    )));
                }
                self.stats[i].keep = vec![true; self.infos[i].rank];
                self.stats[i].ada = Some(TripletImportance::default());
            }
        }
        Ok(())
    }

    fn apply_ranks(&mut self, store: &mut dyn AdapterStore, ranks: &[usize]) -> Result<bool> {
        let mut changed = false;
        for (i, &r) in ranks.iter().enumerate() {
            if self.infos[i].rank != r {
                store.resize_adapter(i, r)?;
                self.infos[i].rank = r;
                let s = &mut self.stats[i];
                s.gram.clear();
                s.gram_rank = 0;
                s.gram_steps = 0;
                changed = true;
            }
        }
        if changed {
            self.calls.resizes += 1;
            let now = store.adapters();
            for (i, a) in now.iter().enumerate() {
                if a.rank != ranks[i] {
                    return Err(EngineError::Store(anyhow::anyhow!(
                        "adapter {} has rank {} after resizing to {}",
                        a.name,
                        a.rank,
                        ranks[i]
                    )));
                }
            }
        }
        Ok(changed)
    }

    /// Gradient statistics after a backward pass (before the optimizer step); for AdaLoRA,
    /// importance and the orthogonality penalty's gradients.
    pub fn after_backward(&mut self, _step: usize, store: &mut dyn AdapterStore) -> Result<()> {
        let t0 = Instant::now();
        self.calls.after_backward += 1;
        if self.stats.len() != self.infos.len() || self.infos.is_empty() {
            return Err(cfg_err("after_backward called before on_start"));
        }
        match &self.cfg.method {
            Method::Fixed | Method::Layerwise { .. } => {}
            Method::Adaptive { .. } | Method::Script { .. } => {
                if (self.calls.after_backward - 1).is_multiple_of(self.cfg.stats_every) {
                    for i in 0..self.infos.len() {
                        let r = self.infos[i].rank;
                        if r == 0 {
                            continue;
                        }
                        let h = store.adapter_host(i)?;
                        self.gradient_stats(i, &h);
                    }
                }
            }
            Method::AdaLora(c) => {
                let c = c.clone();
                self.adalora_after_backward(&c, store)?;
            }
        }
        self.calls.after_backward_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn gradient_stats(&mut self, i: usize, h: &AdapterHost) {
        let info = &self.infos[i];
        let r = info.rank;
        let s = &mut self.stats[i];
        let (ga, gb) = (norm2(&h.grad_a), norm2(&h.grad_b));
        s.grad_a_norm = ga.sqrt();
        s.grad_b_norm = gb.sqrt();
        if !(ga + gb).is_finite() {
            return;
        }
        s.energy_sum += (ga + gb) / r as f64;
        s.energy_steps += 1;
        if h.grad_b.len() == info.rows * r {
            if s.gram_rank != r || s.gram.len() != r * r {
                s.gram = vec![0.0; r * r];
                s.gram_rank = r;
                s.gram_steps = 0;
            }
            spectra::add_gram(info.rows, r, &h.grad_b, &mut s.gram);
            s.gram_steps += 1;
        }
    }

    fn adalora_after_backward(
        &mut self,
        c: &AdaLoraConfig,
        store: &mut dyn AdapterStore,
    ) -> Result<()> {
        let n = self.infos.len();
        // PEFT averages the penalty over every A and every B matrix.
        let mats = 2.0 * self.infos.iter().filter(|a| a.rank > 0).count().max(1) as f64;
        for i in 0..n {
            let (rows, cols, r) = (self.infos[i].rows, self.infos[i].cols, self.infos[i].rank);
            if r == 0 {
                continue;
            }
            let h = store.adapter_host(i)?;
            self.gradient_stats(i, &h);
            let imp = self.stats[i].ada.get_or_insert_with(Default::default);
            imp.p.update(&h.b, &h.grad_b, c.beta1, c.beta2);
            imp.q.update(&h.a, &h.grad_a, c.beta1, c.beta2);
            if let (Some(l), Some(gl)) = (&h.lambda, &h.grad_lambda) {
                imp.lambda.update(l, gl, c.beta1, c.beta2);
            }
            if c.orth_reg > 0.0 {
                let w = (c.orth_reg / mats) as f32;
                let (_, gp) = adalora::orth_penalty_p(rows, r, &h.b);
                let (_, gq) = adalora::orth_penalty_q(r, cols, &h.a);
                let add = AdapterHost {
                    grad_a: gq.iter().map(|g| g * w).collect(),
                    grad_b: gp.iter().map(|g| g * w).collect(),
                    grad_lambda: None,
                    ..h
                };
                store.set_adapter_host(i, &add)?;
            }
        }
        Ok(())
    }

    /// Re-allocate ranks (after the optimizer step). Returns the allocation when the allocator
    /// ran, `None` when the method has nothing to do at this step.
    pub fn reallocate(
        &mut self,
        step: usize,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<RankChange>> {
        let t0 = Instant::now();
        self.calls.reallocate += 1;
        if self.stats.len() != self.infos.len() || self.infos.is_empty() {
            return Err(cfg_err("reallocate called before on_start"));
        }
        let out = match self.cfg.method.clone() {
            Method::Fixed | Method::Layerwise { .. } => None,
            Method::Adaptive { .. } | Method::Script { .. } => {
                Some(self.reallocate_scripted(step, store, ctx)?)
            }
            Method::AdaLora(c) => self.reallocate_adalora(&c, step, store)?,
        };
        let secs = t0.elapsed().as_secs_f64();
        self.calls.reallocate_seconds += secs;
        Ok(out.map(|mut ch| {
            ch.seconds = secs;
            ch
        }))
    }

    fn reallocate_scripted(
        &mut self,
        step: usize,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<RankChange> {
        let budget = self.cfg.budget;
        let mut maps = self.adapter_maps(store, &[])?;
        let ctx_map = self.ctx_map(ctx, budget);
        let mut complexity = Vec::with_capacity(maps.len());
        if let Some(cp) = self.complexity.clone() {
            for (i, m) in maps.iter_mut().enumerate() {
                let name = self.infos[i].name.clone();
                let v = self.host.call(
                    &cp,
                    Role::Complexity,
                    Some(&name),
                    (
                        Dynamic::from_map(m.clone()),
                        Dynamic::from_map(ctx_map.clone()),
                    ),
                )?;
                let c = number(&v).ok_or_else(|| {
                    cp.return_error(
                        Role::Complexity,
                        PluginErrorKind::BadReturn,
                        format!("complexity must return a number, got {}", v.type_name()),
                        Some(&name),
                        Some(v.to_string()),
                    )
                })?;
                if !c.is_finite() {
                    return Err(cp
                        .return_error(
                            Role::Complexity,
                            PluginErrorKind::NotFinite,
                            "complexity is not finite",
                            Some(&name),
                            Some(c.to_string()),
                        )
                        .into());
                }
                if c <= 0.0 {
                    return Err(cp
                        .return_error(
                            Role::Complexity,
                            PluginErrorKind::BadReturn,
                            "complexity must be > 0 (the log rule takes ln C)",
                            Some(&name),
                            Some(c.to_string()),
                        )
                        .into());
                }
                m.insert("complexity".into(), Dynamic::from_float(c as FLOAT));
                complexity.push(c);
            }
        }
        if let Some(lp) = self.learner.clone() {
            let state: Map = self
                .learned
                .iter()
                .map(|(k, v)| (k.as_str().into(), Dynamic::from_float(*v as FLOAT)))
                .collect();
            let arr: Array = maps.iter().cloned().map(Dynamic::from_map).collect();
            let v = self.host.call(
                &lp,
                Role::Learner,
                None,
                (
                    Dynamic::from_map(state),
                    Dynamic::from_array(arr),
                    Dynamic::from_map(ctx_map.clone()),
                ),
            )?;
            let m = v.clone().try_cast::<Map>().ok_or_else(|| {
                lp.return_error(
                    Role::Learner,
                    PluginErrorKind::BadReturn,
                    format!(
                        "learn must return a map like #{{alpha: .., beta: ..}}, got {}",
                        v.type_name()
                    ),
                    None,
                    Some(v.to_string()),
                )
            })?;
            let mut learned = BTreeMap::new();
            for (k, x) in m {
                let f = number(&x).ok_or_else(|| {
                    lp.return_error(
                        Role::Learner,
                        PluginErrorKind::BadReturn,
                        format!("learner state `{k}` must be a number"),
                        None,
                        Some(x.to_string()),
                    )
                })?;
                if !f.is_finite() {
                    return Err(lp
                        .return_error(
                            Role::Learner,
                            PluginErrorKind::NotFinite,
                            format!("learner state `{k}` is not finite"),
                            None,
                            Some(f.to_string()),
                        )
                        .into());
                }
                learned.insert(k.to_string(), f);
            }
            self.learned = learned;
            self.reset_params();
        }
        let alloc = self.allocator.clone().expect("allocator set in new");
        let before = self.ranks_raw();
        let draws_before = self.rng_draws;
        let ranks = self.call_allocator(&alloc, maps, budget, step, None)?;
        self.rng_draws = draws_before + 1;
        let resized = self.apply_ranks(store, &ranks)?;
        self.calls.allocations += 1;
        Ok(RankChange {
            step,
            names: self.infos.iter().map(|a| a.name.clone()).collect(),
            before,
            after: ranks,
            budget,
            complexity,
            alpha: self.learned.get("alpha").copied(),
            beta: self.learned.get("beta").copied(),
            resized,
            seconds: 0.0,
        })
    }

    /// Call `allocate(adapters, budget)` and check what it returned. `cap` bounds each rank
    /// from above (AdaLoRA: the current tensor rank) instead of [r_min, r_max].
    fn call_allocator(
        &mut self,
        alloc: &Plugin,
        maps: Vec<Map>,
        budget: usize,
        _step: usize,
        cap: Option<&[usize]>,
    ) -> Result<Vec<usize>> {
        let n = maps.len();
        let arr: Array = maps.into_iter().map(Dynamic::from_map).collect();
        let v = self.host.call(
            alloc,
            Role::Allocator,
            None,
            (Dynamic::from_array(arr), Dynamic::from_int(budget as INT)),
        )?;
        let bad = |kind, msg: String, adapter: Option<&str>, value: String| -> EngineError {
            alloc
                .return_error(Role::Allocator, kind, msg, adapter, Some(value))
                .into()
        };
        let Some(a) = v.clone().try_cast::<Array>() else {
            return Err(bad(
                PluginErrorKind::BadReturn,
                format!(
                    "allocate must return an array of {n} integers, got {}",
                    v.type_name()
                ),
                None,
                v.to_string(),
            ));
        };
        if a.len() != n {
            return Err(bad(
                PluginErrorKind::BadReturn,
                format!("allocate returned {} ranks for {n} adapters", a.len()),
                None,
                v.to_string(),
            ));
        }
        let fixed_like = matches!(self.cfg.method, Method::Fixed | Method::Layerwise { .. });
        let mut out = Vec::with_capacity(n);
        for (i, x) in a.iter().enumerate() {
            let name = self.infos[i].name.as_str();
            let r = if let Ok(k) = x.as_int() {
                k
            } else if let Ok(f) = x.as_float() {
                if !f.is_finite() {
                    return Err(bad(
                        PluginErrorKind::NotFinite,
                        "rank is not finite".into(),
                        Some(name),
                        f.to_string(),
                    ));
                }
                if f.fract() != 0.0 {
                    return Err(bad(
                        PluginErrorKind::BadReturn,
                        "rank must be an integer (round it, e.g. with round_to_budget)".into(),
                        Some(name),
                        f.to_string(),
                    ));
                }
                f as INT
            } else {
                return Err(bad(
                    PluginErrorKind::BadReturn,
                    format!("rank must be an integer, got {}", x.type_name()),
                    Some(name),
                    x.to_string(),
                ));
            };
            if r < 0 {
                return Err(bad(
                    PluginErrorKind::RankOutOfRange,
                    "rank is negative".into(),
                    Some(name),
                    r.to_string(),
                ));
            }
            let r = r as usize;
            let lim = self.infos[i].rows.min(self.infos[i].cols);
            let (lo, hi) = match cap {
                Some(c) => (0, c[i]),
                None if fixed_like => (0, lim),
                None => (self.cfg.min_rank, self.cfg.max_rank.min(lim)),
            };
            if r < lo || r > hi {
                return Err(bad(
                    PluginErrorKind::RankOutOfRange,
                    format!("rank outside [{lo}, {hi}]"),
                    Some(name),
                    r.to_string(),
                ));
            }
            out.push(r);
        }
        let sum: usize = out.iter().sum();
        if budget > 0 && sum > budget {
            return Err(bad(
                PluginErrorKind::OverBudget,
                format!("ranks add up to {sum}, over the budget {budget}"),
                None,
                format!("{out:?}"),
            ));
        }
        Ok(out)
    }

    fn reallocate_adalora(
        &mut self,
        c: &AdaLoraConfig,
        step: usize,
        store: &mut dyn AdapterStore,
    ) -> Result<Option<RankChange>> {
        let n = self.infos.len();
        let init_total = c.init_rank * n;
        let target_total = c.target_rank * n;
        let (budget, mask_now) = adalora::budget_schedule(c, init_total, target_total, step);
        let final_phase = step + c.tfinal > c.total_steps;
        let first_final = final_phase && step + c.tfinal == c.total_steps + 1;
        if final_phase && !first_final {
            // PEFT keeps the final pattern: masked triplets stay at λ = 0.
            self.apply_masks(store, false)?;
            return Ok(None);
        }
        if !mask_now {
            return Ok(None);
        }
        let scores: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let a = &self.infos[i];
                self.stats[i]
                    .ada
                    .as_ref()
                    .map(|t| t.triplet_scores(a.rows, a.cols, a.rank))
                    .unwrap_or_else(|| vec![0.0; a.rank])
            })
            .collect();
        let maps = self.adapter_maps(store, &scores)?;
        let alloc = self.allocator.clone().expect("allocator set in new");
        let cap: Vec<usize> = self.infos.iter().map(|a| a.rank).collect();
        let before = self.ranks();
        let counts = self.call_allocator(&alloc, maps, budget, step, Some(&cap))?;
        for (i, &k) in counts.iter().enumerate() {
            let mut order: Vec<usize> = (0..scores[i].len()).collect();
            order.sort_by(|&x, &y| scores[i][y].total_cmp(&scores[i][x]).then(x.cmp(&y)));
            let mut keep = vec![false; scores[i].len()];
            for &j in order.iter().take(k) {
                keep[j] = true;
            }
            self.stats[i].keep = keep;
        }
        self.apply_masks(store, true)?;
        self.calls.allocations += 1;
        let mut resized = false;
        if first_final && c.resize {
            // The masked triplets have λ = 0, so the truncated SVD of B·diag(λ)·A at the kept
            // count keeps exactly the unmasked part of ΔW.
            resized = self.apply_ranks(store, &counts)?;
            for (st, &k) in self.stats.iter_mut().zip(&counts) {
                st.keep = vec![true; k];
                st.ada = Some(TripletImportance::default());
            }
        }
        Ok(Some(RankChange {
            step,
            names: self.infos.iter().map(|a| a.name.clone()).collect(),
            before,
            after: counts,
            budget,
            complexity: vec![],
            alpha: None,
            beta: None,
            resized,
            seconds: 0.0,
        }))
    }

    fn apply_masks(&mut self, store: &mut dyn AdapterStore, count: bool) -> Result<()> {
        for i in 0..self.infos.len() {
            let keep = &self.stats[i].keep;
            if keep.is_empty() || keep.iter().all(|k| *k) {
                continue;
            }
            let mut h = store.adapter_host(i)?;
            if let Some(l) = h.lambda.as_mut() {
                for (v, k) in l.iter_mut().zip(keep) {
                    if !k {
                        *v = 0.0;
                    }
                }
            }
            h.grad_a.clear();
            h.grad_b.clear();
            h.grad_lambda = None;
            store.set_adapter_host(i, &h)?;
        }
        if count {
            self.calls.masks += 1;
        }
        Ok(())
    }

    /// Run a phase condition plugin `done(ctx)`.
    pub fn phase_done(&mut self, plugin: &Path, ctx: &EngineCtx) -> Result<bool> {
        self.calls.phase_done += 1;
        let key = plugin.to_path_buf();
        if !self.conditions.contains_key(&key) {
            let p = self.load(plugin, Role::Condition, 1)?;
            self.conditions.insert(key.clone(), p);
        }
        let p = self.conditions[&key].clone();
        let ctx_map = self.ctx_map(ctx, self.cfg.budget);
        let v = self
            .host
            .call(&p, Role::Condition, None, (Dynamic::from_map(ctx_map),))?;
        v.as_bool().map_err(|_| {
            p.return_error(
                Role::Condition,
                PluginErrorKind::BadReturn,
                format!("done must return a bool, got {}", v.type_name()),
                None,
                Some(v.to_string()),
            )
            .into()
        })
    }

    fn ctx_map(&self, ctx: &EngineCtx, budget: usize) -> Map {
        let mut m = Map::new();
        let int = |x: usize| Dynamic::from_int(x as INT);
        m.insert("step".into(), int(ctx.step));
        m.insert("epoch".into(), int(ctx.epoch));
        m.insert("phase".into(), int(ctx.phase));
        m.insert("total_steps".into(), int(ctx.total_steps));
        m.insert("budget".into(), int(budget));
        m.insert("r_min".into(), int(self.cfg.min_rank));
        m.insert("r_max".into(), int(self.cfg.max_rank));
        m.insert("n_adapters".into(), int(self.infos.len()));
        m.insert(
            "losses".into(),
            Dynamic::from_array(host::to_float_array(&ctx.losses)),
        );
        m.insert(
            "loss".into(),
            ctx.losses
                .last()
                .map_or(Dynamic::UNIT, |l| Dynamic::from_float(*l as FLOAT)),
        );
        let metrics: Map = ctx
            .metrics
            .iter()
            .map(|(k, v)| (k.as_str().into(), Dynamic::from_float(*v as FLOAT)))
            .collect();
        m.insert("metrics".into(), Dynamic::from_map(metrics));
        for k in ["alpha", "beta"] {
            if let Some(v) = self.learned.get(k) {
                m.insert(k.into(), Dynamic::from_float(*v as FLOAT));
            }
        }
        m
    }

    /// The per-adapter maps scripts receive (keys documented in plugins/README.md).
    fn adapter_maps(
        &self,
        store: &dyn AdapterStore,
        triplet_scores: &[Vec<f64>],
    ) -> Result<Vec<Map>> {
        let mut out = Vec::with_capacity(self.infos.len());
        for (i, a) in self.infos.iter().enumerate() {
            let s = &self.stats[i];
            let mut m = Map::new();
            let int = |x: usize| Dynamic::from_int(x as INT);
            let fl = |x: f64| Dynamic::from_float(x as FLOAT);
            m.insert("name".into(), Dynamic::from(a.name.clone()));
            m.insert("index".into(), int(i));
            m.insert("layer".into(), int(a.layer));
            m.insert("kind".into(), Dynamic::from(a.kind.name().to_string()));
            m.insert("rows".into(), int(a.rows));
            m.insert("cols".into(), int(a.cols));
            m.insert("rank".into(), int(a.rank));
            m.insert(
                "sv".into(),
                Dynamic::from_array(host::to_float_array(&s.w0_sv)),
            );
            m.insert("w0_erank".into(), fl(s.w0_erank));
            m.insert("w0_stable_rank".into(), fl(s.w0_stable_rank));
            let (mut delta_sv, mut grad_norm) = (
                vec![],
                (s.grad_a_norm.powi(2) + s.grad_b_norm.powi(2)).sqrt(),
            );
            if a.rank > 0 {
                let h = store.adapter_host(i)?;
                delta_sv = spectra::lowrank_singular_values(
                    a.rows,
                    a.cols,
                    a.rank,
                    &h.b,
                    &h.a,
                    h.lambda.as_deref(),
                    h.scale,
                );
                if s.energy_steps == 0 && !h.grad_a.is_empty() {
                    grad_norm = (norm2(&h.grad_a) + norm2(&h.grad_b)).sqrt();
                }
            }
            m.insert("delta_erank".into(), fl(spectra::effective_rank(&delta_sv)));
            m.insert(
                "delta_sv".into(),
                Dynamic::from_array(host::to_float_array(&delta_sv)),
            );
            m.insert("grad_norm".into(), fl(grad_norm));
            m.insert("grad_a_norm".into(), fl(s.grad_a_norm));
            m.insert("grad_b_norm".into(), fl(s.grad_b_norm));
            let energy = if s.energy_steps > 0 {
                s.energy_sum / s.energy_steps as f64
            } else {
                0.0
            };
            m.insert("grad_energy".into(), fl(energy));
            let gsv = if s.gram_steps > 0 {
                spectra::sv_of_gram(s.gram_rank, &s.gram)
            } else {
                vec![]
            };
            m.insert("grad_erank".into(), fl(spectra::effective_rank(&gsv)));
            m.insert(
                "grad_sv".into(),
                Dynamic::from_array(host::to_float_array(&gsv)),
            );
            let (sens, unc) = s.ada.as_ref().map_or((0.0, 0.0), |t| {
                let w = |f: fn(&adalora::Importance) -> f64| f(&t.p) + f(&t.q) + f(&t.lambda);
                (
                    w(|x| x.mean_sensitivity()) / 3.0,
                    w(|x| x.mean_uncertainty()) / 3.0,
                )
            });
            m.insert("sensitivity".into(), fl(sens));
            m.insert("uncertainty".into(), fl(unc));
            let ts = triplet_scores.get(i).cloned().unwrap_or_default();
            m.insert(
                "triplet_scores".into(),
                Dynamic::from_array(host::to_float_array(&ts)),
            );
            let ev = if self.wants_input_ev {
                store
                    .input_sample(i)
                    .map(|x| input_explained_variance(&x))
                    .unwrap_or_default()
            } else {
                vec![]
            };
            m.insert(
                "input_ev".into(),
                Dynamic::from_array(host::to_float_array(&ev)),
            );
            m.insert("complexity".into(), fl(1.0));
            out.push(m);
        }
        Ok(out)
    }

    /// Mean seconds per `reallocate` call and per `after_backward` call so far.
    pub fn overhead(&self) -> (Duration, Duration) {
        let d = |s: f64, n: usize| Duration::from_secs_f64(if n == 0 { 0.0 } else { s / n as f64 });
        (
            d(self.calls.reallocate_seconds, self.calls.reallocate),
            d(self.calls.after_backward_seconds, self.calls.after_backward),
        )
    }
}

fn number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// Explained-variance ratios (largest first) of the centred input sample [n, cols].
fn input_explained_variance(x: &crate::adapter::HostTensor) -> Vec<f64> {
    let (n, c) = match x.shape.as_slice() {
        [n, c] if *n > 1 && *c > 0 && x.data.len() == n * c => (*n, *c),
        _ => return vec![],
    };
    let mut centred = x.data.clone();
    for j in 0..c {
        let m: f32 = (0..n).map(|i| x.data[i * c + j]).sum::<f32>() / n as f32;
        for i in 0..n {
            centred[i * c + j] -= m;
        }
    }
    let sv = spectra::singular_values(n, c, &centred);
    let total: f64 = sv.iter().map(|s| s * s).sum();
    if total <= 0.0 {
        return vec![];
    }
    sv.iter().map(|s| s * s / total).collect()
}

/// W0 spectra of every adapter, fetched in chunks and computed in parallel.
fn w0_spectra(store: &dyn AdapterStore, infos: &[AdapterInfo]) -> Result<Vec<AdapterStats>> {
    use rayon::prelude::*;
    let chunk = rayon::current_num_threads().max(1);
    let mut out = Vec::with_capacity(infos.len());
    for start in (0..infos.len()).step_by(chunk) {
        let end = (start + chunk).min(infos.len());
        let ws = (start..end)
            .map(|i| store.frozen_weight(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (k, w) in ws.iter().enumerate() {
            let a = &infos[start + k];
            if w.data.len() != a.rows * a.cols {
                return Err(EngineError::Store(anyhow::anyhow!(
                    "frozen weight of {} has {} values, expected {} × {}",
                    a.name,
                    w.data.len(),
                    a.rows,
                    a.cols
                )));
            }
        }
        let part: Vec<AdapterStats> = ws
            .par_iter()
            .enumerate()
            .map(|(k, w)| {
                let a = &infos[start + k];
                let sv = spectra::singular_values(a.rows, a.cols, &w.data);
                AdapterStats {
                    w0_erank: spectra::effective_rank(&sv),
                    w0_stable_rank: spectra::stable_rank(&sv),
                    w0_sv: sv.into_iter().take(W0_SV_KEEP).collect(),
                    ..Default::default()
                }
            })
            .collect();
        out.extend(part);
    }
    Ok(out)
}
