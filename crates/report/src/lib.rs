//! mosr-report: the results report. Reads the Parquet outputs of every stage of a run folder
//! through their tables' typed readers (`mosr_artifacts::row`), arranges them into the paper's
//! tables, written as polars frames, draws the plots, and writes `results/<pipeline>/`
//! (Parquet + Markdown + SVG + README.md).
//!
//! The report never recomputes a metric or a test: every rate, interval, p-value and verdict
//! comes from a stage's table (eval's metrics, the claims stage's tests), so the report and
//! the artifacts cannot disagree. It only averages rates across columns (the ablation). Sections whose stage has not run are skipped and
//! listed as missing in the README.

pub mod analysis;
pub mod chart;
pub mod claims;
pub mod frontier;
pub mod markdown;
pub mod models;
pub mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use mosr_artifacts::row::{Row, read_rows};
use mosr_artifacts::{RunDir, StageManifest, write_bytes_atomic};
use polars::prelude::{BooleanChunked, DataFrame, ParquetReader, ParquetWriter, SerReader};
use serde::{Deserialize, Serialize};
use tracing::info;

/// `[report]` section of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// Row order of the variants in the tables; variants not listed follow, sorted.
    pub variant_order: Vec<String>,
    /// Decimals in the Markdown tables.
    pub digits: usize,
}

impl Default for ReportSection {
    fn default() -> Self {
        ReportSection {
            variant_order: ["base", "rr", "rr_weights", "rr_augment", "mosr"]
                .map(String::from)
                .to_vec(),
            digits: 3,
        }
    }
}

/// What a report run wrote.
#[derive(Debug, Clone, Default)]
pub struct ReportOutputs {
    pub out_dir: PathBuf,
    /// Written files, relative to `out_dir`.
    pub files: Vec<String>,
    /// Sections skipped because their stage has not produced its table.
    pub missing: Vec<String>,
}

/// Everything a section writes goes through this, so every file is atomic and listed.
pub struct Writer {
    pub dir: PathBuf,
    pub files: Vec<String>,
    pub digits: usize,
}

impl Writer {
    pub fn text(&mut self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        self.put(&path, text.as_bytes())?;
        self.files.push(name.to_string());
        Ok(())
    }

    /// Atomic write, skipped when the file already holds these bytes: a rerun with nothing
    /// new leaves the results folder untouched (mtimes included).
    fn put(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if std::fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        write_bytes_atomic(path, bytes)?;
        Ok(())
    }

    /// `<name>.parquet` (for polars users) and the same table as Markdown in the README.
    pub fn table(&mut self, name: &str, df: &mut DataFrame) -> Result<String> {
        let path = self.dir.join(format!("{name}.parquet"));
        let mut bytes = Vec::new();
        ParquetWriter::new(&mut bytes)
            .finish(df)
            .with_context(|| format!("encoding {}", path.display()))?;
        self.put(&path, &bytes)?;
        self.files.push(format!("{name}.parquet"));
        Ok(markdown::table(df, self.digits))
    }
}

/// Read a Parquet file into a polars DataFrame, naming the file on error (the report's own
/// tables, which have no row type; a stage's table is read through its rows).
pub fn read_df(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .with_context(|| format!("reading {} with polars", path.display()))
}

/// A table whose rows a section copies as they are: the frame to copy from and its typed rows
/// (the same rows in the same order) to choose them by.
pub fn read_passthrough<R: Row>(path: &Path) -> Result<(DataFrame, Vec<R>)> {
    let (df, rows) = (read_df(path)?, read_rows::<R>(path)?);
    anyhow::ensure!(
        df.height() == rows.len(),
        "{}: polars read {} rows, the table's reader {}",
        path.display(),
        df.height(),
        rows.len()
    );
    Ok((df, rows))
}

/// The rows of `df` whose typed row (`rows[i]` for row i) satisfies `keep`.
pub fn filter_rows<R>(df: &DataFrame, rows: &[R], keep: impl Fn(&R) -> bool) -> Result<DataFrame> {
    let mask: BooleanChunked = rows.iter().map(keep).collect();
    Ok(df.filter(&mask)?)
}

/// Build the report for `run_dir` into `out_dir`. `command` is recorded in the README.
pub fn run(
    cfg: &ReportSection,
    run_dir: &RunDir,
    out_dir: &Path,
    command: &str,
) -> Result<ReportOutputs> {
    let started = Instant::now();
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut w = Writer {
        dir: out_dir.to_path_buf(),
        files: Vec::new(),
        digits: cfg.digits,
    };
    let mut body = String::new();
    let mut missing = Vec::new();
    for section in sections::all() {
        match (section.build)(cfg, run_dir, &mut w)? {
            Some(md) => {
                body.push_str(&format!("## {}\n\n{}\n", section.title, md));
            }
            None => missing.push(section.title.to_string()),
        }
    }
    let readme = readme(run_dir, command, &body, &missing)?;
    w.text("README.md", &readme)?;
    info!(
        files = w.files.len(),
        missing = missing.len(),
        secs = started.elapsed().as_secs_f64(),
        out = %out_dir.display(),
        "report written"
    );
    Ok(ReportOutputs {
        out_dir: out_dir.to_path_buf(),
        files: w.files,
        missing,
    })
}

