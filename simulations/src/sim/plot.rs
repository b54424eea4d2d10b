//! SVG plots (plotters' SVG backend: no system fonts needed).

use std::path::Path;

use plotters::prelude::*;

use super::metrics::{hops, theory_bound, theory_expected, LookupSample, Purpose};
use super::plan::{Action, Plan};
use super::report::Summary;

/// A named line.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: RGBColor,
    /// Dashed (theory) rather than solid (measured).
    pub dashed: bool,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn span(series: &[Series], f: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let vals = series.iter().flat_map(|s| s.points.iter().map(&f)).filter(|v| v.is_finite());
    vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
}

/// A line chart with optional shaded x ranges (e.g. a partition).
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
    shade: &[(f64, f64, &str)],
) -> PlotResult {
    let root = SVGBackend::new(path, (860, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = span(series, |p| p.0);
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0, x1) } else { (0.0, 1.0) };
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let (_, hi) = span(series, |p| p.1);
        (0.0, if hi.is_finite() && hi > 0.0 { hi * 1.1 } else { 1.0 })
    });
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).light_line_style(RGBColor(235, 235, 235)).draw()?;
    for (a, b, label) in shade {
        chart.draw_series(std::iter::once(Rectangle::new([(*a, y0), (*b, y1)], RGBColor(255, 210, 210).filled())))?;
        chart.draw_series(std::iter::once(Text::new(label.to_string(), (*a, y1), ("sans-serif", 13))))?;
    }
    for s in series {
        let color = s.color;
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        } else {
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if s.points.len() < 40 {
                chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A histogram of hop counts with the theory drawn as vertical lines.
pub fn hop_histogram(path: &Path, lookups: &[LookupSample], n: usize) -> PlotResult {
    let hs: Vec<u32> = lookups
        .iter()
        .filter(|l| l.ok && l.purpose == Purpose::Workload)
        .filter_map(|l| l.requests_to_first.map(hops))
        .collect();
    let bound = theory_bound(n);
    let max_h = hs.iter().copied().max().unwrap_or(0).max(bound.ceil() as u32) + 1;
    let mut counts = vec![0usize; max_h as usize + 1];
    for h in &hs {
        counts[*h as usize] += 1;
    }
    let total = hs.len().max(1) as f64;
    let root = SVGBackend::new(path, (860, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Hops per lookup, N = {n} (measured vs Kademlia)"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(max_h as f64 + 0.5), 0f64..100f64)?;
    chart.configure_mesh().x_desc("hops (request rounds to the first record)").y_desc("% of lookups").draw()?;
    chart
        .draw_series(counts.iter().enumerate().map(|(h, c)| {
            let x = h as f64;
            Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *c as f64 / total * 100.0)], COLORS[0].filled())
        }))?
        .label("measured")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], COLORS[0].filled()));
    for (v, name, color) in
        [(bound, "log2 N (bound)", COLORS[3]), (theory_expected(n), "log2(N/k)/(1+log2 k) (expected)", COLORS[2])]
    {
        chart
            .draw_series(DashedLineSeries::new([(v, 0.0), (v, 100.0)], 6, 4, color.stroke_width(2)))?
            .label(format!("{name} = {v:.2}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// The plots of one run: `latency.svg`, `success.svg`, `hops.svg`,
/// `resources.svg`.
pub fn run_plots(dir: &Path, plan: &Plan, summary: &Summary, m: &super::runner::Measured) -> PlotResult {
    let start = plan.workload_start_ms as f64 / 1000.0;
    let mut shade: Vec<(f64, f64, &str)> = Vec::new();
    let split = plan.actions.iter().find(|a| matches!(a.action, Action::Partition { .. }));
    let heal = plan.actions.iter().find(|a| matches!(a.action, Action::Heal { .. }));
    if let (Some(a), Some(b)) = (split, heal) {
        shade.push((a.at_ms as f64 / 1000.0 - start, b.at_ms as f64 / 1000.0 - start, " partition"));
    }
    let tl = &summary.timeline;
    let mid = |t: f64| t + plan.scenario.bucket_s / 2.0;
    let pts = |f: &dyn Fn(&super::metrics::Bucket) -> Option<f64>| -> Vec<(f64, f64)> {
        tl.iter().filter_map(|b| f(b).map(|v| (mid(b.t_s), v))).collect()
    };
    let some = |n: usize, v: f64| (n > 0).then_some(v);
    let name = &summary.scenario;
    lines(
        &dir.join("latency.svg"),
        &format!("{name}: lookup latency over time (N = {})", summary.nodes),
        "seconds into the workload",
        "ms",
        &[
            Series {
                name: "lookup p50".into(),
                points: pts(&|b| some(b.latency.n, b.latency.p50)),
                color: COLORS[0],
                dashed: false,
            },
            Series {
                name: "lookup p90".into(),
                points: pts(&|b| some(b.latency.n, b.latency.p90)),
                color: COLORS[1],
                dashed: false,
            },
            Series {
                name: "lookup p99".into(),
                points: pts(&|b| some(b.latency.n, b.latency.p99)),
                color: COLORS[3],
                dashed: false,
            },
            Series {
                name: "first record p50".into(),
                points: pts(&|b| some(b.first.n, b.first.p50)),
                color: COLORS[2],
                dashed: false,
            },
            Series {
                name: "call set-up p50".into(),
                points: pts(&|b| some(b.setup.n, b.setup.p50)),
                color: COLORS[4],
                dashed: false,
            },
        ],
        None,
        &shade,
    )?;
    let lo = tl
        .iter()
        .flat_map(|b| [(b.lookups.total > 0).then_some(b.lookups.rate), (b.calls.total > 0).then_some(b.calls.rate)])
        .flatten()
        .fold(1.0f64, f64::min);
    let floor = if lo >= 0.99 { 98.0 } else { ((lo * 100.0) / 10.0).floor() * 10.0 };
    lines(
        &dir.join("success.svg"),
        &format!("{name}: success over time (N = {})", summary.nodes),
        "seconds into the workload",
        "% successful",
        &[
            Series {
                name: "lookups".into(),
                points: pts(&|b| some(b.lookups.total, b.lookups.rate * 100.0)),
                color: COLORS[0],
                dashed: false,
            },
            Series {
                name: "calls".into(),
                points: pts(&|b| some(b.calls.total, b.calls.rate * 100.0)),
                color: COLORS[1],
                dashed: false,
            },
        ],
        Some((floor, 100.5)),
        &shade,
    )?;
    hop_histogram(&dir.join("hops.svg"), &m.lookups, summary.nodes)?;
    let rss: Vec<(f64, f64)> = m.resources.iter().map(|r| (r.t_s, r.rss_mib)).collect();
    let nodes: Vec<(f64, f64)> = m.resources.iter().map(|r| (r.t_s, r.nodes as f64)).collect();
    let conns: Vec<(f64, f64)> = m.resources.iter().map(|r| (r.t_s, r.connections as f64 / 10.0)).collect();
    lines(
        &dir.join("resources.svg"),
        &format!("{name}: memory and nodes over the run"),
        "seconds since start",
        "MiB / nodes / connections÷10",
        &[
            Series { name: "RSS MiB".into(), points: rss, color: COLORS[0], dashed: false },
            Series { name: "nodes".into(), points: nodes, color: COLORS[2], dashed: false },
            Series { name: "connections ÷ 10".into(), points: conns, color: COLORS[1], dashed: false },
        ],
        None,
        &[],
    )?;
    Ok(())
}

/// The plots against network size: `size_hops.svg`, `size_latency.svg`,
/// `size_success.svg`.
pub fn size_plots(dir: &Path, runs: &[Summary]) -> PlotResult {
    let mut runs: Vec<&Summary> = runs.iter().collect();
    runs.sort_by_key(|s| s.nodes);
    let xs = |f: &dyn Fn(&Summary) -> f64| -> Vec<(f64, f64)> { runs.iter().map(|s| (s.nodes as f64, f(s))).collect() };
    let n_max = runs.last().map_or(2, |s| s.nodes);
    let n_min = runs.first().map_or(2, |s| s.nodes);
    let theory = |f: fn(usize) -> f64| -> Vec<(f64, f64)> {
        let steps = 50;
        (0..=steps)
            .map(|i| {
                let n = n_min as f64 * (n_max as f64 / n_min as f64).powf(i as f64 / steps as f64);
                (n, f(n.round() as usize))
            })
            .collect()
    };
    lines(
        &dir.join("size_hops.svg"),
        "Hops per lookup against network size",
        "nodes (N)",
        "hops",
        &[
            Series {
                name: "measured mean".into(),
                points: xs(&|s| s.lookups.hops.mean),
                color: COLORS[0],
                dashed: false,
            },
            Series {
                name: "measured p99".into(),
                points: xs(&|s| s.lookups.hops.p99),
                color: COLORS[1],
                dashed: false,
            },
            Series { name: "log2 N (bound)".into(), points: theory(theory_bound), color: COLORS[3], dashed: true },
            Series {
                name: "log2(N/k)/(1+log2 k) (expected)".into(),
                points: theory(theory_expected),
                color: COLORS[2],
                dashed: true,
            },
        ],
        None,
        &[],
    )?;
    lines(
        &dir.join("size_latency.svg"),
        "Lookup latency against network size",
        "nodes (N)",
        "ms",
        &[
            Series {
                name: "lookup p50".into(),
                points: xs(&|s| s.lookups.latency_ms.p50),
                color: COLORS[0],
                dashed: false,
            },
            Series {
                name: "lookup p99".into(),
                points: xs(&|s| s.lookups.latency_ms.p99),
                color: COLORS[3],
                dashed: false,
            },
            Series {
                name: "first record p50".into(),
                points: xs(&|s| s.lookups.first_record_ms.p50),
                color: COLORS[2],
                dashed: false,
            },
            Series {
                name: "messages per lookup (mean)".into(),
                points: xs(&|s| s.lookups.messages.mean),
                color: COLORS[4],
                dashed: false,
            },
        ],
        None,
        &[],
    )?;
    lines(
        &dir.join("size_success.svg"),
        "Success against network size",
        "nodes (N)",
        "% successful",
        &[
            Series {
                name: "lookups".into(),
                points: xs(&|s| s.lookups.success.rate * 100.0),
                color: COLORS[0],
                dashed: false,
            },
            Series { name: "calls".into(), points: xs(&|s| s.calls.rate * 100.0), color: COLORS[1], dashed: false },
        ],
        Some((95.0, 100.5)),
        &[],
    )?;
    Ok(())
}
