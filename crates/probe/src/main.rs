//! `mosr-probe --pipeline FILE [--set KEY=VALUE]... [--force]`: the probe stage alone.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_probe::Probe>(
        "Per-layer benign-vs-malicious probes and the over-refusal boundary picture (summary.md in its folder)",
    )
}
