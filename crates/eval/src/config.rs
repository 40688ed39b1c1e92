//! `[eval]` section of a pipeline file. Every key has a default (documented here and in
//! docs/stages.md); sub-tables configure attacks, judges, capability and the frontier.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::attacks::prefill::PrefillConfig;
use crate::attacks::template::TemplateConfig;
use crate::attacks::tense::TenseConfig;
use crate::attacks::{Attack, KNOWN, direct, prefill, template, tense};
use crate::capability::CapabilityConfig;
use crate::judges::{GibberishJudgeConfig, RefusalJudgeConfig};
use mosr_artifacts::Size;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Attacks on the harmful test prompts, by name. Default: direct, prefill, past_tense,
    /// future_tense, template.
    pub attacks: Vec<String>,
    /// Over-refusal sets (data-stage roles) sent as direct requests. Default:
    /// overrefusal_safe, overrefusal_unsafe_contrast, overrefusal_borderline.
    pub sets: Vec<String>,
    /// Extra prompt sets (JSONL or Parquet with `text` and `role`), relative to the repository
    /// root unless absolute. Default none.
    pub custom_sets: Vec<PathBuf>,
    /// Variants to evaluate besides `base` (always evaluated); empty = every adapter found
    /// under `runs/<pipeline>/finetune/<variant>/adapter`. Default empty.
    pub variants: Vec<String>,
    /// Harmful test prompts sampled (seeded) for the attacks; also the number of tense
    /// rephrasings sent, or `"all"`. Default 100.
    pub harmful_n: Size,
    /// Prompts sampled (seeded) per over-refusal set, or `"all"`. Default 100.
    pub set_n: Size,
    /// The unsafe-contrast set is the twins (`pair_id`) of the sampled safe prompts instead of
    /// a sample of its own, so refusal on a contrast can be compared with refusal on its safe
    /// twin (the discrimination measure of the claims stage). Default true.
    pub pair_contrasts: bool,
    /// Hand-labelled responses of this project's own models (CSV: `response`, `perplexity`,
    /// `label`), relative to the repository root; the judges' precision and recall per outcome
    /// on them go into `metrics.parquet` (set `mosr_judge_labels`). Default
    /// `datasets/mosr_judge_labels/labels.csv`; empty = skip.
    pub outcome_labels: PathBuf,
    /// Split of the harmful prompts attacked. Default `test`.
    pub harmful_split: String,
    /// Greedy decoding budget per response. Default 64.
    pub max_new_tokens: usize,
    /// Prompts per generation batch. Default 8.
    pub batch_size: usize,
    pub prefill: PrefillConfig,
    pub tense: TenseConfig,
    pub template: TemplateConfig,
    pub refusal: RefusalJudgeConfig,
    pub gibberish: GibberishJudgeConfig,
    pub capability: CapabilityConfig,
    /// The safety/over-refusal frontier's prompts (used when the finetune stage saved
    /// snapshots, `[finetune] frontier_steps`). Left out of the serialized section while
    /// default, so stage keys of runs made before it existed stay valid.
    #[serde(skip_serializing_if = "FrontierSection::is_default")]
    pub frontier: FrontierSection,
    /// How the models multiply while generating and scoring: `exact` (f32 values of the
    /// weights, bit-reproducible) or `quantized` (the GGUF file's integer codes times
    /// int8-rounded activations, 2-3 times faster on the CPU; `mosr_lm::Arithmetic`,
    /// docs/performance.md for its measured effect on judge outcomes). Default `exact`, left
    /// out of the serialized section while exact so earlier runs' keys stay valid.
    #[serde(skip_serializing_if = "mosr_lm::Arithmetic::is_exact")]
    pub arithmetic: mosr_lm::Arithmetic,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            attacks: KNOWN.iter().map(|s| s.to_string()).collect(),
            sets: vec![
                "overrefusal_safe".into(),
                "overrefusal_unsafe_contrast".into(),
                "overrefusal_borderline".into(),
            ],
            custom_sets: Vec::new(),
            variants: Vec::new(),
            harmful_n: Size::Count(100),
            set_n: Size::Count(100),
            pair_contrasts: true,
            outcome_labels: PathBuf::from("datasets/mosr_judge_labels/labels.csv"),
            harmful_split: "test".into(),
            max_new_tokens: 64,
            batch_size: 8,
            prefill: PrefillConfig::default(),
            tense: TenseConfig::default(),
            template: TemplateConfig::default(),
            refusal: RefusalJudgeConfig::default(),
            gibberish: GibberishJudgeConfig::default(),
            capability: CapabilityConfig::default(),
            frontier: FrontierSection::default(),
            arithmetic: mosr_lm::Arithmetic::Exact,
        }
    }
}

/// `[eval.frontier]`: the prompts every point of the frontier answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontierSection {
    /// Harmful prompts per point, sent as direct requests: the first of the main evaluation's
    /// seeded sample (at most `[eval] harmful_n`), or `"all"` of that sample. Default 50.
    pub harmful_n: Size,
    /// Prompts per over-refusal set per point, chosen as `harmful_n`, or `"all"`. Default 50.
    pub set_n: Size,
    /// Over-refusal sets (data-stage roles, each also in `[eval] sets`). Default
    /// overrefusal_safe, overrefusal_borderline (the claims' pooled sets).
    pub sets: Vec<String>,
}

impl Default for FrontierSection {
    fn default() -> Self {
        FrontierSection {
            harmful_n: Size::Count(50),
            set_n: Size::Count(50),
            sets: ["overrefusal_safe", "overrefusal_borderline"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl FrontierSection {
    /// Default settings stay out of the stage key (pipelines without snapshots keep theirs).
    pub fn is_default(&self) -> bool {
        *self == FrontierSection::default()
    }
}

impl EvalSection {
    /// The attack called `name`, configured from this section.
    pub fn attack(&self, name: &str, repo_root: &Path) -> Result<Box<dyn Attack>> {
        Ok(match name {
            "direct" => Box::new(direct::Direct),
            "prefill" => Box::new(prefill::Prefill::new(&self.prefill)?),
            "past_tense" => Box::new(tense::Tense::past(&self.tense)),
            "future_tense" => Box::new(tense::Tense::future(&self.tense)),
            "template" => Box::new(template::Template::load(&self.template, repo_root)?),
            other => bail!("unknown attack `{other}`; known: {}", KNOWN.join(", ")),
        })
    }
}
