//! A variant's safety/over-refusal frontier: the (ASR, over-refusal) points of its erasure
//! strength sweep joined by straight lines, so two variants can be compared at the same ASR
//! (a method that only pushes less would move along the other's line, not below it).

/// Linear interpolation of `y` at `x` along `points` (x, y), sorted by x here; points with
/// the same x are averaged. `None` outside the points' x range (no extrapolation) or without
/// points.
pub fn interpolate(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64, f64)> = Vec::new(); // x, sum y, count
    for (px, py) in p {
        match merged.last_mut() {
            Some(m) if m.0 == px => {
                m.1 += py;
                m.2 += 1.0;
            }
            _ => merged.push((px, py, 1.0)),
        }
    }
    let m: Vec<(f64, f64)> = merged.into_iter().map(|(x, s, c)| (x, s / c)).collect();
    let (first, last) = (m.first()?, m.last()?);
    if x < first.0 || x > last.0 {
        return None;
    }
    for w in m.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x >= x0 && x <= x1 {
            return Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    Some(first.1) // a single point, and x equals it
}

/// `y_a(x) − y_b(x)` at each `x` of `grid` that lies within both curves' ranges.
pub fn matched_differences(a: &[(f64, f64)], b: &[(f64, f64)], grid: &[f64]) -> Vec<(f64, f64)> {
    grid.iter()
        .filter_map(|&x| Some((x, interpolate(a, x)? - interpolate(b, x)?)))
        .collect()
}
