//! The plugin host: a sandboxed rhai engine, the helper functions scripts may call, and the
//! mapping of every script failure to a [`PluginError`] with file:line:col.
//!
//! Sandbox (all of it set up in [`sandbox`]): no `import` (module resolver disabled), no `eval`,
//! no file, network or process functions (rhai has none unless registered), no `sleep`; limits
//! on operations, call depth, expression depth and string/array/map sizes, with the built-ins
//! that could outgrow them checking before they allocate (`safe.rs`); after every operation, a
//! CPU-time budget and the heap the call has grown (`guard.rs`, `heap.rs`); a capped print
//! log. A limit error names the statement that was running.

mod guard;
mod heap;
mod safe;

use super::error::{PluginError, PluginErrorKind, PluginResult};
use super::role::Role;
use super::rounding;
use guard::{Guard, Stop};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rhai::{Array, Dynamic, EvalAltResult, FuncArgs, Map, Scope, AST, FLOAT, INT};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Sandbox limits of the plugin host.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Operations per call (rhai counts statements, expressions and function calls).
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// CPU-time budget of one role call (its thread's clock: see `host/guard.rs`).
    pub time_budget_ms: u64,
    /// CPU-time budget of every call of one host together (one cell's rank engine): a plugin
    /// that stays under the per-call budget but is called hundreds of times cannot stretch a
    /// run without end.
    pub total_budget_ms: u64,
    /// Heap a call may grow (net bytes allocated on its thread while it runs).
    pub max_heap_bytes: u64,
    /// Bytes of `print`/`debug` output kept between two reads of the log.
    pub max_print_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 50_000_000,
            max_call_levels: 64,
            max_expr_depth: 128,
            max_string_size: 1 << 20,
            max_array_size: 1 << 20,
            max_map_size: 1 << 14,
            time_budget_ms: 5_000,
            total_budget_ms: 30_000,
            max_heap_bytes: 256 << 20,
            max_print_bytes: 64 << 10,
        }
    }
}

/// A compiled plugin script.
#[derive(Clone)]
pub struct Plugin {
    /// How errors name the file (the path as given, or `builtin:NAME.rhai`).
    pub file: String,
    pub source: String,
    ast: AST,
    /// The sandbox's guard: where the last call of this plugin's host ended.
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("file", &self.file).finish()
    }
}

impl Plugin {
    /// Whether the script's source names `key` anywhere (code or comments): the engine skips
    /// costly adapter-map entries no script names (see `RankEngine::adapter_maps`).
    pub fn mentions(&self, key: &str) -> bool {
        self.source.contains(key)
    }

    /// The functions the script defines: name and parameter names, sorted by name then arity.
    pub fn functions(&self) -> Vec<(String, Vec<String>)> {
        let mut f: Vec<(String, Vec<String>)> = self
            .ast
            .iter_functions()
            .map(|f| {
                let params = f.params.iter().map(|p| p.to_string()).collect();
                (f.name.to_string(), params)
            })
            .collect();
        f.sort();
        f
    }

    /// Whether the script defines `name` with `arity` parameters.
    pub fn defines(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }
    /// Line and column of `fn name(` in the source (for errors about a returned value).
    pub fn fn_position(&self, name: &str) -> (Option<usize>, Option<usize>) {
        for (ln, line) in self.source.lines().enumerate() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("fn ") {
                if rest.trim_start().starts_with(name)
                    && rest.trim_start()[name.len()..]
                        .trim_start()
                        .starts_with('(')
                {
                    return (Some(ln + 1), Some(line.len() - t.len() + 1));
                }
            }
        }
        (None, None)
    }
    /// An error about what the role function returned, pointing at the statement that returned
    /// it (the last one the call ran), or at the function's definition when that is unknown.
    pub fn return_error(
        &self,
        role: Role,
        kind: PluginErrorKind,
        message: impl Into<String>,
        adapter: Option<&str>,
        value: Option<String>,
    ) -> Box<PluginError> {
        let (line, col) = match self.guard.position() {
            Some((l, c)) => (Some(l), Some(c)),
            None => self.fn_position(role.function()),
        };
        Box::new(PluginError {
            file: self.file.clone(),
            line,
            col,
            role,
            kind,
            adapter: adapter.map(str::to_string),
            value,
            message: message.into(),
        })
    }
}

