//! `mosr-augment --pipeline FILE [--set KEY=VALUE]... [--force]`: the augment stage alone.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_augment::Augment>(
        "Training sets: harmful completions, retain answers, context-aware augmentation (reads data/prompts.parquet)",
    )
}
