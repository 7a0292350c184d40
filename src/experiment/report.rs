//! `results.csv` and `report.md` from a [`Summary`]: the paper's main table (method, metric with
//! its 95% interval, peak memory, wall time, trainable parameters, tokens/s), the seed-paired
//! difference to the baseline arm with interval and permutation p-value, the ablation table,
//! the hyperparameters of every arm, learning-rate sweeps, and warnings (few seeds, early stops).

use super::records::{CellResult, CellStatus, RankRecord, Summary};
use super::seed_stats::{mean_std, paired, paired_diff, MeanStd, PermutationTest};
use std::fmt::Write;

pub fn fmt_bytes(b: f64) -> String {
    const KI: f64 = 1024.0;
    if b >= KI * KI * KI {
        format!("{:.2} GiB", b / (KI * KI * KI))
    } else if b >= KI * KI {
        format!("{:.2} MiB", b / (KI * KI))
    } else if b >= KI {
        format!("{:.1} KiB", b / KI)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.2} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.2} s")
    }
}

/// A number formatter chosen at run time.
type Fmt<'a> = Box<dyn Fn(f64) -> String + 'a>;

fn is_accuracy(name: &str) -> bool {
    name.contains("accuracy") || name == "exact_match"
}

/// A metric value as the tables print it: accuracies in percent, losses with 4 decimals.
pub fn fmt_metric(name: &str, v: f64) -> String {
    if is_accuracy(name) {
        format!("{:.2}%", v * 100.0)
    } else {
        format!("{v:.4}")
    }
}

/// Mean ± 95% CI half-width (n ≥ 2), or the single value with its n.
fn pm(m: Option<MeanStd>, f: impl Fn(f64) -> String) -> String {
    match m {
        Some(m) => match m.ci95() {
            Some(h) => format!("{} ± {}", f(m.mean), f(h)),
            None => format!("{} (n = 1)", f(m.mean)),
        },
        None => "—".to_string(),
    }
}

/// A difference: signed mean, its 95% interval `[lo, hi]`, and `*` when the interval excludes 0.
fn diff_cells(m: Option<MeanStd>, signed: impl Fn(f64) -> String) -> (String, String) {
    match m {
        Some(m) => {
            let mark = if m.ci_excludes_zero() { " *" } else { "" };
            let ci = m
                .ci95_bounds()
                .map(|(lo, hi)| format!("[{}, {}]", signed(lo), signed(hi)))
                .unwrap_or_else(|| "—".into());
            (format!("{}{mark}", signed(m.mean)), ci)
        }
        None => ("—".into(), "—".into()),
    }
}

fn fmt_p(t: Option<PermutationTest>) -> String {
    match t {
        Some(t) if t.exact => format!("{:.3}", t.p),
        Some(t) => format!("{:.3} (MC)", t.p),
        None => "—".into(),
    }
}

fn signed(name: &str, v: f64) -> String {
    let s = fmt_metric(name, v.abs());
    let s = s.trim_end_matches('%');
    let unit = if is_accuracy(name) { " pp" } else { "" };
    format!("{}{s}{unit}", if v < 0.0 { "−" } else { "+" })
}

fn done_cells<'a>(s: &'a Summary, arm: &str) -> Vec<&'a CellResult> {
    s.cells
        .iter()
        .filter(|c| c.arm == arm && c.status == CellStatus::Done)
        .collect()
}

fn by_seed(s: &Summary, arm: &str) -> Vec<(u64, f64)> {
    done_cells(s, arm)
        .iter()
        .filter_map(|c| c.metric.map(|m| (c.seed, m)))
        .collect()
}

fn stat(cells: &[&CellResult], f: impl Fn(&CellResult) -> Option<f64>) -> Option<MeanStd> {
    let xs: Vec<f64> = cells.iter().filter_map(|c| f(c)).collect();
    mean_std(&xs)
}

/// Cells neither done nor failed, as "arm seed k (pending|running)".
pub fn missing_cells(s: &Summary) -> Vec<String> {
    s.cells
        .iter()
        .filter(|c| matches!(c.status, CellStatus::Pending | CellStatus::Running))
        .map(|c| {
            let st = if c.status == CellStatus::Running {
                "running"
            } else {
                "pending"
            };
            format!("`{}` seed {} ({st})", c.arm, c.seed)
        })
        .collect()
}