/// The sandboxed rhai engine with the helper API registered.
pub struct PluginHost {
    engine: rhai::Engine,
    limits: Limits,
    guard: Arc<Guard>,
    params: Arc<RwLock<Map>>,
    rng: Arc<Mutex<StdRng>>,
    /// CPU time every call so far took, against [`Limits::total_budget_ms`].
    spent: Mutex<Duration>,
}

/// How a call on the plugin thread failed: rhai's error, and the host's own kind and message
/// when the host refused what the call returned.
type CallError = (Box<EvalAltResult>, Option<(PluginErrorKind, String)>);

/// Stack of the thread a plugin call runs on. rhai walks nested values recursively (a chain of
/// closures each capturing the one before is dropped one level per closure), and the heap limit
/// still allows hundreds of thousands of levels: far more than a main thread's 8 MiB. Only the
/// pages a call touches are ever committed.
const CALL_STACK_BYTES: usize = 1 << 30;

/// Deepest nesting of arrays and maps a plugin may return: roles return a number, an array of
/// numbers or a map of numbers. A deeper value (or a function pointer) is refused on the call's
/// own thread, where dropping it cannot overflow the caller's stack.
const MAX_RESULT_DEPTH: usize = 4;

/// Why `v` is not a plain value a role can return, if it is not.
fn plain_value(v: &Dynamic, depth: usize) -> Option<String> {
    if depth > MAX_RESULT_DEPTH {
        return Some(format!(
            "returned values nested deeper than {MAX_RESULT_DEPTH} levels"
        ));
    }
    if v.is_fnptr() {
        return Some("returned a function pointer or closure, not a value".into());
    }
    if let Some(a) = v.read_lock::<Array>() {
        return a.iter().find_map(|x| plain_value(x, depth + 1));
    }
    if let Some(m) = v.read_lock::<Map>() {
        return m.values().find_map(|x| plain_value(x, depth + 1));
    }
    None
}

/// Items of the arrays, keys of the maps and bytes of the strings (keys included) in `v`, nested
/// ones counted too, as rhai's own size check counts them.
fn sizes(v: &Dynamic) -> (usize, usize, usize) {
    let add =
        |a: (usize, usize, usize), b: (usize, usize, usize)| (a.0 + b.0, a.1 + b.1, a.2 + b.2);
    if let Some(a) = v.read_lock::<Array>() {
        return a.iter().map(sizes).fold((a.len(), 0, 0), add);
    }
    if let Some(m) = v.read_lock::<Map>() {
        let keys = m.keys().map(|k| k.len()).sum();
        return m.values().map(sizes).fold((0, m.len(), keys), add);
    }
    if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
        return (0, 0, s.len());
    }
    (0, 0, 0)
}

/// Why the value a role returned is past the sandbox's size limits, if it is. rhai checks a map's
/// size when it is written as a literal, by a property (`m.k = v`) or by a method, but not when
/// `m[k] = v` adds a key: a map grown that way is held only by the heap limit inside the call,
/// and is refused here, on the call's thread, before the engine copies it (a learner's state is
/// copied into the engine, back into the next call, and into the records).
fn oversize(v: &Dynamic, limits: &Limits, function: &str) -> Option<String> {
    let (items, keys, bytes) = sizes(v);
    [
        (
            keys,
            limits.max_map_size,
            "keys in its maps",
            "max_map_size",
        ),
        (
            items,
            limits.max_array_size,
            "items in its arrays",
            "max_array_size",
        ),
        (
            bytes,
            limits.max_string_size,
            "bytes in its strings and keys",
            "max_string_size",
        ),
    ]
    .into_iter()
    .find(|(n, max, _, _)| n > max)
    .map(|(n, max, what, knob)| {
        format!(
            "stopped: `{function}` returned a value with {n} {what}, past the plugin \
             sandbox's limit of {max} (`{knob}` in EngineConfig.limits); return only the \
             numbers the role needs"
        )
    })
}

fn to_f64(d: &Dynamic) -> Result<f64, Box<EvalAltResult>> {
    if let Ok(f) = d.as_float() {
        Ok(f)
    } else if let Ok(i) = d.as_int() {
        Ok(i as f64)
    } else {
        Err(format!("expected a number, found {}", d.type_name()).into())
    }
}

fn floats(a: &Array) -> Result<Vec<f64>, Box<EvalAltResult>> {
    a.iter().map(to_f64).collect()
}

