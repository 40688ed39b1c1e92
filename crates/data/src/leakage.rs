//! Leakage guard: exact and near-duplicate detection between prompt sets.
//!
//! Over-refusal numbers mean nothing if an evaluation prompt (or a trivial variant of it) was
//! in training, and harmful test prompts must not be rephrasings of harmful train prompts.
//!
//! Text is normalised (lowercase, every non-alphanumeric character becomes a space, whitespace
//! collapsed). Two prompts *match* when their normalised texts are equal, or when
//! 1. both have at least `min_ngrams` distinct word 3-grams and either
//!    * Jaccard similarity of the 3-gram sets >= `jaccard` (default 0.5), or
//!    * containment, |A ∩ B| / min(|A|, |B|), >= `containment` (default 0.8): the shorter
//!      prompt appears almost entirely inside the longer one; and
//! 2. the content words (words outside a small stop-word list) of the prompt with fewer of
//!    them occur in the other one: coverage >= `coverage` (default 0.9, i.e. all of them for
//!    prompts with fewer than ten content words).
//!
//! Rule 1 alone flags short prompts built on the same template ("Write a tutorial on how to
//! make a bomb" vs "... make a paper airplane that flies far": 6 of 7 3-grams shared). Rule 2
//! keeps such pairs apart, since the word that carries the meaning differs, while reorderings,
//! added or dropped filler words and a prompt embedded in a longer one are still flagged.
//! A one-word substitution ("bomb" -> "cake") is deliberately *not* a near-duplicate: that is
//! exactly how XSTest-style safe/unsafe contrast pairs are built.

use std::collections::{BTreeMap, HashMap};

use mosr_artifacts::{PromptRow, Role, Split};
use serde::Serialize;

/// Thresholds of the near-duplicate test (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct LeakageConfig {
    /// Word n-gram length.
    pub n: usize,
    pub jaccard: f64,
    pub containment: f64,
    /// Texts with fewer distinct n-grams are compared by exact match only (a 4-word prompt
    /// would otherwise match anything containing its two 3-grams).
    pub min_ngrams: usize,
    /// Share of the content words of one prompt that must occur in the other.
    pub coverage: f64,
}

impl Default for LeakageConfig {
    fn default() -> Self {
        LeakageConfig {
            n: 3,
            jaccard: 0.5,
            containment: 0.8,
            min_ngrams: 3,
            coverage: 0.9,
        }
    }
}

/// Lowercase, non-alphanumerics to spaces, whitespace collapsed.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = true;
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            out.push(ch);
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Function words ignored by the content-word rule (English; prompts are English).
const STOP_WORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any",
    "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "could", "d", "did", "do", "does", "doing", "down", "during", "each",
    "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers",
    "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "ll", "m", "may",
    "me", "might", "more", "most", "must", "my", "no", "nor", "not", "now", "of", "off", "on",
    "once", "only", "or", "other", "our", "ours", "out", "over", "own", "please", "re", "s",
    "same", "shall", "she", "should", "so", "some", "such", "t", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under",
    "until", "up", "ve", "very", "was", "we", "were", "what", "when", "where", "which", "while",
    "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
];

fn is_stop_word(w: &str) -> bool {
    STOP_WORDS.binary_search(&w).is_ok()
}

/// Sorted, distinct hashes of the content words of a normalised text.
pub fn content_words(normalized: &str) -> Vec<u64> {
    let mut words: Vec<u64> = normalized
        .split(' ')
        .filter(|w| !w.is_empty() && !is_stop_word(w))
        .map(|w| fnv1a(&[w]))
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// FNV-1a: a fixed, platform-independent hash for n-gram ids.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b' ');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Sorted, distinct word n-gram hashes of a normalised text (empty if it has < n words).
pub fn ngrams(normalized: &str, n: usize) -> Vec<u64> {
    let words: Vec<&str> = normalized.split(' ').filter(|w| !w.is_empty()).collect();
    if words.len() < n {
        return Vec::new();
    }
    let mut grams: Vec<u64> = words.windows(n).map(fnv1a).collect();
    grams.sort_unstable();
    grams.dedup();
    grams
}

fn intersection(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    Exact,
    Near,
}

/// Similarity of two prompts: Jaccard and containment of their n-gram sets, content-word
/// coverage, and the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Similarity {
    pub kind: Option<MatchKind>,
    pub jaccard: f64,
    pub containment: f64,
    pub coverage: f64,
}

/// A prompt prepared for comparison.
struct Doc {
    norm: String,
    grams: Vec<u64>,
    words: Vec<u64>,
}

impl Doc {
    fn new(text: &str, cfg: &LeakageConfig) -> Self {
        let norm = normalize(text);
        Doc {
            grams: ngrams(&norm, cfg.n),
            words: content_words(&norm),
            norm,
        }
    }
}

fn judge(a: &Doc, b: &Doc, inter: usize, cfg: &LeakageConfig) -> Similarity {
    let (ga, gb) = (&a.grams, &b.grams);
    let (la, lb) = (ga.len(), gb.len());
    let union = la + lb - inter;
    let jaccard = if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    };
    let small = la.min(lb);
    let containment = if small == 0 {
        0.0
    } else {
        inter as f64 / small as f64
    };
    let fewer = a.words.len().min(b.words.len());
    let coverage = if fewer == 0 {
        1.0
    } else {
        intersection(&a.words, &b.words) as f64 / fewer as f64
    };
    let kind = if a.norm == b.norm {
        Some(MatchKind::Exact)
    } else if small >= cfg.min_ngrams
        && (jaccard >= cfg.jaccard || containment >= cfg.containment)
        && coverage >= cfg.coverage
    {
        Some(MatchKind::Near)
    } else {
        None
    };
    Similarity {
        kind,
        jaccard,
        containment,
        coverage,
    }
}

