//! `cargo xtask bench`: mosr against PyTorch + transformers on the same machine, weights,
//! token ids, dtype (f32) and thread count, A/B interleaved, medians and ratios.
//!
//! Each workload runs in its own process (`mosr-lm bench` for matmul, prefill and generate,
//! `mosr-finetune bench` for the LoRA training step, `tools/bench/torch_bench.py` for all of
//! them on the PyTorch side) so peak memory (VmHWM / ru_maxrss) is per workload.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub(crate) fn run_json(cmd: &mut Command) -> Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line in output")?;
    Ok(serde_json::from_str(line)?)
}

/// The PyTorch side's packages, pinned so that a rerun anchors against the same code: torch,
/// transformers and PEFT at the versions docs/performance.md names for its PyTorch rows.
const TORCH_STACK: [&str; 5] = [
    "torch==2.15.0",
    "transformers==5.25.0",
    "peft==0.21.2",
    "gguf==0.19.0",
    "numpy==2.4.6",
];

/// A venv with torch + transformers + peft + gguf under the cache, created on first use.
fn torch_python(repo: &Path, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let venv = mosr_lm::fetch::cache_root().join("bench-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!(
            "creating {} (torch, transformers, gguf; a few minutes)",
            venv.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success()
            && Command::new(&py)
                .args(["-m", "pip", "install", "--quiet"])
                .args(TORCH_STACK)
                .current_dir(repo)
                .status()?
                .success();
        if !ok {
            bail!("could not create the PyTorch venv at {}", venv.display());
        }
    }
    Ok(py)
}

/// Builds the bench binaries (dev profile, as `reproduce` uses) beside xtask; returns
/// `mosr-lm` and `mosr-finetune`.
pub(crate) fn binaries(repo: &Path) -> Result<(PathBuf, PathBuf)> {
    crate::pins::build_beside_xtask(repo, &["-p", "mosr-lm", "-p", "mosr-finetune"])?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("target"));
    Ok((
        target.join("debug/mosr-lm"),
        target.join("debug/mosr-finetune"),
    ))
}

/// Records one anchor's rows for this machine's path in `results/bench/latest.json`: an
/// object keyed by anchor, then by `amx` or `no_amx` (whether the AMX products ran; an AMX
/// machine gives both, the second with `MOSR_NO_AMX=1`), so a run on one path keeps the
/// other's figures. A row replaces the recorded row with the same values in the `identity`
/// fields and leaves the others, so a run of some models or batches keeps the rest of the
/// table; each new row carries when, by which code and on which CPU it was measured (the CPU
/// is part of every row's identity: machines of one kind differ, and a run on one keeps the
/// others' rows). Older files (one entry
/// per anchor, or a bare list of PyTorch rows) are moved under the path their entry names, or
/// `unrecorded`.
pub(crate) fn record(
    repo: &Path,
    anchor: &str,
    rows: serde_json::Value,
    identity: &[&str],
) -> Result<()> {
    let out = repo.join("results/bench/latest.json");
    let mut all = match std::fs::read_to_string(&out) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text)? {
            serde_json::Value::Array(rows) => serde_json::json!({ "pytorch": { "rows": rows } }),
            v => v,
        },
        Err(_) => serde_json::json!({}),
    };
    for entry in all.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        if entry.get("rows").is_some() {
            let path = match entry["amx"].as_bool() {
                Some(amx) => amx_key(amx),
                None => "unrecorded",
            };
            *entry = serde_json::json!({ path: entry.take() });
        }
    }
    let (measured, code) = (
        mosr_artifacts::now_rfc3339(),
        mosr_artifacts::code_version(),
    );
    let cpu = cpu_name();
    let mut fresh: Vec<serde_json::Value> = rows.as_array().cloned().unwrap_or_default();
    for row in &mut fresh {
        row["measured"] = measured.clone().into();
        row["code_version"] = code.clone().into();
        row["cpu"] = cpu.clone().into();
    }
    let identity: Vec<&str> = identity.iter().copied().chain(["cpu"]).collect();
    let amx = mosr_kernels::amx::available();
    let entry = &mut all[anchor][amx_key(amx)];
    let old = entry["rows"].as_array().cloned().unwrap_or_default();
    entry["kernels"] = mosr_kernels::arithmetic().into();
    entry["amx"] = amx.into();
    entry["rows"] = merge_rows(old, fresh, &identity).into();
    // Temp file then rename: a killed run leaves the recorded rows whole.
    mosr_artifacts::atomic::write_bytes_atomic(
        &out,
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `old` with each row that a `fresh` row matches on `identity` replaced in place, then the
/// fresh rows that matched none.
fn merge_rows(
    old: Vec<serde_json::Value>,
    fresh: Vec<serde_json::Value>,
    identity: &[&str],
) -> Vec<serde_json::Value> {
    let key = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        identity.iter().map(|k| r[*k].clone()).collect()
    };
    let mut fresh: Vec<Option<serde_json::Value>> = fresh.into_iter().map(Some).collect();
    let mut merged: Vec<serde_json::Value> = old
        .into_iter()
        .map(|r| {
            let k = key(&r);
            fresh
                .iter_mut()
                .find(|f| f.as_ref().is_some_and(|f| key(f) == k))
                .and_then(Option::take)
                .unwrap_or(r)
        })
        .collect();
    merged.extend(fresh.into_iter().flatten());
    merged
}