fn float_array(v: &[f64]) -> Array {
    v.iter().map(|x| Dynamic::from_float(*x as FLOAT)).collect()
}

/// The sandboxed engine: every limit, callback and replaced built-in of the plugin host.
fn sandbox(limits: &Limits, guard: &Arc<Guard>) -> rhai::Engine {
    let mut engine = rhai::Engine::new();
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_fail_on_invalid_map_property(true);
    engine.set_strict_variables(true);

    // After every operation: the deadline (one clock read, ~20 ns) and the call's heap (a
    // thread-local read). The token only tells `map_error` which limit fired.
    let g = guard.clone();
    engine.on_progress(move |_| {
        g.check().map(|s| {
            Dynamic::from(match s {
                Stop::Time => "time",
                Stop::Heap(_) => "heap",
                Stop::Size(_) => "size",
            })
        })
    });
    // rhai reports a limit at the host's call site, which has no position; the debugger hook
    // sees every statement and expression as it starts, so the error can name the one running.
    let g = guard.clone();
    // rhai marks this API "volatile" (it may change), not deprecated.
    #[allow(deprecated)]
    engine.register_debugger(
        |_, dbg| dbg,
        move |_, event, _, _, pos| {
            // Only steps: the events of a function exiting carry the position of its end.
            if let (rhai::debugger::DebuggerEvent::Step, Some(line), Some(col)) =
                (event, pos.line(), pos.position())
            {
                g.set_position(line, col);
            }
            Ok(rhai::debugger::DebuggerCommand::StepInto)
        },
    );
    let g = guard.clone();
    engine.on_print(move |s| g.print(s));
    let g = guard.clone();
    engine.on_debug(move |s, src, pos| g.print(&format!("{}:{pos}: {s}", src.unwrap_or("?"))));
    safe::register(
        &mut engine,
        guard,
        limits.max_string_size,
        limits.max_array_size,
    );
    engine
}

impl PluginHost {
    pub fn new(limits: Limits, seed: u64) -> Self {
        let guard = Arc::new(Guard::new(limits.max_heap_bytes, limits.max_print_bytes));
        let engine = sandbox(&limits, &guard);
        let params = Arc::new(RwLock::new(Map::new()));
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let mut host = Self {
            engine,
            limits,
            guard,
            params,
            rng,
            spent: Mutex::new(Duration::ZERO),
        };
        host.register_helpers();
        host
    }

