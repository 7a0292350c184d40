//! The rank engine: plugins (rhai scripts) decide adapter ranks from statistics the engine
//! gathers; the engine validates what they return and resizes, gates or masks the adapters.
//!
//! One [`RankEngine`] per training run: a [`Core`] every method shares (the plugin host, the
//! slots, the statistics of [`stats::STATS`], the learner's state) and one [`RankMethod`]
//! (`scripted`, `adalora`, `sora`). The training loop reaches it through
//! [`driver::EngineDriver`], which applies the one [`schedule::Schedule`]:
//! - [`RankEngine::on_start`] once before training (W0 spectra, initial ranks). On resume, call
//!   [`RankEngine::load_state`] first; `on_start` then checks the saved ranks.
//! - [`RankEngine::after_backward`] after every backward pass, before the optimizer step.
//! - [`RankEngine::after_step`] after every optimizer step (methods with their own schedule,
//!   per-step learning).
//! - [`RankEngine::reallocate`] and [`RankEngine::finalize`] when the schedule says so.
//! - [`RankEngine::phase_done`] with a condition plugin to end a phase.
//!
//! See docs/ARCHITECTURE.md and plugins/README.md.

pub mod adalora;
pub mod driver;
pub mod error;
pub mod fade;
pub mod host;
pub mod method;
pub mod reads;
pub mod relax;
pub mod role;
pub mod rounding;
pub mod schedule;
pub mod scripted;
pub mod shipped;
pub mod sora;
pub mod source;
pub mod spectra;
pub mod stats;

pub use adalora::AdaLoraConfig;
pub use error::{EngineError, PluginError, PluginErrorKind, PluginResult, Result};
pub use host::{Limits, Plugin, PluginHost};
pub use method::{Allocation, RankMethod, SlotAllocation};
pub use role::{Role, RoleSpec, ROLES};
pub use sora::SoraConfig;
pub use stats::{SlotExtra, W0Stats, STATS, W0_SV_KEEP};

use crate::adapter::{AdapterInfo, AdapterStore, GradStats, ModuleKind};
use rhai::{Array, Dynamic, Map, FLOAT, INT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How ranks are chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Method {
    /// The paper's method: phase 1 uniform at `init_rank`, then at each re-allocation
    /// complexity per adapter → learner (α, β) → allocator.
    Adaptive {
        complexity: PathBuf,
        allocator: PathBuf,
        #[serde(default)]
        learner: Option<PathBuf>,
    },
    /// AdaLoRA (importance masking or pruning under the cubic budget schedule).
    AdaLora(AdaLoraConfig),
    /// SoRA (a trained gate per component, soft-thresholded; components at 0 removed).
    Sora(SoraConfig),
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
    /// Total rank Σ r_i the allocator must meet (Adaptive, Script; 0: unchecked). For AdaLoRA
    /// it is ignored (the target is target_rank × adapters).
    pub budget: usize,
    /// Trainable-parameter budget Σ r_i·(rows_i + cols_i), when the policy sets one: handed to
    /// scripts as `ctx.param_budget` (each adapter's `cost` is its parameters per rank).
    #[serde(default)]
    pub param_budget: Option<usize>,
    /// Lower bound per slot when allocating (0: an allocator may remove an adapter).
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
    /// How re-allocations resize the adapters (handed to the store at `on_start`).
    #[serde(default)]
    pub resize: crate::adapter::ResizeOptions,
}

impl EngineConfig {
    pub fn new(method: Method, budget: usize, init_rank: usize) -> Self {
        Self {
            method,
            budget,
            param_budget: None,
            min_rank: 1,
            max_rank: 64,
            init_rank,
            seed: 0,
            base_dir: None,
            params: BTreeMap::new(),
            limits: Limits::default(),
            resize: Default::default(),
        }
    }
}

/// What the training loop knows at a hook: handed to scripts as `ctx`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineCtx {
    pub step: usize,
    pub epoch: usize,
    /// Index of the current phase (0 for the first).
    pub phase: usize,
    #[serde(default)]
    pub phase_name: String,
    pub total_steps: usize,
    /// Recent training losses, oldest first (the last [`driver::LOSS_WINDOW`]).
    pub losses: Vec<f64>,
    /// Latest evaluation metrics by name.
    pub metrics: BTreeMap<String, f64>,
}