/// The CPU's model name as the kernel reports it (`/proc/cpuinfo`), or `unknown`.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The key of a path's entry in `results/bench/latest.json`.
pub(crate) fn amx_key(amx: bool) -> &'static str {
    if amx { "amx" } else { "no_amx" }
}

/// What the PyTorch comparison measures: prefill and generate per registry model and mosr
/// arithmetic (PyTorch always runs the GGUF's weights dequantized to f32), the LoRA step per
/// model (training always loads exact), matmul and matmul-amx once on random matrices.
pub struct Plan<'a> {
    pub models: &'a [String],
    pub workloads: &'a [String],
    pub arithmetic: &'a [String],
    pub rounds: usize,
}

/// One table row: a workload on one model (none for the matmuls) with one arithmetic.
struct Cell<'a> {
    workload: &'a str,
    model: Option<&'a str>,
    arithmetic: &'a str,
}

impl Plan<'_> {
    /// The cells in run order, model by model.
    fn cells(&self) -> Vec<Cell<'_>> {
        let (matmuls, model_work): (Vec<&String>, Vec<&String>) =
            self.workloads.iter().partition(|w| w.starts_with("matmul"));
        let mut cells: Vec<Cell> = matmuls
            .into_iter()
            .map(|w| Cell {
                workload: w,
                model: None,
                arithmetic: "exact",
            })
            .collect();
        for m in self.models {
            for w in &model_work {
                let arithmetic = match w.as_str() {
                    "train" => vec!["exact"],
                    _ => self.arithmetic.iter().map(String::as_str).collect(),
                };
                cells.extend(arithmetic.into_iter().map(|a| Cell {
                    workload: w,
                    model: Some(m),
                    arithmetic: a,
                }));
            }
        }
        cells
    }
}

/// The model whose file the model-free matmul workloads are handed.
const MATMUL_MODEL: &str = "smollm2-135m-instruct";

pub fn run(repo: &Path, python: Option<PathBuf>, plan: &Plan) -> Result<()> {
    let py = torch_python(repo, python)?;
    let (mosr_lm, mosr_finetune) = binaries(repo)?;
    // Each file fetched (and its sha256 checked) once; the matmuls take SmolLM2's path only
    // because `mosr-lm bench` wants a model.
    let mut ggufs = std::collections::BTreeMap::new();
    for id in plan.models.iter().map(String::as_str).chain([MATMUL_MODEL]) {
        if !ggufs.contains_key(id) {
            ggufs.insert(id, mosr_lm::fetch::fetch(id)?);
        }
    }
    let mut rows = Vec::new();
    for cell in plan.cells() {
        let w = cell.workload;
        let gguf = &ggufs[cell.model.unwrap_or(MATMUL_MODEL)];
        let mut results: Vec<(serde_json::Value, serde_json::Value)> = Vec::new();
        for round in 0..plan.rounds {
            let name = cell.model.unwrap_or("-");
            eprintln!(
                "{w} {name} {}: round {}/{}",
                cell.arithmetic,
                round + 1,
                plan.rounds
            );
            let mut mosr = if w == "train" {
                let mut c = Command::new(&mosr_finetune);
                c.arg("bench");
                c
            } else {
                let mut c = Command::new(&mosr_lm);
                c.args(["bench", "--workload", w, "--arithmetic", cell.arithmetic]);
                c
            };
            mosr.arg("--model").arg(gguf).env("RAYON_NUM_THREADS", "2");
            let mut torch = Command::new(&py);
            torch
                .arg(repo.join("tools/bench/torch_bench.py"))
                .args(["--workload", w, "--threads", "2", "--gguf"])
                .arg(gguf);
            // In turns, PyTorch first in odd rounds: a drift of the machine favours neither.
            let (m, t) = if round % 2 == 1 {
                let t = run_json(&mut torch)?;
                (run_json(&mut mosr)?, t)
            } else {
                (run_json(&mut mosr)?, run_json(&mut torch)?)
            };
            results.push((m, t));
        }
        rows.push(row(&cell, &results));
    }
    add_f32_limit(&mut rows);
    println!("{}", table(&rows));
    record(
        repo,
        "pytorch",
        serde_json::Value::Array(rows),
        &["workload", "model", "arithmetic"],
    )
}

/// The median of a ratio over rounds, with the distribution-free interval of
/// [`mosr_stats::median_interval`] at 95% (or the widest one, with its coverage, when there
/// are fewer than six rounds).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Ratio {
    pub n: usize,
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub coverage: f64,
    pub per_round: Vec<f64>,
}

