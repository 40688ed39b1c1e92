//! The one `main` of every stage binary: `mosr-<stage> --pipeline FILE [--set KEY=VALUE]...
//! [--force] [--repo DIR]`. A `--set` changes one key of the stage's section for this run
//! (the value is TOML: `--set batch_size=4`, `--set layers=[0,10]`, `--set position=mean_prompt`),
//! so a binary has no flags of its own to keep in step with its section.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use mosr_artifacts::PipelineFile;

use crate::Stage;

#[derive(Parser)]
struct Cli {
    /// Pipeline file; its [run] names the model and the stage's section configures the stage.
    #[arg(long)]
    pipeline: PathBuf,
    /// Repository root (run folders are relative to it); default: the current directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Recompute even when the stage is up to date.
    #[arg(long)]
    force: bool,
    /// Override one key of the stage's section, KEY=VALUE with a TOML value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// Parses the command line, runs stage `S` alone on the pipeline's run folder and prints the
/// folder it wrote.
pub fn main<S: Stage>(about: &'static str) -> Result<()> {
    mosr_lm::memory::keep_freed_memory();
    init_tracing();
    let cmd = <Cli as clap::CommandFactory>::command().about(about);
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&cmd.get_matches())?;
    let repo = match cli.repo {
        Some(r) => r,
        None => std::env::current_dir()?,
    };
    let mut file = PipelineFile::load(&cli.pipeline)?;
    for s in &cli.sets {
        set_key(&mut file, S::NAME, s)?;
    }
    let out = crate::run_alone::<S>(&file, &repo, cli.force)?;
    println!("{}", out.display());
    Ok(())
}

/// Applies `KEY=VALUE` to `[section]`; a value that is not TOML is taken as a string.
pub fn set_key(file: &mut PipelineFile, section: &str, assignment: &str) -> Result<()> {
    let Some((key, value)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected KEY=VALUE");
    };
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let table = file
        .table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .with_context(|| format!("{}: [{section}] is not a table", file.path.display()))?;
    let mut path = key.trim().split('.').peekable();
    let mut at = table;
    while let Some(part) = path.next() {
        if path.peek().is_none() {
            at.insert(part.to_string(), value);
            return Ok(());
        }
        at = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {assignment}: `{part}` is not a table"))?;
    }
    bail!("--set {assignment}: empty key")
}

/// Logs to stderr at `info` (or `RUST_LOG`), coloured only on a terminal: every binary's.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
