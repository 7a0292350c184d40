//! Progress of a run: on a terminal an overall bar across the cells to run and an indicatif bar
//! per arm × seed; plain log lines otherwise (every tenth of a cell or every ten seconds, each
//! prefixed with the cell's place in the run); nothing with `--quiet`. At the end,
//! [`result_table`] is the short table left on screen.

use super::records::{CellStatus, Summary};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Lines,
    Quiet,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, lines otherwise; `Quiet` when asked.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

pub struct Progress {
    mode: ProgressMode,
    multi: MultiProgress,
    /// The bar across cells (terminal only), and the cells counted so far.
    overall: Option<ProgressBar>,
    cells: std::cell::Cell<(u64, u64)>,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let multi = MultiProgress::with_draw_target(match mode {
            ProgressMode::Bars => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        });
        Self {
            mode,
            multi,
            overall: None,
            cells: std::cell::Cell::new((0, 0)),
        }
    }

    /// Announces how many cells this invocation will run (the overall bar counts them).
    pub fn plan_cells(&mut self, total: u64) {
        self.cells.set((0, total));
        if self.mode == ProgressMode::Bars && total > 1 {
            // Counted in thousandths of a cell, advanced by each cell's steps: indicatif's eta
            // is the remaining count over the recent rate, and counting whole cells made that
            // rate jump from 0 to a cell at a time (an eta of days, then hours, for minutes).
            let b = self.multi.add(ProgressBar::new(total * CELL_UNITS));
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:>24}} [{{bar:30}}] {{percent:>3}}% of {total} cells, {{elapsed}} \
                     elapsed, eta {{eta}}  {{msg}}"
                ))
                .expect("static template")
                .progress_chars("#> "),
            );
            b.set_prefix("overall");
            self.overall = Some(b);
        }
    }

    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// A message outside any bar (run directory, warnings).
    pub fn println(&self, msg: &str) {
        match self.mode {
            ProgressMode::Bars => {
                let _ = self.multi.println(msg);
            }
            ProgressMode::Lines => eprintln!("{msg}"),
            ProgressMode::Quiet => {}
        }
    }

    pub fn cell(&self, arm: &str, seed: u64, total_steps: u64, start_step: u64) -> CellProgress {
        let (started, total) = self.cells.get();
        self.cells.set((started + 1, total));
        if let Some(b) = &self.overall {
            b.set_position(started * CELL_UNITS);
        }
        let label = if total > 1 {
            format!("{arm} seed {seed} ({}/{total})", started + 1)
        } else {
            format!("{arm} seed {seed}")
        };
        let bar = (self.mode == ProgressMode::Bars).then(|| {
            let b = self.multi.add(ProgressBar::new(total_steps));
            b.set_style(
                ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b.set_prefix(label.clone());
            b.set_position(start_step);
            b.reset_eta();
            b
        });
        CellProgress {
            mode: self.mode,
            index: started,
            overall: self.overall.clone(),
            label,
            total: total_steps,
            bar,
            started: Instant::now(),
            start_step,
            last_line: None,
        }
    }
}

/// Units of the overall bar per cell.
const CELL_UNITS: u64 = 1000;

pub struct CellProgress {
    mode: ProgressMode,
    /// Cells of this invocation started before this one.
    index: u64,
    /// The run's bar across cells, which keeps the last finished cell's outcome.
    overall: Option<ProgressBar>,
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    start_step: u64,
    last_line: Option<(Instant, u64)>,
}

impl CellProgress {
    pub fn update(&mut self, step: u64, loss: f64) {
        match self.mode {
            ProgressMode::Bars => {
                if let Some(b) = &self.bar {
                    b.set_position(step);
                    b.set_message(format!("loss {loss:.4}"));
                }
                if let Some(o) = &self.overall {
                    let within = step.min(self.total) * CELL_UNITS / self.total.max(1);
                    o.set_position(self.index * CELL_UNITS + within);
                }
            }
            ProgressMode::Lines => {
                let every = (self.total / 10).max(1);
                let due = match self.last_line {
                    None => true,
                    Some((t, s)) => step - s >= every || t.elapsed() >= Duration::from_secs(10),
                } || step == self.total;
                if due {
                    let done = step.saturating_sub(self.start_step) as f64;
                    let eta = if done > 0.0 {
                        self.started.elapsed().as_secs_f64() / done
                            * self.total.saturating_sub(step) as f64
                    } else {
                        0.0
                    };
                    eprintln!(
                        "[{}] step {step}/{} loss {loss:.4} eta {eta:.0}s",
                        self.label, self.total
                    );
                    self.last_line = Some((Instant::now(), step));
                }
            }
            ProgressMode::Quiet => {}
        }
    }