    fn register_helpers(&mut self) {
        let e = &mut self.engine;
        register_arithmetic(e);
        register_sorting(e, &self.guard);
        register_rounding(e, &self.guard);
        register_fits(e, &self.guard);
        register_spectra(e, &self.guard);
        register_params(e, &self.params, &self.rng);
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Parameters scripts read with `param(name)`: the policy's plugin parameters, r_min, r_max,
    /// and the learner's state (alpha, beta, ...).
    pub fn set_params(&self, m: Map) {
        *self.params.write().unwrap_or_else(|x| x.into_inner()) = m;
    }

    /// Re-seed `rand()` (the random allocator draws from it).
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|x| x.into_inner()) = StdRng::seed_from_u64(seed);
    }

    /// Lines scripts printed since the last call (capped at `Limits::max_print_bytes`).
    pub fn take_log(&self) -> Vec<String> {
        self.guard.take_log()
    }

    /// Resolve (see [`super::source`]) and compile a plugin file: a missing
    /// `…/plugins/NAME.rhai` with a shipped NAME loads the copy embedded in the binary.
    pub fn load(&self, path: &Path) -> PluginResult<Plugin> {
        super::source::load(
            self,
            &super::source::resolve(&path.to_string_lossy(), Path::new("")),
        )
    }

    pub fn compile(&self, file: &str, source: &str) -> PluginResult<Plugin> {
        match self.engine.compile(source) {
            Ok(mut ast) => {
                ast.set_source(file);
                Ok(Plugin {
                    file: file.to_string(),
                    source: source.to_string(),
                    ast,
                    guard: self.guard.clone(),
                })
            }
            Err(e) => {
                let pos = e.1;
                Err(Box::new(PluginError {
                    file: file.to_string(),
                    line: pos.line(),
                    col: pos.position(),
                    role: Role::Load,
                    kind: PluginErrorKind::Load,
                    adapter: None,
                    value: None,
                    message: format!("syntax error: {}", e.0),
                }))
            }
        }
    }

    /// Check that `plugin` defines the function of `role` with its parameters ([`Role::arity`]).
    pub fn require(&self, plugin: &Plugin, role: Role) -> PluginResult<()> {
        let arity = role.arity();
        if plugin.defines(role.function(), arity) {
            return Ok(());
        }
        Err(Box::new(PluginError {
            file: plugin.file.clone(),
            line: None,
            col: None,
            role,
            kind: PluginErrorKind::MissingFunction,
            adapter: None,
            value: None,
            message: format!(
                "a {} plugin must define `fn {}` with {arity} parameter(s)",
                role.name(),
                role.function()
            ),
        }))
    }

    /// Call the role's function with the time budget armed. `adapter` names the adapter the
    /// call is about, for the error.
    /// The call runs on a thread of its own with a large stack ([`CALL_STACK_BYTES`]), where its
    /// values are also dropped; its deadline is the per-call budget or what is left of the
    /// host's total budget, whichever comes first.
    pub fn call(
        &self,
        plugin: &Plugin,
        role: Role,
        adapter: Option<&str>,
        args: impl FuncArgs + Send,
    ) -> PluginResult<Dynamic> {
        let per_call = Duration::from_millis(self.limits.time_budget_ms);
        let total = Duration::from_millis(self.limits.total_budget_ms);
        let spent = *self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let left = total.saturating_sub(spent);
        let budget = per_call.min(left);
        let by_total = left < per_call;
        let total_spent = || {
            format!(
                "stopped: the plugin calls of this cell used up their total time budget of {} ms \
                 ({} ms a call)",
                self.limits.total_budget_ms, self.limits.time_budget_ms
            )
        };
        if budget.is_zero() {
            let e = self.host_error(
                plugin,
                role,
                adapter,
                PluginErrorKind::Timeout,
                total_spent(),
            );
            return Err(Box::new(e));
        }
        let started = std::time::Instant::now();
        let out = std::thread::scope(|sc| {
            let run = || -> Result<Dynamic, CallError> {
                self.guard.arm(budget);
                let mut scope = Scope::new();
                let meter = heap::Meter::start();
                let result =
                    self.engine
                        .call_fn::<Dynamic>(&mut scope, &plugin.ast, role.function(), args);
                let checked = match result {
                    Ok(v) => match plain_value(&v, 0) {
                        Some(why) => Err((
                            "not a plain value".into(),
                            Some((PluginErrorKind::BadReturn, why)),
                        )),
                        None => match oversize(&v, &self.limits, role.function()) {
                            Some(why) => {
                                Err(("too large".into(), Some((PluginErrorKind::Limit, why))))
                            }
                            None => Ok(v),
                        },
                    },
                    Err(e) => Err((e, None)),
                };
                drop(scope);
                drop(meter);
                self.guard.finish();
                checked
            };
            std::thread::Builder::new()
                .name("plugin".into())
                .stack_size(CALL_STACK_BYTES)
                .spawn_scoped(sc, run)
                .map(|h| h.join())
        });
        // The call's CPU time (see `guard.rs`), or its wall-clock time if the thread never ran.
        let used = match &out {
            Ok(Ok(_)) => self.guard.last_cpu(),
            _ => started.elapsed(),
        };
        *self.spent.lock().unwrap_or_else(|p| p.into_inner()) += used;
        let result = match out {
            Ok(Ok(r)) => r,
            // No thread (out of threads or memory): say so rather than run on a small stack.
            Err(e) => {
                return Err(Box::new(self.host_error(
                    plugin,
                    role,
                    adapter,
                    PluginErrorKind::Limit,
                    format!("could not start its call: {e}"),
                )))
            }
            Ok(Err(_)) => {
                return Err(Box::new(self.host_error(
                    plugin,
                    role,
                    adapter,
                    PluginErrorKind::Limit,
                    "its call ended in a panic of the plugin host".into(),
                )))
            }
        };
        result.map_err(|(e, why)| {
            let mut err = self.map_error(plugin, role, adapter, &e);
            if let Some((kind, why)) = why {
                err.kind = kind;
                err.value = None;
                err.message = why;
            } else if by_total && err.kind == PluginErrorKind::Timeout {
                err.message = total_spent();
            }
            Box::new(err)
        })
    }

    /// An error of the host around a call (not of the script's own statements).
    fn host_error(
        &self,
        plugin: &Plugin,
        role: Role,
        adapter: Option<&str>,
        kind: PluginErrorKind,
        message: String,
    ) -> PluginError {
        let (line, col) = plugin.fn_position(role.function());
        PluginError {
            file: plugin.file.clone(),
            line,
            col,
            role,
            kind,
            adapter: adapter.map(str::to_string),
            value: None,
            message,
        }
    }

    fn map_error(
        &self,
        plugin: &Plugin,
        role: Role,
        adapter: Option<&str>,
        err: &EvalAltResult,
    ) -> PluginError {
        let inner = err.unwrap_inner();
        let mut pos = inner.position();
        if pos.is_none() {
            pos = err.position();
        }
        let stopped = self.guard.stopped();
        let (kind, value) = match (inner, &stopped) {
            (_, Some(Stop::Time)) => (PluginErrorKind::Timeout, None),
            (_, Some(Stop::Heap(_) | Stop::Size(_))) => (PluginErrorKind::Limit, None),
            (EvalAltResult::ErrorTerminated(..), None) => (PluginErrorKind::Timeout, None),
            (
                EvalAltResult::ErrorTooManyOperations(..)
                | EvalAltResult::ErrorStackOverflow(..)
                | EvalAltResult::ErrorDataTooLarge(..)
                | EvalAltResult::ErrorTooManyVariables(..)
                | EvalAltResult::ErrorTooManyModules(..),
                None,
            ) => (PluginErrorKind::Limit, None),
            (EvalAltResult::ErrorRuntime(v, _), None) => {
                // The size-checked built-ins stop a script with a message starting "stopped:".
                let text = v.to_string();
                if text.starts_with("stopped:") {
                    (PluginErrorKind::Limit, None)
                } else {
                    (PluginErrorKind::Script, Some(text))
                }
            }
            _ => (PluginErrorKind::Script, None),
        };
        let full = inner.to_string();
        // rhai appends " (line L, position C)"; the error carries them separately.
        let bare = match full.rfind(" (line ") {
            Some(k) if full.ends_with(')') => full[..k].to_string(),
            _ => full,
        };
        let message = match (kind, &stopped) {
            (PluginErrorKind::Timeout, _) => format!(
                "stopped: ran past its time budget of {} ms",
                self.limits.time_budget_ms
            ),
            (_, Some(Stop::Heap(grown))) => format!(
                "stopped: its heap grew to {} MiB, past the limit of {} MiB",
                grown >> 20,
                self.guard.max_heap() >> 20
            ),
            (_, Some(Stop::Size(why))) => why.clone(),
            // An endless loop meets this limit or the time budget, whichever comes first on
            // the machine: both say the same thing to the author.
            (PluginErrorKind::Limit, _) if bare.contains("Too many operations") => format!(
                "stopped: ran past its limit of {} operations per call",
                self.limits.max_operations
            ),
            (PluginErrorKind::Limit, _) if bare.contains("stopped:") => {
                bare[bare.find("stopped:").unwrap_or(0)..].to_string()
            }
            (PluginErrorKind::Limit, _) => format!("stopped: {bare}"),
            _ => bare.to_string(),
        };
        // rhai re-positions limit and termination errors at the call site, which is the host
        // here (no position): the guard knows the statement that was running.
        let limit = matches!(kind, PluginErrorKind::Timeout | PluginErrorKind::Limit);
        let (line, col) = match (self.guard.position(), pos.is_none() || limit) {
            (Some((l, c)), true) => (Some(l), Some(c)),
            (None, true) => plugin.fn_position(role.function()),
            (_, false) => (pos.line(), pos.position()),
        };
        PluginError {
            file: plugin.file.clone(),
            line,
            col,
            role,
            kind,
            adapter: adapter.map(str::to_string),
            value,
            message,
        }
    }
}

