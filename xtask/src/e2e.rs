//! The end-to-end half of `cargo xtask test`: the `smoke` pipeline run for real, as a user
//! would, then checked four ways.
//!
//! 1. Run A, uninterrupted: every table of the report exists and holds sane numbers (rates in
//!    [0, 1], every variant present, finite losses, intervals around their values).
//! 2. Run A again with no change: it finishes in seconds and changes no file.
//! 3. Run B in a child process, killed once the fine-tune has written its first checkpoint
//!    (mid-stage), then rerun: every artifact equals run A's, except wall-clock columns.
//! 4. Run H on an HF folder converted from the same GGUF: end to end, adapters accepted by
//!    eval, the report tables checked as in 1.
//!
//! It lives here rather than in the integration-test crate because it needs a process to
//! kill and the pipeline runner, which is xtask's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use mosr_artifacts::StageManifest;
use polars::prelude::{DataFrame, DataType};

use crate::reproduce;

const PIPELINE: &str = "smoke";
const VARIANTS: [&str; 5] = ["base", "rr", "rr_weights", "rr_augment", "mosr"];
/// Columns that measure the machine, not the method: they may differ between two runs.
const WALL_CLOCK_COLUMNS: [&str; 3] = ["tokens_per_s", "step_time_s", "elapsed_s"];
/// A rerun with nothing to do must be this quick (it loads no model).
const NOOP_RERUN_LIMIT: Duration = Duration::from_secs(60);

