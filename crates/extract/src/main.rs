//! `mosr-extract --pipeline FILE [--set KEY=VALUE]... [--force]`: the extract stage alone.

fn main() -> anyhow::Result<()> {
    mosr_stage::cli::main::<mosr_extract::Extract>(
        "Residual-stream representations of chat-formatted prompts, every layer",
    )
}
