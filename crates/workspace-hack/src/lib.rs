//! No code: this crate exists for its `Cargo.toml`, which pins dependency features so that the
//! default build and the `wgpu` build share every crate below burn (see the manifest).
