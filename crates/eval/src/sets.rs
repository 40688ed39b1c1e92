//! Evaluation sets: seeded samples of the data stage's prompts, and custom sets a user points
//! the stage at (JSONL or Parquet with `text` and `role`, optional `id`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use mosr_artifacts::{PromptRow, Role, Split};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// FNV-1a of a string: a stable salt (the std hasher is randomised per process).
pub fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `n` items drawn without replacement with a generator seeded by `seed` and `salt` (so each
/// set gets its own stream), returned in input order; `n >= len` keeps all.
pub fn sample<T: Clone>(items: &[T], n: usize, seed: u64, salt: &str) -> Vec<T> {
    if n >= items.len() {
        return items.to_vec();
    }
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv(salt));
    idx.shuffle(&mut rng);
    let mut keep = idx[..n].to_vec();
    keep.sort_unstable();
    keep.into_iter().map(|i| items[i].clone()).collect()
}

/// Accepted role names of custom sets: the data stage's roles.
fn parse_role(path: &Path, at: &str, s: &str) -> Result<Role> {
    s.trim().parse::<Role>().map_err(|e| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        anyhow::anyhow!("{}: {at}: {e}; roles: {}", path.display(), known.join(", "))
    })
}

fn row(
    path: &Path,
    stem: &str,
    i: usize,
    id: Option<String>,
    text: String,
    role: Role,
) -> PromptRow {
    PromptRow {
        id: id.unwrap_or_else(|| format!("{stem}-{:05}", i + 1)),
        text,
        source: stem.to_string(),
        source_version: "custom".into(),
        role,
        split: Split::Test,
        category: None,
        subset: None,
        pair_id: None,
        source_path: Some(path.display().to_string()),
        source_index: Some(i as i64 + 1),
        meta: None,
    }
}

/// Reads a custom set: `.jsonl` (one object per line with `text`, `role`, optional `id`) or
/// `.parquet` (columns `text`, `role`, optional `id`; any string encoding). Errors name the
/// file and the line or column; an empty set is an error.
pub fn load_custom(path: &Path) -> Result<Vec<PromptRow>> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "custom".into());
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut out = Vec::new();
    match ext {
        "jsonl" | "json" => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading custom set {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = format!("line {}", i + 1);
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}: {at}: invalid JSON", path.display()))?;
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
                let Some(t) = field("text") else {
                    bail!("{}: {at}: missing string field `text`", path.display());
                };
                let Some(r) = field("role") else {
                    bail!("{}: {at}: missing string field `role`", path.display());
                };
                if t.trim().is_empty() {
                    bail!("{}: {at}: `text` is empty", path.display());
                }
                let role = parse_role(path, &at, &r)?;
                out.push(row(path, &stem, out.len(), field("id"), t, role));
            }
        }
        "parquet" => {
            let (schema, batches) = mosr_artifacts::read_parquet_raw(path)?;
            for c in ["text", "role"] {
                if schema.field_with_name(c).is_err() {
                    bail!(
                        "{}: missing column `{c}` (a custom set needs `text` and `role`, optional `id`)",
                        path.display()
                    );
                }
            }
            let has_id = schema.field_with_name("id").is_ok();
            for b in batches {
                let col = |name: &str| -> Result<arrow::array::StringArray> {
                    let a = b.column_by_name(name).expect("checked");
                    let a = cast(a, &DataType::Utf8).map_err(|e| {
                        anyhow::anyhow!("{}: column `{name}` is not text: {e}", path.display())
                    })?;
                    Ok(a.as_string::<i32>().clone())
                };
                let (texts, roles) = (col("text")?, col("role")?);
                let ids = if has_id { Some(col("id")?) } else { None };
                for i in 0..b.num_rows() {
                    let at = format!("row {}", out.len() + 1);
                    if texts.is_null(i) || texts.value(i).trim().is_empty() {
                        bail!("{}: {at}: `text` is empty", path.display());
                    }
                    if roles.is_null(i) {
                        bail!("{}: {at}: `role` is null", path.display());
                    }
                    let role = parse_role(path, &at, roles.value(i))?;
                    let id = ids
                        .as_ref()
                        .and_then(|a| a.is_valid(i).then(|| a.value(i).to_string()));
                    out.push(row(
                        path,
                        &stem,
                        out.len(),
                        id,
                        texts.value(i).to_string(),
                        role,
                    ));
                }
            }
        }
        other => bail!(
            "{}: custom sets are .jsonl or .parquet, not `.{other}`",
            path.display()
        ),
    }
    if out.is_empty() {
        bail!("{}: custom set is empty (no prompts)", path.display());
    }
    let mut ids = std::collections::HashSet::new();
    for r in &out {
        if !ids.insert(r.id.clone()) {
            bail!("{}: duplicate id `{}`", path.display(), r.id);
        }
    }
    // A repeated prompt would count as several observations of one prompt: rates, intervals
    // and paired tests all assume independent prompts.
    let mut first: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut repeats: Vec<(&str, &str)> = Vec::new();
    for r in &out {
        match first.entry(r.text.trim()) {
            std::collections::hash_map::Entry::Occupied(e) => repeats.push((*e.get(), &r.id)),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(&r.id);
            }
        }
    }
    if let Some((a, b)) = repeats.first() {
        bail!(
            "{}: {} prompts repeat an earlier prompt's text (first: `{b}` repeats `{a}`); each prompt must be distinct",
            path.display(),
            repeats.len()
        );
    }
    Ok(out)
}
