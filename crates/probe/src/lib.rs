//! The probe stage: per-layer linear probes for benign vs malicious, scored on over-refusal
//! prompts, and the boundary picture of the paper's analysis.
//!
//! For each layer of `representations.parquet` (extract stage) a logistic-regression probe
//! ([`logistic::fit`]: standardised features, L2, L-BFGS with a gradient-norm convergence
//! check) is trained on the train split of the benign and harmful roles. It is evaluated on
//! the held-out split (accuracy, AUROC) and on every evaluation role (share scored malicious,
//! mean score). Independently of the probe, every prompt is placed between the two class
//! centroids of the train split: the projection of `h - mu_benign` on `mu_malicious -
//! mu_benign`, divided by the squared distance, so 0 is the benign centroid and 1 the
//! malicious one. The paper's claim is that over-refusal prompts sit in between.

pub mod logistic;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::StageWork;
use mosr_artifacts::analysis::{
    BoundaryRow, ProbeMetricRow, ProbeScoreRow, ProbeWeightRow, RepresentationRow,
};
use mosr_artifacts::row::{for_each_rows, write_rows};
use mosr_artifacts::svg::{LinePlot, Series};
use mosr_artifacts::{Role, Split, StageManifest, sha256_file, write_bytes_atomic};
use mosr_stage::{Ctx, Planned};
use serde::{Deserialize, Serialize};
use tracing::info;

use logistic::{Fit, FitOptions, auroc, quantile};

/// Feature space of the boundary position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BoundarySpace {
    /// The residual stream as extracted [R: the paper's distance picture is not specified].
    #[default]
    Raw,
    /// Each feature standardised with the probe's training statistics (large-magnitude
    /// outlier dimensions of the residual stream then stop dominating the distance).
    Standardized,
}

/// `[probe]` section of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// Label-0 class (default `benign`).
    #[serde(default = "default_negative")]
    pub negative_role: String,
    /// Label-1 class, "malicious" (default `harmful`).
    #[serde(default = "default_positive")]
    pub positive_role: String,
    /// Split the probe and the centroids are fitted on (default `train`).
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Held-out split for accuracy and AUROC (default `test`).
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// Roles that must be present and are scored (default overrefusal_safe,
    /// overrefusal_borderline).
    #[serde(default = "default_eval_roles")]
    pub eval_roles: Vec<String>,
    /// Also score every other role found in the representations (default true).
    #[serde(default = "default_true")]
    pub score_other_roles: bool,
    /// Layers to probe; default: every layer in the representations.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// L2 strength on the mean log-loss (default 0.01) [R: not given by the paper].
    #[serde(default = "default_l2")]
    pub l2: f64,
    /// L-BFGS iteration cap (default 1000).
    #[serde(default = "default_max_iter")]
    pub max_iter: usize,
    /// Gradient max-norm counted as converged (default 1e-6).
    #[serde(default = "default_tol")]
    pub tol: f64,
    /// Score at or above which a prompt counts as scored malicious (default 0.5).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// `raw` (default) or `standardized` feature space for the boundary position.
    #[serde(default)]
    pub boundary_space: BoundarySpace,
}

fn default_negative() -> String {
    "benign".into()
}
fn default_positive() -> String {
    "harmful".into()
}
fn default_train_split() -> String {
    "train".into()
}
fn default_test_split() -> String {
    "test".into()
}
fn default_eval_roles() -> Vec<String> {
    vec!["overrefusal_safe".into(), "overrefusal_borderline".into()]
}
fn default_true() -> bool {
    true
}
fn default_l2() -> f64 {
    1e-2
}
fn default_max_iter() -> usize {
    1000
}
fn default_tol() -> f64 {
    1e-6
}
fn default_threshold() -> f64 {
    0.5
}

impl Default for ProbeSection {
    fn default() -> Self {
        ProbeSection {
            negative_role: default_negative(),
            positive_role: default_positive(),
            train_split: default_train_split(),
            test_split: default_test_split(),
            eval_roles: default_eval_roles(),
            score_other_roles: true,
            layers: None,
            l2: default_l2(),
            max_iter: default_max_iter(),
            tol: default_tol(),
            threshold: default_threshold(),
            boundary_space: BoundarySpace::Raw,
        }
    }
}

