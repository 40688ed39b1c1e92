//! Pipeline files (`pipelines/*.toml`): a `[run]` section shared by every stage, and one
//! section per stage that the stage's own config struct (serde, `deny_unknown_fields`, with
//! documented defaults) reads. Errors name the file, the section or key, and its line.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::run_dir::RunDir;

/// `[run]`: what every stage needs to know about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Pipeline name; the run folder is `<runs_dir>/<name>`.
    pub name: String,
    /// Registry model id (see `cargo xtask fetch model`), a `.gguf` path or an HF folder.
    pub model: String,
    /// Seeds every random choice of every stage.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `cpu` (burn-flex), or `cuda` / `wgpu` when built with those features.
    #[serde(default = "default_device")]
    pub device: String,
    /// Root of run folders, relative to the repository root unless absolute.
    #[serde(default = "default_runs_dir")]
    pub runs_dir: PathBuf,
    /// Root of reports (`<results_dir>/<name>/`), relative to the repository root unless
    /// absolute.
    #[serde(default = "default_results_dir")]
    pub results_dir: PathBuf,
    /// The stages this pipeline runs, in the driver's order; empty (the default) = every
    /// stage. A screen that only evaluates base models names `["data", "eval"]`.
    #[serde(default)]
    pub stages: Vec<String>,
}

fn default_seed() -> u64 {
    2511
}
fn default_device() -> String {
    "cpu".into()
}
fn default_runs_dir() -> PathBuf {
    PathBuf::from("runs")
}
fn default_results_dir() -> PathBuf {
    PathBuf::from("results")
}

/// A parsed pipeline file: the `[run]` section and the raw table of every other section.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub text: String,
    pub run: RunSection,
    pub table: toml::Table,
}

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .map(|i| i + 1)
}