/// One row per cell, every figure unrounded.
pub fn results_csv(s: &Summary) -> String {
    let mut out = String::from(
        "arm,method,seed,status,steps,metric_name,metric,eval_loss,eval_accuracy,final_train_loss,\
         peak_bytes,wall_s,tokens_per_s,trainable_params,lr,eval_split,eval_examples,error\n",
    );
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for c in &s.cells {
        let method = s.arm(&c.arm).map(|a| a.method.as_str()).unwrap_or("");
        let status = serde_json::to_value(c.status).unwrap_or_default();
        let error = c.error.as_deref().unwrap_or("").replace('"', "\"\"");
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"",
            c.arm,
            method,
            c.seed,
            status.as_str().unwrap_or(""),
            c.steps,
            s.metric.name,
            opt(c.metric),
            opt(c.eval_loss),
            opt(c.eval_accuracy),
            opt(c.final_train_loss),
            c.peak_bytes,
            c.wall_s,
            c.tokens_per_s,
            c.trainable_params,
            c.lr,
            c.eval_split,
            c.eval_examples,
            error
        );
    }
    out
}

/// The main table in markdown: per arm the metric's mean ± the half-width of its 95% Student-t
/// interval over seeds, the sample std, and n. With `rounded`, wall time and tokens/s are left
/// out and figures are printed with `digits` decimals, so the table is the same on every run (for
/// snapshots).
pub fn main_table(s: &Summary, rounded: Option<usize>) -> String {
    let metric = &s.metric.name;
    let mut out = String::new();
    match rounded {
        None => {
            let _ = writeln!(
                out,
                "| method | arm | {metric} (mean ± 95% CI) | std | peak memory | wall time | trainable params | tokens/s | seeds |"
            );
            out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        }
        Some(_) => {
            let _ = writeln!(
                out,
                "| method | arm | {metric} (mean ± 95% CI) | std | peak memory | trainable params | seeds |"
            );
            out.push_str("|---|---|---|---|---|---|---|\n");
        }
    }
    for arm in s.arms.iter().filter(|a| !a.ablation) {
        let cells = done_cells(s, &arm.name);
        let m = stat(&cells, |c| c.metric);
        let mem = stat(&cells, |c| Some(c.peak_bytes as f64));
        let params = stat(&cells, |c| Some(c.trainable_params as f64));
        let seeds = format!(
            "{}/{}",
            cells.len(),
            s.cells.iter().filter(|c| c.arm == arm.name).count()
        );
        let std = |f: &dyn Fn(f64) -> String| m.map(|m| f(m.std)).unwrap_or_else(|| "—".into());
        match rounded {
            None => {
                let wall = stat(&cells, |c| Some(c.wall_s));
                let tps = stat(&cells, |c| Some(c.tokens_per_s));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    arm.method,
                    arm.name,
                    pm(m, |v| fmt_metric(metric, v)),
                    std(&|v| fmt_metric(metric, v)),
                    mean_only(mem, fmt_bytes),
                    mean_only(wall, fmt_secs),
                    mean_only(params, |v| format!("{v:.0}")),
                    mean_only(tps, |v| format!("{v:.0}")),
                    seeds
                );
            }
            Some(d) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    arm.method,
                    arm.name,
                    pm(m, |v| format!("{v:.d$}")),
                    std(&|v| format!("{v:.d$}")),
                    mean_only(mem, |v| format!("{v:.0}")),
                    mean_only(params, |v| format!("{v:.0}")),
                    seeds
                );
            }
        }
    }
    out
}

