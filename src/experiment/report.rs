//! `results.csv` and `report.md` from a [`Summary`]: the paper's main table (method, metric, peak
//! memory, wall time, trainable parameters, tokens/s) as mean ± std over seeds, the seed-paired
//! difference to the baseline arm, and the ablation table.

use super::records::{CellResult, CellStatus, RankRecord, Summary};
use super::stats::{mean_std, paired_diff, MeanStd};
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
    name.contains("accuracy")
}

/// A metric value as the tables print it: accuracies in percent, losses with 4 decimals.
pub fn fmt_metric(name: &str, v: f64) -> String {
    if is_accuracy(name) {
        format!("{:.2}%", v * 100.0)
    } else {
        format!("{v:.4}")
    }
}

fn pm(m: Option<MeanStd>, f: impl Fn(f64) -> String) -> String {
    match m {
        Some(m) if m.n > 1 => format!("{} ± {}", f(m.mean), f(m.std)),
        Some(m) => f(m.mean),
        None => "—".to_string(),
    }
}

/// Like [`pm`] for a difference: the mean signed, the spread not.
fn pm_diff(
    m: Option<MeanStd>,
    signed: impl Fn(f64) -> String,
    plain: impl Fn(f64) -> String,
) -> String {
    match m {
        Some(m) if m.n > 1 => format!("{} ± {}", signed(m.mean), plain(m.std)),
        Some(m) => signed(m.mean),
        None => "—".to_string(),
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
         peak_bytes,wall_s,tokens_per_s,trainable_params,error\n",
    );
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for c in &s.cells {
        let method = s.arm(&c.arm).map(|a| a.method.as_str()).unwrap_or("");
        let status = serde_json::to_value(c.status).unwrap_or_default();
        let error = c.error.as_deref().unwrap_or("").replace('"', "\"\"");
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"",
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
            error
        );
    }
    out
}

/// The main table in markdown. With `rounded`, wall time and tokens/s are left out and the metric
/// is printed with `digits` decimals, so the table is the same on every run (for snapshots).
pub fn main_table(s: &Summary, rounded: Option<usize>) -> String {
    let metric = &s.metric.name;
    let mut out = String::new();
    match rounded {
        None => {
            let _ = writeln!(
                out,
                "| method | arm | {metric} | peak memory | wall time | trainable params | tokens/s | seeds |"
            );
            out.push_str("|---|---|---|---|---|---|---|---|\n");
        }
        Some(_) => {
            let _ = writeln!(
                out,
                "| method | arm | {metric} | peak memory | trainable params | seeds |"
            );
            out.push_str("|---|---|---|---|---|---|\n");
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
        match rounded {
            None => {
                let wall = stat(&cells, |c| Some(c.wall_s));
                let tps = stat(&cells, |c| Some(c.tokens_per_s));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    arm.method,
                    arm.name,
                    pm(m, |v| fmt_metric(metric, v)),
                    pm(mem, fmt_bytes),
                    pm(wall, fmt_secs),
                    pm(params, |v| format!("{v:.0}")),
                    pm(tps, |v| format!("{v:.0}")),
                    seeds
                );
            }
            Some(d) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    arm.method,
                    arm.name,
                    pm(m, |v| format!("{v:.d$}")),
                    pm(mem, |v| format!("{v:.0}")),
                    pm(params, |v| format!("{v:.0}")),
                    seeds
                );
            }
        }
    }
    out
}