/// The label a role should get from a benign-vs-malicious probe: prompts that should be
/// refused are malicious (1), everything that should be answered benign (0).
pub fn expected_label(role: Role) -> u8 {
    match role {
        Role::Harmful
        | Role::OverrefusalUnsafeContrast
        | Role::JailbreakPastTense
        | Role::JailbreakFutureTense => 1,
        Role::Benign
        | Role::PseudoMalicious
        | Role::OverrefusalSafe
        | Role::OverrefusalBorderline => 0,
    }
}

#[derive(Debug, Clone)]
pub struct PromptMeta {
    pub id: String,
    pub role: Role,
    pub split: Split,
}

/// One layer's vectors: `rows[i]` indexes [`Representations::prompts`], `x` is row-major.
#[derive(Debug, Clone, Default)]
pub struct LayerData {
    pub rows: Vec<usize>,
    pub x: Vec<f32>,
}

/// `representations.parquet` loaded by layer.
#[derive(Debug, Clone)]
pub struct Representations {
    pub prompts: Vec<PromptMeta>,
    pub layers: BTreeMap<usize, LayerData>,
    pub width: usize,
    pub position_kind: String,
}

/// Load the layers wanted (all when `None`), one record batch at a time.
pub fn load_representations(path: &Path, layers: Option<&[usize]>) -> Result<Representations> {
    let want: Option<BTreeSet<usize>> = layers.map(|l| l.iter().copied().collect());
    let mut prompts: Vec<PromptMeta> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: BTreeMap<usize, LayerData> = BTreeMap::new();
    let mut width = 0usize;
    let mut kinds: BTreeSet<String> = BTreeSet::new();
    for_each_rows(path, |rows: Vec<RepresentationRow>| {
        for r in rows {
            let Ok(l) = usize::try_from(r.layer) else {
                bail!("{}: negative layer {}", path.display(), r.layer);
            };
            if want.as_ref().is_some_and(|s| !s.contains(&l)) {
                continue;
            }
            let w = r.vector.len();
            if width == 0 {
                width = w;
            } else if w != width {
                bail!("{}: vector width {w} differs from {width}", path.display());
            }
            if let Some(bad) = r.vector.iter().find(|v| !v.is_finite()) {
                bail!(
                    "{}: non-finite value ({bad}) in the representation of prompt `{}` at layer {l}; a probe fitted on it would report nonsense (re-run extract on a sound model)",
                    path.display(),
                    r.prompt_id
                );
            }
            kinds.insert(r.position_kind);
            let pi = *index.entry(r.prompt_id.clone()).or_insert_with(|| {
                prompts.push(PromptMeta {
                    id: r.prompt_id,
                    role: r.role,
                    split: r.split,
                });
                prompts.len() - 1
            });
            let ld = out.entry(l).or_default();
            ld.rows.push(pi);
            ld.x.extend_from_slice(&r.vector);
        }
        Ok(())
    })?;
    if out.is_empty() {
        bail!(
            "{}: no representation rows{}",
            path.display(),
            match layers {
                Some(l) => format!(" for layers {l:?}"),
                None => String::new(),
            }
        );
    }
    if let Some(w) = &want
        && let Some(missing) = w.iter().find(|l| !out.contains_key(l))
    {
        bail!(
            "{}: layer {missing} is not in the representations",
            path.display()
        );
    }
    for (l, ld) in &out {
        let uniq: BTreeSet<usize> = ld.rows.iter().copied().collect();
        if uniq.len() != ld.rows.len() {
            bail!("{}: layer {l} holds a prompt twice", path.display());
        }
    }
    if kinds.len() > 1 {
        bail!("{}: mixed position kinds {kinds:?}", path.display());
    }
    Ok(Representations {
        prompts,
        layers: out,
        width,
        position_kind: kinds.into_iter().next().unwrap_or_default(),
    })
}

