//! SVG plots of a run (plotters, no font files needed): training loss per arm (smoothed, with
//! its raw values, seed bands and evaluation points), a slot × step heatmap of the ranks of one
//! cell, and the final rank of every slot per arm. `rsvg-convert plots/x.svg -o x.png` renders
//! them to PNG.

use super::records::{CellStatus, MetricRecord, RankRecord, Summary};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

fn color(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 8] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// Integer step labels ("150", not "150.0").
fn step_label(x: &f64) -> String {
    format!("{x:.0}")
}

/// Exponential moving average with bias correction (the first values are not pulled toward 0),
/// over about `window` steps: α = 2 / (window + 1).
pub fn ema(xs: &[f64], window: usize) -> Vec<f64> {
    let a = 2.0 / (window.max(1) as f64 + 1.0);
    let (mut m, mut w) = (0.0, 0.0);
    xs.iter()
        .map(|&x| {
            m = (1.0 - a) * m + a * x;
            w = (1.0 - a) * w + a;
            m / w
        })
        .collect()
}

/// The final evaluation of one finished cell (from the summary), drawn with the others.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalEval {
    pub arm: String,
    pub seed: u64,
    pub step: u64,
    pub loss: f64,
}

impl FinalEval {
    /// The final evaluations of the finished cells of `s`.
    pub fn of(s: &Summary) -> Vec<FinalEval> {
        s.cells
            .iter()
            .filter(|c| c.status == CellStatus::Done)
            .filter_map(|c| {
                Some(FinalEval {
                    arm: c.arm.clone(),
                    seed: c.seed,
                    step: c.steps,
                    loss: c.eval_loss?,
                })
            })
            .collect()
    }
}

/// One arm's loss curves over its seeds.
struct ArmCurves {
    name: String,
    /// (step, mean raw loss over seeds)
    raw: Vec<(f64, f64)>,
    /// (step, mean, sample std) of the smoothed loss over the seeds that reach the step
    smooth: Vec<(f64, f64, f64)>,
    /// (step, mean evaluation loss over seeds)
    eval: Vec<(f64, f64)>,
    seeds: usize,
}

