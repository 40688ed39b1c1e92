//! Issue 22's comparison and its targets, rendered from `results/bench/latest.json` into
//! docs/performance.md between [`BEGIN`] and [`END`]. Every `cargo xtask bench` run
//! regenerates the block, `cargo xtask bench --summary` does so without measuring, and
//! `cargo xtask test` fails when it no longer matches the JSON, so the doc's figures are the
//! recorded ones. One section per CPU and path (AMX tiles used or not): machines of one kind
//! differ, and a run on one keeps the others' rows.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::{Ratio, amx_key};

const BEGIN: &str = "<!-- cargo xtask bench --summary: begin (generated) -->";
const END: &str = "<!-- cargo xtask bench --summary: end -->";
const DOC: &str = "docs/performance.md";
const JSON: &str = "results/bench/latest.json";

/// Which side of a target a ratio must lie on.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    /// Met when the whole interval lies on the target's side, not met when the whole interval
    /// lies on the other, open otherwise; one round decides nothing.
    fn verdict(self, r: &Ratio) -> &'static str {
        if r.n < 2 {
            return "one round";
        }
        let (met, missed) = match self {
            Goal::AtLeast(t) => (r.low >= t, r.high < t),
            Goal::AtMost(t) => (r.high <= t, r.low > t),
        };
        match (met, missed) {
            (true, _) => "met",
            (_, true) => "not met",
            _ => "open",
        }
    }

    fn text(self) -> String {
        match self {
            Goal::AtLeast(t) => format!("≥ {t:.1}x"),
            Goal::AtMost(t) => format!("≤ {t:.1}x"),
        }
    }
}

/// `cargo xtask bench --summary`: the block rewritten from the JSON (temp file, then rename).
pub fn write(repo: &Path) -> Result<()> {
    let (doc, _, new) = regenerated(repo)?;
    mosr_artifacts::atomic::write_bytes_atomic(&doc, new.as_bytes())?;
    eprintln!("wrote the bench summary into {}", doc.display());
    Ok(())
}

/// For `cargo xtask test`: the doc's block is what the JSON renders.
pub fn check(repo: &Path) -> Result<()> {
    let (doc, old, new) = regenerated(repo)?;
    if new != old {
        bail!(
            "{}: the bench summary does not match {JSON}; run `cargo xtask bench --summary`",
            doc.display()
        );
    }
    Ok(())
}

/// The doc's path, its text, and its text with the block rendered afresh.
fn regenerated(repo: &Path) -> Result<(std::path::PathBuf, String, String)> {
    let doc = repo.join(DOC);
    let old =
        std::fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
    let new = replace_block(&old, &render(repo)?).with_context(|| doc.display().to_string())?;
    Ok((doc, old, new))
}

/// `doc` with the text between the markers replaced by `block`.
fn replace_block(doc: &str, block: &str) -> Result<String> {
    let start = doc
        .find(BEGIN)
        .with_context(|| format!("no line `{BEGIN}`"))?;
    let end = doc[start..]
        .find(END)
        .map(|e| start + e)
        .with_context(|| format!("no line `{END}` after `{BEGIN}`"))?;
    Ok(format!("{}{BEGIN}\n{block}{}", &doc[..start], &doc[end..]))
}