pub fn smoke(repo: &Path) -> Result<()> {
    let root = std::env::var_os("MOSR_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("mosr-e2e"));
    clear_e2e_dir(&root)?;
    let (a, b) = (root.join("a"), root.join("b"));

    let t = Instant::now();
    reproduce::run(repo, &options(&a))?;
    let first = t.elapsed();
    println!("e2e: smoke run A finished in {:.1} s", first.as_secs_f64());
    check_tables(&a.join("results").join(PIPELINE), repo, PIPELINE)?;
    println!("e2e: report tables of run A pass their checks");

    let before = snapshot(&a)?;
    let t = Instant::now();
    reproduce::run(repo, &options(&a))?;
    let again = t.elapsed();
    ensure!(
        again < NOOP_RERUN_LIMIT,
        "a rerun with no change took {:.1} s (limit {} s)",
        again.as_secs_f64(),
        NOOP_RERUN_LIMIT.as_secs()
    );
    let after = snapshot(&a)?;
    for (path, was) in &before {
        match after.get(path) {
            Some(now) if now == was => {}
            Some(_) => bail!("a rerun with no change rewrote {path}"),
            None => bail!("a rerun with no change removed {path}"),
        }
    }
    if let Some(p) = after.keys().find(|p| !before.contains_key(*p)) {
        bail!("a rerun with no change created {p}");
    }
    println!(
        "e2e: rerun with no change took {:.1} s and changed none of {} files",
        again.as_secs_f64(),
        after.len()
    );

    stage_binary_beside_a_run(repo, &a)?;
    println!("e2e: a stage binary on run A's folder, held by another run, is refused");

    let killed_at = run_and_kill(&b)?;
    println!("e2e: run B killed mid-finetune ({killed_at})");
    let t = Instant::now();
    let status = child(&b)?.status()?;
    ensure!(
        status.success(),
        "resuming run B failed ({status}); log in {}",
        log(&b).display()
    );
    println!(
        "e2e: run B resumed and finished in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let compared = same_artifacts(&a.join("runs"), &b.join("runs"))?;
    println!("e2e: run B (killed, resumed) equals run A in all {compared} artifacts");

    hf_folder_run(repo, &root.join("hf"))?;

    std::fs::remove_dir_all(&root).ok();
    Ok(())
}

/// The pipeline `cargo xtask test --wgpu` runs on the wgpu device.
const WGPU_PIPELINE: &str = "smoke-wgpu";

/// `cargo xtask test --wgpu`: the wgpu comparisons of the integration tests
/// (`tests/it/wgpu.rs`), then (with `pipeline`) the smoke-wgpu pipeline end to end by an
/// xtask built with the feature, its report checked as smoke's is. Both need a Vulkan driver
/// (on a machine without a GPU, Mesa's software one: Debian's `mesa-vulkan-drivers`).
pub fn wgpu(repo: &Path, cargo: &str, env: &[(&str, PathBuf)], pipeline: bool) -> Result<()> {
    let icds = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    ensure!(
        icds.iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some())),
        "no Vulkan driver installed (nothing in {icds:?}); on a machine without a GPU install \
         Mesa's software driver (Debian: apt-get install mesa-vulkan-drivers)"
    );
    let cargo_ok = |args: &[&str], what: &str| -> Result<()> {
        let mut cmd = Command::new(cargo);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd.args(args).status()?;
        ensure!(status.success(), "{what} failed ({status})");
        Ok(())
    };
    let t = Instant::now();
    cargo_ok(
        &[
            "test",
            "-p",
            "mosr-tests",
            "--features",
            "wgpu",
            "--test",
            "it",
            "--",
            "wgpu_",
        ],
        "the wgpu comparisons",
    )?;
    println!(
        "e2e: wgpu comparisons passed ({:.0} s with their build)",
        t.elapsed().as_secs_f64()
    );
    if !pipeline {
        return Ok(());
    }
    cargo_ok(
        &["build", "-q", "-p", "xtask", "--features", "wgpu"],
        "building xtask with wgpu",
    )?;
    let root = std::env::temp_dir().join("mosr-e2e-wgpu");
    clear_e2e_dir(&root)?;
    let (runs, results) = (root.join("runs"), root.join("results"));
    let t = Instant::now();
    let (runs_s, results_s) = (runs.display().to_string(), results.display().to_string());
    cargo_ok(
        &[
            "run",
            "-q",
            "-p",
            "xtask",
            "--features",
            "wgpu",
            "--",
            "reproduce",
            "--pipeline",
            WGPU_PIPELINE,
            "--runs-dir",
            &runs_s,
            "--results-dir",
            &results_s,
        ],
        "the smoke-wgpu pipeline",
    )?;
    println!(
        "e2e: smoke-wgpu finished in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    check_tables(&results.join(WGPU_PIPELINE), repo, WGPU_PIPELINE)?;
    println!("e2e: report tables of smoke-wgpu pass their checks");
    std::fs::remove_dir_all(&root).ok();
    Ok(())
}

/// Marks a folder as made by this test, so that only such a folder is ever cleared.
const E2E_MARKER: &str = ".mosr-e2e";

/// Empties the end-to-end folder: refuses a folder that this test did not make (a mistyped
/// `MOSR_E2E_DIR` must never delete someone's data), then marks the new one.
fn clear_e2e_dir(root: &Path) -> Result<()> {
    if root.exists() {
        let ours = root.join(E2E_MARKER).is_file()
            || std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_none());
        ensure!(
            ours,
            "{}: not a folder made by the end-to-end test (no {E2E_MARKER} in it); \
             refusing to delete it (set MOSR_E2E_DIR to a new or empty folder)",
            root.display()
        );
        std::fs::remove_dir_all(root).with_context(|| format!("clearing {}", root.display()))?;
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(root.join(E2E_MARKER), b"")?;
    Ok(())
}

/// While a run holds the run folder, a stage binary run alone on it (here the report, the
/// cheapest) must refuse to start, naming the holder, rather than write beside it.
fn stage_binary_beside_a_run(repo: &Path, dir: &Path) -> Result<()> {
    let pipeline = reproduce::pipeline_path(repo, PIPELINE);
    let text = std::fs::read_to_string(&pipeline)?;
    let runs = dir.join("runs");
    let here = dir.join("beside.toml");
    let at = format!("[run]\nruns_dir = {:?}\n", runs.display().to_string());
    std::fs::write(&here, text.replacen("[run]\n", &at, 1))?;
    let file = mosr_artifacts::PipelineFile::load(&here)?;
    let _held = file.run_dir(repo).lock()?;
    crate::pins::build_beside_xtask(repo, &["-p", "mosr-report", "--bin", "mosr-report"])?;
    let bin = std::env::current_exe()?.with_file_name("mosr-report");
    let out = Command::new(bin)
        .args(["--pipeline"])
        .arg(&here)
        .current_dir(repo)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("another run is using this run folder"),
        "mosr-report beside a held run folder: status {}, stderr: {err}",
        out.status
    );
    Ok(())
}