/// Manifests of every finished stage of the run, by stage name.
pub fn manifests(run_dir: &RunDir) -> BTreeMap<String, StageManifest> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(run_dir.root()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(m) = run_dir.manifest(&name) {
                out.insert(name, m);
            }
        }
    }
    out
}

fn readme(run_dir: &RunDir, command: &str, body: &str, missing: &[String]) -> Result<String> {
    let ms = manifests(run_dir);
    let total: f64 = ms.values().map(|m| m.wall_time_s).sum();
    // Skipped stages keep the manifest of the run that made them, so a run folder can hold
    // several code versions; name them all rather than one at random.
    let versions: std::collections::BTreeSet<&str> =
        ms.values().map(|m| m.code_version.as_str()).collect();
    let code = match versions.len() {
        0 => format!("`{}`", mosr_artifacts::code_version()),
        1 => format!("`{}`", versions.iter().next().expect("one")),
        _ => format!(
            "{} (per stage below; unchanged stages were reused)",
            versions
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let model_hash = ms
        .values()
        .find_map(|m| {
            m.inputs
                .iter()
                .find(|(k, _)| k.starts_with("model"))
                .map(|(k, v)| format!("{k} sha256 {v}"))
        })
        .unwrap_or_else(|| "(no model-reading stage has run)".into());
    let seed = ms.values().find_map(|m| m.seed);
    let arithmetic: std::collections::BTreeSet<&str> = ms
        .values()
        .map(|m| m.cpu_arithmetic.as_str())
        .filter(|a| !a.is_empty())
        .collect();
    let arithmetic = if arithmetic.is_empty() {
        "(not recorded)".to_string()
    } else {
        arithmetic.into_iter().collect::<Vec<_>>().join(", ")
    };
    let mut s = format!(
        "# Results: `{}`\n\nMade by `{command}` from code {code}.\n\n\
         * model: {model_hash}\n* seed: {}\n* CPU arithmetic: {arithmetic} (runs agree bit for \
         bit only on machines with the same)\n\
         * stage wall time (sum of manifests): {:.1} min\n\n",
        run_dir
            .root()
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
        total / 60.0
    );
    if let Some(note) = reuse_note(&ms) {
        s.push_str(&note);
    }
    s.push_str("| stage | key | wall time (s) | created | code |\n|---|---|---:|---|---|\n");
    for (name, m) in &ms {
        s.push_str(&format!(
            "| {name} | `{}` | {:.1} | {} | `{}` |\n",
            m.key, m.wall_time_s, m.created, m.code_version
        ));
    }
    s.push_str(
        "\nEvery table below is also a Parquet file in this folder; open it with \
         `polars.read_parquet(\"results/<pipeline>/<table>.parquet\")`.\n\n",
    );
    s.push_str(body);
    if !missing.is_empty() {
        s.push_str("## Not in this report\n\nThese sections need stages that have not run yet: ");
        s.push_str(&missing.join(", "));
        s.push_str(".\n");
    }
    Ok(s)
}

/// When the eval stage reused stored generations (an earlier run with the same prompts,
/// models and decoding), its wall time covers only what it recomputed: say so, so the sum of
/// stage times is not read as the cost of the run.
fn reuse_note(ms: &BTreeMap<String, StageManifest>) -> Option<String> {
    let m = ms.get("eval")?;
    let reused = *m.row_counts.get("groups_reused")?;
    let generated = m.row_counts.get("groups_generated").copied().unwrap_or(0);
    (reused > 0).then(|| {
        format!(
            "The eval stage reused {reused} of {} stored generation groups (same prompts, \
             models and decoding; the judges and metrics were recomputed), so its wall time \
             in the table below covers only that; a run from an empty folder generates them all.\n\n",
            reused + generated
        )
    })
}

/// The report stage: reads every stage folder and writes `[run] results_dir` (default
/// `results/<pipeline>/`). Cheap, so it has no key and always reruns.
pub struct Report;

impl mosr_stage::Stage for Report {
    const NAME: &'static str = "report";
    const UPSTREAM: &'static [&'static str] =
        &["probe", "logit_lens", "finetune", "eval", "claims"];
    type Section = ReportSection;
    type Plan = ();

    fn plan(_: &mosr_stage::Ctx, _: ReportSection) -> Result<mosr_stage::Planned<()>> {
        unreachable!("the report has no key: `execute` runs it")
    }

    fn compute(
        _: &mosr_stage::Ctx,
        _: mosr_stage::Planned<()>,
        _: &mosr_artifacts::StageWork,
    ) -> Result<StageManifest> {
        unreachable!("the report has no key: `execute` runs it")
    }

    fn execute(ctx: &mosr_stage::Ctx, _force: bool) -> Result<PathBuf> {
        let (file, repo_root) = (ctx.file, ctx.repo_root);
        let cfg = mosr_stage::section::<Self>(file)?;
        let out_dir = file.results_dir(repo_root);
        let rel = file
            .path
            .strip_prefix(repo_root)
            .unwrap_or(&file.path)
            .display()
            .to_string();
        let command = format!("cargo xtask reproduce --pipeline {rel}");
        run(&cfg, &ctx.run_dir, &out_dir, &command)?;
        Ok(out_dir)
    }
}