/// Rhai array of floats from f64s (for the maps the engine hands to scripts).
pub fn to_float_array(v: &[f64]) -> Array {
    float_array(v)
}

/// The costly helpers run many steps inside one rhai operation: they look at the deadline
/// themselves, before and while they work.
fn deadline(
    guard: &Arc<Guard>,
) -> impl Fn() -> Result<(), Box<EvalAltResult>> + Clone + Send + Sync + 'static {
    let g = guard.clone();
    move || {
        if g.out_of_time() {
            return Err("stopped: ran past its time budget".into());
        }
        Ok(())
    }
}

/// `sum`, `mean`, `max_of`, `min_of`, `clamp`.
fn register_arithmetic(e: &mut rhai::Engine) {
    e.register_fn("sum", |a: Array| -> Result<FLOAT, Box<EvalAltResult>> {
        Ok(floats(&a)?.iter().sum::<f64>() as FLOAT)
    });
    e.register_fn("mean", |a: Array| -> Result<FLOAT, Box<EvalAltResult>> {
        let v = floats(&a)?;
        if v.is_empty() {
            return Err("mean of an empty array".into());
        }
        Ok((v.iter().sum::<f64>() / v.len() as f64) as FLOAT)
    });
    e.register_fn("max_of", |a: Array| -> Result<FLOAT, Box<EvalAltResult>> {
        let v = floats(&a)?;
        v.iter()
            .cloned()
            .reduce(f64::max)
            .map(|x| x as FLOAT)
            .ok_or_else(|| "max_of an empty array".into())
    });
    e.register_fn("min_of", |a: Array| -> Result<FLOAT, Box<EvalAltResult>> {
        let v = floats(&a)?;
        v.iter()
            .cloned()
            .reduce(f64::min)
            .map(|x| x as FLOAT)
            .ok_or_else(|| "min_of an empty array".into())
    });
    e.register_fn("clamp", |x: FLOAT, lo: FLOAT, hi: FLOAT| x.max(lo).min(hi));
    e.register_fn("clamp", |x: INT, lo: INT, hi: INT| x.max(lo).min(hi));
}

