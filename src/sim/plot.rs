//! The report's timeline as an SVG picture: viewers, edge streams, and
//! offload against the physical limit, one panel each over the event.
//!
//! Written by hand: three line charts are a few dozen lines of SVG, less
//! than a plotting crate's font and backend dependencies.

use std::fmt::Write;

use super::report::{Sample, SimReport};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 190.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;

/// One line of a panel.
struct Series<'a> {
    label: &'a str,
    color: &'a str,
    value: fn(&Sample) -> f64,
}

/// The SVG document for `report`.
pub fn svg(report: &SimReport) -> String {
    let height = TOP + 3.0 * (PANEL + GAP);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="14">treecast sim: {} viewers, {:.0} min, {}, seed {}: offload {:.1}% of a limit of {:.1}%, edge {:.1} streams</text>"#,
        report.viewers,
        report.minutes,
        escape(&report.profile),
        report.seed,
        report.offload_ratio * 100.0,
        report.physical_limit * 100.0,
        report.edge_streams,
    );
    let panels: [(&str, Vec<Series>, Option<f64>); 3] = [
        (
            "viewers",
            vec![Series {
                label: "viewers",
                color: "#1f77b4",
                value: |s| s.viewers as f64,
            }],
            None,
        ),
        (
            "edge streams",
            vec![Series {
                label: "edge streams",
                color: "#d62728",
                value: |s| s.edge_streams,
            }],
            Some(f64::from(report.root_slots)),
        ),
        (
            "offload",
            vec![
                Series {
                    label: "offload",
                    color: "#2ca02c",
                    value: |s| s.offload,
                },
                Series {
                    label: "physical limit",
                    color: "#7f7f7f",
                    value: |s| s.physical_limit,
                },
            ],
            None,
        ),
    ];
    for (k, (title, series, guide)) in panels.iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL + GAP);
        panel(&mut out, &report.timeline, y0, title, series, *guide);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    t: &[Sample],
    y0: f64,
    title: &str,
    series: &[Series],
    guide: Option<f64>,
) {
    let x_max = t.last().map_or(1.0, |s| s.t_s).max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| t.iter().map(s.value))
        .chain(guide)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let w = WIDTH - LEFT - RIGHT;
    let x = |v: f64| LEFT + v / x_max * w;
    let y = |v: f64| y0 + PANEL - v / y_max * PANEL;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{w}" height="{PANEL}" fill="none" stroke="#ccc"/><text x="{}" y="{}">{}</text>"##,
        LEFT + 4.0,
        y0 + 14.0,
        escape(title)
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT - 6.0,
            y(v) + 4.0,
            tick_label(v)
        );
    }
    for i in 0..=6 {
        let v = x_max * f64::from(i) / 6.0;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{:.0} min</text>"##,
            x(v),
            y0 + PANEL + 16.0,
            v / 60.0
        );
    }
    if let Some(g) = guide {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" text-anchor="end" fill="#999">root slots</text>"##,
            LEFT + w,
            y(g),
            y(g),
            LEFT + w - 4.0,
            y(g) - 4.0
        );
    }
    for (k, s) in series.iter().enumerate() {
        let points: Vec<String> = t
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t_s), y((s.value)(p))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{}" text-anchor="end">{}</text>"#,
            s.color,
            points.join(" "),
            LEFT + w - 4.0,
            y0 + 14.0 + 14.0 * k as f64,
            s.color,
            escape(s.label)
        );
    }
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