/// One layer's results.
#[derive(Debug, Clone)]
pub struct LayerResult {
    pub layer: usize,
    pub fit: Fit,
    pub n_train: usize,
    /// Per row of the layer: probability of malicious and boundary position.
    pub scores: Vec<f64>,
    pub boundary: Vec<f64>,
    pub metrics: Vec<SetMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetMetrics {
    pub set: String,
    pub n: usize,
    pub accuracy: Option<f64>,
    pub auroc: Option<f64>,
    pub share_malicious: f64,
    pub mean_score: f64,
}

/// Parsed roles and splits of a section.
struct Resolved {
    neg: Role,
    pos: Role,
    train: Split,
    test: Split,
    eval: Vec<Role>,
}

fn resolve(s: &ProbeSection) -> Result<Resolved> {
    let role = |name: &str, key: &str| -> Result<Role> {
        name.parse()
            .map_err(|e: String| anyhow::anyhow!("[probe] {key}: {e}"))
    };
    let split = |name: &str, key: &str| -> Result<Split> {
        name.parse()
            .map_err(|e: String| anyhow::anyhow!("[probe] {key}: {e}"))
    };
    let r = Resolved {
        neg: role(&s.negative_role, "negative_role")?,
        pos: role(&s.positive_role, "positive_role")?,
        train: split(&s.train_split, "train_split")?,
        test: split(&s.test_split, "test_split")?,
        eval: s
            .eval_roles
            .iter()
            .map(|r| role(r, "eval_roles"))
            .collect::<Result<_>>()?,
    };
    if r.neg == r.pos {
        bail!(
            "[probe] negative_role and positive_role are both `{}`",
            r.neg
        );
    }
    let bad = |x: f64, ok: bool| x.is_nan() || !ok;
    if bad(s.l2, s.l2 >= 0.0) || bad(s.tol, s.tol > 0.0) || !(0.0..=1.0).contains(&s.threshold) {
        bail!("[probe] needs l2 >= 0, tol > 0 and 0 <= threshold <= 1");
    }
    Ok(r)
}

fn set_metrics(set: &str, scores: &[f64], labels: &[u8], threshold: f64) -> SetMetrics {
    let n = scores.len();
    let hits = scores.iter().filter(|&&s| s >= threshold).count();
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|(s, l)| ((**s >= threshold) as u8) == **l)
        .count();
    SetMetrics {
        set: set.to_string(),
        n,
        accuracy: (n > 0).then(|| correct as f64 / n as f64),
        auroc: auroc(scores, labels),
        share_malicious: if n > 0 {
            hits as f64 / n as f64
        } else {
            f64::NAN
        },
        mean_score: if n > 0 {
            scores.iter().sum::<f64>() / n as f64
        } else {
            f64::NAN
        },
    }
}

/// Fit, score and place every prompt of one layer.
fn probe_layer(
    reps: &Representations,
    layer: usize,
    s: &ProbeSection,
    r: &Resolved,
    other_roles: &[Role],
) -> Result<LayerResult> {
    let ld = &reps.layers[&layer];
    let d = reps.width;
    let train = TrainRows::of(reps, layer, r)?;
    let opts = FitOptions {
        l2: s.l2,
        max_iter: s.max_iter,
        tol: s.tol,
        memory: 10,
    };
    let fit =
        logistic::fit(&train.x, &train.y, d, opts).with_context(|| format!("layer {layer}"))?;
    let vec_of = |k: usize| &ld.x[k * d..(k + 1) * d];
    let scores: Vec<f64> = (0..ld.rows.len()).map(|k| fit.prob(vec_of(k))).collect();
    let boundary = boundary_positions(reps, layer, s, &fit, &train.centroids);
    let metrics = layer_metrics(reps, layer, s, r, other_roles, &scores)?;
    Ok(LayerResult {
        layer,
        fit,
        n_train: train.y.len(),
        scores,
        boundary,
        metrics,
    })
}

/// One layer's probe training rows (the negative and positive roles of the training split),
/// labelled 0 / 1, and each class's centroid.
struct TrainRows {
    x: Vec<f32>,
    y: Vec<u8>,
    centroids: [Vec<f64>; 2],
}

