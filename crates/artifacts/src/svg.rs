//! Minimal SVG line plots for reports (no plotting dependency): one x axis, one y axis, a
//! legend, one polyline per series. Enough for "metric per layer" figures.

use std::fmt::Write as _;

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed stroke (e.g. to tell compliance from refusal mass).
    pub dashed: bool,
    /// Interval of each point's x and y (low, high), drawn as whiskers; empty: none.
    pub x_err: Vec<(f64, f64)>,
    pub y_err: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            dashed: false,
            x_err: Vec::new(),
            y_err: Vec::new(),
        }
    }
}

/// A line plot; `y_range` fixes the y axis (e.g. 0..1 for accuracies), otherwise it fits the data.
#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_range: Option<(f64, f64)>,
    /// Fixes the x axis (e.g. 0..1 for rates; its ticks may then fall between integers);
    /// otherwise it fits the data, with ticks at whole numbers (layers, steps).
    pub x_range: Option<(f64, f64)>,
    /// Horizontal reference lines (value, label), e.g. the two centroids of the boundary plot.
    pub h_lines: Vec<(f64, String)>,
    pub series: Vec<Series>,
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick step for a range (1, 2 or 5 times a power of ten, about 5 ticks).
fn tick_step(span: f64) -> f64 {
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let k = if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    };
    k * p
}

impl LinePlot {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        LinePlot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            y_range: None,
            x_range: None,
            h_lines: Vec::new(),
            series: Vec::new(),
        }
    }

    /// Render to an SVG document (720 x 420 px).
    pub fn render(&self) -> String {
        let (w, h) = (720.0, 420.0);
        let (left, right, top, bottom) = (64.0, 190.0, 36.0, 48.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        for (v, _) in &self.h_lines {
            y0 = y0.min(*v);
            y1 = y1.max(*v);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if let Some((a, b)) = self.y_range {
            (y0, y1) = (a, b);
        }
        if let Some((a, b)) = self.x_range {
            (x0, x1) = (a, b);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        if self.y_range.is_none() {
            let pad = 0.05 * (y1 - y0);
            y0 -= pad;
            y1 += pad;
        }
        let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
            left + pw / 2.0,
            esc(&self.title)
        );
        // Grid and ticks.
        let xs = match self.x_range {
            Some(_) => tick_step(x1 - x0),
            None => tick_step(x1 - x0).max(1.0),
        };
        let frame = (left, top, pw, ph);
        draw_ticks(
            &mut s,
            frame,
            (y0, y1, tick_step(y1 - y0)),
            (x0, x1, xs),
            &sx,
            &sy,
        );
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 10.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
            top + ph / 2.0,
            top + ph / 2.0,
            esc(&self.y_label)
        );
        for (v, label) in &self.h_lines {
            let y = sy(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#999" stroke-dasharray="2 3"/><text x="{}" y="{:.1}" fill="#666">{}</text>"##,
                left + pw,
                left + 4.0,
                y - 3.0,
                esc(label)
            );
        }
        for (i, se) in self.series.iter().enumerate() {
            draw_series(&mut s, i, se, &sx, &sy, (left + pw + 12.0, top));
        }
        s.push_str("</svg>\n");
        s
    }

    /// Render and write atomically.
    pub fn write(&self, path: &std::path::Path) -> crate::Result<()> {
        crate::write_bytes_atomic(path, self.render().as_bytes())
    }
}

/// Horizontal grid lines with y ticks and vertical ones with x ticks (`frame` = left, top,
/// width, height of the plot area; each axis as (from, to, tick step)).
fn draw_ticks(
    s: &mut String,
    (left, top, pw, ph): (f64, f64, f64, f64),
    (y0, y1, ys): (f64, f64, f64),
    (x0, x1, xs): (f64, f64, f64),
    sx: &dyn Fn(f64) -> f64,
    sy: &dyn Fn(f64) -> f64,
) {
    let mut t = (y0 / ys).ceil() * ys;
    while t <= y1 + 1e-9 {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_tick(t, ys)
        );
        t += ys;
    }
    let mut t = (x0 / xs).ceil() * xs;
    while t <= x1 + 1e-9 {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            fmt_tick(t, xs)
        );
        t += xs;
    }
}

/// One series: its whiskers, line, markers and legend entry (`legend` = (x, top)).
fn draw_series(
    s: &mut String,
    i: usize,
    se: &Series,
    sx: &dyn Fn(f64) -> f64,
    sy: &dyn Fn(f64) -> f64,
    legend: (f64, f64),
) {
    let color = PALETTE[i % PALETTE.len()];
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    for (k, &(x, y)) in se.points.iter().enumerate().filter(|(_, p)| finite(p)) {
        if let Some(&(lo, hi)) = se.y_err.get(k).filter(|e| finite(e)) {
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="1" opacity="0.6"/>"#,
                sy(lo),
                sy(hi),
                x = sx(x)
            );
        }
        if let Some(&(lo, hi)) = se.x_err.get(k).filter(|e| finite(e)) {
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{color}" stroke-width="1" opacity="0.6"/>"#,
                sx(lo),
                sx(hi),
                y = sy(y)
            );
        }
    }
    let path: Vec<String> = se
        .points
        .iter()
        .filter(|p| finite(p))
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    let dash = if se.dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
        path.join(" ")
    );
    // Markers: a series of one point (a variant in a scatter) is still visible.
    for p in &path {
        let (cx, cy) = p.split_once(',').expect("formatted pair");
        let _ = writeln!(s, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{color}"/>"#);
    }
    let (lx, top) = legend;
    let ly = top + 10.0 + 18.0 * i as f64;
    let _ = writeln!(
        s,
        r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
        lx + 22.0,
        lx + 28.0,
        ly + 4.0,
        esc(&se.name)
    );
}

fn fmt_tick(v: f64, step: f64) -> String {
    // Accumulated steps land on -1e-17 instead of 0: print "0", not "-0.0".
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let d = (-step.log10()).ceil() as usize;
        format!("{v:.d$}")
    }
}
