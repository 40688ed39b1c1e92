//! Prompt selection and chat formatting shared by the stages that run the model on the data
//! stage's prompts (extract, logit-lens): a seeded per-group sample, the model's own chat
//! template, the over-long-prompt policy and the layers read. Kept here so both stages pick,
//! format and batch prompts the same way, and neither links the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::{PromptRow, Role, Split, read_prompts, sha256_bytes};
use mosr_lm::{LanguageModel, Message};
use serde::{Deserialize, Serialize};
use tracing::info;

/// Everything a stage that runs the data stage's prompts through the `[run]` model needs
/// (extract, logit-lens): its section plus where the prompts are and which model, device and
/// seed.
#[derive(Debug, Clone)]
pub struct PromptPass<S> {
    pub section: S,
    /// `prompts.parquet` of the data stage.
    pub prompts: PathBuf,
    /// Registry id, GGUF path or HF folder.
    pub model: String,
    /// `cpu`, `cuda`, `wgpu`.
    pub device: String,
    pub seed: u64,
}

impl<S: Serialize> PromptPass<S> {
    /// The pass of a run, with its key material: the section, model, seed and device; the data
    /// key and the model's sha256.
    pub fn plan(ctx: &crate::Ctx, section: S) -> Result<crate::Planned<Self>> {
        let run = &ctx.file.run;
        let config = serde_json::json!({
            "section": section, "model": run.model, "seed": run.seed, "device": run.device
        });
        let inputs = BTreeMap::from([
            ("data".to_string(), ctx.upstream("data")?.key),
            ("model".to_string(), ctx.model()?.sha256.clone()),
        ]);
        let plan = PromptPass {
            section,
            prompts: ctx.upstream_file("data", "prompts.parquet"),
            model: run.model.clone(),
            device: run.device.clone(),
            seed: run.seed,
        };
        Ok(crate::Planned {
            config,
            inputs,
            plan,
        })
    }
}

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

/// The seeded sample ([`select`]) of the data stage's `prompts.parquet` for `roles` x `splits`.
pub fn read_selected(
    prompts: &Path,
    roles: &[String],
    splits: &[String],
    max_per_group: Option<usize>,
    seed: u64,
) -> Result<Vec<PromptRow>> {
    let (roles, splits) = (parse_roles(roles)?, parse_splits(splits)?);
    if !prompts.is_file() {
        bail!(
            "{}: prompts table is missing; run the data stage first",
            prompts.display()
        );
    }
    let all = read_prompts(prompts)?;
    select(&all, &roles, &splits, max_per_group, seed, prompts)
}

/// [`group_counts`] keyed `prompts/<role>/<split>`, as manifests record them.
pub fn manifest_counts(rows: &[PromptRow]) -> BTreeMap<String, u64> {
    group_counts(rows)
        .into_iter()
        .map(|(k, v)| (format!("prompts/{k}"), v))
        .collect()
}

/// The residual-stream layers a `[section]` reads: its list sorted and deduplicated, every
/// layer (0 = embedding output ..= `n_blocks`) when it gives none.
pub fn layers(section: &str, chosen: Option<&[usize]>, n_blocks: usize) -> Result<Vec<usize>> {
    match chosen {
        Some([]) => bail!("[{section}] layers is empty; omit it for all layers"),
        Some(l) => {
            let mut l = l.to_vec();
            l.sort_unstable();
            l.dedup();
            if let Some(&bad) = l.iter().find(|&&x| x > n_blocks) {
                bail!(
                    "[{section}] layer {bad} does not exist: the model has layers 0..={n_blocks}"
                );
            }
            Ok(l)
        }
        None => Ok((0..=n_blocks).collect()),
    }
}

/// Prompts ready for batched passes: chat-formatted token ids ([`chat_tokens`]) sorted by
/// length then id, so a batch's rows pad little and the order is the same on every machine.
pub struct Tokenized<'a> {
    pub items: Vec<(Vec<u32>, &'a PromptRow)>,
    /// Prompts whose user text was cut to fit.
    pub truncated: usize,
}

/// Tokenizes `chosen` for a `[section]` whose `max_prompt_tokens` must fit the model's
/// context window; errors name `source` and the prompt.
pub fn tokenize<'a>(
    lm: &LanguageModel,
    section: &str,
    chosen: &'a [PromptRow],
    max_tokens: usize,
    on_overflow: OnOverflow,
    source: &Path,
) -> Result<Tokenized<'a>> {
    let max_ctx = lm.config.max_position_embeddings;
    if max_tokens > max_ctx {
        bail!(
            "[{section}] max_prompt_tokens = {max_tokens} exceeds the model's context window ({max_ctx})"
        );
    }
    let mut items = Vec::with_capacity(chosen.len());
    let mut truncated = 0usize;
    for p in chosen {
        let (ids, cut) = chat_tokens(lm, &p.id, &p.text, max_tokens, on_overflow)
            .with_context(|| format!("{}: prompt `{}`", source.display(), p.id))?;
        truncated += cut as usize;
        items.push((ids, p));
    }
    items.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.1.id.cmp(&b.1.id)));
    Ok(Tokenized { items, truncated })
}

/// Runs `work` on every batch of `items` whose part is not `done` (parts a killed run wrote are
/// kept), logging `<what> progress` with counts and rate every 10 s. Returns how many batches
/// were skipped that way.
pub fn resumable_batches<T>(
    items: &[T],
    batch_size: usize,
    what: &str,
    done: impl Fn(usize) -> bool,
    mut work: impl FnMut(usize, &[T]) -> Result<()>,
) -> Result<usize> {
    let n_batches = items.len().div_ceil(batch_size);
    let (mut prompts, mut skipped) = (0usize, 0usize);
    let (started, mut last_log) = (Instant::now(), Instant::now());
    for (bi, chunk) in items.chunks(batch_size).enumerate() {
        if done(bi) {
            skipped += 1;
            continue;
        }
        work(bi, chunk)?;
        prompts += chunk.len();
        if last_log.elapsed().as_secs_f64() > 10.0 || bi + 1 == n_batches {
            let secs = started.elapsed().as_secs_f64();
            info!(
                batch = bi + 1,
                of = n_batches,
                prompts,
                prompts_per_s = prompts as f64 / secs.max(1e-9),
                "{what} progress"
            );
            last_log = Instant::now();
        }
    }
    if skipped > 0 {
        info!(
            batches = skipped,
            "resumed: batches already on disk were skipped"
        );
    }
    Ok(skipped)
}