fn arm_curves(
    arm: &str,
    metrics: &[MetricRecord],
    finals: &[FinalEval],
    window: usize,
) -> Option<ArmCurves> {
    let mut by_seed: BTreeMap<u64, Vec<(u64, f64)>> = BTreeMap::new();
    let mut evals: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for f in finals.iter().filter(|f| f.arm == arm && f.loss.is_finite()) {
        evals.entry(f.step).or_default().push(f.loss);
    }
    for m in metrics.iter().filter(|m| m.arm == arm) {
        if m.loss.is_finite() {
            by_seed.entry(m.seed).or_default().push((m.step, m.loss));
        }
        if let Some(e) = m.eval_loss.filter(|e| e.is_finite()) {
            evals.entry(m.step).or_default().push(e);
        }
    }
    if by_seed.is_empty() {
        return None;
    }
    // step → (raw values, smoothed values) over seeds
    let mut at: BTreeMap<u64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for pts in by_seed.values_mut() {
        pts.sort_by_key(|p| p.0);
        let raw: Vec<f64> = pts.iter().map(|p| p.1).collect();
        for (&(step, r), s) in pts.iter().zip(ema(&raw, window)) {
            let e = at.entry(step).or_default();
            e.0.push(r);
            e.1.push(s);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sd = |v: &[f64]| {
        if v.len() < 2 {
            return 0.0;
        }
        let m = mean(v);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    Some(ArmCurves {
        name: arm.to_string(),
        raw: at.iter().map(|(s, (r, _))| (*s as f64, mean(r))).collect(),
        smooth: at
            .iter()
            .map(|(s, (_, m))| (*s as f64, mean(m), sd(m)))
            .collect(),
        eval: evals.iter().map(|(s, v)| (*s as f64, mean(v))).collect(),
        seeds: by_seed.len(),
    })
}

/// Training loss per arm as a researcher would publish it: the smoothed loss (EMA) as the line,
/// mean ± one standard deviation over seeds as a band, the raw per-step mean faint behind it,
/// and evaluation losses (those logged during training and each cell's final one, `finals`) as
/// dots, averaged over seeds per step; log10 scale when the losses span more than a decade. The
/// y-range follows the smoothed curves and evaluations, so a single raw spike does not flatten
/// them (raw values outside are clipped). `None` when there is nothing to plot.
pub fn loss_curves(
    arms: &[String],
    metrics: &[MetricRecord],
    finals: &[FinalEval],
) -> Result<Option<String>> {
    let steps = metrics.iter().map(|m| m.step).max().unwrap_or(0) as usize;
    let window = (steps / 25).clamp(1, 50);
    let curves: Vec<(usize, ArmCurves)> = arms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| arm_curves(a, metrics, finals, window).map(|c| (i, c)))
        .collect();
    if curves.is_empty() {
        return Ok(None);
    }
    let (lo, hi) = loss_range(&curves);
    let log = lo > 0.0 && hi / lo > 10.0;
    let tf = move |y: f64| if log { y.max(lo * 1e-3).log10() } else { y };
    let (ylo, yhi) = (tf(lo), tf(hi));
    let pad = ((yhi - ylo) * 0.05).max(1e-6);
    // A little room on the right for the final evaluation dots.
    let xmax = (steps as f64).max(1.0) * 1.02;
    let seeds = curves.iter().map(|(_, c)| c.seeds).max().unwrap_or(1);

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (960, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (title, body) = root.split_vertically(52);
        loss_titles(&title, window, seeds)?;
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..xmax, (ylo - pad)..(yhi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(RGBColor(225, 225, 225))
            .x_desc("step")
            .y_desc(if log { "loss (log10)" } else { "loss" })
            .x_label_formatter(&step_label)
            .draw()
            .map_err(err)?;
        for (i, c) in &curves {
            loss_background(&mut chart, color(*i), c, &tf, lo)?;
        }
        for (i, c) in &curves {
            loss_foreground(&mut chart, color(*i), c, &tf)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

type Svg<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
/// A chart on f64 × f64 axes, as every plot here draws.
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// The loss axis' range: the smoothed curves' bands, the evaluations, and the first raw values
/// (before smoothing catches up); the low end is the least positive value.
fn loss_range(curves: &[(usize, ArmCurves)]) -> (f64, f64) {
    let mut ys: Vec<f64> = Vec::new();
    for (_, c) in curves {
        ys.extend(c.smooth.iter().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
        ys.extend(c.eval.iter().map(|p| p.1));
        // The first raw values (before smoothing catches up) set the top.
        ys.extend(c.raw.iter().take(3).map(|p| p.1));
    }
    let lo = ys
        .iter()
        .cloned()
        .filter(|y| *y > 0.0)
        .fold(f64::INFINITY, f64::min);
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let hi = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// The loss plot's title and the line saying what each mark is.
fn loss_titles(title: &Svg, window: usize, seeds: usize) -> Result<()> {
    title
        .draw(&Text::new(
            "Training loss",
            (480, 8),
            TextStyle::from(("sans-serif", 20)).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
    let spread = if seeds > 1 {
        format!("band: mean ± 1 sd over {seeds} seeds; ")
    } else {
        String::new()
    };
    title
        .draw(&Text::new(
            format!(
                "line: EMA over {window} step{}; {spread}faint: raw per step; dots: evaluation",
                if window == 1 { "" } else { "s" }
            ),
            (480, 32),
            TextStyle::from(("sans-serif", 12))
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
    Ok(())
}

/// One arm's seed band (more than one seed) and faint raw losses, drawn under every arm's line.
fn loss_background(
    chart: &mut Chart,
    col: RGBColor,
    c: &ArmCurves,
    tf: &dyn Fn(f64) -> f64,
    lo: f64,
) -> Result<()> {
    if c.seeds > 1 {
        let upper = c.smooth.iter().map(|p| (p.0, tf(p.1 + p.2)));
        let lower = c
            .smooth
            .iter()
            .rev()
            .map(|p| (p.0, tf((p.1 - p.2).max(lo * 1e-3))));
        chart
            .draw_series(std::iter::once(Polygon::new(
                upper.chain(lower).collect::<Vec<_>>(),
                col.mix(0.18).filled(),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(
            c.raw.iter().map(|&(x, y)| (x, tf(y))),
            col.mix(0.25).stroke_width(1),
        ))
        .map_err(err)?;
    Ok(())
}

/// One arm's smoothed line (with its legend entry) and evaluation dots.
fn loss_foreground(
    chart: &mut Chart,
    col: RGBColor,
    c: &ArmCurves,
    tf: &dyn Fn(f64) -> f64,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(
            c.smooth.iter().map(|p| (p.0, tf(p.1))),
            col.stroke_width(2),
        ))
        .map_err(err)?
        .label(c.name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    chart
        .draw_series(
            c.eval
                .iter()
                .map(|&(x, y)| Circle::new((x, tf(y)), 4, ShapeStyle::from(&col).filled())),
        )
        .map_err(err)?;
    chart
        .draw_series(
            c.eval
                .iter()
                .map(|&(x, y)| Circle::new((x, tf(y)), 4, WHITE.stroke_width(1))),
        )
        .map_err(err)?;
    Ok(())
}

/// Perceptually uniform colour of rank `r` on a scale up to `max` (viridis: dark for low ranks,
/// yellow for the highest).
fn rank_colour(r: usize, max: usize) -> RGBColor {
    ViridisRGB.get_color_normalized(r as f64, 0.0, max.max(1) as f64)
}

/// Up to about six round tick values in 0..=max (1, 2 or 5 × a power of ten apart).
fn nice_ticks(max: usize) -> Vec<usize> {
    let mut step = 1;
    'outer: for p in [1usize, 10, 100, 1000] {
        for m in [1, 2, 5] {
            if max / (m * p) <= 6 {
                step = m * p;
                break 'outer;
            }
        }
    }
    (0..=max).step_by(step).collect()
}

/// The rank records of one cell, in the order they were written.
fn cell_records<'a>(records: &'a [RankRecord], arm: &str, seed: u64) -> Vec<&'a RankRecord> {
    records
        .iter()
        .filter(|r| r.arm == arm && r.seed == seed)
        .collect()
}

/// Slot × step heatmap of one cell's ranks: a row per adapter slot (layer by layer), a column per
/// interval between two rank changes, coloured by rank on a viridis scale (a swatch per rank up
/// to 16, a colour bar with round ticks above). A slot without an adapter for the whole cell
/// (not targeted) is left blank, so it cannot be mistaken for an adapter shrunk to rank 0.
/// `None` without rank records.
pub fn rank_heatmap(
    arm: &str,
    seed: u64,
    ranks: &[RankRecord],
    total_steps: u64,
) -> Result<Option<String>> {
    let recs = cell_records(ranks, arm, seed);
    let Some(first) = recs.first() else {
        return Ok(None);
    };
    let slots: Vec<String> = first.slots.iter().map(|s| s.name.clone()).collect();
    if slots.is_empty() {
        return Ok(None);
    }
    let adapted: Vec<bool> = (0..slots.len())
        .map(|i| {
            recs.iter()
                .any(|r| r.slots.get(i).is_some_and(|x| x.after > 0))
        })
        .collect();
    let end = total_steps.max(recs.last().map(|r| r.step + 1).unwrap_or(1)) as f64;
    let max_rank = recs
        .iter()
        .flat_map(|r| r.slots.iter().map(|x| x.after))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = slots.len();
    let row = 16;
    let height = (130 + row * n).clamp(320, 1600) as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (main, bar) = root.split_horizontally(850);
        let last = recs.last().map(|r| r.total()).unwrap_or(0);
        let mut chart = ChartBuilder::on(&main)
            .caption(
                format!("Ranks of {arm}, seed {seed} (Σ rank at the end: {last})"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(90)
            .build_cartesian_2d(0f64..end, 0f64..n as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("step")
            .x_label_formatter(&step_label)
            .y_labels(0)
            .draw()
            .map_err(err)?;
        heatmap_rows(&main, &mut chart, &slots, &adapted, &recs, end, max_rank)?;
        rank_scale(&bar, max_rank, adapted.iter().any(|a| !a))?;
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

/// The heatmap's rows: slot names at row centres (greyed without an adapter), a rectangle per
/// slot and interval between rank changes, thin white lines between layers.
fn heatmap_rows(
    main: &Svg,
    chart: &mut Chart,
    slots: &[String],
    adapted: &[bool],
    recs: &[&RankRecord],
    end: f64,
    max_rank: usize,
) -> Result<()> {
    let n = slots.len();
    // Row labels at row centres (the mesh would put them on row boundaries); slots without
    // an adapter are greyed.
    for (i, name) in slots.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
        let grey = if adapted[i] {
            BLACK
        } else {
            RGBColor(170, 170, 170)
        };
        let style = TextStyle::from(("sans-serif", 11).into_font())
            .color(&grey)
            .pos(Pos::new(HPos::Right, VPos::Center));
        main.draw(&Text::new(name.clone(), (px - 6, py), style))
            .map_err(err)?;
    }
    for (k, rec) in recs.iter().enumerate() {
        let x0 = rec.step as f64;
        let x1 = recs.get(k + 1).map(|r| r.step as f64).unwrap_or(end);
        if x1 <= x0 && k + 1 < recs.len() {
            continue;
        }
        chart
            .draw_series(
                rec.slots
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| adapted[*i])
                    .map(|(i, s)| {
                        // Slot 0 at the top.
                        let y = (n - 1 - i) as f64;
                        Rectangle::new(
                            [(x0, y), (x1.max(x0 + 0.5), y + 1.0)],
                            rank_colour(s.after, max_rank).filled(),
                        )
                    }),
            )
            .map_err(err)?;
    }
    // Thin white lines between layers (slot names are "layer.kind").
    let layer = |s: &str| s.split('.').next().unwrap_or("").to_string();
    for i in 1..n {
        if layer(&slots[i]) != layer(&slots[i - 1]) {
            let y = (n - i) as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, y), (end, y)],
                    WHITE.stroke_width(2),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The colour scale beside a heatmap, with a "none" swatch when some slot has no adapter.
fn rank_scale(bar: &Svg, max_rank: usize, unadapted: bool) -> Result<()> {
    // The scale: one swatch per rank when there are few, else a bar with round ticks.
    let label = |t: String, y: i32| {
        Text::new(
            t,
            (36, y),
            TextStyle::from(("sans-serif", 11)).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    };
    bar.draw(&Text::new("rank", (10, 30), ("sans-serif", 12)))
        .map_err(err)?;
    let top = 50;
    if max_rank <= 16 {
        let h = 18;
        for r in 0..=max_rank {
            let y = top + (max_rank - r) as i32 * h;
            bar.draw(&Rectangle::new(
                [(10, y), (30, y + h - 2)],
                rank_colour(r, max_rank).filled(),
            ))
            .map_err(err)?;
            bar.draw(&label(r.to_string(), y + h / 2 - 1))
                .map_err(err)?;
        }
    } else {
        let h = 200;
        for p in 0..h {
            let r = (h - 1 - p) as f64 / (h - 1) as f64 * max_rank as f64;
            let c = ViridisRGB.get_color_normalized(r, 0.0, max_rank as f64);
            bar.draw(&Rectangle::new(
                [(10, top + p), (30, top + p + 1)],
                c.filled(),
            ))
            .map_err(err)?;
        }
        for t in nice_ticks(max_rank) {
            let y = top + ((1.0 - t as f64 / max_rank as f64) * (h - 1) as f64) as i32;
            bar.draw(&label(t.to_string(), y)).map_err(err)?;
        }
    }
    if unadapted {
        let scale = if max_rank <= 16 {
            18 * (max_rank as i32 + 1)
        } else {
            200
        };
        let y = top + scale + 24;
        bar.draw(&Rectangle::new(
            [(10, y), (30, y + 16)],
            RGBColor(170, 170, 170).stroke_width(1),
        ))
        .map_err(err)?;
        bar.draw(&label("none".into(), y + 8)).map_err(err)?;
    }
    Ok(())
}

/// One cell's allocations over training: α and β (top) and every slot's rank (bottom, one
/// step line per slot) at each allocation, held until the next and drawn to `steps`. `None`
/// when the cell has fewer than two allocations.
pub fn allocation_trajectory(
    arm: &str,
    seed: u64,
    records: &[RankRecord],
    steps: u64,
) -> Result<Option<String>> {
    let recs = cell_records(records, arm, seed);
    if recs.len() < 2 {
        return Ok(None);
    }
    let end = steps.max(recs.last().map_or(1, |r| r.step)).max(1) as f64;
    let slots: Vec<String> = recs[0].slots.iter().map(|s| s.name.clone()).collect();
    let max_rank = recs
        .iter()
        .flat_map(|r| r.slots.iter().map(|s| s.after))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // α and β where the allocation has them.
    let params: Vec<(&str, Vec<(f64, f64)>)> = [("α", 0usize), ("β", 1)]
        .into_iter()
        .map(|(name, k)| {
            let pts = recs
                .iter()
                .filter_map(|r| {
                    let v = if k == 0 { r.alpha } else { r.beta };
                    v.filter(|x| x.is_finite()).map(|v| (r.step as f64, v))
                })
                .collect();
            (name, pts)
        })
        .collect();
    let all: Vec<f64> = params
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .collect();
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, bottom) = root.split_vertically(260);
        if !all.is_empty() {
            alpha_beta_panel(
                &top,
                &format!("α and β of {arm} seed {seed} at each allocation"),
                &params,
                &all,
                end,
            )?;
        }
        slot_rank_panel(&bottom, &slots, &recs, end, max_rank)?;
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

/// α and β at each allocation, over the steps.
fn alpha_beta_panel(
    top: &Svg,
    caption: &str,
    params: &[(&str, Vec<(f64, f64)>)],
    all: &[f64],
    end: f64,
) -> Result<()> {
    let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.1);
    let mut chart = ChartBuilder::on(top)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart.configure_mesh().x_desc("step").draw().map_err(err)?;
    for (i, (name, pts)) in params.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Every slot's rank as a step line: each allocation's rank held until the next one.
fn slot_rank_panel(
    bottom: &Svg,
    slots: &[String],
    recs: &[&RankRecord],
    end: f64,
    max_rank: f64,
) -> Result<()> {
    let mut chart = ChartBuilder::on(bottom)
        .caption("Rank of every slot", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..max_rank * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("rank")
        .draw()
        .map_err(err)?;
    for (i, name) in slots.iter().enumerate() {
        // A step line: each allocation's rank held until the next one.
        let mut pts: Vec<(f64, f64)> = Vec::new();
        for (k, r) in recs.iter().enumerate() {
            let y = r.slots.get(i).map_or(0, |s| s.after) as f64;
            let x0 = r.step as f64;
            let x1 = recs.get(k + 1).map_or(end, |n| n.step as f64);
            pts.push((x0, y));
            pts.push((x1, y));
        }
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if slots.len() <= 24 {
        // Ranks change after phase 1, so the upper left is usually free.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Final rank of every adapted slot, one panel per arm (arms without adapters are left out):
/// the bar is the mean over the finished seeds, the whisker their range; panels share the
/// y-scale and the slot axis, labelled once at the bottom.
pub fn final_ranks(s: &Summary) -> Result<Option<String>> {
    // arm index (for its colour), name, slot → final rank of each finished seed
    let mut arms: Vec<(usize, String, BTreeMap<String, Vec<usize>>)> = Vec::new();
    let mut slots: Vec<String> = Vec::new();
    for (i, a) in s.arms.iter().enumerate() {
        let mut by_slot: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for c in s
            .cells
            .iter()
            .filter(|c| c.arm == a.name && c.status == CellStatus::Done)
        {
            for (slot, r) in &c.final_ranks {
                if !slots.contains(slot) {
                    slots.push(slot.clone());
                }
                by_slot.entry(slot.clone()).or_default().push(*r);
            }
        }
        if by_slot.values().flatten().any(|&r| r > 0) {
            arms.push((i, a.name.clone(), by_slot));
        }
    }
    // Slots no arm adapts are not drawn.
    slots.retain(|slot| {
        arms.iter()
            .any(|(_, _, b)| b.get(slot).is_some_and(|v| v.iter().any(|&r| r > 0)))
    });
    if arms.is_empty() || slots.is_empty() {
        return Ok(None);
    }
    let n = slots.len();
    let max_rank = arms
        .iter()
        .flat_map(|(_, _, b)| b.values().flatten().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let panel = 120;
    let bottom = 70;
    let width = (140 + 22 * n).clamp(640, 2400) as u32;
    let height = (50 + panel * arms.len() + bottom) as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (title, mut rest) = root.split_vertically(44);
        title
            .draw(&Text::new(
                "Final rank per module (bar: mean over seeds; whisker: min–max)",
                (width as i32 / 2, 12),
                TextStyle::from(("sans-serif", 18)).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        for (k, (ci, name, by_slot)) in arms.iter().enumerate() {
            let last = k + 1 == arms.len();
            let (area, below) = rest.split_vertically(if last {
                panel as i32 + bottom as i32
            } else {
                panel as i32
            });
            rest = below;
            let mut chart = ChartBuilder::on(&area)
                .margin_left(12)
                .margin_right(16)
                .margin_top(6)
                .x_label_area_size(if last { bottom as i32 } else { 0 })
                .y_label_area_size(40)
                .caption(name.as_str(), ("sans-serif", 13))
                .build_cartesian_2d(0f64..n as f64, 0f64..max_rank * 1.08)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .bold_line_style(RGBColor(225, 225, 225))
                .light_line_style(WHITE.mix(0.0))
                .x_labels(0)
                .y_labels(4)
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(err)?;
            if last {
                slot_names(&root, &chart, &slots)?;
            }
            rank_bars(&mut chart, color(*ci), &slots, by_slot)?;
        }
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

/// Slot names under the bottom panel's bars, written downward from the axis.
fn slot_names(root: &Svg, chart: &Chart, slots: &[String]) -> Result<()> {
    // Slot names under the bars, written downward from the axis.
    let style = TextStyle::from(("sans-serif", 11).into_font())
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, name) in slots.iter().enumerate() {
        // backend_coord is in the whole image's pixels: draw on the root.
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(name.clone(), (px, py + 6), style.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// One arm's bars (mean final rank over seeds) and whiskers (min–max where seeds differ).
fn rank_bars(
    chart: &mut Chart,
    col: RGBColor,
    slots: &[String],
    by_slot: &BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let stats: Vec<(usize, f64, usize, usize)> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, slot)| {
            let v = by_slot.get(slot).filter(|v| !v.is_empty())?;
            let mean = v.iter().sum::<usize>() as f64 / v.len() as f64;
            let (lo, hi) = (*v.iter().min()?, *v.iter().max()?);
            Some((i, mean, lo, hi))
        })
        .collect();
    chart
        .draw_series(stats.iter().map(|&(i, mean, _, _)| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, mean)],
                col.filled(),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(stats.iter().filter(|s| s.2 != s.3).map(|&(i, _, lo, hi)| {
            let x = i as f64 + 0.5;
            PathElement::new(vec![(x, lo as f64), (x, hi as f64)], BLACK.stroke_width(1))
        }))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::records::{ArmMeta, CellResult, MetricSpec};

    fn rec(step: u64, ranks: &[usize]) -> RankRecord {
        RankRecord {
            arm: "a".into(),
            seed: 0,
            allocation: crate::engine::Allocation {
                step,
                reason: "t".into(),
                budget: None,
                param_budget: None,
                alpha: None,
                beta: None,
                rule: None,
                slots: ranks
                    .iter()
                    .enumerate()
                    .map(|(i, r)| crate::engine::SlotAllocation {
                        name: format!("0.s{i}"),
                        cost: 8,
                        complexity: None,
                        score: None,
                        raw: None,
                        before: 0,
                        after: *r,
                    })
                    .collect(),
                resized: false,
                seconds: 0.0,
            },
        }
    }

    #[test]
    fn allocation_trajectory_draws_alpha_beta_and_every_slot() {
        let mut ranks = vec![rec(0, &[4, 4, 4]), rec(10, &[8, 2, 2]), rec(20, &[6, 3, 3])];
        for (k, r) in ranks.iter_mut().enumerate().skip(1) {
            r.allocation.alpha = Some(1.0 + k as f64);
            r.allocation.beta = Some(-0.5);
        }
        let svg = allocation_trajectory("a", 0, &ranks, 30).unwrap().unwrap();
        assert!(svg.starts_with("<svg"));
        for needle in ["α", "β", "0.s0", "0.s2"] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        assert!(allocation_trajectory("a", 0, &ranks[..1], 30)
            .unwrap()
            .is_none());
    }

    #[test]
    fn ema_is_debiased_and_follows_a_step() {
        // A constant stays constant from the first value on (no pull toward 0).
        assert_eq!(ema(&[2.0, 2.0, 2.0], 9), vec![2.0, 2.0, 2.0]);
        // After a step from 0 to 1, α = 2/(w+1): the debiased EMA is the weighted mean
        // (1 − (1−α)^k) / (1 − (1−α)^(k+1)) of one 0 followed by k ones.
        let xs = [0.0, 1.0, 1.0, 1.0];
        let a: f64 = 2.0 / 4.0;
        let got = ema(&xs, 3);
        for (k, g) in got.iter().enumerate().skip(1) {
            let want = (1.0 - (1.0 - a).powi(k as i32)) / (1.0 - (1.0 - a).powi(k as i32 + 1));
            assert!((g - want).abs() < 1e-12, "{k}: {g} vs {want}");
        }
    }

    #[test]
    fn heatmap_leaves_slots_without_adapter_blank() {
        // Slot 1 never has an adapter; slot 2 is shrunk to rank 0 at step 20.
        let ranks = [rec(0, &[4, 0, 4]), rec(10, &[8, 0, 2]), rec(20, &[6, 0, 0])];
        let svg = rank_heatmap("a", 0, &ranks, 30).unwrap().unwrap();
        assert!(svg.starts_with("<svg"));
        let cells = |c: RGBColor| {
            let hex = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
            svg.matches(&format!("fill=\"{hex}\"")).count()
        };
        // Rank 0 of the adapted slot has its own colour (and its swatch in the scale).
        assert_eq!(cells(rank_colour(0, 8)), 2);
        // 2 adapted slots × 3 intervals + one swatch per rank 0..=8 + the "none" box.
        let filled: usize = (0..=8).map(|r| cells(rank_colour(r, 8))).sum();
        assert_eq!(filled, 2 * 3 + 9);
        assert!(svg.contains("none"), "the scale says what blank means");
        assert!(svg.contains("0.s1"), "slot names label the rows");
        assert!(rank_heatmap("b", 0, &ranks, 30).unwrap().is_none());
    }

    fn metric(arm: &str, seed: u64, step: u64, loss: f64, eval: Option<f64>) -> MetricRecord {
        MetricRecord {
            arm: arm.into(),
            seed,
            step,
            phase: "p".into(),
            loss,
            lr: 0.1,
            grad_norm: None,
            tokens: 1,
            trainable_params: 1,
            adapter_bytes: 16,
            eval_loss: eval,
            eval_accuracy: None,
        }
    }

    #[test]
    fn loss_curves_show_smoothed_raw_band_and_evaluations() {
        let mut recs = Vec::new();
        for seed in [1, 2] {
            for step in 1..=40u64 {
                let l = 1.0 / step as f64 + 0.01 * seed as f64;
                recs.push(metric("x", seed, step, l, (step == 20).then_some(0.3)));
                recs.push(metric("y", seed, step, 2.0 * l, None));
            }
        }
        let finals = [FinalEval {
            arm: "y".into(),
            seed: 1,
            step: 40,
            loss: 0.2,
        }];
        let svg = loss_curves(&["x".into(), "y".into()], &recs, &finals)
            .unwrap()
            .unwrap();
        // Each arm's colour strokes its smoothed line, its faint raw line and its legend mark.
        for c in ["#1F77B4", "#FF7F0E"] {
            assert!(svg.matches(&format!("stroke=\"{c}\"")).count() >= 3, "{c}");
        }
        assert!(svg.contains("opacity=\"0.25\""), "the raw curve is faint");
        assert_eq!(svg.matches("<polygon").count(), 2, "a seed band per arm");
        // One evaluation point each (logged at step 20 for x, final for y), drawn as a dot and
        // its white ring.
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("over 2 seeds"));
        assert!(
            svg.contains("\nx\n") && svg.contains("\ny\n"),
            "legend names the arms"
        );
    }

    #[test]
    fn final_ranks_leave_out_arms_and_slots_without_adapters() {
        let cell = |arm: &str, seed: u64, ranks: &[usize]| CellResult {
            status: CellStatus::Done,
            final_ranks: ranks
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("0.slot{i}"), *r))
                .collect(),
            ..CellResult::pending(arm, seed)
        };
        let meta = |n: &str| ArmMeta {
            name: n.into(),
            method: n.into(),
            ablation: false,
            ablation_of: None,
            hparams: None,
        };
        let s = Summary {
            experiment: "e".into(),
            metric: MetricSpec {
                name: "eval_loss".into(),
                higher_is_better: false,
            },
            baseline: None,
            arms: vec![meta("adaptive"), meta("full")],
            seeds: vec![1, 2],
            cells: vec![
                cell("adaptive", 1, &[2, 0, 6]),
                cell("adaptive", 2, &[4, 0, 6]),
                cell("full", 1, &[0, 0, 0]),
            ],
            env: None,
            lr_choices: vec![],
        };
        let svg = final_ranks(&s).unwrap().unwrap();
        assert!(svg.contains("adaptive") && !svg.contains(">full<") && !svg.contains("\nfull\n"));
        assert!(svg.contains("0.slot0") && svg.contains("0.slot2"));
        assert!(
            !svg.contains("0.slot1"),
            "a slot no arm adapts is not drawn"
        );
        // Seeds disagree on slot 0 only: one whisker more than when they agree.
        let mut same = s.clone();
        same.cells[1] = cell("adaptive", 2, &[2, 0, 6]);
        let agree = final_ranks(&same).unwrap().unwrap();
        assert_eq!(
            svg.matches("<polyline").count(),
            agree.matches("<polyline").count() + 1
        );
    }
}