impl PipelineFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Pipeline {
            path: path.to_path_buf(),
            at: e
                .span()
                .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_else(|| "file".into()),
            reason: e.message().to_string(),
        })?;
        let run_value = table.get("run").cloned().ok_or_else(|| Error::Pipeline {
            path: path.to_path_buf(),
            at: "[run]".into(),
            reason: "missing section (it names the model and the run)".into(),
        })?;
        let mut file = PipelineFile {
            path: path.to_path_buf(),
            text,
            run: RunSection {
                name: String::new(),
                model: String::new(),
                seed: 0,
                device: String::new(),
                runs_dir: PathBuf::new(),
                results_dir: PathBuf::new(),
                stages: Vec::new(),
            },
            table,
        };
        file.run = file.parse_value("run", run_value)?;
        file.check_run_name()?;
        Ok(file)
    }

    /// `[run] name` becomes a folder under the runs and results roots, and a stage's commit
    /// replaces folders under it: it must be a plain folder name, so that no name (`../x`, an
    /// absolute path, `a/b`) reaches outside those roots.
    fn check_run_name(&self) -> Result<()> {
        let n = &self.run.name;
        let plain = !n.is_empty()
            && !n.starts_with('.')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if plain {
            return Ok(());
        }
        Err(Error::Pipeline {
            path: self.path.clone(),
            at: format!(
                "[run] name (line {})",
                self.text
                    .lines()
                    .position(|l| l
                        .trim_start()
                        .strip_prefix("name")
                        .is_some_and(|r| r.trim_start().starts_with('=')))
                    .map(|i| i + 1)
                    .unwrap_or(0)
            ),
            reason: format!(
                "`{n}` is not a plain folder name (letters, digits, '.', '_', '-', not starting \
                 with '.'): the run folder must stay inside the runs and results folders"
            ),
        })
    }

    fn parse_value<T: DeserializeOwned>(&self, section: &str, v: toml::Value) -> Result<T> {
        v.try_into::<T>().map_err(|e| {
            let msg = e.message().to_string();
            // serde names the offending key in backticks: point at its line in this section.
            let key = msg.split('`').nth(1).unwrap_or("").to_string();
            if key.is_empty()
                && let Some(line) = self.type_error_line::<T>(section)
            {
                return Error::Pipeline {
                    path: self.path.clone(),
                    at: format!("[{section}] line {line}"),
                    reason: msg,
                };
            }
            self.key_error(section, &key, msg)
        })
    }

    /// Line of a value error (wrong type) in `[section]`: the section's text alone, with its
    /// sub-table headers made top-level, is parsed again from text, where toml knows spans.
    fn type_error_line<T: DeserializeOwned>(&self, section: &str) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim() == format!("[{section}]"))?;
        let sub = format!("[{section}.");
        let mut body = String::new();
        let mut n = 0;
        for l in &lines[start + 1..] {
            let t = l.trim_start();
            if t.starts_with('[') && !t.starts_with(&sub) {
                break;
            }
            body.push_str(&t.replacen(&sub, "[", 1));
            body.push('\n');
            n += 1;
        }
        let err = toml::from_str::<T>(&body).err()?;
        let at = err.span()?.start;
        let line = body[..at].lines().count().max(1);
        (line <= n).then_some(start + 1 + line)
    }

    /// An error about `key` of `[section]`, located at the key's line (or the section's).
    pub fn key_error(&self, section: &str, key: &str, reason: String) -> Error {
        let header = line_of(&self.text, &format!("[{section}]"));
        let line = header.and_then(|h| {
            self.text.lines().enumerate().skip(h).find(|(_, l)| {
                let t = l.trim_start();
                !key.is_empty()
                    && (t.starts_with(&format!("{key} ")) || t.starts_with(&format!("{key}=")))
            })
        });
        let at = match (line, header) {
            (Some((i, _)), _) => format!("[{section}] line {}", i + 1),
            (None, Some(h)) => format!("[{section}] (line {h})"),
            _ => format!("[{section}]"),
        };
        Error::Pipeline {
            path: self.path.clone(),
            at,
            reason,
        }
    }

    /// A stage's section, or its defaults when the file has none.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        match self.table.get(name) {
            Some(v) => self.parse_value(name, v.clone()),
            None => Ok(T::default()),
        }
    }

    /// Fails on a top-level section nobody reads (a typo like `[probes]`) and on a
    /// `[run] stages` entry that is no stage.
    pub fn check_sections(&self, known: &[&str]) -> Result<()> {
        if let Some(s) = self
            .run
            .stages
            .iter()
            .find(|s| !known.contains(&s.as_str()))
        {
            return Err(self.key_error(
                "run",
                "stages",
                format!("unknown stage `{s}`; stages: {}", known.join(", ")),
            ));
        }
        for k in self.table.keys() {
            if k != "run" && !known.contains(&k.as_str()) {
                return Err(Error::Pipeline {
                    path: self.path.clone(),
                    at: format!(
                        "[{k}] (line {})",
                        line_of(&self.text, &format!("[{k}")).unwrap_or(0)
                    ),
                    reason: format!(
                        "unknown section; expected one of: run, {}",
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// The run folder, with a relative `runs_dir` taken from `repo_root`.
    pub fn run_dir(&self, repo_root: &Path) -> RunDir {
        let root = if self.run.runs_dir.is_absolute() {
            self.run.runs_dir.clone()
        } else {
            repo_root.join(&self.run.runs_dir)
        };
        RunDir::new(&root, &self.run.name)
    }

    /// The report folder `<results_dir>/<name>`, relative `results_dir` taken from `repo_root`.
    pub fn results_dir(&self, repo_root: &Path) -> PathBuf {
        let root = if self.run.results_dir.is_absolute() {
            self.run.results_dir.clone()
        } else {
            repo_root.join(&self.run.results_dir)
        };
        root.join(&self.run.name)
    }
}

/// A sample size in a pipeline file: a count of at least 1, or `"all"`. A bare `0` is refused
/// rather than read as "all" (a typo'd 0 once planned an evaluation of 13,230 prompts). A
/// count serializes as the plain number, so stage keys written before this type stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    All,
    Count(usize),
}

impl Size {
    /// The most items to take: the count, or `usize::MAX` for `all`.
    pub fn at_most(self) -> usize {
        match self {
            Size::All => usize::MAX,
            Size::Count(n) => n,
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Size::All => s.serialize_str("all"),
            Size::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

/// A visitor rather than an untagged enum, so TOML errors keep the value's line.
struct SizeVisitor;

impl serde::de::Visitor<'_> for SizeVisitor {
    type Value = Size;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a count of at least 1, or \"all\"")
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Size, E> {
        if n >= 1 {
            return Ok(Size::Count(n as usize));
        }
        Err(E::custom(format!(
            "{n} is not a sample size: write a count of at least 1, or \"all\" for every item"
        )))
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Size, E> {
        self.visit_i64(n.min(i64::MAX as u64) as i64)
    }
    fn visit_str<E: serde::de::Error>(self, w: &str) -> std::result::Result<Size, E> {
        if w == "all" {
            return Ok(Size::All);
        }
        Err(E::custom(format!(
            "\"{w}\" is not a sample size: write a count of at least 1, or \"all\""
        )))
    }
}