    /// A line of the cell's own (a policy's `log` action): above the bars on a terminal,
    /// prefixed with the cell's label otherwise.
    pub fn log(&self, msg: &str) {
        match (self.mode, &self.bar) {
            (ProgressMode::Bars, Some(b)) => b.println(format!("[{}] {msg}", self.label)),
            (ProgressMode::Quiet, _) => {}
            _ => eprintln!("[{}] {msg}", self.label),
        }
    }

    pub fn finish(&self, msg: &str) {
        match self.mode {
            ProgressMode::Bars => match (&self.bar, &self.overall) {
                // With an overall bar, a finished cell's bar goes and its outcome moves there:
                // the screen holds the run's progress, not one line per cell.
                (Some(b), Some(o)) => {
                    b.finish_and_clear();
                    o.set_message(format!("last: {} {msg}", self.label));
                }
                (Some(b), None) => b.finish_with_message(msg.to_string()),
                _ => {}
            },
            ProgressMode::Lines => eprintln!("[{}] {msg}", self.label),
            ProgressMode::Quiet => {}
        }
    }
}

impl Progress {
    /// Marks the overall bar finished (it stays on screen with the elapsed time).
    pub fn finish(&self) {
        if let Some(b) = &self.overall {
            let (_, total) = self.cells.get();
            b.set_position(total * CELL_UNITS);
            b.finish();
        }
    }
}

/// The short table left on screen after a run: per arm the metric's mean ± 95% CI over the done
/// seeds, how many seeds are done (and failed), and the mean wall time of a cell.
pub fn result_table(s: &Summary) -> String {
    let metric = &s.metric.name;
    let fmt = |v: f64| super::report::fmt_metric(metric, v);
    // The same statistic as the report's table: mean ± half-width of the 95% Student-t
    // interval (a standard deviation here would read as the report's CI and be ~2.5× narrower
    // at three seeds).
    let mut rows = vec![[
        "arm".to_string(),
        format!("{metric} (mean ± 95% CI)"),
        "seeds".to_string(),
        "wall/cell".to_string(),
    ]];
    for arm in &s.arms {
        let cells: Vec<_> = s.cells.iter().filter(|c| c.arm == arm.name).collect();
        let done: Vec<_> = cells
            .iter()
            .filter(|c| c.status == CellStatus::Done)
            .collect();
        let failed = cells
            .iter()
            .filter(|c| c.status == CellStatus::Failed)
            .count();
        let values: Vec<f64> = done.iter().filter_map(|c| c.metric).collect();
        let value = match super::seed_stats::mean_std(&values) {
            Some(m) if m.n > 1 => match m.ci95() {
                Some(h) => format!("{} ± {}", fmt(m.mean), fmt(h)),
                None => fmt(m.mean),
            },
            Some(m) => fmt(m.mean),
            None => "—".to_string(),
        };
        let mut seeds = format!("{}/{}", done.len(), cells.len());
        if failed > 0 {
            seeds += &format!(" ({failed} failed)");
        }
        let wall = if done.is_empty() {
            "—".to_string()
        } else {
            let w = done.iter().map(|c| c.wall_s).sum::<f64>() / done.len() as f64;
            format!("{w:.1} s")
        };
        rows.push([arm.name.clone(), value, seeds, wall]);
    }
    let better = if s.metric.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    format!(
        "{} ({metric}: {better})\n{}",
        s.experiment,
        text_table(&rows, |i| i > 0, true)
    )
}

/// Rows as aligned columns for a terminal, indented by two spaces: column `i` right-aligned when
/// `right(i)` (numbers), else left-aligned; with `rule`, a line of dashes under the first row.
pub fn text_table(rows: &[Vec<String>], right: impl Fn(usize) -> bool, rule: bool) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (k, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if right(i) {
                    format!("{c:>w$}", w = width[i])
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect();
        out += &format!("  {}\n", cells.join("  ").trim_end());
        if k == 0 && rule {
            let total = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            out += &format!("  {}\n", "-".repeat(total));
        }
    }
    out
}
