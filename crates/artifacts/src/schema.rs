//! Column specs of every table and the validation that runs on read.
//!
//! A [`TableSchema`] is a static list of columns. Writers build batches with
//! [`TableSchema::arrow_schema`]; readers pass each loaded batch through
//! [`TableSchema::conform`], which checks names, types and required columns and casts the
//! encodings other writers use (polars: Utf8View strings, LargeList lists) to the canonical
//! ones, so downstream code handles a single representation.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};

/// Logical column types; each has one canonical Arrow type and a set of accepted encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// Canonical Utf8; accepts LargeUtf8 and Utf8View.
    Utf8,
    Bool,
    /// Canonical Int32; accepts Int8/Int16/UInt8/UInt16 (lossless).
    Int32,
    /// Canonical Int64; accepts any narrower integer (lossless).
    Int64,
    Float32,
    Float64,
    /// Canonical `List<Utf8>`; accepts LargeList and any string encoding of the items.
    ListUtf8,
    /// Canonical `FixedSizeList<Float32>` of any width (vectors: hidden states, directions).
    VectorF32,
}

impl ColType {
    /// The Arrow type writers must use.
    pub fn canonical(self) -> DataType {
        match self {
            ColType::Utf8 => DataType::Utf8,
            ColType::Bool => DataType::Boolean,
            ColType::Int32 => DataType::Int32,
            ColType::Int64 => DataType::Int64,
            ColType::Float32 => DataType::Float32,
            ColType::Float64 => DataType::Float64,
            ColType::ListUtf8 => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            // Width is per table instance; writers build the exact FixedSizeList type.
            ColType::VectorF32 => {
                DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), 0)
            }
        }
    }

    fn is_string(dt: &DataType) -> bool {
        matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    }

    /// The type to cast a loaded column to, or None if its encoding is not accepted.
    fn target_for(self, found: &DataType) -> Option<DataType> {
        use DataType as D;
        match (self, found) {
            (ColType::Utf8, dt) if Self::is_string(dt) => Some(D::Utf8),
            (ColType::Bool, D::Boolean) => Some(D::Boolean),
            (ColType::Int32, D::Int32 | D::Int16 | D::Int8 | D::UInt8 | D::UInt16) => {
                Some(D::Int32)
            }
            (
                ColType::Int64,
                D::Int64 | D::Int32 | D::Int16 | D::Int8 | D::UInt8 | D::UInt16 | D::UInt32,
            ) => Some(D::Int64),
            (ColType::Float32, D::Float32) => Some(D::Float32),
            (ColType::Float64, D::Float64) => Some(D::Float64),
            (ColType::ListUtf8, D::List(f) | D::LargeList(f)) if Self::is_string(f.data_type()) => {
                Some(self.canonical())
            }
            (ColType::VectorF32, D::FixedSizeList(f, n)) if f.data_type() == &D::Float32 => Some(
                D::FixedSizeList(Arc::new(Field::new("item", D::Float32, true)), *n),
            ),
            _ => None,
        }
    }
}

/// One column: name, type, whether nulls are allowed, and what it means (for docs/artifacts.md).
#[derive(Debug, Clone, Copy)]
pub struct ColumnSpec {
    pub name: &'static str,
    pub ty: ColType,
    pub nullable: bool,
    pub doc: &'static str,
}

/// A table: name (the file stem by convention), schema version, columns in file order.
#[derive(Debug, Clone, Copy)]
pub struct TableSchema {
    pub name: &'static str,
    pub version: u32,
    pub columns: &'static [ColumnSpec],
}

impl TableSchema {
    /// The Arrow schema writers use; carries `mosr.table` and `mosr.schema_version` metadata.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.canonical(), c.nullable))
            .collect();
        let meta: std::collections::HashMap<String, String> = [
            ("mosr.table".to_string(), self.name.to_string()),
            ("mosr.schema_version".to_string(), self.version.to_string()),
        ]
        .into_iter()
        .collect();
        Arc::new(Schema::new_with_metadata(fields, meta))
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Check `schema` (as found in `file`) against this table without reading data.
    pub fn validate(&self, file: &Path, schema: &Schema) -> Result<()> {
        for spec in self.columns {
            let field = schema
                .field_with_name(spec.name)
                .map_err(|_| Error::schema(file, self.name, spec.name, "missing column"))?;
            if spec.ty.target_for(field.data_type()).is_none() {
                return Err(Error::schema(
                    file,
                    self.name,
                    spec.name,
                    format!(
                        "type {} is not accepted for {:?}",
                        field.data_type(),
                        spec.ty
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Validate a loaded batch and return it with exactly this table's columns, in order, in
    /// canonical types. Extra columns are dropped (a newer writer may add columns).
    pub fn conform(&self, file: &Path, batch: &RecordBatch) -> Result<RecordBatch> {
        self.validate(file, batch.schema().as_ref())?;
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for spec in self.columns {
            let array = batch.column_by_name(spec.name).expect("validated");
            let target = spec
                .ty
                .target_for(array.data_type())
                .expect("validated type");
            let array = if array.data_type() == &target {
                array.clone()
            } else {
                cast(array, &target).map_err(|e| {
                    Error::schema(file, self.name, spec.name, format!("cast failed: {e}"))
                })?
            };
            if !spec.nullable && array.null_count() > 0 {
                return Err(Error::schema(
                    file,
                    self.name,
                    spec.name,
                    format!("{} nulls in a required column", array.null_count()),
                ));
            }
            fields.push(Field::new(spec.name, target, spec.nullable));
            arrays.push(array);
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            self.arrow_schema().metadata().clone(),
        ));
        RecordBatch::try_new(schema, arrays).map_err(|e| Error::arrow(file, e))
    }

    /// Markdown table of the columns, for docs/artifacts.md.
    pub fn markdown(&self) -> String {
        let mut s = String::from("| column | type | nullable | meaning |\n|---|---|---|---|\n");
        for c in self.columns {
            let ty = match c.ty {
                ColType::Utf8 => "Utf8".to_string(),
                ColType::ListUtf8 => "List<Utf8>".to_string(),
                ColType::VectorF32 => "FixedSizeList<Float32>".to_string(),
                other => format!("{}", other.canonical()),
            };
            s.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                c.name,
                ty,
                if c.nullable { "yes" } else { "no" },
                c.doc
            ));
        }
        s
    }
}
