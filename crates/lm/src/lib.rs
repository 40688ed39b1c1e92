//! mosr-lm: the one crate that runs a causal language model.
//!
//! It loads Llama, Mistral and Qwen2 weights from GGUF files or HF safetensors folders into a
//! burn network ([`model::CausalLm`]) that returns every layer's residual stream, carries
//! switchable LoRA adapters ([`lora`]), and generates with a KV cache ([`generate`]).
//! Tokenizer and chat template come from the model's own files ([`tokenizer`], [`chat`]).
//! Everything above this crate (extraction, probes, training, evaluation) goes through
//! [`LanguageModel`].

pub mod adapter;
mod arithmetic;
mod batch;
pub mod chat;
pub mod config;
pub mod convert;
pub mod cpu;
mod decode;
mod error;
pub mod fetch;
mod flex;
mod forward;
pub mod fused;
pub mod generate;
pub mod identity;
mod kv;
mod language_model;
mod load;
pub mod lora;
pub mod memory;
pub mod model;
mod packed;
pub mod plan;
pub mod tokenizer;
pub mod weights;

// Linked only to switch on their AVX-512 kernels (feature `x86-v4`, crates/lm/Cargo.toml).
pub use arithmetic::Arithmetic;
pub use batch::TokenBatch;
pub use burn::tensor::Device;
pub use chat::{ChatTemplate, Message};
pub use config::{Arch, ModelConfig};
pub use error::{LmError, Result, atomic_write, sha256_file};
#[cfg(feature = "x86-v4")]
use gemm_common as _;
#[cfg(feature = "x86-v4")]
use gemm_f32 as _;
pub use identity::{ModelIdentity, identify};
pub use kv::KvCache;
pub use language_model::{LanguageModel, device_from_name};
pub use lora::{DropoutStream, LoraConfig};
pub use model::{CausalLm, ForwardOptions, ForwardOutput, Logits};
pub use plan::Plan;