/// Seed-paired differences of every arm to the baseline: metric, peak memory, wall time.
pub fn paired_table(s: &Summary, rounded: Option<usize>) -> Option<String> {
    let base = s.baseline.as_deref()?;
    let metric = &s.metric.name;
    let base_metric = by_seed(s, base);
    let base_cells = done_cells(s, base);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Paired by seed against `{base}` (mean ± std of the per-seed differences, n pairs):\n"
    );
    let _ = writeln!(out, "| arm | Δ {metric} | Δ peak memory | n |");
    out.push_str("|---|---|---|---|\n");
    for arm in s.arms.iter().filter(|a| a.name != base) {
        let d = paired_diff(&by_seed(s, &arm.name), &base_metric);
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
        let fm_abs = |v: f64| match rounded {
            Some(d) => format!("{v:.d$}"),
            None => fmt_metric(metric, v),
        };
        let fb = |v: f64| match rounded {
            Some(_) => format!("{v:+.0}"),
            None => format!("{}{}", if v < 0.0 { "−" } else { "+" }, fmt_bytes(v.abs())),
        };
        let fb_abs = |v: f64| match rounded {
            Some(_) => format!("{v:.0}"),
            None => fmt_bytes(v),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            arm.name,
            pm_diff(d, fm, fm_abs),
            pm_diff(dm, fb, fb_abs),
            d.map(|d| d.n).unwrap_or(0)
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
        "| ablation arm | method | reference | {metric} | Δ vs reference (paired) | n |"
    );
    out.push_str("|---|---|---|---|---|---|\n");
    for a in ablations {
        let reference = a
            .ablation_of
            .as_deref()
            .or(s.baseline.as_deref())
            .unwrap_or("");
        let cells = done_cells(s, &a.name);
        let m = stat(&cells, |c| c.metric);
        let d = paired_diff(&by_seed(s, &a.name), &by_seed(s, reference));
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
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            a.name,
            a.method,
            reference,
            pm(m, &fm),
            pm_diff(d, &fd, &fm),
            d.map(|d| d.n).unwrap_or(0)
        );
    }
    Some(out)
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
    let _ = writeln!(
        out,
        "Metric: `{}` ({direction}); seeds: {:?}. Figures are mean ± sample std over seeds; peak \
         memory is the backend ledger's peak of bytes held.\n",
        s.metric.name, s.seeds
    );
    out.push_str("## Results\n\n");
    out.push_str(&main_table(s, None));
    if let Some(t) = paired_table(s, None) {
        out.push_str("\n## Difference to the baseline\n\n");
        out.push_str(&t);
    }
    if let Some(t) = ablation_table(s, None) {
        out.push_str("\n## Ablations\n\n");
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
    use super::super::records::{ArmMeta, MetricSpec};
    use super::*;

    fn cell(arm: &str, seed: u64, metric: f64, mem: u64) -> CellResult {
        let mut c = CellResult::pending(arm, seed);
        c.status = CellStatus::Done;
        c.metric = Some(metric);
        c.peak_bytes = mem;
        c.trainable_params = 100;
        c
    }

    fn summary() -> Summary {
        let arm = |n: &str, ablation| ArmMeta {
            name: n.into(),
            method: n.into(),
            ablation,
            ablation_of: ablation.then(|| "adaptive".to_string()),
        };
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
            seeds: vec![0, 1],
            cells: vec![
                cell("fixed", 0, 0.80, 1000),
                cell("fixed", 1, 0.70, 1000),
                cell("adaptive", 0, 0.90, 2000),
                cell("adaptive", 1, 0.70, 2000),
                cell("no_cx", 0, 0.85, 2000),
                cell("no_cx", 1, 0.65, 2000),
            ],
            env: None,
        }
    }

    #[test]
    fn main_table_gives_mean_and_sample_std() {
        let t = main_table(&summary(), Some(3));
        // fixed: mean 0.75, std sqrt(((0.05)²·2)/1) = 0.0707
        assert!(
            t.contains("| fixed | fixed | 0.750 ± 0.071 | 1000 ± 0 | 100 ± 0 | 2/2 |"),
            "{t}"
        );
        assert!(
            !t.contains("no_cx"),
            "ablation arms belong in the ablation table"
        );
    }

    #[test]
    fn paired_and_ablation_tables_difference_by_seed() {
        let s = summary();
        let p = paired_table(&s, Some(3)).unwrap();
        // adaptive − fixed: +0.10, 0.00 → mean 0.05, std 0.0707
        assert!(
            p.contains("| adaptive | +0.050 ± 0.071 | +1000 ± 0 | 2 |"),
            "{p}"
        );
        let a = ablation_table(&s, Some(3)).unwrap();
        // no_cx − adaptive: −0.05, −0.05
        assert!(
            a.contains("| no_cx | no_cx | adaptive | 0.750 ± 0.141 | -0.050 ± 0.000 | 2 |"),
            "{a}"
        );
    }

    #[test]
    fn failed_cells_are_listed_with_their_error() {
        let mut s = summary();
        let c = s.cell_mut("adaptive", 1).unwrap();
        c.status = CellStatus::Failed;
        c.error = Some("plugin boom.rhai: line 3".into());
        let md = report_md(&s, &[]);
        assert!(md.contains("`adaptive` seed 1 (after 0 steps): plugin boom.rhai: line 3"));
        assert!(md.contains("| adaptive | adaptive | 90.00% |"), "{md}");
        let csv = results_csv(&s);
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.contains("adaptive,adaptive,1,failed"));
    }
}
