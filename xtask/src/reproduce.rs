//! `cargo xtask reproduce`: every stage of a pipeline in order, each through its library.
//! A stage whose manifest key matches its current config and upstream keys is skipped, so a
//! second run with no change does nothing, and a killed run picks up where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mosr_artifacts::PipelineFile;

/// One stage of the list: its name (= pipeline section and run-folder name), the stages it
/// reads, its checks and its run, all from its [`mosr_stage::Stage`] implementation.
struct Stage {
    name: &'static str,
    upstream: &'static [&'static str],
    /// The implementing type's path (its crate is the stage's crate).
    type_name: &'static str,
    run: fn(&mosr_stage::Ctx, bool) -> Result<std::path::PathBuf>,
    /// Parses and validates the stage's section, so a bad `[eval]` value fails before hours of
    /// extraction.
    check: fn(&PipelineFile) -> Result<()>,
}

impl Stage {
    /// The package that implements the stage (`mosr-eval`), from its type's path.
    fn crate_name(&self) -> String {
        let krate = self.type_name.split("::").next().unwrap_or(self.type_name);
        krate.replace('_', "-")
    }
}

fn stage<S: mosr_stage::Stage>() -> Stage {
    Stage {
        name: S::NAME,
        upstream: S::UPSTREAM,
        type_name: std::any::type_name::<S>(),
        run: S::execute,
        check: |f| mosr_stage::section::<S>(f).map(|_| ()),
    }
}

/// The pipeline, in order: adding a stage is one line here.
fn stages() -> Vec<Stage> {
    vec![
        stage::<mosr_data::stage::Data>(),
        stage::<mosr_extract::Extract>(),
        stage::<mosr_probe::Probe>(),
        stage::<mosr_logit_lens::LogitLens>(),
        stage::<mosr_augment::Augment>(),
        stage::<mosr_weights::Weights>(),
        stage::<mosr_finetune::Finetune>(),
        stage::<mosr_eval::Eval>(),
        stage::<mosr_claims::Claims>(),
        stage::<mosr_report::Report>(),
    ]
}

/// `[run] model` is a registry id or an existing GGUF file / HF folder, and `[run] device` a
/// device this build knows.
fn check_model(file: &PipelineFile) -> Result<()> {
    if let Err(e) = mosr_lm::device_from_name(&file.run.device) {
        let problem = match e {
            mosr_lm::LmError::Config { problem, .. } => problem,
            other => other.to_string(),
        };
        return Err(file.key_error("run", "device", problem).into());
    }
    let m = &file.run.model;
    let ids: Vec<String> = mosr_lm::fetch::registry()
        .into_iter()
        .map(|s| s.id)
        .collect();
    if Path::new(m).exists() || ids.contains(m) {
        return Ok(());
    }
    Err(file
        .key_error(
            "run",
            "model",
            format!(
                "`{m}` is neither a registry id ({}) nor an existing .gguf file or HF folder",
                ids.join(", ")
            ),
        )
        .into())
}

pub fn pipeline_path(repo: &Path, name: &str) -> std::path::PathBuf {
    let p = Path::new(name);
    if p.extension().is_some_and(|e| e == "toml") {
        p.to_path_buf()
    } else {
        repo.join("pipelines").join(format!("{name}.toml"))
    }
}

/// What to run and where; `runs_dir`/`results_dir`/`model`/`device`/`name` override the
/// pipeline's `[run]` keys.
pub struct Options<'a> {
    pub pipeline: &'a str,
    pub from: Option<&'a str>,
    pub only: Option<&'a str>,
    pub force: bool,
    pub runs_dir: Option<PathBuf>,
    pub results_dir: Option<PathBuf>,
    pub model: Option<String>,
    pub device: Option<String>,
    pub name: Option<String>,
    pub check: bool,
}

