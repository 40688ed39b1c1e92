//! mosr-lm
