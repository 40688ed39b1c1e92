//! Template jailbreaks: the harmful prompt wrapped in a role-play or instruction template
//! (`{prompt}` marks where it goes). The templates live in
//! `datasets/jailbreak_templates/templates.toml` with their provenance; they are written for
//! this project after well-known attack families (role-play personas, fiction framing,
//! refusal suppression), not copied from jailbreak collections.
//!
//! Each harmful prompt gets one template, chosen by a seeded hash of its id (`each = false`,
//! the cost of one attack), or every template (`each = true`). Metrics are reported for the
//! attack as a whole and per template (`template/<name>`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Attack, AttackInput, AttackPrompt, plain};

/// `[eval.template]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// Template file, relative to the repository root unless absolute.
    /// Default `datasets/jailbreak_templates/templates.toml`.
    pub file: PathBuf,
    /// Templates to use by name; empty = all. Default empty.
    pub names: Vec<String>,
    /// Every template on every prompt (true) or one seeded template per prompt (false).
    /// Default false.
    pub each: bool,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("datasets/jailbreak_templates/templates.toml"),
            names: Vec::new(),
            each: false,
        }
    }
}

/// One template of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: String,
    /// Attack family (role-play, fiction, refusal suppression, ...).
    pub kind: String,
    /// Who wrote it and after which published attack family.
    pub provenance: String,
    /// The wrapper; `{prompt}` is replaced by the harmful prompt.
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    template: Vec<TemplateSpec>,
}

/// Reads and checks a template file: unique names, exactly one `{prompt}` in each.
pub fn load_templates(path: &Path) -> Result<Vec<TemplateSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: TemplateFile = toml::from_str(&text)
        .with_context(|| format!("{}: invalid template file", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    for t in &f.template {
        if !seen.insert(t.name.clone()) {
            bail!("{}: template `{}` appears twice", path.display(), t.name);
        }
        if t.text.matches("{prompt}").count() != 1 {
            bail!(
                "{}: template `{}` must contain `{{prompt}}` exactly once",
                path.display(),
                t.name
            );
        }
    }
    if f.template.is_empty() {
        bail!("{}: no templates", path.display());
    }
    Ok(f.template)
}

pub struct Template {
    templates: Vec<TemplateSpec>,
    each: bool,
}

impl Template {
    pub fn load(cfg: &TemplateConfig, repo_root: &Path) -> Result<Self> {
        let path = if cfg.file.is_absolute() {
            cfg.file.clone()
        } else {
            repo_root.join(&cfg.file)
        };
        let mut templates = load_templates(&path)?;
        if !cfg.names.is_empty() {
            for n in &cfg.names {
                if !templates.iter().any(|t| &t.name == n) {
                    let known: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
                    bail!(
                        "[eval.template] names: `{n}` is not in {} (known: {})",
                        path.display(),
                        known.join(", ")
                    );
                }
            }
            templates.retain(|t| cfg.names.contains(&t.name));
        }
        Ok(Self {
            templates,
            each: cfg.each,
        })
    }

    pub fn wrap(spec: &TemplateSpec, prompt: &str) -> String {
        spec.text.replace("{prompt}", prompt.trim())
    }
}

/// Stable index in 0..n from a seed and an id (FNV-1a; no dependence on hasher randomness).
fn pick(seed: u64, id: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n as u64) as usize
}

impl Attack for Template {
    fn name(&self) -> &str {
        "template"
    }
    fn prompts(&self, input: &AttackInput) -> Result<Vec<AttackPrompt>> {
        let mut out = Vec::new();
        for p in input.harmful {
            let chosen: Vec<&TemplateSpec> = if self.each {
                self.templates.iter().collect()
            } else {
                vec![&self.templates[pick(input.seed, &p.id, self.templates.len())]]
            };
            for t in chosen {
                out.push(AttackPrompt {
                    user: Self::wrap(t, &p.text),
                    detail: Some(t.name.clone()),
                    ..plain(p)
                });
            }
        }
        Ok(out)
    }
}
