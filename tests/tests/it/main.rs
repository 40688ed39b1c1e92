//! Workspace integration tests: real models against PyTorch/transformers fixtures.

mod analysis;
mod lm_errors;
mod lm_lora;
mod lm_reference;