/// The table to quote: every arm (ablations included) with its metric ± 95% CI, its paired
/// difference to the baseline with that difference's 95% interval (`*`: excludes 0), and its
/// costs. Without a baseline the Δ column is left out.
pub fn summary_table(s: &Summary) -> String {
    let metric = &s.metric.name;
    let base = s.baseline.as_deref();
    let base_metric = base.map(|b| by_seed(s, b)).unwrap_or_default();
    let mut out = String::new();
    let delta_head = base
        .map(|b| format!(" Δ vs {b} [95% CI] |"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| method | arm | {metric} ± 95% CI |{delta_head} peak memory | wall time | trainable params | seeds |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|{}---|---|---|---|",
        if base.is_some() { "---|" } else { "" }
    );
    for arm in &s.arms {
        let cells = done_cells(s, &arm.name);
        let m = stat(&cells, |c| c.metric);
        let delta = match base {
            Some(b) if b == arm.name => " — |".to_string(),
            Some(_) => {
                let p = paired(&by_seed(s, &arm.name), &base_metric);
                let (d, ci) = diff_cells(p.map(|p| p.diff), |v| signed(metric, v));
                format!(" {d} {ci} |")
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| {}{} | {} | {} |{delta} {} | {} | {} | {}/{} |",
            arm.method,
            if arm.ablation { " (ablation)" } else { "" },
            arm.name,
            pm(m, |v| fmt_metric(metric, v)),
            mean_only(stat(&cells, |c| Some(c.peak_bytes as f64)), fmt_bytes),
            mean_only(stat(&cells, |c| Some(c.wall_s)), fmt_secs),
            mean_only(stat(&cells, |c| Some(c.trainable_params as f64)), |v| {
                format!("{v:.0}")
            }),
            cells.len(),
            s.cells.iter().filter(|c| c.arm == arm.name).count()
        );
    }
    out
}

/// A cost (memory, time, parameters): the mean, and the sample std when seeds differ.
fn mean_only(m: Option<MeanStd>, f: impl Fn(f64) -> String) -> String {
    match m {
        Some(m) if m.n > 1 && m.std > 0.0 => format!("{} ± {} (std)", f(m.mean), f(m.std)),
        Some(m) => f(m.mean),
        None => "—".to_string(),
    }
}

/// Seed-paired differences of every arm to the baseline: the metric's mean difference, its 95%
/// t interval, the sign-flip p-value, and the peak-memory difference.
pub fn paired_table(s: &Summary, rounded: Option<usize>) -> Option<String> {
    let base = s.baseline.as_deref()?;
    let metric = &s.metric.name;
    let base_metric = by_seed(s, base);
    let base_cells = done_cells(s, base);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Paired by seed against `{base}`: mean of the per-seed differences, its 95% Student-t \
         interval, and the two-sided sign-flip permutation p-value; `*` marks a difference \
         whose interval excludes 0.\n"
    );
    let _ = writeln!(out, "| arm | Δ {metric} | 95% CI | p | Δ peak memory | n |");
    out.push_str("|---|---|---|---|---|---|\n");
    for arm in s.arms.iter().filter(|a| a.name != base) {
        let p = paired(&by_seed(s, &arm.name), &base_metric);
        let mem: Vec<(u64, f64)> = done_cells(s, &arm.name)
            .iter()
            .map(|c| (c.seed, c.peak_bytes as f64))
            .collect();
        let base_mem: Vec<(u64, f64)> = base_cells
            .iter()
            .map(|c| (c.seed, c.peak_bytes as f64))
            .collect();
        let dm = paired_diff(&mem, &base_mem);
        let fm = |v: f64| match rounded {
            Some(d) => format!("{v:+.d$}"),
            None => signed(metric, v),
        };
        let fb = |v: f64| match rounded {
            Some(_) => format!("{v:+.0}"),
            None => format!("{}{}", if v < 0.0 { "−" } else { "+" }, fmt_bytes(v.abs())),
        };
        let (d, ci) = diff_cells(p.map(|p| p.diff), fm);
        let _ = writeln!(
            out,
            "| {} | {d} | {ci} | {} | {} | {} |",
            arm.name,
            fmt_p(p.map(|p| p.test)),
            dm.map(|m| fb(m.mean)).unwrap_or_else(|| "—".into()),
            p.map(|p| p.diff.n).unwrap_or(0)
        );
    }
    Some(out)
}

/// Each ablation arm against the arm it ablates, paired by seed: a negative Δ on a
/// higher-is-better metric is what the removed part contributed.
pub fn ablation_table(s: &Summary, rounded: Option<usize>) -> Option<String> {
    let ablations: Vec<_> = s.arms.iter().filter(|a| a.ablation).collect();
    if ablations.is_empty() {
        return None;
    }
    let metric = &s.metric.name;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| ablation arm | method | reference | {metric} (mean ± 95% CI) | Δ vs reference (paired) | 95% CI | p | n |"
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for a in ablations {
        let reference = a
            .ablation_of
            .as_deref()
            .or(s.baseline.as_deref())
            .unwrap_or("");
        let cells = done_cells(s, &a.name);
        let m = stat(&cells, |c| c.metric);
        let p = paired(&by_seed(s, &a.name), &by_seed(s, reference));
        let (fm, fd): (Fmt, Fmt) = match rounded {
            Some(dg) => (
                Box::new(move |v| format!("{v:.dg$}")),
                Box::new(move |v| format!("{v:+.dg$}")),
            ),
            None => (
                Box::new(|v| fmt_metric(metric, v)),
                Box::new(|v| signed(metric, v)),
            ),
        };
        let (d, ci) = diff_cells(p.map(|p| p.diff), &fd);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {d} | {ci} | {} | {} |",
            a.name,
            a.method,
            reference,
            pm(m, &fm),
            fmt_p(p.map(|p| p.test)),
            p.map(|p| p.diff.n).unwrap_or(0)
        );
    }
    Some(out)
}

