//! Workspace integration tests: real models against PyTorch/transformers fixtures.

mod analysis;
mod claims;
mod eval;
mod kernels;
mod layering;
mod lm_errors;
mod lm_lora;
mod lm_reference;
mod pipelines;
mod quant;
mod training;
#[cfg(feature = "wgpu")]
mod wgpu;