/// `sorted_desc`, `argsort_desc`.
fn register_sorting(e: &mut rhai::Engine, guard: &Arc<Guard>) {
    let out_of_time = deadline(guard);
    let ot = out_of_time.clone();
    e.register_fn(
        "sorted_desc",
        move |a: Array| -> Result<Array, Box<EvalAltResult>> {
            ot()?;
            let mut v = floats(&a)?;
            v.sort_by(|x, y| y.total_cmp(x));
            Ok(float_array(&v))
        },
    );
    let ot = out_of_time.clone();
    e.register_fn(
        "argsort_desc",
        move |a: Array| -> Result<Array, Box<EvalAltResult>> {
            ot()?;
            let v = floats(&a)?;
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&x, &y| v[y].total_cmp(&v[x]).then(x.cmp(&y)));
            Ok(idx
                .into_iter()
                .map(|i| Dynamic::from_int(i as INT))
                .collect())
        },
    );
}

/// `round_to_budget`, `budget_shift`: the rounding that meets an integer rank budget.
fn register_rounding(e: &mut rhai::Engine, guard: &Arc<Guard>) {
    let out_of_time = deadline(guard);
    let g = guard.clone();
    let ot = out_of_time.clone();
    e.register_fn(
        "round_to_budget",
        move |a: Array, budget: INT, rmin: INT, rmax: INT| -> Result<Array, Box<EvalAltResult>> {
            ot()?;
            if budget < 0 || rmin < 0 || rmax < 0 {
                return Err("round_to_budget: negative budget or bound".into());
            }
            let v = floats(&a)?;
            let r = rounding::round_to_budget_until(
                &v,
                budget as usize,
                rmin as usize,
                rmax as usize,
                &|| g.out_of_time(),
            )
            .map_err(|m| format!("round_to_budget: {m}"))?;
            Ok(r.into_iter().map(|x| Dynamic::from_int(x as INT)).collect())
        },
    );
    let g = guard.clone();
    let ot = out_of_time.clone();
    e.register_fn(
        "budget_shift",
        move |a: Array, budget: INT, rmin: INT, rmax: INT| -> Result<FLOAT, Box<EvalAltResult>> {
            ot()?;
            let v = floats(&a)?;
            let n = v.len() as INT;
            // In i128: n·rmin and n·rmax of hostile bounds overflow i64 (a panic, or a wrapped
            // sum that lets an impossible budget through).
            let (n128, b128) = (n as i128, budget as i128);
            if rmin > rmax || b128 < n128 * rmin as i128 || b128 > n128 * rmax as i128 {
                return Err(format!(
                    "budget_shift: budget {budget} cannot be met by {n} values in [{rmin}, {rmax}]"
                )
                .into());
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(format!("budget_shift: value {x} is not finite").into());
            }
            rounding::budget_shift_until(&v, budget as f64, rmin as f64, rmax as f64, &|| {
                g.out_of_time()
            })
            .map(|d| d as FLOAT)
            .ok_or_else(|| "budget_shift: stopped, out of time".into())
        },
    );
}

