//! mosr-artifacts
