//! `cargo xtask reproduce`: every stage of a pipeline in order, each through its library.
//! A stage whose manifest key matches its current config and upstream keys is skipped, so a
//! second run with no change does nothing, and a killed run picks up where it stopped.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use mosr_artifacts::PipelineFile;

/// One stage: its name (= pipeline section and run-folder name) and how to run it.
struct Stage {
    name: &'static str,
    run: fn(&PipelineFile, &Path, bool) -> Result<std::path::PathBuf>,
}

fn stages() -> Vec<Stage> {
    vec![Stage {
        name: "data",
        run: |f, r, force| mosr_data::stage::run_pipeline_stage(f, r, force),
    }]
}

pub fn pipeline_path(repo: &Path, name: &str) -> std::path::PathBuf {
    let p = Path::new(name);
    if p.extension().is_some_and(|e| e == "toml") {
        p.to_path_buf()
    } else {
        repo.join("pipelines").join(format!("{name}.toml"))
    }
}

pub fn run(
    repo: &Path,
    pipeline: &str,
    from: Option<&str>,
    only: Option<&str>,
    force: bool,
) -> Result<()> {
    let path = pipeline_path(repo, pipeline);
    let file = PipelineFile::load(&path)?;
    let all = stages();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    file.check_sections(&names)?;
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

    let started = Instant::now();
    let mut reached = from.is_none();
    for (i, s) in all.iter().enumerate() {
        reached |= Some(s.name) == from;
        if !reached || only.is_some_and(|o| o != s.name) {
            continue;
        }
        let t0 = Instant::now();
        tracing::info!(stage = s.name, "stage {}/{}", i + 1, all.len());
        let out = (s.run)(
            &file,
            repo,
            force && (only.is_some() || Some(s.name) == from || from.is_none()),
        )?;
        tracing::info!(stage = s.name, secs = t0.elapsed().as_secs_f64(), out = %out.display(), "stage done");
    }
    println!(
        "pipeline `{}` done in {:.1} s; run folder {}",
        file.run.name,
        started.elapsed().as_secs_f64(),
        file.run_dir(repo).root().display()
    );
    Ok(())
}
