//! Reading the extract stage's `representations` table (schema
//! `mosr_artifacts::analysis::REPRESENTATIONS`), one layer subset at a time, batch by batch.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, bail};
use mosr_artifacts::analysis::RepresentationRow;
use mosr_artifacts::row::for_each_rows;

/// A prompt's states at the requested layers, in the requested order.
#[derive(Debug, Clone)]
pub struct PromptStates {
    pub role: String,
    pub layers: Vec<Vec<f32>>,
}

/// The deepest layer present in the file.
pub fn max_layer(path: &Path) -> Result<i32> {
    let mut max = None;
    for_each_rows(path, |rows: Vec<RepresentationRow>| {
        max = rows.iter().map(|r| r.layer).chain(max).max();
        Ok(())
    })?;
    max.ok_or_else(|| anyhow::anyhow!("{}: no representations", path.display()))
}

/// prompt_id -> states at `layers` (in that order) for rows of `position_kind`. A prompt that
/// lacks one of the layers is an error naming it.
pub fn read_layers(
    path: &Path,
    layers: &[i32],
    position_kind: &str,
) -> Result<HashMap<String, PromptStates>> {
    let mut out: HashMap<String, PromptStates> = HashMap::new();
    let mut width = None;
    for_each_rows(path, |rows: Vec<RepresentationRow>| {
        for r in rows {
            if r.position_kind != position_kind {
                continue;
            }
            let Some(slot) = layers.iter().position(|&l| l == r.layer) else {
                continue;
            };
            let w = *width.get_or_insert(r.vector.len());
            if w != r.vector.len() {
                bail!(
                    "{}: prompt {} layer {} has width {}, others {w}",
                    path.display(),
                    r.prompt_id,
                    r.layer,
                    r.vector.len()
                );
            }
            let e = out.entry(r.prompt_id).or_insert_with(|| PromptStates {
                role: r.role.as_str().to_string(),
                layers: vec![Vec::new(); layers.len()],
            });
            e.layers[slot] = r.vector;
        }
        Ok(())
    })?;
    for (id, p) in &out {
        if let Some(k) = p.layers.iter().position(|v| v.is_empty()) {
            bail!(
                "{}: prompt {id} has no layer {} at position `{position_kind}`",
                path.display(),
                layers[k]
            );
        }
    }
    Ok(out)
}