impl TrainRows {
    fn of(reps: &Representations, layer: usize, r: &Resolved) -> Result<Self> {
        let ld = &reps.layers[&layer];
        let d = reps.width;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut mu = [vec![0f64; d], vec![0f64; d]];
        let mut cnt = [0usize; 2];
        for (k, &pi) in ld.rows.iter().enumerate() {
            let m = &reps.prompts[pi];
            if m.split != r.train {
                continue;
            }
            let label = if m.role == r.pos {
                1
            } else if m.role == r.neg {
                0
            } else {
                continue;
            };
            let v = &ld.x[k * d..(k + 1) * d];
            x.extend_from_slice(v);
            y.push(label);
            for (a, v) in mu[label as usize].iter_mut().zip(v) {
                *a += *v as f64;
            }
            cnt[label as usize] += 1;
        }
        for (c, name) in [(cnt[0], r.neg), (cnt[1], r.pos)] {
            if c == 0 {
                bail!(
                    "layer {layer}: role `{name}` has no {} prompts in the representations; extract it",
                    r.train
                );
            }
        }
        for (m, c) in mu.iter_mut().zip(cnt) {
            m.iter_mut().for_each(|v| *v /= c as f64);
        }
        Ok(Self {
            x,
            y,
            centroids: mu,
        })
    }
}

/// Each prompt's position on the axis from the negative centroid (0) to the positive one (1),
/// in the configured space; NaN for every prompt when the centroids coincide.
fn boundary_positions(
    reps: &Representations,
    layer: usize,
    s: &ProbeSection,
    fit: &logistic::Fit,
    mu: &[Vec<f64>; 2],
) -> Vec<f64> {
    let ld = &reps.layers[&layer];
    let d = reps.width;
    let scale: Vec<f64> = match s.boundary_space {
        BoundarySpace::Raw => vec![1.0; d],
        BoundarySpace::Standardized => fit.std.clone(),
    };
    let axis: Vec<f64> = (0..d).map(|j| (mu[1][j] - mu[0][j]) / scale[j]).collect();
    let axis_sq: f64 = axis.iter().map(|a| a * a).sum();
    // Identical centroids (layer 0 at the last prompt token holds the same token's embedding
    // for every prompt): there is no axis, so positions are undefined (NaN), not an error.
    let scale_sq: f64 = mu[0].iter().map(|v| v * v).sum::<f64>().max(1e-30);
    let degenerate = axis_sq <= 1e-12 * scale_sq;
    if degenerate {
        tracing::warn!(
            layer,
            "class centroids coincide: boundary positions are NaN"
        );
    }
    (0..ld.rows.len())
        .map(|k| {
            let v = &ld.x[k * d..(k + 1) * d];
            let t: f64 = (0..d)
                .map(|j| (v[j] as f64 - mu[0][j]) / scale[j] * axis[j])
                .sum();
            if degenerate { f64::NAN } else { t / axis_sq }
        })
        .collect()
}