/// Returns the run folder (after `[run]` overrides).
pub fn run(repo: &Path, opts: &Options) -> Result<mosr_artifacts::RunDir> {
    let Options {
        pipeline,
        from,
        only,
        force,
        ..
    } = *opts;
    let path = pipeline_path(repo, pipeline);
    let mut file = PipelineFile::load(&path)?;
    if let Some(d) = &opts.runs_dir {
        file.run.runs_dir = d.clone();
    }
    if let Some(d) = &opts.results_dir {
        file.run.results_dir = d.clone();
    }
    if let Some(m) = &opts.model {
        file.run.model = m.clone();
    }
    if let Some(d) = &opts.device {
        file.run.device = d.clone();
    }
    if let Some(n) = &opts.name {
        file.run.name = n.clone();
    }
    let all = stages();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    file.check_sections(&names)?;
    for s in &all {
        (s.check)(&file)?;
    }
    check_model(&file)?;
    if opts.check {
        println!(
            "{}: valid ({} stages: {})",
            path.display(),
            names.len(),
            names.join(", ")
        );
        return Ok(file.run_dir(repo));
    }
    for s in [from, only].into_iter().flatten() {
        if !names.contains(&s) {
            bail!("unknown stage `{s}`; stages: {}", names.join(", "));
        }
    }
    // Inputs from registries: the model (when it is a registry id) and the datasets.
    if !Path::new(&file.run.model).exists() {
        mosr_lm::fetch::fetch(&file.run.model)?;
    }
    mosr_data::fetch_default(repo, false, false)?;

    // One run per run folder at a time, held until every stage is done.
    let _lock = file.run_dir(repo).lock()?;
    let started = Instant::now();
    // One context for every stage: the model's identity is resolved once.
    let ctx = mosr_stage::Ctx::new(&file, repo);
    let mut reached = from.is_none();
    for (i, s) in all.iter().enumerate() {
        reached |= Some(s.name) == from;
        let declared = file.run.stages.is_empty() || file.run.stages.iter().any(|d| d == s.name);
        if !reached || !declared || only.is_some_and(|o| o != s.name) {
            continue;
        }
        let t0 = Instant::now();
        tracing::info!(stage = s.name, "stage {}/{}", i + 1, all.len());
        let out = (s.run)(
            &ctx,
            force && (only.is_some() || Some(s.name) == from || from.is_none()),
        )?;
        tracing::info!(stage = s.name, secs = t0.elapsed().as_secs_f64(), out = %out.display(), "stage done");
    }
    let reported = file.run.stages.is_empty() || file.run.stages.iter().any(|s| s == "report");
    println!(
        "pipeline `{}` done in {:.1} s; run folder {}{}",
        file.run.name,
        started.elapsed().as_secs_f64(),
        file.run_dir(repo).root().display(),
        if reported {
            format!(
                "; report {}",
                file.results_dir(repo).join("README.md").display()
            )
        } else {
            String::new()
        }
    );
    Ok(file.run_dir(repo))
}

/// The pipeline graph, declared once by each stage's `Stage::UPSTREAM`, as the Markdown table
/// docs/architecture.md holds (`cargo xtask stages`).
pub fn stage_graph_table() -> String {
    let mut s = String::from("| stage | crate | reads the folders of |\n|---|---|---|\n");
    for st in stages() {
        let reads: Vec<String> = st.upstream.iter().map(|u| format!("`{u}`")).collect();
        let reads = if reads.is_empty() {
            "–".to_string()
        } else {
            reads.join(", ")
        };
        s.push_str(&format!(
            "| `{}` | `{}` | {reads} |\n",
            st.name,
            st.crate_name()
        ));
    }
    s
}

/// Stage folders a source names: the literals passed to `upstream`, `upstream_file`,
/// `upstream_keys` and `stage_dir`.
fn named_stage_folders(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for call in [
        "upstream(",
        "upstream_file(",
        "stage_dir(",
        "upstream_keys(&[",
    ] {
        for rest in src.split(call).skip(1) {
            let args = if call.ends_with('[') {
                rest.split(']').next().unwrap_or("")
            } else {
                rest.split([',', ')']).next().unwrap_or("")
            };
            out.extend(args.split('"').skip(1).step_by(2).map(String::from));
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let e = e?.path();
        if e.is_dir() {
            out.extend(rust_files(&e)?);
        } else if e.extension().is_some_and(|x| x == "rs") {
            out.push(e);
        }
    }
    Ok(out)
}

/// Part of `cargo xtask test`: the graph is declared once. Every stage reads only stages that
/// run before it, docs/architecture.md holds the table generated from the declarations, and
/// no stage's code names the folder of a stage it does not declare.
pub fn check_stage_graph(repo: &Path) -> Result<()> {
    let stages = stages();
    for (i, st) in stages.iter().enumerate() {
        for u in st.upstream {
            ensure!(
                stages[..i].iter().any(|e| e.name == *u),
                "stage `{}` reads `{u}`, which does not run before it",
                st.name
            );
        }
    }
    let doc_path = repo.join("docs/architecture.md");
    let doc = std::fs::read_to_string(&doc_path)
        .with_context(|| format!("reading {}", doc_path.display()))?;
    let table = stage_graph_table();
    ensure!(
        doc.contains(&table),
        "{} lacks the stage graph as declared (cargo xtask stages); expected:\n{table}",
        doc_path.display()
    );
    for st in &stages {
        let dir = repo
            .join("crates")
            .join(st.crate_name().trim_start_matches("mosr-"))
            .join("src");
        for f in rust_files(&dir)? {
            let src = std::fs::read_to_string(&f)?;
            for folder in named_stage_folders(&src) {
                ensure!(
                    folder == st.name || st.upstream.contains(&folder.as_str()),
                    "{}: names the `{folder}` stage folder, which stage `{}` does not declare \
                     in Stage::UPSTREAM",
                    f.display(),
                    st.name
                );
            }
        }
    }
    Ok(())
}
