//! mosr-gguf
