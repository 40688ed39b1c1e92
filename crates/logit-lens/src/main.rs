//! `mosr-logit-lens --pipeline FILE [--set KEY=VALUE]... [--force]`: the logit-lens stage alone.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_logit_lens::LogitLens>(
        "Per-layer decoding through the final norm and unembedding; refusal/compliance tone mass",
    )
}