fn options(dir: &Path) -> reproduce::Options<'static> {
    reproduce::Options {
        pipeline: PIPELINE,
        from: None,
        only: None,
        force: false,
        runs_dir: Some(dir.join("runs")),
        results_dir: Some(dir.join("results")),
        model: None,
        device: None,
        name: None,
        check: false,
    }
}

/// Run H: an HF folder (`mosr-lm convert` of the smoke model's GGUF) end to end: every stage
/// identifies the folder the same way, so eval accepts the adapters the finetune stage trained
/// on it, and the report's tables pass the same checks. It runs smoke-wgpu's sizes (the least
/// that fill every report table) on the CPU: what it checks is the model's identity across
/// stages, not the numbers, and at smoke's sizes it took as long as run A (about 3 min).
fn hf_folder_run(repo: &Path, dir: &Path) -> Result<()> {
    let file = mosr_artifacts::PipelineFile::load(&reproduce::pipeline_path(repo, PIPELINE))?;
    let gguf = mosr_lm::fetch::fetch(&file.run.model)?;
    let model = dir.join("model");
    mosr_lm::convert::gguf_to_hf(&gguf, &model)?;
    let t = Instant::now();
    let opts = reproduce::Options {
        pipeline: WGPU_PIPELINE,
        model: Some(model.display().to_string()),
        device: Some("cpu".into()),
        ..options(dir)
    };
    reproduce::run(repo, &opts)?;
    check_tables(
        &dir.join("results").join(WGPU_PIPELINE),
        repo,
        WGPU_PIPELINE,
    )?;
    println!(
        "e2e: run H ({WGPU_PIPELINE}'s sizes on the CPU) on an HF folder finished in {:.1} s; \
         its report tables pass their checks",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn log(dir: &Path) -> PathBuf {
    dir.join("reproduce.log")
}

/// `xtask reproduce` of the smoke pipeline into `dir`, as a child process logging to a file.
fn child(dir: &Path) -> Result<Command> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log(dir))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["reproduce", "--pipeline", PIPELINE, "--runs-dir"])
        .arg(dir.join("runs"))
        .arg("--results-dir")
        .arg(dir.join("results"))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    Ok(cmd)
}

