//! `cargo xtask models`: the base-model screen. Each candidate runs `pipelines/models.toml`
//! (data stage and a base-only evaluation) in its own run folder, `runs/models-<id>/`, so a
//! rerun with no change does nothing and a killed screen resumes; the report then reads every
//! candidate's eval stage into `results/models/`.

use std::path::Path;

use anyhow::Result;

use crate::reproduce;

/// The screen's pipeline, `pipelines/models.toml`.
const PIPELINE: &str = "models";

pub fn run(repo: &Path, models: &[String]) -> Result<()> {
    let ids: Vec<String> = if models.is_empty() {
        mosr_lm::fetch::registry()
            .into_iter()
            .map(|m| m.id)
            .collect()
    } else {
        models.to_vec()
    };
    for id in &ids {
        mosr_lm::fetch::spec(id)?;
    }
    let mut screened = Vec::new();
    for id in &ids {
        let name = format!("models-{id}");
        tracing::info!(model = %id, run = %name, "screening");
        let run_dir = reproduce::run(
            repo,
            &reproduce::Options {
                pipeline: PIPELINE,
                from: None,
                only: None,
                force: false,
                runs_dir: None,
                results_dir: None,
                model: Some(id.clone()),
                device: None,
                name: Some(name),
                check: false,
            },
        )?;
        screened.push((id.clone(), run_dir));
    }
    let out = repo.join("results").join("models");
    let command = if models.is_empty() {
        "cargo xtask models".to_string()
    } else {
        format!("cargo xtask models --models {}", ids.join(","))
    };
    mosr_report::models::write(&screened, &out, &command)?;
    println!(
        "screen of {} models: {}",
        ids.len(),
        out.join("README.md").display()
    );
    Ok(())
}
