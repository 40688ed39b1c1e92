//! Direct request: the harmful prompt as the user turn, nothing else.

use anyhow::Result;

use super::{Attack, AttackInput, AttackPrompt, plain};

pub struct Direct;

impl Attack for Direct {
    fn name(&self) -> &str {
        "direct"
    }
    fn prompts(&self, input: &AttackInput) -> Result<Vec<AttackPrompt>> {
        Ok(input.harmful.iter().map(plain).collect())
    }
}
