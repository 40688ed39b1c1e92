//! L2-regularised logistic regression on standardised features, solved with L-BFGS.
//!
//! Objective: mean log-loss + `l2`/2 * ||w||^2 (the intercept is not penalised). It is
//! strictly convex, so L-BFGS with an Armijo backtracking line search converges to the unique
//! optimum; convergence is declared when the gradient's max-norm falls below `tol`.

/// Solver settings.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub l2: f64,
    pub max_iter: usize,
    /// Gradient max-norm at which the fit counts as converged.
    pub tol: f64,
    /// L-BFGS memory (pairs kept).
    pub memory: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            l2: 1e-2,
            max_iter: 1000,
            tol: 1e-6,
            memory: 10,
        }
    }
}

/// A fitted probe: `p(1 | x) = sigmoid(w . ((x - mean) / std) + b)`.
#[derive(Debug, Clone)]
pub struct Fit {
    pub w: Vec<f64>,
    pub b: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    pub grad_norm: f64,
    pub loss: f64,
}

pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + exp(z)) without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// Per-feature mean and population standard deviation of row-major `x` (`n` x `d`); a zero
/// deviation (a constant feature) is stored as 1 so the feature maps to 0.
pub fn standardiser(x: &[f32], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d).take(n) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut var = vec![0f64; d];
    for row in x.chunks_exact(d).take(n) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            let c = *v as f64 - m;
            *s += c * c;
        }
    }
    let std = var
        .iter()
        .map(|s| {
            let sd = (s / n.max(1) as f64).sqrt();
            if sd > 1e-12 { sd } else { 1.0 }
        })
        .collect();
    (mean, std)
}

impl Fit {
    /// Decision value of one raw feature vector.
    pub fn logit(&self, x: &[f32]) -> f64 {
        let mut z = self.b;
        for (((v, w), m), s) in x.iter().zip(&self.w).zip(&self.mean).zip(&self.std) {
            z += w * ((*v as f64 - m) / s);
        }
        z
    }
    pub fn prob(&self, x: &[f32]) -> f64 {
        sigmoid(self.logit(x))
    }
    /// The separating direction in raw feature space (w / std), unnormalised.
    pub fn raw_direction(&self) -> Vec<f64> {
        self.w.iter().zip(&self.std).map(|(w, s)| w / s).collect()
    }
}

/// Loss and gradient (w then b) of the objective at `theta`, on standardised `z` (`n` x `d`).
fn loss_grad(
    z: &[f64],
    y: &[f64],
    n: usize,
    d: usize,
    l2: f64,
    theta: &[f64],
    g: &mut [f64],
) -> f64 {
    let (w, b) = (&theta[..d], theta[d]);
    g.iter_mut().for_each(|x| *x = 0.0);
    let mut loss = 0.0;
    for i in 0..n {
        let row = &z[i * d..(i + 1) * d];
        let s: f64 = b + row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
        // y=1: log(1+e^-s); y=0: log(1+e^s).
        loss += if y[i] > 0.5 {
            softplus(-s)
        } else {
            softplus(s)
        };
        let r = sigmoid(s) - y[i];
        for (gj, a) in g[..d].iter_mut().zip(row) {
            *gj += r * a;
        }
        g[d] += r;
    }
    let inv = 1.0 / n as f64;
    g.iter_mut().for_each(|x| *x *= inv);
    let mut reg = 0.0;
    for (gj, wj) in g[..d].iter_mut().zip(w) {
        *gj += l2 * wj;
        reg += wj * wj;
    }
    loss * inv + 0.5 * l2 * reg
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_norm(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Fit on row-major raw features `x` (`n` x `d`) with labels in {0, 1}.
pub fn fit(x: &[f32], y: &[u8], d: usize, opts: FitOptions) -> anyhow::Result<Fit> {
    let n = y.len();
    anyhow::ensure!(x.len() == n * d, "probe: {} values for {n} x {d}", x.len());
    let pos = y.iter().filter(|&&v| v == 1).count();
    anyhow::ensure!(
        pos > 0 && pos < n,
        "probe: training needs both classes ({pos} positive of {n})"
    );
    let (mean, std) = standardiser(x, n, d);
    let mut z = vec![0f64; n * d];
    for i in 0..n {
        for j in 0..d {
            z[i * d + j] = (x[i * d + j] as f64 - mean[j]) / std[j];
        }
    }
    let yf: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    let p = d + 1;
    let mut theta = vec![0f64; p];
    let mut g = vec![0f64; p];
    let mut f = loss_grad(&z, &yf, n, d, opts.l2, &theta, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    let mut converged = max_norm(&g) < opts.tol;
    let mut g_new = vec![0f64; p];
    let mut trial = vec![0f64; p];
    while !converged && iterations < opts.max_iter {
        iterations += 1;
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let k = s_hist.len();
        let mut alpha = vec![0f64; k];
        for i in (0..k).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = if k > 0 {
            dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1])
        } else {
            1.0 / max_norm(&g).max(1.0)
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..k {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alpha[i] - beta) * sj;
            }
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (should not happen on a convex problem): restart.
            s_hist.clear();
            y_hist.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = dot(&g, &dir);
        }
        // Armijo backtracking.
        let mut step = 1.0;
        let mut f_new;
        let mut accepted = false;
        for _ in 0..60 {
            for ((t, th), dj) in trial.iter_mut().zip(&theta).zip(&dir) {
                *t = th + step * dj;
            }
            f_new = loss_grad(&z, &yf, n, d, opts.l2, &trial, &mut g_new);
            if f_new <= f + 1e-4 * step * slope {
                accepted = true;
                let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
                let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                if dot(&s, &yv) > 1e-12 {
                    s_hist.push(s);
                    y_hist.push(yv);
                    if s_hist.len() > opts.memory {
                        s_hist.remove(0);
                        y_hist.remove(0);
                    }
                }
                theta.copy_from_slice(&trial);
                g.copy_from_slice(&g_new);
                f = f_new;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break; // no decrease possible at machine precision
        }
        converged = max_norm(&g) < opts.tol;
    }
    Ok(Fit {
        w: theta[..d].to_vec(),
        b: theta[d],
        mean,
        std,
        iterations,
        converged,
        grad_norm: max_norm(&g),
        loss: f,
    })
}

/// Area under the ROC curve by the rank-sum (Mann-Whitney) statistic: the probability that a
/// random positive scores above a random negative, ties counting one half. `None` unless both
/// classes are present.
pub fn auroc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let n = scores.len();
    let pos = labels.iter().filter(|&&l| l == 1).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] == 1 {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let (p, q) = (pos as f64, neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * q))
}

/// Quantile with linear interpolation between order statistics (type 7, numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}