/// Starts run B and kills it (SIGKILL: no chance to clean up) as soon as the fine-tune,
/// still in progress, has written a checkpoint; returns the checkpoint's path.
fn run_and_kill(dir: &Path) -> Result<String> {
    let runs = dir.join("runs").join(PIPELINE);
    let mut proc = child(dir)?.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if let Some(ckpt) = first_checkpoint(&runs.join(".finetune.partial"))? {
            proc.kill()?;
            proc.wait()?;
            ensure!(
                !runs.join("finetune/manifest.json").is_file(),
                "run B finished its fine-tune before it could be killed"
            );
            return Ok(ckpt.display().to_string());
        }
        if let Some(status) = proc.try_wait()? {
            bail!(
                "run B ended ({status}) before any fine-tune checkpoint; log in {}",
                log(dir).display()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "run B wrote no checkpoint within an hour"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `<partial stage folder>/<variant>/seed-<seed>/checkpoint/state.json`, the first one
/// written.
fn first_checkpoint(partial: &Path) -> Result<Option<PathBuf>> {
    let Ok(variants) = std::fs::read_dir(partial) else {
        return Ok(None);
    };
    for variant in variants.flatten() {
        for seed in std::fs::read_dir(variant.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let state = seed.path().join("checkpoint/state.json");
            if state.is_file() {
                return Ok(Some(state));
            }
        }
    }
    Ok(None)
}

/// Every file under `dir` with its content hash and modification time.
fn snapshot(dir: &Path) -> Result<BTreeMap<String, (String, SystemTime)>> {
    let mut out = BTreeMap::new();
    for path in files(dir)? {
        let rel = path.strip_prefix(dir)?.display().to_string();
        if rel.ends_with(".log") {
            continue;
        }
        let mtime = std::fs::metadata(&path)?.modified()?;
        out.insert(rel, (mosr_artifacts::sha256_file(&path)?, mtime));
    }
    Ok(out)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_none_or(|n| n != ".lock") {
                // The run lock records who ran (PID, start time), not what was made.
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Run folders `a` and `b` hold the same files with the same content. Parquet tables are
/// compared as frames and JSON files as values, both without wall-clock fields; manifests
/// also without the hashes of the files that hold such fields; everything else byte for byte.
pub fn same_artifacts(a: &Path, b: &Path) -> Result<usize> {
    let (fa, fb) = (files(a)?, files(b)?);
    let rel = |root: &Path, v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    };
    let (ra, rb) = (rel(a, &fa), rel(b, &fb));
    for r in &ra {
        ensure!(rb.contains(r), "{r}: in {} only", a.display());
    }
    for r in &rb {
        ensure!(ra.contains(r), "{r}: in {} only", b.display());
    }
    // Files whose bytes may differ because they record time; their manifest hashes too.
    let mut timed: Vec<String> = Vec::new();
    for r in ra.iter().filter(|r| !r.ends_with("manifest.json")) {
        let (pa, pb) = (a.join(r), b.join(r));
        if std::fs::read(&pa)? == std::fs::read(&pb)? {
            continue;
        }
        if r.ends_with(".parquet") {
            let da = without_wall_clock(mosr_report::read_df(&pa)?)?;
            let db = without_wall_clock(mosr_report::read_df(&pb)?)?;
            ensure!(
                da.equals_missing(&db),
                "{r}: tables differ\nA: {da}\nB: {db}"
            );
        } else if r.ends_with(".json") {
            let json = |p: &Path| -> Result<serde_json::Value> {
                let mut v = serde_json::from_slice(&std::fs::read(p)?)
                    .with_context(|| format!("{}: not JSON", p.display()))?;
                strip_wall_clock(&mut v);
                Ok(v)
            };
            ensure!(json(&pa)? == json(&pb)?, "{r}: contents differ");
        } else {
            bail!("{r}: contents differ");
        }
        timed.push(r.clone());
    }
    for r in ra.iter().filter(|r| r.ends_with("manifest.json")) {
        let (ma, mb) = (
            StageManifest::read(&a.join(r))?,
            StageManifest::read(&b.join(r))?,
        );
        let dir = Path::new(r).parent().unwrap_or(Path::new(""));
        let outputs = |m: &StageManifest| -> BTreeMap<String, String> {
            m.outputs
                .iter()
                .filter(|(k, _)| !timed.contains(&dir.join(k).display().to_string()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        ensure!(
            (&ma.key, &ma.config, &ma.inputs, &ma.row_counts, ma.seed)
                == (&mb.key, &mb.config, &mb.inputs, &mb.row_counts, mb.seed)
                && outputs(&ma) == outputs(&mb),
            "{r}: manifests differ"
        );
    }
    if !timed.is_empty() {
        println!("e2e: equal except wall-clock fields: {}", timed.join(", "));
    }
    Ok(ra.len())
}

/// JSON keys that record when, how long or how a run got there (a resume), not what it made.
const WALL_CLOCK_KEYS: [&str; 5] = [
    "wall_s",
    "wall_time_s",
    "created",
    "resumed_from_step",
    "tokens_per_s",
];

fn strip_wall_clock(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for k in WALL_CLOCK_KEYS {
                m.remove(k);
            }
            m.values_mut().for_each(strip_wall_clock);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_wall_clock),
        _ => {}
    }
}

fn without_wall_clock(mut df: DataFrame) -> Result<DataFrame> {
    for c in WALL_CLOCK_COLUMNS {
        if df.column(c).is_ok() {
            df = df.drop(c)?;
        }
    }
    Ok(df)
}

/// The report of a smoke run: every table present, every number in its range.
fn check_tables(results: &Path, repo: &Path, pipeline: &str) -> Result<()> {
    let table = |name: &str| mosr_report::read_df(&results.join(format!("{name}.parquet")));
    let readme_path = results.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .with_context(|| format!("reading {}", readme_path.display()))?;
    for section in [
        "## Claims",
        "## Paired comparisons",
        "## Main table",
        "## Ablation",
        "## Frontier",
        "## Linear probes",
        "## Training curves",
    ] {
        ensure!(readme.contains(section), "report README lacks `{section}`");
    }
    ensure!(
        !readme.contains("## Not in this report"),
        "the smoke report misses sections"
    );

    let main = table("main_table")?;
    let variants = strs(&main, "variant")?;
    let mut distinct = variants.clone();
    distinct.dedup();
    ensure!(
        distinct == VARIANTS,
        "main table variants {distinct:?}, expected {VARIANTS:?}"
    );
    let mut rate_columns = 0;
    for c in main.get_column_names() {
        if c.as_str() == "variant" || c.as_str() == "seed" || c.starts_with("perplexity") {
            continue;
        }
        for (v, x) in variants.iter().zip(f64s(&main, c)?) {
            ensure!(
                (0.0..=1.0).contains(&x),
                "main table {v}/{c} = {x}, not a rate"
            );
        }
        rate_columns += 1;
    }
    let file = mosr_artifacts::PipelineFile::load(&reproduce::pipeline_path(repo, pipeline))?;
    let eval: mosr_eval::EvalSection = file.section("eval")?;
    let capability = eval.capability.benchmarks.len();
    ensure!(
        rate_columns >= eval.attacks.len() + eval.sets.len() + capability,
        "main table has {rate_columns} metric columns for {} attacks, {} sets and {capability} benchmarks",
        eval.attacks.len(),
        eval.sets.len()
    );

    let long = table("main_table_long")?;
    let (value, lo, hi, n) = (
        f64s(&long, "value")?,
        f64s(&long, "ci_low")?,
        f64s(&long, "ci_high")?,
        f64s(&long, "n")?,
    );
    for i in 0..value.len() {
        ensure!(n[i] >= 1.0, "main_table_long row {i}: n = {}", n[i]);
        if lo[i].is_nan() && hi[i].is_nan() {
            continue; // a median perplexity: not a rate, no interval
        }
        ensure!(
            lo[i] <= value[i] + 1e-9 && value[i] <= hi[i] + 1e-9,
            "main_table_long row {i}: {} outside its interval [{}, {}]",
            value[i],
            lo[i],
            hi[i]
        );
    }

    let ablation = table("ablation_table")?;
    let rows = strs(&ablation, "variant")?;
    let rr = rows
        .iter()
        .position(|v| v == "rr")
        .context("ablation table has no rr row")?;
    for c in [
        "Δ ASR vs rr",
        "Δ refused vs rr",
        "Δ gibberish vs rr",
        "Δ capability vs rr",
    ] {
        let d = f64s(&ablation, c)?[rr];
        ensure!(d.abs() < 1e-12, "ablation: rr's {c} is {d}, not 0");
    }

    let probe = table("probe_best_layer")?;
    for a in f64s(&probe, "accuracy")? {
        ensure!((0.0..=1.0).contains(&a), "probe accuracy {a}");
    }
    let train = table("training_summary")?;
    let trained = strs(&train, "variant")?;
    let finetune: mosr_finetune::FinetuneConfig = file.section("finetune")?;
    let seeds = finetune.seeds_or(file.run.seed);
    ensure!(
        trained.len() == 4 * seeds.len(),
        "training summary has {trained:?} for {} seeds",
        seeds.len()
    );
    for s in f64s(&train, "steps")? {
        ensure!(
            s == finetune.steps as f64,
            "a variant trained {s} steps, not {}",
            finetune.steps
        );
    }
    for c in ["loss start", "loss end", "erasure start", "erasure end"] {
        for x in f64s(&train, c)? {
            ensure!(x.is_finite(), "training summary {c} = {x}");
        }
    }
    check_claims(&table, seeds.len())?;
    check_frontier(&table, seeds.len(), finetune.frontier_steps.len())
}

/// The frontier tables: every variant and seed has a line of base, each snapshot and the
/// final adapter; every rate lies in its interval; one matched-ASR test per compared variant
/// and seed, with an effect in [−1, 1] and an interval around it, or a reason for none.
fn check_frontier(
    table: &dyn Fn(&str) -> Result<DataFrame>,
    seeds: usize,
    snapshots: usize,
) -> Result<()> {
    let points = table("frontier")?;
    let (variant, seed) = (strs(&points, "variant")?, strs(&points, "seed")?);
    let lines: std::collections::BTreeMap<(&String, &String), usize> = variant
        .iter()
        .zip(&seed)
        .filter(|(v, _)| *v != "base")
        .fold(Default::default(), |mut m, k| {
            *m.entry(k).or_default() += 1;
            m
        });
    ensure!(
        lines.len() == 4 * seeds && lines.values().all(|&n| n == snapshots + 1),
        "frontier points per (variant, seed): {lines:?}, expected {} snapshots + the final adapter",
        snapshots
    );
    for name in ["ASR", "refused"] {
        let (v, lo, hi) = (
            f64s(&points, name)?,
            f64s(&points, &format!("{name} ci_low"))?,
            f64s(&points, &format!("{name} ci_high"))?,
        );
        for i in 0..v.len() {
            ensure!(
                (0.0..=1.0).contains(&v[i]) && lo[i] <= v[i] + 1e-9 && v[i] <= hi[i] + 1e-9,
                "frontier row {i}: {name} {} outside [{}, {}]",
                v[i],
                lo[i],
                hi[i]
            );
        }
    }
    let tests = table("frontier_tests")?;
    let (effect, lo, hi) = (
        f64s(&tests, "effect")?,
        f64s(&tests, "ci_low")?,
        f64s(&tests, "ci_high")?,
    );
    let note = strs(&tests, "note")?;
    ensure!(
        effect.len() == 3 * seeds,
        "{} frontier tests for {seeds} seeds",
        effect.len()
    );
    for i in 0..effect.len() {
        ensure!(
            (effect[i].abs() <= 1.0 && lo[i] <= hi[i])
                || (effect[i].is_nan() && !note[i].is_empty()),
            "frontier test {i}: effect {} in [{}, {}], note `{}`",
            effect[i],
            lo[i],
            hi[i],
            note[i]
        );
    }
    Ok(())
}

/// The claims and paired tables: every claim has a rule-given verdict, every paired row is a
/// difference of two rates with an interval and a p-value, every trained variant is paired
/// with `base` for every seed.
fn check_claims(table: &dyn Fn(&str) -> Result<DataFrame>, seeds: usize) -> Result<()> {
    let claims = table("claims")?;
    let ids = strs(&claims, "claim")?;
    ensure!(ids == ["C1", "C2", "C3", "C4a", "C4b"], "claims {ids:?}");
    for v in strs(&claims, "verdict")? {
        ensure!(
            ["supported", "contradicted", "inconclusive"].contains(&v.as_str()),
            "verdict `{v}`"
        );
    }
    let tests = table("claim_tests")?;
    let (lo, hi, p) = (
        f64s(&tests, "ci_low")?,
        f64s(&tests, "ci_high")?,
        f64s(&tests, "p_value")?,
    );
    let verdict = strs(&tests, "verdict")?;
    for i in 0..lo.len() {
        // A test without an effect (a frontier with no ASR overlap) has no interval.
        let none = lo[i].is_nan() && hi[i].is_nan() && verdict[i] == "inconclusive";
        ensure!(
            lo[i] <= hi[i] || none,
            "claim test {i}: interval [{}, {}]",
            lo[i],
            hi[i]
        );
        ensure!(
            p[i].is_nan() || (0.0..=1.0).contains(&p[i]),
            "claim test {i}: p = {}",
            p[i]
        );
    }
    let paired = table("paired_tests")?;
    let (a, b, d) = (
        f64s(&paired, "rate_variant")?,
        f64s(&paired, "rate_reference")?,
        f64s(&paired, "diff")?,
    );
    let (pv, n) = (f64s(&paired, "p_value")?, f64s(&paired, "n")?);
    for i in 0..a.len() {
        ensure!(
            (a[i] - b[i] - d[i]).abs() < 1e-12,
            "paired row {i}: diff != a - b"
        );
        ensure!(
            (0.0..=1.0).contains(&pv[i]) && n[i] >= 1.0,
            "paired row {i}: p {} n {}",
            pv[i],
            n[i]
        );
    }
    let (variant, reference, seed) = (
        strs(&paired, "variant")?,
        strs(&paired, "reference")?,
        strs(&paired, "seed")?,
    );
    for v in &VARIANTS[1..] {
        let s: std::collections::BTreeSet<&String> = (0..variant.len())
            .filter(|&i| &variant[i] == v && reference[i] == "base")
            .map(|i| &seed[i])
            .collect();
        ensure!(
            s.len() == seeds,
            "{v} paired with base for seeds {s:?}, expected {seeds}"
        );
    }
    Ok(())
}

/// Column `name` of a report table as strings (nulls as ""), naming the column on error.
fn strs(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df
        .column(name)
        .with_context(|| format!("column `{name}` missing"))?
        .cast(&DataType::String)?;
    Ok(c.str()?
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// Column `name` of a report table as f64 (nulls as NaN), naming the column on error.
fn f64s(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let c = df
        .column(name)
        .with_context(|| format!("column `{name}` missing"))?
        .cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}