fn fmt_lr(lr: f64) -> String {
    format!("{lr:e}")
}

/// One row per arm: learning rate (and sweep), ranks or budget, training length, batch.
pub fn hparams_table(s: &Summary) -> Option<String> {
    if s.arms.iter().all(|a| a.hparams.is_none()) {
        return None;
    }
    let mut out = String::from("| arm | lr | adapters | length | batch |\n|---|---|---|---|---|\n");
    for a in &s.arms {
        let Some(h) = &a.hparams else { continue };
        let lr = match (
            h.lr_sweep.is_empty(),
            s.lr_choice(&a.name).and_then(|c| c.chosen),
        ) {
            (true, _) => fmt_lr(h.lr),
            (false, chosen) => {
                let cands: Vec<String> = h.lr_sweep.iter().map(|v| fmt_lr(*v)).collect();
                match chosen {
                    Some(c) => format!("{} (chosen from {})", fmt_lr(c), cands.join(", ")),
                    None => format!("sweep [{}], not chosen yet", cands.join(", ")),
                }
            }
        };
        let batch = if h.accum > 1 {
            format!("{} × {} accumulated", h.batch, h.accum)
        } else {
            h.batch.to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {lr} | {} | {} | {batch} |",
            a.name, h.adapters, h.length
        );
    }
    Some(out)
}

/// Every sweep candidate's dev score, the chosen rate marked.
pub fn lr_table(s: &Summary) -> Option<String> {
    if s.lr_choices.is_empty() {
        return None;
    }
    let metric = &s.metric.name;
    let mut out = String::new();
    for c in &s.lr_choices {
        let _ = writeln!(
            out,
            "`{}` (seed {}, scored on the {} split):\n\n| lr | {metric} | |\n|---|---|---|",
            c.arm, c.seed, c.split
        );
        for k in &c.candidates {
            let v = match (k.metric, k.status) {
                (Some(v), _) => fmt_metric(metric, v),
                (None, CellStatus::Failed) => {
                    format!("failed: {}", k.error.as_deref().unwrap_or("unknown error"))
                }
                (None, _) => "not run yet".into(),
            };
            let mark = if c.chosen == Some(k.lr) { "chosen" } else { "" };
            let _ = writeln!(out, "| {} | {v} | {mark} |", fmt_lr(k.lr));
        }
        out.push('\n');
    }
    Some(out)
}

/// Arms whose mean-over-training cost may differ from the baseline's by this share before the
/// report flags them.
pub const COST_TOLERANCE: f64 = 0.05;

/// Mean over seeds of an arm's mean-over-training trainable parameters (`None` without a
/// finished cell that counted them).
fn mean_trained(s: &Summary, arm: &str) -> Option<f64> {
    stat(&done_cells(s, arm), |c| {
        (c.cost.steps > 0).then(|| c.cost.params_mean())
    })
    .map(|m| m.mean)
}

/// The relative difference of `arm`'s mean-over-training parameters to the baseline's, when
/// both are known and the baseline trains adapters.
fn cost_gap(s: &Summary, arm: &str) -> Option<f64> {
    let base = mean_trained(s, s.baseline.as_deref()?)?;
    let mine = mean_trained(s, arm)?;
    (base > 0.0 && mine > 0.0).then(|| mine / base - 1.0)
}