/// `proportional_fit`, `round_to_param_budget`.
fn register_fits(e: &mut rhai::Engine, guard: &Arc<Guard>) {
    let out_of_time = deadline(guard);
    let ot = out_of_time.clone();
    e.register_fn(
        "proportional_fit",
        move |c: Array, budget: INT| -> Result<Map, Box<EvalAltResult>> {
            ot()?;
            let v = floats(&c)?;
            if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err("proportional_fit: complexities must be finite and > 0".into());
            }
            let (a, b) = rounding::proportional_fit(&v, budget as f64);
            let mut m = Map::new();
            m.insert("alpha".into(), Dynamic::from_float(a as FLOAT));
            m.insert("beta".into(), Dynamic::from_float(b as FLOAT));
            Ok(m)
        },
    );
    let ot = out_of_time.clone();
    e.register_fn(
        "round_to_param_budget",
        move |a: Array,
              costs: Array,
              budget: INT,
              rmin: INT,
              rmax: INT|
              -> Result<Map, Box<EvalAltResult>> {
            ot()?;
            if budget < 0 || rmin < 0 || rmax < 0 {
                return Err("round_to_param_budget: negative budget or bound".into());
            }
            let v = floats(&a)?;
            let c: Vec<u64> = floats(&costs)?
                .into_iter()
                .map(|x| x.max(0.0).round() as u64)
                .collect();
            let stop = || ot().is_err();
            let fit = rounding::round_to_param_budget_until(
                &v,
                &c,
                budget as u64,
                rmin as usize,
                rmax as usize,
                &stop,
            )
            .map_err(|m| format!("round_to_param_budget: {m}"))?;
            let mut m = Map::new();
            m.insert(
                "ranks".into(),
                Dynamic::from_array(
                    fit.ranks
                        .into_iter()
                        .map(|x| Dynamic::from_int(x as INT))
                        .collect(),
                ),
            );
            m.insert("params".into(), Dynamic::from_int(fit.params as INT));
            m.insert("gap".into(), Dynamic::from_int(fit.gap as INT));
            Ok(m)
        },
    );
}

/// `erank`, `stable_rank`.
fn register_spectra(e: &mut rhai::Engine, guard: &Arc<Guard>) {
    let out_of_time = deadline(guard);
    let ot = out_of_time.clone();
    e.register_fn(
        "erank",
        move |a: Array| -> Result<FLOAT, Box<EvalAltResult>> {
            ot()?;
            Ok(super::spectra::effective_rank(&floats(&a)?) as FLOAT)
        },
    );
    let ot = out_of_time.clone();
    e.register_fn(
        "stable_rank",
        move |a: Array| -> Result<FLOAT, Box<EvalAltResult>> {
            ot()?;
            Ok(super::spectra::stable_rank(&floats(&a)?) as FLOAT)
        },
    );
}

/// `param`, `param_or`, `params`: the policy's plugin parameters and the learner's state;
/// `rand`, seeded per plugin.
fn register_params(e: &mut rhai::Engine, params: &Arc<RwLock<Map>>, rng: &Arc<Mutex<StdRng>>) {
    let p = params.clone();
    e.register_fn(
        "param",
        move |name: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            p.read()
                .unwrap_or_else(|x| x.into_inner())
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no plugin parameter `{name}`").into())
        },
    );
    let p = params.clone();
    e.register_fn("param_or", move |name: &str, default: Dynamic| -> Dynamic {
        p.read()
            .unwrap_or_else(|x| x.into_inner())
            .get(name)
            .cloned()
            .unwrap_or(default)
    });
    let p = params.clone();
    e.register_fn("params", move || -> Map {
        p.read().unwrap_or_else(|x| x.into_inner()).clone()
    });
    let r = rng.clone();
    e.register_fn("rand", move || -> FLOAT {
        r.lock().unwrap_or_else(|x| x.into_inner()).random::<f64>() as FLOAT
    });
}