/// Compare two texts directly.
pub fn similarity(a: &str, b: &str, cfg: &LeakageConfig) -> Similarity {
    let (a, b) = (Doc::new(a, cfg), Doc::new(b, cfg));
    let inter = intersection(&a.grams, &b.grams);
    judge(&a, &b, inter, cfg)
}

/// An inverted index over a reference set, so each query only scores documents that share an
/// n-gram with it (or its exact normalised text).
pub struct NgramIndex {
    cfg: LeakageConfig,
    docs: Vec<Doc>,
    postings: HashMap<u64, Vec<u32>>,
    exact: HashMap<String, Vec<u32>>,
}

/// One reference document that matches a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub doc: usize,
    pub similarity: Similarity,
}

impl NgramIndex {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>, cfg: LeakageConfig) -> Self {
        let mut idx = NgramIndex {
            cfg,
            docs: Vec::new(),
            postings: HashMap::new(),
            exact: HashMap::new(),
        };
        for (i, t) in texts.into_iter().enumerate() {
            let doc = Doc::new(t, &cfg);
            for &g in &doc.grams {
                idx.postings.entry(g).or_default().push(i as u32);
            }
            idx.exact
                .entry(doc.norm.clone())
                .or_default()
                .push(i as u32);
            idx.docs.push(doc);
        }
        idx
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Every indexed document that matches `text` (exact or near), in index order.
    pub fn matches(&self, text: &str) -> Vec<Hit> {
        let query = Doc::new(text, &self.cfg);
        let mut shared: HashMap<u32, usize> = HashMap::new();
        for g in &query.grams {
            if let Some(docs) = self.postings.get(g) {
                for &d in docs {
                    *shared.entry(d).or_default() += 1;
                }
            }
        }
        if let Some(docs) = self.exact.get(&query.norm) {
            for &d in docs {
                shared.entry(d).or_default();
            }
        }
        let mut hits: Vec<Hit> = shared
            .into_iter()
            .filter_map(|(d, inter)| {
                let d = d as usize;
                let s = judge(&query, &self.docs[d], inter, &self.cfg);
                s.kind.map(|_| Hit {
                    doc: d,
                    similarity: s,
                })
            })
            .collect();
        hits.sort_by_key(|h| h.doc);
        hits
    }
}

/// One leaked pair: an evaluation prompt and the training prompt it matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub eval_id: String,
    pub train_id: String,
    pub kind: MatchKind,
    pub jaccard: f64,
    pub containment: f64,
    pub coverage: f64,
}

/// Result of [`check_prompts`]. The first two lists must be empty; the last is information.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeakageReport {
    pub config: Option<LeakageConfig>,
    /// Over-refusal evaluation prompts matching any train-split prompt of any role.
    pub overrefusal_vs_train: Vec<Finding>,
    /// Harmful dev/test prompts matching a harmful train prompt.
    pub harmful_eval_vs_train: Vec<Finding>,
    /// Jailbreak rephrasings matching a harmful train prompt, per role (expected to be few:
    /// they are rewrites; reported, not enforced).
    pub jailbreak_vs_harmful_train: BTreeMap<String, usize>,
}

impl LeakageReport {
    pub fn is_clean(&self) -> bool {
        self.overrefusal_vs_train.is_empty() && self.harmful_eval_vs_train.is_empty()
    }
}

fn findings(queries: &[&PromptRow], train: &[&PromptRow], index: &NgramIndex) -> Vec<Finding> {
    let mut out = Vec::new();
    for q in queries {
        for hit in index.matches(&q.text) {
            let t = train[hit.doc];
            if t.id == q.id {
                continue;
            }
            out.push(Finding {
                eval_id: q.id.clone(),
                train_id: t.id.clone(),
                kind: hit.similarity.kind.expect("hits match"),
                jaccard: hit.similarity.jaccard,
                containment: hit.similarity.containment,
                coverage: hit.similarity.coverage,
            });
        }
    }
    out
}

/// Run the leakage checks on a prompts table (see [`LeakageReport`]).
pub fn check_prompts(rows: &[PromptRow], cfg: LeakageConfig) -> LeakageReport {
    let train: Vec<&PromptRow> = rows.iter().filter(|r| r.split == Split::Train).collect();
    let train_index = NgramIndex::new(train.iter().map(|r| r.text.as_str()), cfg);
    let overrefusal: Vec<&PromptRow> = rows
        .iter()
        .filter(|r| r.role.is_overrefusal_eval())
        .collect();

    let harmful_train: Vec<&PromptRow> = train
        .iter()
        .copied()
        .filter(|r| r.role == Role::Harmful)
        .collect();
    let harmful_index = NgramIndex::new(harmful_train.iter().map(|r| r.text.as_str()), cfg);
    let harmful_eval: Vec<&PromptRow> = rows
        .iter()
        .filter(|r| r.role == Role::Harmful && r.split != Split::Train)
        .collect();

    let mut jailbreak = BTreeMap::new();
    for role in [Role::JailbreakPastTense, Role::JailbreakFutureTense] {
        let q: Vec<&PromptRow> = rows.iter().filter(|r| r.role == role).collect();
        let n = q
            .iter()
            .filter(|r| !harmful_index.matches(&r.text).is_empty())
            .count();
        jailbreak.insert(role.as_str().to_string(), n);
    }

    LeakageReport {
        config: Some(cfg),
        overrefusal_vs_train: findings(&overrefusal, &train, &train_index),
        harmful_eval_vs_train: findings(&harmful_eval, &harmful_train, &harmful_index),
        jailbreak_vs_harmful_train: jailbreak,
    }
}
