//! RMSNorm forward and backward on rows of a plain slice.

use rayon::prelude::*;

/// Rows per parallel task: small inputs (a decode step's handful of rows) stay on one thread.
const ROWS_PER_TASK: usize = 64;

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) · w` for every row of `x` (row length `w.len()`).
/// Rows are independent, so the result does not depend on how they are split across threads.
///
/// # Panics
/// If `x` and `out` differ in length or are not whole rows.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len(), out.len(), "rms_norm: x and out lengths differ");
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rms_norm: x is not whole rows of {d}"
    );
    let task = |(xs, os): (&[f32], &mut [f32])| {
        for (xr, or) in xs.chunks_exact(d).zip(os.chunks_exact_mut(d)) {
            let inv = inv_rms(xr, eps);
            for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
                *o = v * inv * g;
            }
        }
    };
    if x.len() <= ROWS_PER_TASK * d {
        task((x, out));
    } else {
        x.par_chunks(ROWS_PER_TASK * d)
            .zip(out.par_chunks_mut(ROWS_PER_TASK * d))
            .for_each(task);
    }
}

/// The gradient of [`rms_norm`] with respect to `x`, given the output's gradient `dy`:
/// `dx = inv · g − x · inv³ · (g · x) / d` per row, with `g = dy ⊙ w` and `inv` the row's
/// `1 / sqrt(mean(x²) + eps)`.
///
/// # Panics
/// If the lengths of `x`, `dy` and `dx` differ or are not whole rows.
pub fn rms_norm_backward(x: &[f32], w: &[f32], dy: &[f32], eps: f32, dx: &mut [f32]) {
    let d = w.len();
    assert!(
        x.len() == dy.len() && x.len() == dx.len(),
        "rms_norm_backward: x, dy and dx lengths differ"
    );
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rms_norm_backward: x is not whole rows of {d}"
    );
    let chunk = ROWS_PER_TASK * d;
    x.par_chunks(chunk)
        .zip(dy.par_chunks(chunk))
        .zip(dx.par_chunks_mut(chunk))
        .for_each(|((xs, ys), ds)| {
            for ((xr, yr), dr) in xs
                .chunks_exact(d)
                .zip(ys.chunks_exact(d))
                .zip(ds.chunks_exact_mut(d))
            {
                let inv = inv_rms(xr, eps);
                let mut acc = [0f32; 16];
                let (xc, yc, wc) = (xr.chunks_exact(16), yr.chunks_exact(16), w.chunks_exact(16));
                let tail: f32 = (xc
                    .remainder()
                    .iter()
                    .zip(yc.remainder())
                    .zip(wc.remainder()))
                .map(|((xv, yv), g)| yv * g * xv)
                .sum();
                for ((xs, ys), ws) in xc.zip(yc).zip(wc) {
                    for l in 0..16 {
                        acc[l] += ys[l] * ws[l] * xs[l];
                    }
                }
                let dot: f32 = acc.iter().sum::<f32>() + tail;
                let c = inv * inv * inv * dot / d as f32;
                for (((o, xv), yv), g) in dr.iter_mut().zip(xr).zip(yr).zip(w) {
                    *o = inv * (yv * g) - xv * c;
                }
            }
        });
}

/// `1 / sqrt(mean(x²) + eps)` of one row, summed in 16 independent lanes (vectorizes).
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let mut ss: f32 = acc.iter().sum();
    ss += chunks.remainder().iter().map(|v| v * v).sum::<f32>();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}
