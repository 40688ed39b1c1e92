//! Reading (and, for tests and tools, writing) the extract stage's `representations` table
//! (schema `mosr_artifacts::analysis::REPRESENTATIONS`), one layer subset at a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow::array::{
    AsArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type};
use mosr_artifacts::analysis::REPRESENTATIONS;
use mosr_artifacts::{read_table, write_parquet};

/// One row of `representations`.
#[derive(Debug, Clone, PartialEq)]
pub struct RepresentationRow {
    pub prompt_id: String,
    pub role: String,
    pub split: String,
    pub layer: i32,
    pub position_kind: String,
    pub vector: Vec<f32>,
}

/// A prompt's states at the requested layers, in the requested order.
#[derive(Debug, Clone)]
pub struct PromptStates {
    pub role: String,
    pub layers: Vec<Vec<f32>>,
}

pub fn write_representations(path: &Path, rows: &[RepresentationRow]) -> Result<()> {
    let width = rows.first().map(|r| r.vector.len()).unwrap_or(0);
    if rows.iter().any(|r| r.vector.len() != width) {
        bail!("{}: vectors of different widths", path.display());
    }
    let s = |f: &dyn Fn(&RepresentationRow) -> &str| -> Arc<StringArray> {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let values: Vec<f32> = rows.iter().flat_map(|r| r.vector.iter().copied()).collect();
    let vectors = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        width as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?;
    let batch = RecordBatch::try_new(
        REPRESENTATIONS.arrow_schema_with_width(width),
        vec![
            s(&|r| &r.prompt_id),
            s(&|r| &r.role),
            s(&|r| &r.split),
            Arc::new(rows.iter().map(|r| Some(r.layer)).collect::<Int32Array>()),
            s(&|r| &r.position_kind),
            Arc::new(vectors),
        ],
    )?;
    write_parquet(path, batch.schema(), &[batch])?;
    Ok(())
}

/// The deepest layer present in the file.
pub fn max_layer(path: &Path) -> Result<i32> {
    let mut max = None;
    for b in read_table(path, &REPRESENTATIONS)? {
        let l = b
            .column_by_name("layer")
            .expect("conformed")
            .as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            max = Some(max.map_or(l.value(i), |m: i32| m.max(l.value(i))));
        }
    }
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
    for b in read_table(path, &REPRESENTATIONS)? {
        let col = |n: &str| b.column_by_name(n).expect("conformed").clone();
        let ids = col("prompt_id");
        let ids = ids.as_string::<i32>();
        let roles = col("role");
        let roles = roles.as_string::<i32>();
        let pos = col("position_kind");
        let pos = pos.as_string::<i32>();
        let layer = col("layer");
        let layer = layer.as_primitive::<Int32Type>();
        let vec = col("vector");
        let vec = vec.as_fixed_size_list();
        for i in 0..b.num_rows() {
            if pos.value(i) != position_kind {
                continue;
            }
            let Some(slot) = layers.iter().position(|&l| l == layer.value(i)) else {
                continue;
            };
            let v = vec.value(i);
            let v: Vec<f32> = v.as_primitive::<Float32Type>().values().to_vec();
            if *width.get_or_insert(v.len()) != v.len() {
                bail!(
                    "{}: prompt {} layer {} has width {}, others {}",
                    path.display(),
                    ids.value(i),
                    layer.value(i),
                    v.len(),
                    width.unwrap()
                );
            }
            let e = out
                .entry(ids.value(i).to_string())
                .or_insert_with(|| PromptStates {
                    role: roles.value(i).to_string(),
                    layers: vec![Vec::new(); layers.len()],
                });
            e.layers[slot] = v;
        }
    }
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

/// Arrow schema of `representations` with the vector width filled in.
trait WithWidth {
    fn arrow_schema_with_width(&self, width: usize) -> arrow::datatypes::SchemaRef;
}

impl WithWidth for mosr_artifacts::TableSchema {
    fn arrow_schema_with_width(&self, width: usize) -> arrow::datatypes::SchemaRef {
        let base = self.arrow_schema();
        let fields: Vec<Field> = base
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::FixedSizeList(item, _) => Field::new(
                    f.name(),
                    DataType::FixedSizeList(item.clone(), width as i32),
                    f.is_nullable(),
                ),
                _ => f.as_ref().clone(),
            })
            .collect();
        Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            base.metadata().clone(),
        ))
    }
}