/// One layer's metric sets: train and test pairs, each pair role on the test split, and every
/// evaluation (and other) role.
fn layer_metrics(
    reps: &Representations,
    layer: usize,
    s: &ProbeSection,
    r: &Resolved,
    other_roles: &[Role],
    scores: &[f64],
) -> Result<Vec<SetMetrics>> {
    let ld = &reps.layers[&layer];
    let meta = |k: usize| &reps.prompts[ld.rows[k]];
    let select = |f: &dyn Fn(&PromptMeta) -> bool| -> (Vec<f64>, Vec<u8>) {
        let mut sc = Vec::new();
        let mut lb = Vec::new();
        for (k, &score) in scores.iter().enumerate() {
            let m = meta(k);
            if f(m) {
                sc.push(score);
                lb.push(expected_label(m.role));
            }
        }
        (sc, lb)
    };
    let mut metrics = Vec::new();
    let pair = |m: &PromptMeta| m.role == r.pos || m.role == r.neg;
    let (a, b) = select(&|m| pair(m) && m.split == r.train);
    metrics.push(set_metrics("train", &a, &b, s.threshold));
    let (a, b) = select(&|m| pair(m) && m.split == r.test);
    if a.is_empty() {
        bail!(
            "layer {layer}: no `{}`/`{}` prompts in split `{}` to test on",
            r.neg,
            r.pos,
            r.test
        );
    }
    metrics.push(set_metrics(r.test.as_str(), &a, &b, s.threshold));
    for role in [r.neg, r.pos] {
        let (a, b) = select(&|m| m.role == role && m.split == r.test);
        let name = format!("{role}_{}", r.test);
        metrics.push(set_metrics(&name, &a, &b, s.threshold));
    }
    for &role in r.eval.iter().chain(other_roles) {
        let (a, b) = select(&|m| m.role == role);
        if a.is_empty() {
            bail!(
                "layer {layer}: evaluation role `{role}` has no prompts in the representations; extract it or drop it from [probe] eval_roles"
            );
        }
        metrics.push(set_metrics(role.as_str(), &a, &b, s.threshold));
    }
    Ok(metrics)
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub section: ProbeSection,
    pub representations: PathBuf,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct ProbeOutputs {
    pub manifest: PathBuf,
    pub layers: Vec<LayerResult>,
    pub summary: String,
}

/// The files the probe stage writes beside its manifest.
pub const OUTPUTS: [&str; 7] = [
    "probe_metrics.parquet",
    "probe_scores.parquet",
    "probe_weights.parquet",
    "boundary.parquet",
    "probe_accuracy.svg",
    "boundary.svg",
    "summary.md",
];

/// Run the probe stage into `out_dir`.
pub fn run(cfg: &ProbeConfig, out_dir: &Path) -> Result<ProbeOutputs> {
    let started = Instant::now();
    let s = &cfg.section;
    let r = resolve(s)?;
    let reps = load_representations(&cfg.representations, s.layers.as_deref())?;
    let present: BTreeSet<Role> = reps.prompts.iter().map(|p| p.role).collect();
    for role in &r.eval {
        if !present.contains(role) {
            bail!(
                "{}: evaluation role `{role}` has no prompts; extract it or drop it from [probe] eval_roles",
                cfg.representations.display()
            );
        }
    }
    let others: Vec<Role> = if s.score_other_roles {
        present
            .iter()
            .copied()
            .filter(|x| *x != r.neg && *x != r.pos && !r.eval.contains(x))
            .collect()
    } else {
        Vec::new()
    };
    let results = fit_layers(&reps, s, &r, &others)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = |n: &str| out_dir.join(n);
    write_metrics(&path("probe_metrics.parquet"), &results)?;
    let n_scores = write_scores(&path("probe_scores.parquet"), &reps, &results)?;
    write_weights(&path("probe_weights.parquet"), s.l2, &results)?;
    let boundary = boundary_summary(&reps, &results);
    write_boundary(&path("boundary.parquet"), &boundary)?;
    // Plots and the Markdown summary.
    let eval_sets: Vec<Role> = r.eval.iter().chain(&others).copied().collect();
    plots(out_dir, &results, &boundary, &r, &eval_sets)?;
    let summary = summary_markdown(&results, &boundary, &r, &eval_sets, &reps);
    write_bytes_atomic(&path("summary.md"), summary.as_bytes())?;

    let mut manifest = StageManifest::new(
        "probe",
        serde_json::json!({ "section": s, "position_kind": reps.position_kind }),
    );
    manifest.seed = Some(cfg.seed);
    manifest.inputs.insert(
        "representations.parquet".into(),
        sha256_file(&cfg.representations)?,
    );
    for name in OUTPUTS {
        manifest
            .outputs
            .insert(name.into(), sha256_file(&path(name))?);
    }
    manifest.row_counts = BTreeMap::from([
        ("layers".into(), results.len() as u64),
        ("prompts".into(), reps.prompts.len() as u64),
        ("probe_scores".into(), n_scores as u64),
        ("boundary".into(), boundary.len() as u64),
        (
            "not_converged".into(),
            results.iter().filter(|x| !x.fit.converged).count() as u64,
        ),
    ]);
    manifest.wall_time_s = started.elapsed().as_secs_f64();
    let mp = path("manifest.json");
    manifest.write(&mp)?;
    info!(secs = manifest.wall_time_s, out = %out_dir.display(), "probe done");
    Ok(ProbeOutputs {
        manifest: mp,
        layers: results,
        summary,
    })
}

/// One probe per layer, fitted on all cores (layers are independent), in layer order.
fn fit_layers(
    reps: &Representations,
    s: &ProbeSection,
    r: &Resolved,
    others: &[Role],
) -> Result<Vec<LayerResult>> {
    let layers: Vec<usize> = reps.layers.keys().copied().collect();
    info!(
        prompts = reps.prompts.len(),
        layers = layers.len(),
        width = reps.width,
        "probing"
    );
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(layers.len());
    let chunk = layers.len().div_ceil(threads.max(1));
    let mut results: Vec<LayerResult> = std::thread::scope(|sc| {
        let handles: Vec<_> = layers
            .chunks(chunk.max(1))
            .map(|ls| {
                sc.spawn(move || {
                    ls.iter()
                        .map(|&l| probe_layer(reps, l, s, r, others))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("probe thread panicked")?);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    results.sort_by_key(|x| x.layer);
    for lr in &results {
        let test = lr.metrics.iter().find(|m| m.set == r.test.as_str());
        info!(
            layer = lr.layer,
            iterations = lr.fit.iterations,
            converged = lr.fit.converged,
            test_accuracy = test.and_then(|m| m.accuracy),
            test_auroc = test.and_then(|m| m.auroc),
            "probe fitted"
        );
    }
    if let Some(bad) = results.iter().find(|x| !x.fit.converged) {
        tracing::warn!(
            layer = bad.layer,
            grad_norm = bad.fit.grad_norm,
            "probe did not converge within max_iter"
        );
    }
    Ok(results)
}

/// `probe_metrics.parquet`: each layer's metrics per evaluation set.
fn write_metrics(path: &Path, results: &[LayerResult]) -> Result<()> {
    let rows: Vec<ProbeMetricRow> = results
        .iter()
        .flat_map(|lr| {
            lr.metrics.iter().map(move |m| ProbeMetricRow {
                layer: lr.layer as i32,
                set: m.set.clone(),
                n: m.n as i64,
                accuracy: m.accuracy,
                auroc: m.auroc,
                share_malicious: m.share_malicious,
                mean_score: m.mean_score,
            })
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

/// `probe_scores.parquet`: every prompt's score and boundary position at every layer; returns
/// the row count.
fn write_scores(path: &Path, reps: &Representations, results: &[LayerResult]) -> Result<usize> {
    let rows: Vec<ProbeScoreRow> = results
        .iter()
        .flat_map(|lr| {
            let ld = &reps.layers[&lr.layer];
            ld.rows.iter().enumerate().map(move |(k, &pi)| {
                let p = &reps.prompts[pi];
                ProbeScoreRow {
                    prompt_id: p.id.clone(),
                    role: p.role.as_str().to_string(),
                    split: p.split.as_str().to_string(),
                    layer: lr.layer as i32,
                    score: lr.scores[k],
                    boundary_position: lr.boundary[k],
                }
            })
        })
        .collect();
    write_rows(path, &rows)?;
    Ok(rows.len())
}

/// `probe_weights.parquet`: each layer's probe (weights, bias, standardisation) and its fit.
fn write_weights(path: &Path, l2: f64, results: &[LayerResult]) -> Result<()> {
    let vector = |v: &[f64]| v.iter().map(|x| *x as f32).collect();
    let rows: Vec<ProbeWeightRow> = results
        .iter()
        .map(|x| ProbeWeightRow {
            layer: x.layer as i32,
            weight: vector(&x.fit.w),
            bias: x.fit.b,
            feature_mean: vector(&x.fit.mean),
            feature_std: vector(&x.fit.std),
            l2,
            iterations: x.fit.iterations as i32,
            converged: x.fit.converged,
            grad_norm: x.fit.grad_norm,
            train_loss: x.fit.loss,
            n_train: x.n_train as i64,
        })
        .collect();
    write_rows(path, &rows)?;
    Ok(())
}

/// `boundary.parquet`: the boundary-position summary per role, split and layer.
fn write_boundary(path: &Path, boundary: &[BoundaryStat]) -> Result<()> {
    let rows: Vec<BoundaryRow> = boundary
        .iter()
        .map(|b| BoundaryRow {
            role: b.role.as_str().to_string(),
            split: b.split.as_str().to_string(),
            layer: b.layer as i32,
            n: b.n as i64,
            median: b.median,
            q25: b.q25,
            q75: b.q75,
            mean: b.mean,
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

#[derive(Debug, Clone)]
pub struct BoundaryStat {
    pub role: Role,
    pub split: Split,
    pub layer: usize,
    pub n: usize,
    pub median: f64,
    pub q25: f64,
    pub q75: f64,
    pub mean: f64,
}

fn boundary_summary(reps: &Representations, results: &[LayerResult]) -> Vec<BoundaryStat> {
    let mut out = Vec::new();
    for lr in results {
        let ld = &reps.layers[&lr.layer];
        let mut groups: BTreeMap<(Role, Split), Vec<f64>> = BTreeMap::new();
        for (k, &pi) in ld.rows.iter().enumerate() {
            let p = &reps.prompts[pi];
            groups
                .entry((p.role, p.split))
                .or_default()
                .push(lr.boundary[k]);
        }
        for ((role, split), mut v) in groups {
            v.sort_by(f64::total_cmp);
            out.push(BoundaryStat {
                role,
                split,
                layer: lr.layer,
                n: v.len(),
                median: quantile(&v, 0.5),
                q25: quantile(&v, 0.25),
                q75: quantile(&v, 0.75),
                mean: v.iter().sum::<f64>() / v.len() as f64,
            });
        }
    }
    out
}

fn metric<'a>(lr: &'a LayerResult, set: &str) -> Option<&'a SetMetrics> {
    lr.metrics.iter().find(|m| m.set == set)
}

/// The median boundary position of a role (in the held-out split for the training roles).
fn role_median(b: &[BoundaryStat], role: Role, split: Option<Split>, layer: usize) -> Option<f64> {
    let v: Vec<&BoundaryStat> = b
        .iter()
        .filter(|x| x.role == role && x.layer == layer && split.is_none_or(|s| s == x.split))
        .collect();
    match v.as_slice() {
        [one] => Some(one.median),
        [] => None,
        // A role spread over several splits: n-weighted mean of medians is not a median, so
        // report the largest group's.
        many => many.iter().max_by_key(|x| x.n).map(|x| x.median),
    }
}

fn plots(
    out_dir: &Path,
    results: &[LayerResult],
    boundary: &[BoundaryStat],
    r: &Resolved,
    eval: &[Role],
) -> Result<()> {
    let mut acc = LinePlot::new(
        "Probe accuracy per layer (benign vs malicious probe)",
        "layer",
        "accuracy (share given the expected label)",
    );
    acc.y_range = Some((0.0, 1.0));
    let series_of = |set: &str| -> Vec<(f64, f64)> {
        results
            .iter()
            .filter_map(|lr| {
                metric(lr, set)
                    .and_then(|m| m.accuracy)
                    .map(|a| (lr.layer as f64, a))
            })
            .collect()
    };
    for role in [r.neg, r.pos] {
        let set = format!("{role}_{}", r.test);
        acc.series.push(Series::new(set.clone(), series_of(&set)));
    }
    for role in eval {
        acc.series
            .push(Series::new(role.as_str(), series_of(role.as_str())));
    }
    acc.write(&out_dir.join("probe_accuracy.svg"))?;

    let mut bp = LinePlot::new(
        "Median position between the class centroids",
        "layer",
        "boundary position (0 = benign, 1 = malicious)",
    );
    bp.h_lines = vec![
        (0.0, format!("{} centroid", r.neg)),
        (1.0, format!("{} centroid", r.pos)),
    ];
    let layers: Vec<usize> = results.iter().map(|x| x.layer).collect();
    let mut add = |name: String, role: Role, split: Option<Split>| {
        let pts = layers
            .iter()
            .filter_map(|&l| role_median(boundary, role, split, l).map(|m| (l as f64, m)))
            .collect();
        bp.series.push(Series::new(name, pts));
    };
    for role in [r.neg, r.pos] {
        add(format!("{role}_{}", r.test), role, Some(r.test));
    }
    for &role in eval {
        add(role.as_str().to_string(), role, None);
    }
    bp.write(&out_dir.join("boundary.svg"))?;
    Ok(())
}

fn f3(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

fn summary_markdown(
    results: &[LayerResult],
    boundary: &[BoundaryStat],
    r: &Resolved,
    eval: &[Role],
    reps: &Representations,
) -> String {
    let mut s = String::new();
    let test = r.test.as_str();
    let _ = writeln!(
        s,
        "Probe: {} vs {} on split `{}`, position `{}`, {} prompts.\n",
        r.neg,
        r.pos,
        r.train,
        reps.position_kind,
        reps.prompts.len()
    );
    let _ = write!(
        s,
        "| layer | iters | {test} acc | {test} AUROC | {}_{test} acc | {}_{test} acc |",
        r.neg, r.pos
    );
    for role in eval {
        let _ = write!(s, " {role} scored malicious |");
    }
    s.push('\n');
    s.push_str("|---|---|---|---|---|---|");
    for _ in eval {
        s.push_str("---|");
    }
    s.push('\n');
    for lr in results {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            lr.layer,
            lr.fit.iterations,
            f3(metric(lr, test).and_then(|m| m.accuracy)),
            f3(metric(lr, test).and_then(|m| m.auroc)),
            f3(metric(lr, &format!("{}_{test}", r.neg)).and_then(|m| m.accuracy)),
            f3(metric(lr, &format!("{}_{test}", r.pos)).and_then(|m| m.accuracy)),
        );
        for role in eval {
            let _ = write!(
                s,
                " {} |",
                f3(metric(lr, role.as_str()).map(|m| m.share_malicious))
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nMedian boundary position (0 = {} centroid, 1 = {} centroid, train split):\n",
        r.neg, r.pos
    );
    let _ = write!(s, "| layer | {}_{test} | {}_{test} |", r.neg, r.pos);
    for role in eval {
        let _ = write!(s, " {role} |");
    }
    s.push_str("\n|---|---|---|");
    for _ in eval {
        s.push_str("---|");
    }
    s.push('\n');
    for lr in results {
        let _ = write!(
            s,
            "| {} | {} | {} |",
            lr.layer,
            f3(role_median(boundary, r.neg, Some(r.test), lr.layer)),
            f3(role_median(boundary, r.pos, Some(r.test), lr.layer)),
        );
        for &role in eval {
            let _ = write!(s, " {} |", f3(role_median(boundary, role, None, lr.layer)));
        }
        s.push('\n');
    }
    s
}

/// The probe stage: its key covers the section and the extract stage's key.
pub struct Probe;

impl mosr_stage::Stage for Probe {
    const NAME: &'static str = "probe";
    const UPSTREAM: &'static [&'static str] = &["extract"];
    type Section = ProbeSection;
    type Plan = ProbeConfig;

    fn plan(ctx: &Ctx, section: ProbeSection) -> Result<Planned<ProbeConfig>> {
        let cfg = ProbeConfig {
            section,
            representations: ctx.upstream_file("extract", "representations.parquet"),
            seed: ctx.seed(),
        };
        let inputs = BTreeMap::from([("extract".to_string(), ctx.upstream("extract")?.key)]);
        let config = serde_json::to_value(&cfg.section)?;
        Ok(Planned {
            config,
            inputs,
            plan: cfg,
        })
    }

    fn compute(_: &Ctx, planned: Planned<ProbeConfig>, work: &StageWork) -> Result<StageManifest> {
        let out = run(&planned.plan, work.dir())?;
        Ok(StageManifest::read(&out.manifest)?)
    }
}
