//! Prompt selection and chat formatting shared by the stages that run the model on prompts
//! (extract, logit-lens): a seeded per-group sample, the model's own chat template, and the
//! over-long-prompt policy. Kept here so both stages pick and format prompts the same way.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use mosr_artifacts::{PromptRow, Role, Split, sha256_bytes};
use mosr_lm::{LanguageModel, Message};
use serde::{Deserialize, Serialize};

/// What to do with a prompt longer than `max_prompt_tokens` after chat formatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnOverflow {
    /// Cut the user message (by tokens) until the formatted prompt fits; counted in the manifest.
    #[default]
    Truncate,
    /// Fail the stage, naming the prompt.
    Reject,
}

/// Parse role names from a config, naming the offending entry.
pub fn parse_roles(names: &[String]) -> Result<Vec<Role>> {
    names
        .iter()
        .map(|r| r.parse::<Role>().map_err(|e| anyhow::anyhow!("roles: {e}")))
        .collect()
}

pub fn parse_splits(names: &[String]) -> Result<Vec<Split>> {
    names
        .iter()
        .map(|r| {
            r.parse::<Split>()
                .map_err(|e| anyhow::anyhow!("splits: {e}"))
        })
        .collect()
}

/// A seeded sample of at most `max_per_group` prompts per (role, split) among `roles` x `splits`
/// (groups that the data stage never fills, e.g. over-refusal x train, are skipped). A prompt's
/// rank is sha256(`seed:id`), so whether it is picked depends on nothing but its id and the seed.
/// Errors when a role has no prompt in any requested split (an empty role is a config or data
/// mistake, not something to analyse silently).
pub fn select(
    prompts: &[PromptRow],
    roles: &[Role],
    splits: &[Split],
    max_per_group: Option<usize>,
    seed: u64,
    source: &Path,
) -> Result<Vec<PromptRow>> {
    if roles.is_empty() {
        bail!("no roles configured");
    }
    let mut out = Vec::new();
    for &role in roles {
        let mut n_role = 0;
        for &split in splits {
            let mut group: Vec<(String, &PromptRow)> = prompts
                .iter()
                .filter(|p| p.role == role && p.split == split)
                .map(|p| (sha256_bytes(format!("{seed}:{}", p.id).as_bytes()), p))
                .collect();
            group.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(m) = max_per_group {
                group.truncate(m);
            }
            n_role += group.len();
            out.extend(group.into_iter().map(|(_, p)| p.clone()));
        }
        if n_role == 0 {
            let splits: Vec<&str> = splits.iter().map(|s| s.as_str()).collect();
            bail!(
                "{}: role `{role}` has no prompts in splits [{}]",
                source.display(),
                splits.join(", ")
            );
        }
    }
    Ok(out)
}

/// Counts per `role/split`, for manifests and logs.
pub fn group_counts(rows: &[PromptRow]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(format!("{}/{}", r.role, r.split)).or_default() += 1;
    }
    m
}

/// Token ids of a prompt as a single user turn with the model's chat template and the
/// generation prompt (so the last token is the one before the assistant's first token).
/// Returns the ids and whether the user text was truncated to fit `max_tokens`.
pub fn chat_tokens(
    lm: &LanguageModel,
    id: &str,
    text: &str,
    max_tokens: usize,
    on_overflow: OnOverflow,
) -> Result<(Vec<u32>, bool)> {
    let ids = lm.chat_ids(&[Message::user(text)], None)?;
    if ids.len() <= max_tokens {
        return Ok((ids, false));
    }
    if on_overflow == OnOverflow::Reject {
        bail!(
            "prompt `{id}` has {} tokens after chat formatting, over max_prompt_tokens = {max_tokens} (on_overflow = \"reject\"; use \"truncate\" or raise the limit)",
            ids.len()
        );
    }
    let content = lm.encode(text, false)?;
    let overhead = ids.len().saturating_sub(content.len());
    let mut keep = max_tokens.saturating_sub(overhead).min(content.len());
    loop {
        if keep == 0 {
            bail!(
                "prompt `{id}`: the chat template alone takes {overhead} tokens, more than max_prompt_tokens = {max_tokens}"
            );
        }
        let cut = lm.decode(&content[..keep], false)?;
        let ids = lm.chat_ids(&[Message::user(cut)], None)?;
        if ids.len() <= max_tokens {
            return Ok((ids, true));
        }
        // Re-tokenisation at the cut can merge differently: shrink by the excess and retry.
        keep = keep.saturating_sub((ids.len() - max_tokens).max(1));
    }
}
