//! LoRA.
