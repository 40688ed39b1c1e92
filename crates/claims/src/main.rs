//! `mosr-claims --pipeline FILE [--set KEY=VALUE]... [--force]`: the claims stage alone.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_claims::Claims>(
        "Paired tests of the variants and a verdict for each claim of the paper (reads eval/generations.parquet and probe/probe_scores.parquet)",
    )
}