/// What each arm trained: final, peak and mean-over-training adapter parameters and training
/// GEMM FLOPs (means over seeds), and the mean's difference to the baseline, flagged beyond
/// [`COST_TOLERANCE`]. Equal final parameters are not equal cost: a phase 1 above the budget,
/// a relaxation's extra components or AdaLoRA's initial rank all train more.
pub fn cost_table(s: &Summary) -> Option<String> {
    if s.cells.iter().all(|c| c.cost.steps == 0) {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| arm | final trainable params (head included) | peak adapter params | mean adapter params over training | vs baseline | training GFLOPs |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for a in &s.arms {
        let cells = done_cells(s, &a.name);
        if cells.iter().all(|c| c.cost.steps == 0) {
            continue;
        }
        let f0 = |v: f64| format!("{v:.0}");
        let vs = match cost_gap(s, &a.name) {
            Some(g) if g.abs() > COST_TOLERANCE => format!("**{:+.1}% ⚠**", 100.0 * g),
            Some(g) => format!("{:+.1}%", 100.0 * g),
            None => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {vs} | {} |",
            a.name,
            mean_only(stat(&cells, |c| Some(c.trainable_params as f64)), f0),
            mean_only(stat(&cells, |c| Some(c.cost.params_peak as f64)), f0),
            mean_only(stat(&cells, |c| Some(c.cost.params_mean())), f0),
            mean_only(stat(&cells, |c| Some(c.cost.flops / 1e9)), |v| format!(
                "{v:.2}"
            )),
        );
    }
    Some(out)
}

/// The arm that holds the best allocation known (the planted ranks, as a fixed allocation at
/// the budget): named `oracle`.
pub const ORACLE_ARM: &str = "oracle";

/// Re-allocations: the mean and largest loss spike per arm (mean training loss over the 10
/// steps after a re-allocation over the 10 before), and, with an `oracle` arm, how much of the
/// baseline-to-oracle gap each arm closes: (baseline − arm) / (baseline − oracle) in the
/// metric's better direction (1 = as good as the oracle, 0 = no better than the baseline).
pub fn allocation_table(s: &Summary) -> Option<String> {
    let base = s.baseline.as_deref();
    let metric_mean = |arm: &str| stat(&done_cells(s, arm), |c| c.metric).map(|m| m.mean);
    let sign = if s.metric.higher_is_better { -1.0 } else { 1.0 };
    let gap = match (base.and_then(metric_mean), metric_mean(ORACLE_ARM)) {
        (Some(b), Some(o)) => Some((b, sign * (b - o))),
        _ => None,
    };
    let any_spike = s.cells.iter().any(|c| !c.spikes.is_empty());
    if !any_spike && gap.is_none() {
        return None;
    }
    let mut out = String::new();
    if let Some((_, g)) = gap {
        if g <= 0.0 {
            let _ = writeln!(
                out,
                "The oracle does not beat the baseline here (gap {}): this task cannot show an                  allocation winning.
",
                signed(&s.metric.name, -sign * g)
            );
        }
    }
    let _ = writeln!(
        out,
        "| arm | re-allocations | spike ratio, mean | spike ratio, largest | gap closed |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for a in &s.arms {
        let cells = done_cells(s, &a.name);
        let ratios: Vec<f64> = cells
            .iter()
            .flat_map(|c| c.spikes.iter().map(|x| x.ratio))
            .collect();
        let closed = match (gap, metric_mean(&a.name)) {
            (Some((b, g)), Some(m)) if g > 0.0 && Some(a.name.as_str()) != base => {
                format!("{:.0}%", 100.0 * sign * (b - m) / g)
            }
            _ => "—".into(),
        };
        if ratios.is_empty() && closed == "—" {
            continue;
        }
        let mean = mean_std(&ratios);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {closed} |",
            a.name,
            ratios.len(),
            mean.map_or("—".into(), |m| format!("{:.3}", m.mean)),
            ratios
                .iter()
                .cloned()
                .reduce(f64::max)
                .map_or("—".into(), |v| format!("{v:.3}")),
        );
    }
    Some(out)
}

