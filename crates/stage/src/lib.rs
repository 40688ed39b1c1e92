//! The stage contract and its one driver.
//!
//! A stage declares its name, the stages it reads, its pipeline section, the checks of that section's values, what
//! its key covers (its [`Planned`]: the resolved configuration and the hashes of its inputs)
//! and how it computes into a partial folder. [`drive`] does the rest, the same way for every
//! stage: the key, the up-to-date check (key *and* recorded outputs), resuming or wiping a
//! partial folder, and the commit of the manifest the stage returns. Stages meet only through
//! the run folder; [`Ctx`] gives them the pipeline file, the run folder and the model identity,
//! resolved once per run so every stage hashes the same files for the same model.

pub mod prompts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use mosr_artifacts::{PipelineFile, RunDir, StageManifest, StageWork};
use mosr_lm::ModelIdentity;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

/// What every stage of one run shares: the pipeline file, the repository root its relative
/// paths start from, the run folder and the model identity.
pub struct Ctx<'a> {
    pub file: &'a PipelineFile,
    pub repo_root: &'a Path,
    pub run_dir: RunDir,
    model: OnceLock<ModelIdentity>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a PipelineFile, repo_root: &'a Path) -> Self {
        Ctx {
            file,
            repo_root,
            run_dir: file.run_dir(repo_root),
            model: OnceLock::new(),
        }
    }

    /// The `[run] model`'s file and sha256, computed on first use and then shared.
    pub fn model(&self) -> Result<&ModelIdentity> {
        if let Some(m) = self.model.get() {
            return Ok(m);
        }
        let m = mosr_lm::identify(&self.file.run.model)?;
        Ok(self.model.get_or_init(|| m))
    }

    /// The manifest of a completed upstream stage (an error naming it when it has not run).
    pub fn upstream(&self, stage: &str) -> Result<StageManifest> {
        Ok(self.run_dir.manifest(stage)?)
    }

    /// A file an upstream stage wrote.
    pub fn upstream_file(&self, stage: &str, name: &str) -> PathBuf {
        self.run_dir.stage_dir(stage).join(name)
    }

    /// The keys of upstream stages, by stage name (key material of a stage that reads them).
    pub fn upstream_keys(&self, stages: &[&str]) -> Result<BTreeMap<String, String>> {
        stages
            .iter()
            .map(|&s| Ok((s.to_string(), self.upstream(s)?.key)))
            .collect()
    }

    pub fn seed(&self) -> u64 {
        self.file.run.seed
    }
}

/// A stage's key material and the plan its computation follows: `config` and `inputs` are
/// hashed into the key (and usually recorded in the manifest); `plan` is whatever the
/// computation needs, resolved without loading a model.
pub struct Planned<P> {
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub plan: P,
}

impl<P: Serialize> Planned<P> {
    /// A plan whose own serialised form is the configuration the key covers.
    pub fn of(plan: P, inputs: BTreeMap<String, String>) -> Result<Self> {
        Ok(Planned {
            config: serde_json::to_value(&plan)?,
            inputs,
            plan,
        })
    }
}

impl<P> Planned<P> {
    pub fn key(&self) -> String {
        mosr_artifacts::stage_key(&self.config, &self.inputs)
    }

    /// A manifest for this plan: its config and the key's inputs.
    pub fn manifest(&self, stage: &str) -> StageManifest {
        let mut m = StageManifest::new(stage, self.config.clone());
        m.inputs = self.inputs.clone();
        m
    }
}

/// One stage of the pipeline. Adding a stage is a crate implementing this plus one line in
/// xtask's stage list.
pub trait Stage {
    /// The stage's name: its pipeline section and its run-folder name.
    const NAME: &'static str;
    /// The stages whose folders this one reads, in pipeline order: the edges of the pipeline
    /// graph (docs/architecture.md's table is generated from them and checked by a test, as is
    /// every stage folder a stage's code names).
    const UPSTREAM: &'static [&'static str];
    /// The stage's pipeline section; its defaults apply when the file has none.
    type Section: DeserializeOwned + Serialize + Default;
    /// What [`Stage::compute`] needs beyond the context.
    type Plan;

    /// Checks the section's values; `reproduce` calls it for every stage before any runs.
    fn validate(_section: &Self::Section) -> Result<()> {
        Ok(())
    }

    /// Resolves the section against the run: upstream keys, input hashes, the plan.
    fn plan(ctx: &Ctx, section: Self::Section) -> Result<Planned<Self::Plan>>;

    /// Computes into `work.dir()` and returns the manifest to commit (the driver adds the key).
    fn compute(ctx: &Ctx, planned: Planned<Self::Plan>, work: &StageWork) -> Result<StageManifest>;

    /// Reads, validates, plans and drives the stage. A stage without a key (the report)
    /// overrides this.
    fn execute(ctx: &Ctx, force: bool) -> Result<PathBuf> {
        let section = section::<Self>(ctx.file)?;
        drive::<Self>(ctx, Self::plan(ctx, section)?, force)
    }
}

/// A stage's section from the pipeline file, validated; errors name the file and section.
pub fn section<S: Stage + ?Sized>(file: &PipelineFile) -> Result<S::Section> {
    let s: S::Section = file.section(S::NAME)?;
    S::validate(&s).with_context(|| format!("{}: [{}]", file.path.display(), S::NAME))?;
    Ok(s)
}

/// Runs a planned stage into `runs/<pipeline>/<stage>/` unless it is up to date (same key,
/// outputs as recorded); a partial folder of a killed run with the same key is resumed.
/// Returns the stage folder.
pub fn drive<S: Stage + ?Sized>(
    ctx: &Ctx,
    planned: Planned<S::Plan>,
    force: bool,
) -> Result<PathBuf> {
    let key = planned.key();
    if !force && ctx.run_dir.is_up_to_date(S::NAME, &key) {
        info!(stage = S::NAME, "up to date");
        return Ok(ctx.run_dir.stage_dir(S::NAME));
    }
    let work = ctx.run_dir.begin(S::NAME, &key)?;
    if work.resumed() {
        info!(stage = S::NAME, "resuming a killed run");
    }
    let manifest = S::compute(ctx, planned, &work)?;
    Ok(work.commit(manifest)?)
}

/// Runs stage `S` of a pipeline in this process; the caller holds the run folder.
pub fn run<S: Stage + ?Sized>(
    file: &PipelineFile,
    repo_root: &Path,
    force: bool,
) -> Result<PathBuf> {
    S::execute(&Ctx::new(file, repo_root), force)
}

/// A stage on its own, as its binary runs it: holds the run folder like `reproduce` does.
pub fn run_alone<S: Stage + ?Sized>(
    file: &PipelineFile,
    repo_root: &Path,
    force: bool,
) -> Result<PathBuf> {
    let _lock = file.run_dir(repo_root).lock()?;
    S::execute(&Ctx::new(file, repo_root), force)
}

/// [`run_alone`] with a section the binary has changed (its flags), validated again.
pub fn run_alone_with<S: Stage + ?Sized>(
    file: &PipelineFile,
    repo_root: &Path,
    force: bool,
    section: S::Section,
) -> Result<PathBuf> {
    let _lock = file.run_dir(repo_root).lock()?;
    S::validate(&section).with_context(|| format!("{}: [{}]", file.path.display(), S::NAME))?;
    let ctx = Ctx::new(file, repo_root);
    drive::<S>(&ctx, S::plan(&ctx, section)?, force)
}

pub mod cli;
