//! `mosr-weights --pipeline FILE [--set KEY=VALUE]... [--force]`: the weights stage alone.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_weights::Weights>(
        "Overlap-aware erasure weights (reads augment/training_examples.parquet and extract/representations.parquet)",
    )
}