/// How often each hook ran and what it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineCalls {
    pub on_start: usize,
    pub after_backward: usize,
    pub after_step: usize,
    pub reallocate: usize,
    /// Allocations that ran the allocator.
    pub allocations: usize,
    pub resizes: usize,
    pub masks: usize,
    pub phase_done: usize,
    /// Total seconds in `reallocate`/`finalize` (for the re-allocation overhead figure).
    pub reallocate_seconds: f64,
    pub after_backward_seconds: f64,
    /// Total seconds in `after_step` (per-step learning, AdaLoRA's schedule, SoRA).
    #[serde(default)]
    pub after_step_seconds: f64,
}

/// Saved with checkpoints: ranks, statistics, learner and method state, call counts. The
/// random allocator's stream is re-seeded from the seed and the allocation count, not
/// continued.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub ranks: Vec<usize>,
    pub w0: Vec<W0Stats>,
    /// Gradient statistics gathered so far (read back from the device at the checkpoint).
    pub grads: Vec<GradStats>,
    pub learned: BTreeMap<String, f64>,
    pub calls: EngineCalls,
    pub rng_draws: u64,
    #[serde(default)]
    pub method: serde_json::Value,
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

pub(crate) fn number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// Which ranks an allocator may return.
#[derive(Clone, Debug)]
pub enum Bounds {
    /// The policy's [r_min, r_max], capped by min(rows, cols).
    Policy,
    /// Up to a cap per adapter (AdaLoRA: the triplets the adapter holds).
    Caps(Vec<usize>),
}

/// What every rank method shares.
pub struct Core {
    pub cfg: EngineConfig,
    pub host: PluginHost,
    /// The adapters as the engine last saw them (after its own resizes).
    pub infos: Vec<AdapterInfo>,
    pub w0: Vec<W0Stats>,
    /// Gradient statistics of a checkpoint, put back into the store by `on_start`.
    resumed_grads: Vec<GradStats>,
    /// The learner's state (alpha, beta, ...).
    pub learned: BTreeMap<String, f64>,
    pub calls: EngineCalls,
    pub rng_draws: u64,
    /// Lazy statistics some plugin of the method names (see [`stats::Needs`]).
    pub mentioned: Vec<&'static str>,
    resumed: bool,
}

impl Core {
    fn new(cfg: EngineConfig) -> Self {
        let host = PluginHost::new(cfg.limits.clone(), cfg.seed);
        Self {
            cfg,
            host,
            infos: vec![],
            w0: vec![],
            resumed_grads: vec![],
            learned: BTreeMap::new(),
            calls: EngineCalls::default(),
            rng_draws: 0,
            mentioned: vec![],
            resumed: false,
        }
    }

    /// Load and compile a plugin for `role` with the resolver `adarank check` uses
    /// ([`source::resolve`]): plan paths are already resolved; a relative path given through
    /// the API is taken against `base_dir`.
    pub fn load_plugin(&self, p: &Path, role: Role) -> Result<Plugin> {
        let base = self.cfg.base_dir.clone().unwrap_or_default();
        let full = source::resolve(&p.to_string_lossy(), &base);
        let plugin = source::load(&self.host, &full)?;
        self.host.require(&plugin, role)?;
        Ok(plugin)
    }

