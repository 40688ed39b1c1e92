//! Attacks: named components that turn the harmful test prompts (or their own rephrased set)
//! into what is sent to the model: a user turn and, optionally, a forced start of the
//! assistant turn.
//!
//! One file per attack. Adding one means a file with a type implementing [`Attack`], its
//! config struct as a field of [`crate::config::EvalSection`] (if it has options), and one arm
//! in [`crate::config::EvalSection::attack`].

pub mod direct;
pub mod prefill;
pub mod template;
pub mod tense;

use anyhow::Result;
use mosr_artifacts::PromptRow;

/// One prompt as the attack sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackPrompt {
    /// Id of the prompt row sent.
    pub prompt_id: String,
    /// The harmful test prompt this one stands for, when it is a rephrasing.
    pub paired_id: Option<String>,
    /// Role of the prompt row sent.
    pub role: String,
    /// User turn.
    pub user: String,
    /// Text forced at the start of the assistant turn.
    pub prefill: Option<String>,
    /// The attack's parameter for this prompt (prefix, template name).
    pub detail: Option<String>,
}

/// What attacks draw from.
pub struct AttackInput<'a> {
    /// The sampled harmful test prompts (the same for every attack that transforms them).
    pub harmful: &'a [PromptRow],
    /// Every prompt of the data stage (attacks with their own rephrased sets pick from it).
    pub all: &'a [PromptRow],
    /// How many prompts an attack with its own set sends (`usize::MAX`: all).
    pub n: usize,
    pub seed: u64,
}

pub trait Attack {
    /// The name in configs, file names and the `attack` column.
    fn name(&self) -> &str;
    /// True when the attack transforms the given harmful prompts (so it also applies to a
    /// custom harmful set); false when it sends its own set.
    fn transforms_input(&self) -> bool {
        true
    }
    /// The prompts to send, in a deterministic order.
    fn prompts(&self, input: &AttackInput) -> Result<Vec<AttackPrompt>>;
}

/// Names [`crate::config::EvalSection::attack`] knows.
pub const KNOWN: [&str; 5] = [
    "direct",
    "prefill",
    "past_tense",
    "future_tense",
    "template",
];

/// A prompt row sent as it is.
pub fn plain(p: &PromptRow) -> AttackPrompt {
    AttackPrompt {
        prompt_id: p.id.clone(),
        // The curated twin (safe <-> unsafe contrast), so the two can be compared per pair.
        paired_id: p.pair_id.clone(),
        role: p.role.as_str().to_string(),
        user: p.text.clone(),
        prefill: None,
        detail: None,
    }
}
