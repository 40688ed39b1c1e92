//! `mosr-report --pipeline FILE`: (re)build `results/<pipeline>/` from a run folder.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_report::Report>(
        "Join every stage's metrics into the results report",
    )
}