/// What a reader must know before trusting the tables: too few seeds, cells that stopped
/// early, a selection made on the split the final metric is read from.
pub fn warnings(s: &Summary) -> Vec<String> {
    let mut w = Vec::new();
    for a in &s.arms {
        let n = done_cells(s, &a.name).len();
        if (1..3).contains(&n) {
            w.push(format!(
                "`{}` has {n} finished seed{}: a 95% interval needs n ≥ 2 and is very wide \
                 below n = 3 (t₀.₉₇₅ = 12.7 at n = 2); run more seeds before quoting it.",
                a.name,
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    for a in &s.arms {
        if let Some(g) = cost_gap(s, &a.name).filter(|g| g.abs() > COST_TOLERANCE) {
            w.push(format!(
                "`{}` trained {:+.1}% adapter parameters over training (mean over steps)                  against the baseline: not an equal-cost comparison (see Cost).",
                a.name,
                100.0 * g
            ));
        }
    }
    for c in s.cells.iter().filter(|c| c.stopped_early()) {
        w.push(format!(
            "`{}` seed {} stopped early, after {} of {} steps (a phase bound ended training).",
            c.arm, c.seed, c.steps, c.planned_steps
        ));
    }
    for c in &s.lr_choices {
        let final_split = done_cells(s, &c.arm)
            .first()
            .map(|x| x.eval_split.clone())
            .unwrap_or_default();
        if !final_split.is_empty() && final_split == c.split {
            w.push(format!(
                "`{}`: its learning rate was chosen on the {} split, the one its final metric is \
                 read from (this data has no separate test split), so its score is optimistic.",
                c.arm, c.split
            ));
        }
    }
    w
}

/// "Evaluated on 1058 examples of the test split" (one line per distinct set).
fn eval_sets(s: &Summary) -> Vec<String> {
    let mut sets: Vec<(String, u64)> = Vec::new();
    for c in s.cells.iter().filter(|c| c.status == CellStatus::Done) {
        let k = (c.eval_split.clone(), c.eval_examples);
        if c.eval_examples > 0 && !sets.contains(&k) {
            sets.push(k);
        }
    }
    sets.into_iter()
        .map(|(split, n)| format!("{n} examples of the {split} split"))
        .collect()
}

/// Final rank of every adapter slot (rows) for each arm's first finished seed (columns).
pub fn final_ranks_table(s: &Summary) -> Option<String> {
    let arms: Vec<(&str, &CellResult)> = s
        .arms
        .iter()
        .filter_map(|a| {
            done_cells(s, &a.name)
                .into_iter()
                .find(|c| !c.final_ranks.is_empty())
                .map(|c| (a.name.as_str(), c))
        })
        .collect();
    let (_, first) = arms.first()?;
    let mut out = String::from("| slot |");
    for (a, _) in &arms {
        let _ = write!(out, " {a} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(arms.len()));
    out.push('\n');
    for (slot, _) in &first.final_ranks {
        let _ = write!(out, "| {slot} |");
        for (_, c) in &arms {
            let r = c
                .final_ranks
                .iter()
                .find(|(n, _)| n == slot)
                .map(|(_, r)| r.to_string())
                .unwrap_or_else(|| "—".into());
            let _ = write!(out, " {r} |");
        }
        out.push('\n');
    }
    Some(out)
}

/// Rank trajectory of each cell as text: one line per change with the total and every slot's rank.
pub fn rank_trajectories(ranks: &[RankRecord]) -> String {
    let mut out = String::new();
    for r in ranks {
        let slots: Vec<String> = r.slots.iter().map(|s| s.after.to_string()).collect();
        let _ = writeln!(
            out,
            "{} seed {} step {} {}: total {} [{}]",
            r.arm,
            r.seed,
            r.step,
            r.reason,
            r.total(),
            slots.join(" ")
        );
    }
    out
}

/// The whole `report.md`.
pub fn report_md(s: &Summary, plots: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", s.experiment);
    if let Some(env) = &s.env {
        let _ = writeln!(
            out,
            "Device: {} ({} backend) · adarank {}{} · started {} · {} threads\n",
            env.device,
            env.backend,
            env.adarank_version,
            env.git_commit
                .as_deref()
                .map(|c| format!(" ({})", &c[..c.len().min(10)]))
                .unwrap_or_default(),
            env.started,
            env.threads
        );
    }
    let direction = if s.metric.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    let evaluated = eval_sets(s);
    let _ = writeln!(
        out,
        "Metric: `{}` ({direction}){}; seeds: {:?}. Figures are the mean over seeds ± the \
         half-width of its 95% Student-t interval (t with n − 1 degrees of freedom), beside the \
         sample std; costs are mean ± std. Peak memory is the backend ledger's peak of bytes \
         held.\n",
        s.metric.name,
        if evaluated.is_empty() {
            String::new()
        } else {
            format!(", evaluated on {}", evaluated.join("; "))
        },
        s.seeds
    );
    let warns = warnings(s);
    if !warns.is_empty() {
        out.push_str("## Warnings\n\n");
        for w in warns {
            let _ = writeln!(out, "- {w}");
        }
        out.push('\n');
    }
    out.push_str("## Summary\n\n");
    out.push_str(&summary_table(s));
    out.push_str("\n## Results\n\n");
    out.push_str(&main_table(s, None));
    if let Some(t) = paired_table(s, None) {
        out.push_str("\n## Difference to the baseline\n\n");
        out.push_str(&t);
    }
    if let Some(t) = ablation_table(s, None) {
        out.push_str("\n## Ablations\n\n");
        out.push_str(&t);
    }
    if let Some(t) = cost_table(s) {
        out.push_str("\n## Cost\n\n");
        out.push_str(&t);
    }
    if let Some(t) = allocation_table(s) {
        out.push_str("\n## Re-allocations\n\n");
        out.push_str(&t);
    }
    if let Some(t) = hparams_table(s) {
        out.push_str("\n## Hyperparameters\n\n");
        out.push_str(&t);
    }
    if let Some(t) = lr_table(s) {
        out.push_str("\n## Learning-rate selection\n\n");
        out.push_str(&t);
    }
    let failed = s.failed();
    if !failed.is_empty() {
        out.push_str("\n## Failed cells\n\n");
        for c in failed {
            let _ = writeln!(
                out,
                "- `{}` seed {} (after {} steps): {}",
                c.arm,
                c.seed,
                c.steps,
                c.error.as_deref().unwrap_or("unknown error")
            );
        }
    }
    let unfinished = missing_cells(s);
    if !unfinished.is_empty() {
        let _ = writeln!(
            out,
            "\n{} cell(s) not finished, so not in the tables: {}. `adarank run --resume DIR` \
             continues them (`adarank status DIR` shows where they are).",
            unfinished.len(),
            unfinished.join(", ")
        );
    }
    if let Some(t) = final_ranks_table(s) {
        out.push_str("\n## Final ranks (first finished seed of each arm)\n\n");
        out.push_str(&t);
    }
    if !plots.is_empty() {
        out.push_str("\n## Plots\n\n");
        for p in plots {
            let _ = writeln!(out, "![{p}]({p})");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::records::{ArmMeta, HParams, LrCandidate, LrChoice, MetricSpec};
    use super::*;

    fn cell(arm: &str, seed: u64, metric: f64, mem: u64) -> CellResult {
        let mut c = CellResult::pending(arm, seed);
        c.status = CellStatus::Done;
        c.metric = Some(metric);
        c.peak_bytes = mem;
        c.trainable_params = 100;
        c.steps = 50;
        c.planned_steps = 50;
        c.eval_examples = 1058;
        c.eval_split = "test".into();
        c
    }

    fn summary() -> Summary {
        let arm = |n: &str, ablation| ArmMeta {
            name: n.into(),
            method: n.into(),
            ablation,
            ablation_of: ablation.then(|| "adaptive".to_string()),
            hparams: None,
        };
        let cells = [
            ("fixed", [0.80, 0.70, 0.75], 1000),
            ("adaptive", [0.90, 0.70, 0.83], 2000),
            ("no_cx", [0.85, 0.65, 0.80], 2000),
        ]
        .iter()
        .flat_map(|(a, m, mem)| (0..3).map(move |k| cell(a, k as u64, m[k], *mem)))
        .collect();
        Summary {
            experiment: "t".into(),
            metric: MetricSpec {
                name: "accuracy".into(),
                higher_is_better: true,
            },
            baseline: Some("fixed".into()),
            arms: vec![
                arm("fixed", false),
                arm("adaptive", false),
                arm("no_cx", true),
            ],
            seeds: vec![0, 1, 2],
            cells,
            env: None,
            lr_choices: vec![],
        }
    }

    #[test]
    fn main_table_gives_mean_with_t_interval_and_sample_std() {
        let t = main_table(&summary(), Some(3));
        // fixed: 0.80, 0.70, 0.75 → mean 0.75, s = 0.05, half-width t₀.₉₇₅,₂ · s/√3 =
        // 4.302653 · 0.05 / 1.732051 = 0.124207.
        assert!(
            t.contains("| fixed | fixed | 0.750 ± 0.124 | 0.050 | 1000 | 100 | 3/3 |"),
            "{t}"
        );
        assert!(
            !t.contains("no_cx"),
            "ablation arms belong in the ablation table"
        );
    }

    #[test]
    fn paired_and_ablation_tables_give_interval_and_permutation_p() {
        let s = summary();
        let p = paired_table(&s, Some(3)).unwrap();
        // adaptive − fixed: +0.10, 0.00, +0.08 → mean 0.06, s = √0.0028 = 0.052915, half-width
        // 4.302653 · 0.052915/√3 = 0.131446 → [−0.071, +0.191], contains 0: no mark. Sign flips:
        // |±0.10 ± 0.08| (the 0 flips freely) reaches 0.18 in 4 of 8 vectors → p = 0.5.
        assert!(
            p.contains("| adaptive | +0.060 | [-0.071, +0.191] | 0.500 | +1000 | 3 |"),
            "{p}"
        );
        let a = ablation_table(&s, Some(3)).unwrap();
        // no_cx − adaptive: −0.05, −0.05, −0.03 → mean −0.043333, s = 0.011547, half-width
        // 0.028684 → [−0.072, −0.015]: excludes 0, marked; only all-equal signs reach |−0.13|
        // → p = 2/8.
        assert!(
            a.contains("| no_cx | no_cx | adaptive | 0.767 ± 0.259 | -0.043 * | [-0.072, -0.015] | 0.250 | 3 |"),
            "{a}"
        );
    }

    #[test]
    fn summary_table_puts_the_interval_of_the_difference_beside_the_metric() {
        let t = summary_table(&summary());
        // adaptive: 90, 70, 83 → mean 81.00, s = 10.1489, half-width 4.302653·s/√3 = 25.21;
        // Δ vs fixed +6.00 pp [−7.14, +19.14] (see the paired test above).
        assert!(
            t.contains(
                "| adaptive | adaptive | 81.00% ± 25.21% | +6.00 pp [−7.14 pp, +19.14 pp] |"
            ),
            "{t}"
        );
        assert!(t.contains("| fixed | fixed | 75.00% ± 12.42% | — |"), "{t}");
        assert!(t.contains("| no_cx (ablation) | no_cx |"), "{t}");
    }

    #[test]
    fn report_warns_about_few_seeds_early_stops_and_states_the_eval_set() {
        let mut s = summary();
        s.cells.retain(|c| !(c.arm == "adaptive" && c.seed > 0));
        s.cell_mut("fixed", 2).unwrap().steps = 30;
        let md = report_md(&s, &[]);
        assert!(
            md.contains("evaluated on 1058 examples of the test split"),
            "{md}"
        );
        assert!(md.contains("`adaptive` has 1 finished seed:"), "{md}");
        assert!(
            md.contains("`fixed` seed 2 stopped early, after 30 of 50 steps"),
            "{md}"
        );
        assert!(
            md.contains("| adaptive | adaptive | 90.00% (n = 1) |"),
            "{md}"
        );
    }

    #[test]
    fn hyperparameters_and_sweeps_are_tabulated() {
        let mut s = summary();
        s.arms[0].hparams = Some(HParams {
            lr: 3e-4,
            lr_sweep: vec![3e-4, 1e-3],
            adapters: "rank 8".into(),
            length: "1 epoch".into(),
            batch: 16,
            accum: 1,
        });
        s.lr_choices.push(LrChoice {
            arm: "fixed".into(),
            seed: 0,
            split: "dev".into(),
            candidates: vec![
                LrCandidate {
                    lr: 3e-4,
                    status: CellStatus::Done,
                    metric: Some(0.8),
                    error: None,
                },
                LrCandidate {
                    lr: 1e-3,
                    status: CellStatus::Done,
                    metric: Some(0.85),
                    error: None,
                },
            ],
            chosen: Some(1e-3),
        });
        let md = report_md(&s, &[]);
        assert!(
            md.contains("| fixed | 1e-3 (chosen from 3e-4, 1e-3) | rank 8 | 1 epoch | 16 |"),
            "{md}"
        );
        assert!(md.contains("| 1e-3 | 85.00% | chosen |"), "{md}");
        assert!(md.contains("| 3e-4 | 80.00% |  |"), "{md}");
    }

    #[test]
    fn failed_cells_are_listed_with_their_error() {
        let mut s = summary();
        let c = s.cell_mut("adaptive", 1).unwrap();
        c.status = CellStatus::Failed;
        c.error = Some("plugin boom.rhai: line 3".into());
        let md = report_md(&s, &[]);
        assert!(md.contains("`adaptive` seed 1 (after 50 steps): plugin boom.rhai: line 3"));
        let csv = results_csv(&s);
        assert_eq!(csv.lines().count(), 10);
        assert!(csv.contains("adaptive,adaptive,1,failed"));
    }
}
