//! mosr-eval: the evaluation stage. It measures what the paper reports, for the base model
//! and every trained LoRA variant: safety (attack success rate under several attacks),
//! over-refusal (refusals of safe prompts that look unsafe), compliance on their unsafe
//! contrasts, and general capability (MMLU, ARC by log-likelihood), all into Parquet.
//!
//! * [`attacks`]: direct request, prefilling, past/future-tense rephrasings, template
//!   jailbreaks; one file each.
//! * [`judges`]: refusal string match and gibberish heuristics; [`metrics`]: rates with
//!   Wilson intervals and the refusal judge's validation on human labels;
//!   [`outcome_labels`]: both judges against hand-labelled responses of this project's models.
//! * [`likelihood`], [`capability`]: continuation log-likelihoods, option scoring.
//! * [`sets`]: seeded sampling and custom JSONL/Parquet sets.
//! * [`stage`]: [`run`] and the [`Eval`] stage (the `[eval]` section, planning, metrics).
//! * [`generation`]: generation groups, their keys and their resumable generation.
//! * [`frontier`]: the safety/over-refusal frontier over the finetune stage's adapter
//!   snapshots (`[eval.frontier]`).

pub mod attacks;
pub mod capability;
pub mod config;
pub mod frontier;
pub mod generation;
pub mod judges;
pub mod likelihood;
pub mod metrics;
pub mod outcome_labels;
pub mod sets;
pub mod stage;

pub use config::EvalSection;
pub use generation::{EvalConfig, Variant};
pub use stage::{Eval, EvalOutputs, Overrides, plan_with, run};