/// The whole block: one section per CPU and path, in the JSON's order.
fn render(repo: &Path) -> Result<String> {
    let path = repo.join(JSON);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let all: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let mut sections: Vec<(String, &str)> = Vec::new();
    for anchor in ["llama_cpp", "pytorch"] {
        for key in [false, true].map(amx_key) {
            for r in rows(&all, anchor, key) {
                let s = (cpu(r), key);
                if !sections.contains(&s) {
                    sections.push(s);
                }
            }
        }
    }
    let mut out = String::from(
        "Ratios are medians over paired rounds (both sides in the same round, in turns) with \
         their distribution-free interval: the narrowest pair of order statistics covering at \
         least 95%, 96.9% for six rounds (unmarked); other round counts are marked with their \
         coverage (below six rounds no pair reaches 95%: the range). A target is *met* when \
         the whole interval lies on its side, *not met* when it lies on the other, *open* \
         otherwise. Speed ratios are mosr's speed over the anchor's, memory ratios mosr's peak \
         over the anchor's.\n",
    );
    for (cpu_name, key) in &sections {
        let pick = |anchor| -> Vec<&Value> {
            rows(&all, anchor, key)
                .into_iter()
                .filter(|r| &cpu(r) == cpu_name)
                .collect()
        };
        let (torch, llama) = (pick("pytorch"), pick("llama_cpp"));
        let amx = *key == amx_key(true);
        out += &format!(
            "\n### {cpu_name}, {}\n\n",
            if amx { "AMX tiles used" } else { "without AMX" }
        );
        out += &provenance(torch.iter().chain(&llama).copied());
        out += &torch_table(&torch);
        out += &llama_table(&llama);
        out += &targets(&torch, &llama, amx);
    }
    Ok(out)
}

