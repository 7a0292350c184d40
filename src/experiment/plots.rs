//! SVG plots of a run (plotters, no font files needed): training and evaluation loss per arm, a
//! slot × step heatmap of the ranks of one cell, and the final rank of every slot per arm.

use super::records::{CellStatus, MetricRecord, RankRecord, Summary};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
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

/// Mean training loss over seeds at each step, one line per arm (log10 when the losses span more
/// than a decade). `None` when there is nothing to plot.
pub fn loss_curves(arms: &[String], metrics: &[MetricRecord]) -> Result<Option<String>> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for arm in arms {
        let mut by_step: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
        for m in metrics
            .iter()
            .filter(|m| &m.arm == arm && m.loss.is_finite())
        {
            let e = by_step.entry(m.step).or_insert((0.0, 0));
            e.0 += m.loss;
            e.1 += 1;
        }
        if !by_step.is_empty() {
            let pts = by_step
                .into_iter()
                .map(|(s, (sum, n))| (s as f64, sum / n as f64))
                .collect();
            series.push((arm.clone(), pts));
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .collect();
    let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log = lo > 0.0 && hi / lo > 10.0;
    let tf = |y: f64| if log { y.log10() } else { y };
    let (ylo, yhi) = (tf(lo), tf(hi));
    let pad = ((yhi - ylo) * 0.05).max(1e-6);
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0, f64::max);

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Training loss (mean over seeds)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, (ylo - pad)..(yhi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(if log { "log10 loss" } else { "loss" })
            .draw()
            .map_err(err)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(x, y)| (x, tf(y))),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

/// Slot × step heatmap of one cell's ranks: each row an adapter slot, each column the interval
/// between two rank changes, darker for higher rank. `None` without rank records.
pub fn rank_heatmap(
    arm: &str,
    seed: u64,
    ranks: &[RankRecord],
    total_steps: u64,
) -> Result<Option<String>> {
    let recs: Vec<&RankRecord> = ranks
        .iter()
        .filter(|r| r.arm == arm && r.seed == seed)
        .collect();
    let Some(first) = recs.first() else {
        return Ok(None);
    };
    let slots: Vec<String> = first.slots.iter().map(|s| s.name.clone()).collect();
    if slots.is_empty() {
        return Ok(None);
    }
    let end = total_steps.max(recs.last().map(|r| r.step + 1).unwrap_or(1)) as f64;
    let max_rank = recs
        .iter()
        .flat_map(|r| r.slots.iter().map(|x| x.after))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = slots.len();
    let height = (120 + 14 * n).clamp(300, 1400) as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (main, bar) = root.split_horizontally(820);
        let mut chart = ChartBuilder::on(&main)
            .caption(
                format!("Ranks of {arm} seed {seed} (max {max_rank:.0})"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(110)
            .build_cartesian_2d(0f64..end, 0f64..n as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("step")
            .y_labels(0)
            .draw()
            .map_err(err)?;
        // Row labels at row centres (the mesh would put them on row boundaries).
        let label = TextStyle::from(("sans-serif", 10).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in slots.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
            main.draw(&Text::new(name.clone(), (px - 6, py), label.clone()))
                .map_err(err)?;
        }
        let shade = |r: usize| {
            let t = r as f64 / max_rank;
            RGBColor(
                (255.0 - 225.0 * t) as u8,
                (255.0 - 180.0 * t) as u8,
                (255.0 - 100.0 * t) as u8,
            )
        };
        for (k, rec) in recs.iter().enumerate() {
            let x0 = rec.step as f64;
            let x1 = recs.get(k + 1).map(|r| r.step as f64).unwrap_or(end);
            if x1 <= x0 && k + 1 < recs.len() {
                continue;
            }
            chart
                .draw_series(rec.slots.iter().map(|s| s.after).enumerate().map(|(i, r)| {
                    // Slot 0 at the top.
                    let y = (n - 1 - i) as f64;
                    Rectangle::new([(x0, y), (x1.max(x0 + 0.5), y + 1.0)], shade(r).filled())
                }))
                .map_err(err)?;
        }
        // Colour scale.
        let steps: i32 = 10;
        for i in 0..steps {
            let r0 = (i as f64 / steps as f64 * max_rank).round() as usize;
            let top = 40 + (steps - 1 - i) * 20;
            bar.draw(&Rectangle::new(
                [(10, top), (30, top + 20)],
                shade(r0).filled(),
            ))
            .map_err(err)?;
            bar.draw(&Text::new(
                r0.to_string(),
                (34, top + 5),
                ("sans-serif", 11),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
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
    let recs: Vec<&RankRecord> = records
        .iter()
        .filter(|r| r.arm == arm && r.seed == seed)
        .collect();
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
            let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let pad = ((hi - lo) * 0.1).max(0.1);
            let mut chart = ChartBuilder::on(&top)
                .caption(
                    format!("α and β of {arm} seed {seed} at each allocation"),
                    ("sans-serif", 20),
                )
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
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
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
        }
        let mut chart = ChartBuilder::on(&bottom)
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
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
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
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

/// Final rank of every slot, one bar group per slot and one bar per arm (first finished seed).
pub fn final_ranks(s: &Summary) -> Result<Option<String>> {
    let arms: Vec<(String, Vec<(String, usize)>)> = s
        .arms
        .iter()
        .filter_map(|a| {
            s.cells
                .iter()
                .find(|c| {
                    c.arm == a.name && c.status == CellStatus::Done && !c.final_ranks.is_empty()
                })
                .map(|c| (a.name.clone(), c.final_ranks.clone()))
        })
        .collect();
    let Some((_, first)) = arms.first() else {
        return Ok(None);
    };
    let slots: Vec<String> = first.iter().map(|x| x.0.clone()).collect();
    let n = slots.len();
    let max_rank = arms
        .iter()
        .flat_map(|(_, r)| r.iter().map(|x| x.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let width = (200 + 24 * n).clamp(600, 2400) as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (width, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Final rank per module", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..max_rank * 1.1)
            .map_err(err)?;
        let names = slots.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(80))
            .x_label_formatter(&|x| names.get(x.floor() as usize).cloned().unwrap_or_default())
            .x_label_style(
                ("sans-serif", 10)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .y_desc("rank")
            .draw()
            .map_err(err)?;
        let w = 0.8 / arms.len() as f64;
        for (k, (name, ranks)) in arms.iter().enumerate() {
            let c = color(k);
            chart
                .draw_series(ranks.iter().filter_map(|(slot, r)| {
                    let i = slots.iter().position(|x| x == slot)?;
                    let x0 = i as f64 + 0.1 + k as f64 * w;
                    Some(Rectangle::new([(x0, 0.0), (x0 + w, *r as f64)], c.filled()))
                }))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                slots: ranks
                    .iter()
                    .enumerate()
                    .map(|(i, r)| crate::engine::SlotAllocation {
                        name: format!("0.s{i}"),
                        cost: 8,
                        complexity: None,
                        score: None,
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
    fn heatmap_has_one_cell_per_slot_and_interval() {
        let ranks = [rec(0, &[4, 4, 4]), rec(10, &[8, 2, 2]), rec(20, &[6, 3, 3])];
        let svg = rank_heatmap("a", 0, &ranks, 30).unwrap().unwrap();
        assert!(svg.starts_with("<svg"));
        // 3 slots × 3 intervals of filled rectangles (plus background, bar scale and frame).
        let filled = svg.matches("<rect").count();
        assert!(filled >= 9 + 10, "{filled} rects");
        assert!(svg.contains("0.s1"), "slot names label the rows");
        assert!(rank_heatmap("b", 0, &ranks, 30).unwrap().is_none());
    }

    #[test]
    fn loss_curve_has_a_line_per_arm() {
        let m = |arm: &str, step, loss| MetricRecord {
            arm: arm.into(),
            seed: 0,
            step,
            phase: "p".into(),
            loss,
            lr: 0.1,
            grad_norm: None,
            tokens: 1,
            trainable_params: 1,
            eval_loss: None,
            eval_accuracy: None,
        };
        let recs = vec![
            m("x", 1, 1.0),
            m("x", 2, 0.5),
            m("y", 1, 2.0),
            m("y", 2, 1.0),
        ];
        let svg = loss_curves(&["x".into(), "y".into()], &recs)
            .unwrap()
            .unwrap();
        // Each arm's colour strokes its line and its legend mark.
        assert_eq!(svg.matches("stroke=\"#1F77B4\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("stroke=\"#FF7F0E\"").count(), 2);
        assert!(
            svg.contains("\nx\n") && svg.contains("\ny\n"),
            "legend names the arms"
        );
    }
}