    /// Note which lazy statistics `plugins` name.
    pub fn note_mentions<'a>(&mut self, plugins: impl IntoIterator<Item = &'a Plugin>) {
        let plugins: Vec<&Plugin> = plugins.into_iter().collect();
        self.mentioned = STATS
            .iter()
            .filter(|s| s.needs != stats::Needs::Nothing)
            .filter(|s| plugins.iter().any(|p| p.mentions(s.key)))
            .map(|s| s.key)
            .collect();
    }

    /// Parameters scripts read with `param(name)`: the policy's, r_min, r_max, init_rank, the
    /// learner's state, and `extra` (the method's own).
    pub fn reset_params(&self, extra: &[(&str, Dynamic)]) {
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
        for (k, v) in extra {
            m.insert((*k).into(), v.clone());
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

    pub fn ranks(&self) -> Vec<usize> {
        self.infos.iter().map(|a| a.rank).collect()
    }

    /// min(rows, cols) of slot `i`: the largest rank it can hold.
    pub fn limit(&self, i: usize) -> usize {
        self.infos[i].rows.min(self.infos[i].cols)
    }

    /// Add this backward pass's gradient statistics of every adapter to the device
    /// accumulators.
    pub fn gather(&mut self, store: &mut dyn AdapterStore) -> Result<()> {
        for i in 0..self.infos.len() {
            if self.infos[i].rank > 0 {
                store.gather_grad_stats(i)?;
            }
        }
        Ok(())
    }

    /// Adapter `i`'s gradient statistics since its last resize (a download).
    pub fn grad_stats(&self, store: &dyn AdapterStore, i: usize) -> Result<GradStats> {
        Ok(store.grad_stats(i)?)
    }

    fn reset_stats(&mut self, store: &mut dyn AdapterStore, i: usize) -> Result<()> {
        Ok(store.reset_grad_stats(i)?)
    }

    /// Resize every adapter whose rank differs from `ranks` (statistics of a resized adapter
    /// start over). Returns whether anything changed.
    pub fn apply_ranks(&mut self, store: &mut dyn AdapterStore, ranks: &[usize]) -> Result<bool> {
        let mut changed = false;
        for (i, &r) in ranks.iter().enumerate() {
            if self.infos[i].rank != r {
                store.resize_adapter(i, r)?;
                self.infos[i].rank = r;
                self.reset_stats(store, i)?;
                changed = true;
            }
        }
        if changed {
            self.calls.resizes += 1;
            self.check_ranks(store, ranks)?;
        }
        Ok(changed)
    }

    /// Re-factorise adapter `i` as the SVD of its ΔW at the same rank (components ordered by
    /// singular value, ΔW unchanged, optimizer moments and statistics restarted), through the
    /// store's own resizing: a grow by one B = 0 component leaves ΔW as it is, and the shrink
    /// back of an ungated adapter is a truncated SVD that drops exactly that empty direction.
    /// An adapter at rank 0 or at full rank (nothing to grow into) is left as it is.
    pub fn rebase(&mut self, store: &mut dyn AdapterStore, i: usize) -> Result<bool> {
        let r = self.infos[i].rank;
        if r == 0 || r >= self.limit(i) {
            return Ok(false);
        }
        store.set_gates(i, None)?;
        store.resize_adapter(i, r + 1)?;
        store.resize_adapter(i, r)?;
        self.reset_stats(store, i)?;
        Ok(true)
    }

    /// Keep only components `keep` of adapter `i` (exact removal, no re-factorisation).
    pub fn keep_components(
        &mut self,
        store: &mut dyn AdapterStore,
        i: usize,
        keep: &[usize],
    ) -> Result<()> {
        if keep.len() == self.infos[i].rank {
            return Ok(());
        }
        store.keep_components(i, keep)?;
        self.infos[i].rank = keep.len();
        self.reset_stats(store, i)?;
        Ok(())
    }

    fn check_ranks(&self, store: &dyn AdapterStore, ranks: &[usize]) -> Result<()> {
        for (i, a) in store.adapters().iter().enumerate() {
            if a.rank != ranks[i] {
                return Err(EngineError::Store(anyhow::anyhow!(
                    "adapter {} has rank {} after resizing to {}",
                    a.name,
                    a.rank,
                    ranks[i]
                )));
            }
        }
        Ok(())
    }

    /// The per-adapter maps scripts receive: every entry of [`STATS`] (lazy ones only when a
    /// plugin names them). `extras` (one per adapter, or empty) adds what the method knows.
    pub fn adapter_maps(&self, store: &dyn AdapterStore, extras: &[SlotExtra]) -> Result<Vec<Map>> {
        let factors = self
            .mentioned
            .iter()
            .any(|k| stats::stat(k).is_some_and(|s| s.needs == stats::Needs::Factors));
        let input = self.mentioned.contains(&"input_ev");
        let none = SlotExtra::default();
        let mut out = Vec::with_capacity(self.infos.len());
        for (i, a) in self.infos.iter().enumerate() {
            let host = if factors && a.rank > 0 {
                Some(store.adapter_host(i)?)
            } else {
                None
            };
            let sample = if input { store.input_sample(i) } else { None };
            let grads = self.grad_stats(store, i)?;
            let s = stats::StatIn {
                index: i,
                info: a,
                w0: &self.w0[i],
                grads: &grads,
                host: host.as_ref(),
                input: sample.as_ref(),
                extra: extras.get(i).unwrap_or(&none),
            };
            let mut m = Map::new();
            for st in STATS {
                if st.needs != stats::Needs::Nothing && !self.mentioned.contains(&st.key) {
                    continue;
                }
                m.insert(st.key.into(), to_dynamic((st.get)(&s)));
            }
            out.push(m);
        }
        Ok(out)
    }

    /// `ctx` as scripts see it.
    pub fn ctx_map(&self, ctx: &EngineCtx, budget: usize) -> Map {
        let mut m = Map::new();
        let int = |x: usize| Dynamic::from_int(x as INT);
        m.insert("step".into(), int(ctx.step));
        m.insert("epoch".into(), int(ctx.epoch));
        m.insert("phase".into(), int(ctx.phase));
        m.insert("phase_name".into(), Dynamic::from(ctx.phase_name.clone()));
        m.insert("total_steps".into(), int(ctx.total_steps));
        m.insert("budget".into(), int(budget));
        m.insert(
            "param_budget".into(),
            self.cfg.param_budget.map_or(Dynamic::UNIT, int),
        );
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

    /// C_i of every adapter from the complexity plugin; each map gets its `complexity`.
    pub fn call_complexity(
        &mut self,
        plugin: &Plugin,
        maps: &mut [Map],
        ctx_map: &Map,
    ) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(maps.len());
        for (i, m) in maps.iter_mut().enumerate() {
            let name = self.infos[i].name.clone();
            let v = self.host.call(
                plugin,
                Role::Complexity,
                Some(&name),
                (
                    Dynamic::from_map(m.clone()),
                    Dynamic::from_map(ctx_map.clone()),
                ),
            )?;
            let bad = |kind, msg: &str, val: String| -> EngineError {
                plugin
                    .return_error(Role::Complexity, kind, msg, Some(&name), Some(val))
                    .into()
            };
            let c = number(&v).ok_or_else(|| {
                bad(
                    PluginErrorKind::BadReturn,
                    &format!("complexity must return a number, got {}", v.type_name()),
                    v.to_string(),
                )
            })?;
            if !c.is_finite() {
                return Err(bad(
                    PluginErrorKind::NotFinite,
                    "complexity is not finite",
                    c.to_string(),
                ));
            }
            if c <= 0.0 {
                return Err(bad(
                    PluginErrorKind::BadReturn,
                    "complexity must be > 0 (the log rule takes ln C)",
                    c.to_string(),
                ));
            }
            m.insert("complexity".into(), Dynamic::from_float(c as FLOAT));
            out.push(c);
        }
        Ok(out)
    }

    /// Call the learner's `function` (`learn` or `learn_step`) with (state, adapters, ctx) and
    /// keep the numbers it returns as the learner's state.
    pub fn call_learner(
        &mut self,
        plugin: &Plugin,
        function: Role,
        adapters: Array,
        ctx_map: Map,
    ) -> Result<()> {
        let state: Map = self
            .learned
            .iter()
            .map(|(k, v)| (k.as_str().into(), Dynamic::from_float(*v as FLOAT)))
            .collect();
        let v = self.host.call(
            plugin,
            function,
            None,
            (
                Dynamic::from_map(state),
                Dynamic::from_array(adapters),
                Dynamic::from_map(ctx_map),
            ),
        )?;
        let bad = |kind, msg: String, val: String| -> EngineError {
            plugin
                .return_error(function, kind, msg, None, Some(val))
                .into()
        };
        let m = v.clone().try_cast::<Map>().ok_or_else(|| {
            bad(
                PluginErrorKind::BadReturn,
                format!(
                    "{} must return a map like #{{alpha: .., beta: ..}}, got {}",
                    function.function(),
                    v.type_name()
                ),
                v.to_string(),
            )
        })?;
        let mut learned = BTreeMap::new();
        for (k, x) in m {
            let f = number(&x).ok_or_else(|| {
                bad(
                    PluginErrorKind::BadReturn,
                    format!("learner state `{k}` must be a number"),
                    x.to_string(),
                )
            })?;
            if !f.is_finite() {
                return Err(bad(
                    PluginErrorKind::NotFinite,
                    format!("learner state `{k}` is not finite"),
                    f.to_string(),
                ));
            }
            learned.insert(k.to_string(), f);
        }
        self.learned = learned;
        Ok(())
    }

    /// Call `allocate(adapters, budget)` and check what it returned.
    pub fn call_allocator(
        &mut self,
        alloc: &Plugin,
        maps: Vec<Map>,
        budget: usize,
        bounds: &Bounds,
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
            let lim = self.limit(i);
            let (lo, hi) = match bounds {
                Bounds::Caps(c) => (0, c[i]),
                Bounds::Policy => (self.cfg.min_rank.min(lim), self.cfg.max_rank.min(lim)),
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

    /// An allocation record from `before` to `after`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        step: u64,
        reason: &str,
        before: &[usize],
        after: &[usize],
        budget: Option<usize>,
        complexity: &[f64],
        score: &[f64],
        resized: bool,
    ) -> Allocation {
        Allocation {
            step,
            reason: reason.into(),
            budget,
            param_budget: self.cfg.param_budget,
            alpha: self.learned.get("alpha").copied(),
            beta: self.learned.get("beta").copied(),
            rule: None,
            slots: Allocation::slots_of(&self.infos, before, after, complexity, score),
            resized,
            seconds: 0.0,
        }
    }
}

fn to_dynamic(v: stats::StatValue) -> Dynamic {
    match v {
        stats::StatValue::Int(i) => Dynamic::from_int(i as INT),
        stats::StatValue::Float(f) => Dynamic::from_float(f as FLOAT),
        stats::StatValue::Str(s) => Dynamic::from(s),
        stats::StatValue::Floats(v) => Dynamic::from_array(host::to_float_array(&v)),
    }
}

/// The engine: one method over the shared core.
pub struct RankEngine {
    core: Core,
    method: Box<dyn RankMethod>,
    conditions: BTreeMap<PathBuf, Plugin>,
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
        let mut core = Core::new(cfg);
        let method: Box<dyn RankMethod> = match core.cfg.method.clone() {
            Method::AdaLora(c) => Box::new(adalora::AdaLoraMethod::new(&mut core, c)?),
            Method::Sora(c) => Box::new(sora::SoraMethod::new(&mut core, c)?),
            m => Box::new(scripted::Scripted::new(&mut core, m)?),
        };
        Ok(Self {
            core,
            method,
            conditions: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.core.cfg
    }
    pub fn calls(&self) -> &EngineCalls {
        &self.core.calls
    }
    pub fn core(&self) -> &Core {
        &self.core
    }
    /// The adapters as the engine last saw them (after its own resizes).
    pub fn adapters(&self) -> &[AdapterInfo] {
        &self.core.infos
    }
    /// Ranks in effect (AdaLoRA masking: unmasked triplets).
    pub fn ranks(&self) -> Vec<usize> {
        self.method.ranks(&self.core)
    }
    /// The learner's state (alpha, beta, ...).
    pub fn learned(&self) -> &BTreeMap<String, f64> {
        &self.core.learned
    }
    /// Lines scripts printed since the last call.
    pub fn take_log(&self) -> Vec<String> {
        self.core.host.take_log()
    }
    pub fn host(&self) -> &PluginHost {
        &self.core.host
    }

    /// Everything a checkpoint needs (reads the gradient statistics, and state the method keeps
    /// in the store, back from the device).
    pub fn state(&self, store: &dyn AdapterStore) -> Result<EngineState> {
        let grads = (0..self.core.infos.len())
            .map(|i| self.core.grad_stats(store, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(EngineState {
            ranks: self.core.ranks(),
            w0: self.core.w0.clone(),
            grads,
            learned: self.core.learned.clone(),
            calls: self.core.calls.clone(),
            rng_draws: self.core.rng_draws,
            method: self.method.state(&self.core, store)?,
        })
    }

    /// Restore from a checkpoint; call before `on_start`, which then checks the store's ranks
    /// against the saved ones instead of assigning initial ranks.
    pub fn load_state(&mut self, st: EngineState) -> Result<()> {
        if st.ranks.len() != st.w0.len() || st.ranks.len() != st.grads.len() {
            return Err(cfg_err(
                "engine state: ranks, spectra and statistics differ in length",
            ));
        }
        let c = &mut self.core;
        c.learned = st.learned;
        c.calls = st.calls;
        c.w0 = st.w0;
        c.resumed_grads = st.grads;
        c.rng_draws = st.rng_draws;
        c.host.reseed(c.cfg.seed.wrapping_add(c.rng_draws));
        c.infos = st
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
        c.resumed = true;
        self.method.load_state(st.method)?;
        Ok(())
    }

    /// W0 spectra once, then the method's starting ranks. Returns the starting allocation
    /// (nothing on resume).
    pub fn on_start(&mut self, store: &mut dyn AdapterStore) -> Result<Option<Allocation>> {
        let c = &mut self.core;
        c.calls.on_start += 1;
        store.set_resize_options(c.cfg.resize)?;
        let infos = store.adapters();
        if infos.is_empty() {
            return Err(cfg_err("the model has no adapter slots"));
        }
        if c.resumed {
            let saved = c.ranks();
            let now: Vec<usize> = infos.iter().map(|a| a.rank).collect();
            if saved != now {
                return Err(cfg_err(format!(
                    "resumed engine state has ranks {saved:?} but the model has {now:?}"
                )));
            }
            c.infos = infos;
            for (i, g) in std::mem::take(&mut c.resumed_grads).iter().enumerate() {
                store.restore_grad_stats(i, g)?;
            }
            c.reset_params(&[]);
            self.method.started(&mut self.core, store, true)?;
            return Ok(None);
        }
        c.infos = infos;
        c.w0 = w0_spectra(store, &c.infos)?;
        c.reset_params(&[]);
        let before = c.ranks();
        let ranks = self.method.start(&mut self.core, store)?;
        let c = &mut self.core;
        for (i, r) in ranks.iter().enumerate() {
            if *r > c.limit(i) {
                return Err(cfg_err(format!(
                    "rank {r} for adapter {} exceeds min(rows, cols) = {}",
                    c.infos[i].name,
                    c.limit(i)
                )));
            }
        }
        let resized = c.apply_ranks(store, &ranks)?;
        let rec = c.record(0, "init", &before, &ranks, None, &[], &[], resized);
        self.method.started(&mut self.core, store, false)?;
        Ok(Some(rec))
    }

    fn ensure_started(&self, what: &str) -> Result<()> {
        if self.core.infos.is_empty() || self.core.w0.len() != self.core.infos.len() {
            return Err(cfg_err(format!("{what} called before on_start")));
        }
        Ok(())
    }

    /// Statistics after a backward pass (before the optimizer step).
    pub fn after_backward(&mut self, step: u64, store: &mut dyn AdapterStore) -> Result<()> {
        let t0 = Instant::now();
        self.ensure_started("after_backward")?;
        self.core.calls.after_backward += 1;
        self.method.after_backward(&mut self.core, step, store)?;
        self.core.calls.after_backward_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// After every optimizer step.
    pub fn after_step(
        &mut self,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        let t0 = Instant::now();
        self.ensure_started("after_step")?;
        self.core.calls.after_step += 1;
        let out = self.method.after_step(&mut self.core, step, store, ctx)?;
        let secs = t0.elapsed().as_secs_f64();
        self.core.calls.after_step_seconds += secs;
        Ok(out.map(|mut a| {
            a.seconds = secs;
            a
        }))
    }

    /// The schedule's `reallocate`. Returns the allocation when the method made one.
    pub fn reallocate(
        &mut self,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        self.timed(|m, c| m.reallocate(c, step, store, ctx))
    }

    /// The schedule's `finalize`: the re-allocating phases are over.
    pub fn finalize(
        &mut self,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        self.timed(|m, c| m.finalize(c, step, store, ctx))
    }

    fn timed(
        &mut self,
        f: impl FnOnce(&mut dyn RankMethod, &mut Core) -> Result<Option<Allocation>>,
    ) -> Result<Option<Allocation>> {
        let t0 = Instant::now();
        self.ensure_started("reallocate")?;
        self.core.calls.reallocate += 1;
        let out = f(self.method.as_mut(), &mut self.core)?;
        let secs = t0.elapsed().as_secs_f64();
        self.core.calls.reallocate_seconds += secs;
        Ok(out.map(|mut a| {
            a.seconds = secs;
            a
        }))
    }

    /// Run a phase condition plugin `done(ctx)`.
    pub fn phase_done(&mut self, plugin: &Path, ctx: &EngineCtx) -> Result<bool> {
        self.core.calls.phase_done += 1;
        let key = plugin.to_path_buf();
        if !self.conditions.contains_key(&key) {
            let p = self.core.load_plugin(plugin, Role::Condition)?;
            self.conditions.insert(key.clone(), p);
        }
        let p = self.conditions[&key].clone();
        let ctx_map = self.core.ctx_map(ctx, self.core.cfg.budget);
        let v = self
            .core
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

    /// Mean seconds per `reallocate` call and per `after_backward` call so far.
    pub fn overhead(&self) -> (Duration, Duration) {
        let c = &self.core.calls;
        let d = |s: f64, n: usize| Duration::from_secs_f64(if n == 0 { 0.0 } else { s / n as f64 });
        (
            d(c.reallocate_seconds, c.reallocate),
            d(c.after_backward_seconds, c.after_backward),
        )
    }
}

/// W0 spectra of every adapter, fetched in chunks and computed in parallel.
fn w0_spectra(store: &dyn AdapterStore, infos: &[AdapterInfo]) -> Result<Vec<W0Stats>> {
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
        let part: Vec<W0Stats> = ws
            .par_iter()
            .enumerate()
            .map(|(k, w)| {
                let a = &infos[start + k];
                W0Stats::of(a.rows, a.cols, &w.data)
            })
            .collect();
        out.extend(part);
    }
    Ok(out)
}