fn rows<'a>(all: &'a Value, anchor: &str, key: &str) -> Vec<&'a Value> {
    all[anchor][key]["rows"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

fn cpu(row: &Value) -> String {
    row["cpu"]
        .as_str()
        .unwrap_or("CPU not recorded")
        .to_string()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn model(row: &Value) -> &str {
    row["model"].as_str().unwrap_or("not recorded")
}

/// When and by which code the section's rows were measured.
fn provenance<'a>(rows: impl Iterator<Item = &'a Value>) -> String {
    let (mut dates, mut codes) = (Vec::new(), Vec::new());
    for r in rows {
        let date = r["measured"]
            .as_str()
            .map_or("not recorded", |m| &m[..10.min(m.len())]);
        let code = r["code_version"].as_str().unwrap_or("not recorded");
        for (list, v) in [(&mut dates, date), (&mut codes, code)] {
            if !list.contains(&v) {
                list.push(v);
            }
        }
    }
    format!(
        "Measured: {}; code: {}.\n\n",
        dates.join(", "),
        codes
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A ratio over rounds from the rows' raw pairs (`f(mosr, anchor)` per round), or, for rows
/// recorded before rounds were kept, one ratio of the medians.
fn per_round(row: &Value, f: impl Fn(&Value, &Value) -> f64, median: f64) -> Option<Ratio> {
    let raw = row["raw"].as_array().map(Vec::as_slice).unwrap_or_default();
    let v: Vec<f64> = raw.iter().map(|p| f(&p["mosr"], &p["pytorch"])).collect();
    Ratio::of(if v.is_empty() { vec![median] } else { v })
}

fn show(r: &Option<Ratio>) -> String {
    match r {
        Some(r) if r.n == 6 => format!("{:.2}x [{:.2}, {:.2}]", r.median, r.low, r.high),
        // Six rounds are the header's default (96.9%); other counts give their own coverage
        // (fewer than six reach no 95% interval: the range).
        Some(r) if r.n >= 2 => format!(
            "{:.2}x [{:.2}, {:.2}] ({} rounds, {:.1}%)",
            r.median,
            r.low,
            r.high,
            r.n,
            100.0 * r.coverage
        ),
        Some(r) => format!("{:.2}x (1 round)", r.median),
        None => "–".into(),
    }
}

/// PyTorch's speed ratio and memory ratio of a row.
fn torch_ratios(r: &Value) -> (Option<Ratio>, Option<Ratio>) {
    let speed = per_round(
        r,
        |m, t| num(&t["median_s"]) / num(&m["median_s"]),
        num(&r["speedup_mosr_over_pytorch"]),
    );
    let memory = per_round(
        r,
        |m, t| num(&m["peak_rss_bytes"]) / num(&t["peak_rss_bytes"]),
        num(&r["mosr_peak_rss_mb"]) / num(&r["pytorch_peak_rss_mb"]),
    );
    (speed, memory)
}

fn torch_table(rows: &[&Value]) -> String {
    if rows.is_empty() {
        return "Against PyTorch: not measured on this CPU and path.\n\n".into();
    }
    let mut s = String::from(
        "Against PyTorch (`cargo xtask bench`; prefill 8 × 128 keeping every hidden state, \
         generation 8 × 64 new tokens, one LoRA step, a 1024³ f32 matmul; PyTorch in f32):\n\n\
         | model | workload | mosr arithmetic | mosr | PyTorch | speed ratio | peak MB, mosr / PyTorch | memory ratio |\n\
         |---|---|---|---:|---:|---|---:|---|\n",
    );
    for r in rows {
        let w = r["workload"].as_str().unwrap_or("?");
        let (unit, m, t) = match w {
            "train" => (
                "s/step",
                num(&r["mosr_median_s"]),
                num(&r["pytorch_median_s"]),
            ),
            w if w.starts_with("matmul") => (
                "GFLOP/s",
                num(&r["mosr_gflops_per_s"]),
                num(&r["pytorch_gflops_per_s"]),
            ),
            _ => (
                "tok/s",
                num(&r["mosr_tokens_per_s"]),
                num(&r["pytorch_tokens_per_s"]),
            ),
        };
        let (speed, memory) = torch_ratios(r);
        let model = if w.starts_with("matmul") {
            "–"
        } else {
            model(r)
        };
        s += &format!(
            "| {model} | {w} | {} | {m:.1} {unit} | {t:.1} {unit} | {} | {:.0} / {:.0} | {} |\n",
            r["arithmetic"].as_str().unwrap_or("exact"),
            show(&speed),
            num(&r["mosr_peak_rss_mb"]),
            num(&r["pytorch_peak_rss_mb"]),
            show(&memory),
        );
    }
    s + "\n"
}

/// The mosr rows of the llama.cpp comparison, each with llama.cpp's row of its model and
/// batch.
fn llama_pairs<'a>(rows: &[&'a Value]) -> Vec<(&'a Value, &'a Value)> {
    let is_anchor = |r: &Value| r["implementation"] == "llama.cpp";
    rows.iter()
        .filter(|r| !is_anchor(r))
        .filter_map(|m| {
            let a = rows
                .iter()
                .find(|a| is_anchor(a) && a["model"] == m["model"] && a["batch"] == m["batch"])?;
            Some((*m, *a))
        })
        .collect()
}

/// mosr / llama.cpp for prefill, decode and memory: the recorded paired ratios, or one ratio
/// of the medians for rows recorded before rounds were kept.
fn llama_ratios(m: &Value, a: &Value) -> [Option<Ratio>; 3] {
    let keys = [
        ("prefill", "prefill_tok_s"),
        ("decode", "decode_tok_s"),
        ("memory", "peak_rss_mb"),
    ];
    keys.map(|(k, field)| {
        let paired = &m["against_llama_cpp"][k]["per_round"];
        match paired.as_array() {
            Some(v) => Ratio::of(v.iter().map(num).collect()),
            None => Ratio::of(vec![num(&m[field]) / num(&a[field])]),
        }
    })
}

fn llama_table(rows: &[&Value]) -> String {
    let pairs = llama_pairs(rows);
    if pairs.is_empty() {
        return "Against llama.cpp: not measured on this CPU and path.\n\n".into();
    }
    let mut s = String::from(
        "Against llama.cpp (`cargo xtask bench --anchor llama`; `llama-batched-bench` on the \
         same GGUF, 128 prompt tokens and 64 new tokens per sequence, 2 threads; tok/s are \
         medians over rounds):\n\n\
         | model | batch | mosr | prefill tok/s, mosr / llama.cpp | prefill ratio | decode tok/s, mosr / llama.cpp | decode ratio | peak MB, mosr / llama.cpp | memory ratio |\n\
         |---|---:|---|---:|---|---:|---|---:|---|\n",
    );
    for (m, a) in pairs {
        let [pre, dec, mem] = llama_ratios(m, a);
        let f = |k: &str| (num(&m[k]), num(&a[k]));
        let ((mp, ap), (md, ad), (mm, am)) =
            (f("prefill_tok_s"), f("decode_tok_s"), f("peak_rss_mb"));
        s += &format!(
            "| {} | {} | {} | {mp:.0} / {ap:.0} | {} | {md:.1} / {ad:.1} | {} | {mm:.0} / {am:.0} | {} |\n",
            model(m),
            m["batch"],
            m["implementation"].as_str().unwrap_or("?"),
            show(&pre),
            show(&dec),
            show(&mem),
        );
    }
    s + "\n"
}

/// One cell a target names: the target, the cell, its goal and the measured ratio.
struct Line {
    target: &'static str,
    cell: String,
    goal: Goal,
    ratio: Option<Ratio>,
}

/// The targets as a table, one line per cell they name.
fn targets(torch: &[&Value], llama: &[&Value], amx: bool) -> String {
    let mut s = String::from(
        "Issue 22's targets on this CPU and path:\n\n| target | cell | goal | ratio | verdict |\n|---|---|---|---|---|\n",
    );
    for l in target_lines(torch, llama, amx) {
        let verdict = l
            .ratio
            .as_ref()
            .map_or("not measured", |r| l.goal.verdict(r));
        s += &format!(
            "| {} | {} | {} | {} | {verdict} |\n",
            l.target,
            l.cell,
            l.goal.text(),
            show(&l.ratio)
        );
    }
    s
}

/// Every cell the targets name, measured or not ("not measured" shows what is missing).
fn target_lines(torch: &[&Value], llama: &[&Value], amx: bool) -> Vec<Line> {
    // Prefill is compared exact on the tile unit, quantized elsewhere (the wording).
    let prefill_arith = if amx { "exact" } else { "quantized" };
    let models: Vec<String> = mosr_lm::fetch::registry()
        .into_iter()
        .map(|m| m.id)
        .collect();
    let pairs = llama_pairs(llama);
    let llama_cell = |model: &str, batch: u64, arith: &str| {
        let implementation = format!("mosr-{arith}");
        pairs
            .iter()
            .find(|(m, _)| {
                m["model"] == model && m["batch"] == batch && m["implementation"] == *implementation
            })
            .map_or([None, None, None], |(m, a)| llama_ratios(m, a))
    };
    let torch_cell = |model: &str, workload: &str, arith: &str| {
        torch
            .iter()
            .find(|r| r["model"] == model && r["workload"] == workload && r["arithmetic"] == arith)
            .map_or((None, None), |r| torch_ratios(r))
    };
    let mut lines = Vec::new();
    let mut add = |target, cell: String, goal, ratio| {
        lines.push(Line {
            target,
            cell,
            goal,
            ratio,
        })
    };
    for m in models.iter().filter(|m| m.starts_with("qwen")) {
        for b in [8, 32] {
            let [_, decode, memory] = llama_cell(m, b, "quantized");
            let cell = format!("{m}, batch {b}, quantized");
            add(
                "decode vs llama.cpp",
                cell.clone(),
                Goal::AtLeast(2.0),
                decode,
            );
            add("peak memory vs llama.cpp", cell, Goal::AtMost(1.5), memory);
        }
    }
    for m in &models {
        for b in [1, 8, 32] {
            let [prefill, ..] = llama_cell(m, b, prefill_arith);
            let cell = format!("{m}, batch {b}, {prefill_arith}");
            add("prefill vs llama.cpp", cell, Goal::AtLeast(1.5), prefill);
        }
    }
    for m in &models {
        let (prefill, _) = torch_cell(m, "prefill", prefill_arith);
        let cell = format!("{m}, 8 × 128, {prefill_arith}");
        add("prefill vs PyTorch", cell, Goal::AtLeast(1.5), prefill);
    }
    for m in &models {
        let (speed, memory) = torch_cell(m, "train", "exact");
        let cell = format!("{m}, one step");
        add(
            "LoRA step vs PyTorch + PEFT",
            cell.clone(),
            Goal::AtLeast(1.5),
            speed,
        );
        add(
            "LoRA step peak memory vs PyTorch",
            cell,
            Goal::AtMost(1.0),
            memory,
        );
    }
    lines
}