impl Ratio {
    pub(crate) fn of(per_round: Vec<f64>) -> Option<Ratio> {
        let m = mosr_stats::median_interval(&per_round, 0.95)?;
        Some(Ratio {
            n: m.n,
            median: m.median,
            low: m.low,
            high: m.high,
            coverage: m.coverage,
            per_round,
        })
    }
}

/// A cell's medians over its rounds, and every round's raw figures.
fn row(cell: &Cell, results: &[(serde_json::Value, serde_json::Value)]) -> serde_json::Value {
    let med = |f: &dyn Fn(&(serde_json::Value, serde_json::Value)) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m_s = med(&|r| r.0["median_s"].as_f64().unwrap());
    let t_s = med(&|r| r.1["median_s"].as_f64().unwrap());
    serde_json::json!({
        "workload": cell.workload,
        "model": cell.model,
        "arithmetic": cell.arithmetic,
        "mosr_median_s": m_s, "pytorch_median_s": t_s,
        "speedup_mosr_over_pytorch": t_s / m_s,
        "speedup_paired": Ratio::of(results.iter().map(|(m, t)| {
            t["median_s"].as_f64().unwrap() / m["median_s"].as_f64().unwrap()
        }).collect()),
        "mosr_gflops_per_s": med(&|r| r.0["gflops_per_s"].as_f64().unwrap()),
        "pytorch_gflops_per_s": med(&|r| r.1["gflops_per_s"].as_f64().unwrap()),
        "mosr_tokens_per_s": med(&|r| r.0["tokens_per_s"].as_f64().unwrap()),
        "pytorch_tokens_per_s": med(&|r| r.1["tokens_per_s"].as_f64().unwrap()),
        "mosr_peak_rss_mb": med(&|r| r.0["peak_rss_bytes"].as_f64().unwrap()) / 1e6,
        "pytorch_peak_rss_mb": med(&|r| r.1["peak_rss_bytes"].as_f64().unwrap()) / 1e6,
        "raw": results.iter().map(|(m, t)| serde_json::json!({"mosr": m, "pytorch": t})).collect::<Vec<_>>(),
    })
}

/// The practical f32 limit: the better of the two sides' f32 matmul (AVX-512 FMA), and each
/// row's GFLOP/s as a fraction of it.
fn add_f32_limit(rows: &mut [serde_json::Value]) {
    let limit = rows.iter().find(|r| r["workload"] == "matmul").map(|r| {
        r["mosr_gflops_per_s"]
            .as_f64()
            .unwrap()
            .max(r["pytorch_gflops_per_s"].as_f64().unwrap())
    });
    let Some(l) = limit else { return };
    for r in rows.iter_mut() {
        r["f32_limit_gflops_per_s"] = l.into();
        r["mosr_fraction_of_f32_limit"] = (r["mosr_gflops_per_s"].as_f64().unwrap() / l).into();
        r["pytorch_fraction_of_f32_limit"] =
            (r["pytorch_gflops_per_s"].as_f64().unwrap() / l).into();
    }
}

/// The rows as a Markdown table.
fn table(rows: &[serde_json::Value]) -> String {
    let mut out = String::from(
        "| workload | model | mosr arithmetic | mosr tok/s | PyTorch tok/s | mosr / PyTorch speed | mosr GFLOP/s | PyTorch GFLOP/s | mosr / f32 limit | PyTorch / f32 limit | mosr peak MB | PyTorch peak MB |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let pct = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("-".into(), |f| format!("{:.0}%", 100.0 * f))
    };
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    let paired = |v: &serde_json::Value| {
        let g = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        format!("{:.2}x [{:.2}, {:.2}]", g("median"), g("low"), g("high"))
    };
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} |\n",
            r["workload"].as_str().unwrap(),
            r["model"].as_str().unwrap_or("-"),
            r["arithmetic"].as_str().unwrap(),
            f(r, "mosr_tokens_per_s"),
            f(r, "pytorch_tokens_per_s"),
            paired(&r["speedup_paired"]),
            f(r, "mosr_gflops_per_s"),
            f(r, "pytorch_gflops_per_s"),
            pct(&r["mosr_fraction_of_f32_limit"]),
            pct(&r["pytorch_fraction_of_f32_limit"]),
            f(r, "mosr_peak_rss_mb"),
            f(r, "pytorch_peak_rss_mb"),
        );
    }
    if let Some(p) = rows.first().map(|r| &r["speedup_paired"]) {
        out += &format!(
            "\nSpeed ratios: the median over {} paired rounds (PyTorch's time over mosr's in the \
             same round) and its distribution-free interval, coverage {:.1}%.\n",
            p["n"],
            100.0 * p["coverage"].as_f64().unwrap_or(f64::NAN)
        );
    }
    out
}
