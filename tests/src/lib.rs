//! Shared helpers of the workspace integration tests (`tests/it`).

use std::path::{Path, PathBuf};

/// `tests/fixtures/<model>/<name>.json`, parsed.
pub fn fixture(model: &str, name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model)
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A fetched registry model. Model tests are not optional: run `cargo xtask fetch model ID`
/// (the README's test command does) rather than letting them skip.
pub fn model_path(id: &str) -> PathBuf {
    mosr_lm::fetch::resolve(id).unwrap_or_else(|e| panic!("{e}"))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

/// Relative difference with an absolute floor, so values near zero are compared sensibly.
pub fn rel_close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}
