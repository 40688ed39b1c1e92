//! Tables declared once. [`table!`](crate::table) declares a table's row type and its schema
//! from one list of columns; [`Row`] gives every such table the same writer ([`write_rows`])
//! and reader ([`read_rows`]). A column is a field: its name, its Rust type (which fixes the
//! Arrow type and whether it may be null, see [`Cell`]) and what it means. Adding a column is
//! one line in the declaration; the schema, writer and reader follow.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, Float64Array,
    Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema};

use crate::error::{Error, Result};
use crate::parquet_io::{for_each_batch, read_table, write_parquet};
use crate::schema::{ColType, TableSchema};

/// A Rust type stored as one column: its logical type, whether it may be null (the `Option`s),
/// and how a column of it is built and read back (from a conformed batch, so canonical types).
pub trait Cell: Sized {
    const TY: ColType;
    const NULLABLE: bool = false;
    /// The column of `values`; an error says why they do not make one (vectors of different
    /// widths).
    fn column<'a>(values: impl Iterator<Item = &'a Self>) -> std::result::Result<ArrayRef, String>
    where
        Self: 'a;
    /// The column's values; an error names what is wrong with them.
    fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String>;
}

/// A row type declared with [`table!`](crate::table).
pub trait Row: Sized {
    const TABLE: &'static TableSchema;
    /// One array per column, in the table's order; an error names the column.
    fn columns(rows: &[Self]) -> std::result::Result<Vec<ArrayRef>, (&'static str, String)>;
    /// The rows of a conformed batch; an error names the column.
    fn from_batch(b: &RecordBatch) -> std::result::Result<Vec<Self>, (&'static str, String)>;
}

/// `rows` as one record batch of their table (`path` names the file in errors). The schema is
/// the table's, with each vector column's width taken from its rows.
pub fn record_batch<R: Row>(rows: &[R], path: &Path) -> Result<RecordBatch> {
    let table = R::TABLE;
    let columns = R::columns(rows).map_err(|(col, e)| Error::schema(path, table.name, col, e))?;
    let fields: Vec<Field> = table
        .columns
        .iter()
        .zip(&columns)
        .map(|(c, a)| Field::new(c.name, a.data_type().clone(), c.nullable))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        table.arrow_schema().metadata().clone(),
    ));
    RecordBatch::try_new(schema, columns).map_err(|e| Error::arrow(path, e))
}

/// Writes `rows` as their table's Parquet file (atomically, see [`write_parquet`]).
pub fn write_rows<R: Row>(path: &Path, rows: &[R]) -> Result<()> {
    let b = record_batch(rows, path)?;
    write_parquet(path, b.schema(), &[b])
}

/// Reads a table's rows one stored batch at a time, validated against its schema, so a large
/// table (an 8B model's representations) is never in memory whole.
pub fn for_each_rows<R: Row>(
    path: &Path,
    mut f: impl FnMut(Vec<R>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for_each_batch(path, R::TABLE, |b| {
        f(R::from_batch(b).map_err(|(col, e)| Error::schema(path, R::TABLE.name, col, e))?)
    })
}

/// Reads every row of a table's Parquet file, validated against its schema.
pub fn read_rows<R: Row>(path: &Path) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for b in read_table(path, R::TABLE)? {
        let rows =
            R::from_batch(&b).map_err(|(col, e)| Error::schema(path, R::TABLE.name, col, e))?;
        out.extend(rows);
    }
    Ok(out)
}

impl Cell for String {
    const TY: ColType = ColType::Utf8;
    fn column<'a>(values: impl Iterator<Item = &'a Self>) -> std::result::Result<ArrayRef, String> {
        Ok(Arc::new(
            values.map(|v| Some(v.as_str())).collect::<StringArray>(),
        ))
    }
    fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
        let a = col.as_string::<i32>();
        Ok((0..a.len()).map(|i| a.value(i).to_string()).collect())
    }
}

impl Cell for Option<String> {
    const TY: ColType = ColType::Utf8;
    const NULLABLE: bool = true;
    fn column<'a>(values: impl Iterator<Item = &'a Self>) -> std::result::Result<ArrayRef, String> {
        Ok(Arc::new(
            values.map(|v| v.as_deref()).collect::<StringArray>(),
        ))
    }
    fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
        let a = col.as_string::<i32>();
        Ok((0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect())
    }
}

impl Cell for Vec<String> {
    const TY: ColType = ColType::ListUtf8;
    fn column<'a>(values: impl Iterator<Item = &'a Self>) -> std::result::Result<ArrayRef, String> {
        let mut b = ListBuilder::new(StringBuilder::new());
        for v in values {
            for s in v {
                b.values().append_value(s);
            }
            b.append(true);
        }
        Ok(Arc::new(b.finish()))
    }
    fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
        let a = col.as_list::<i32>();
        Ok((0..a.len())
            .map(|i| {
                let list = a.value(i);
                let items = list.as_string::<i32>();
                (0..items.len())
                    .map(|j| items.value(j).to_string())
                    .collect()
            })
            .collect())
    }
}

/// A vector (a hidden state, a probe's weights): a `FixedSizeList<Float32>` column whose width
/// is its rows' length, which must be the same in every row.
impl Cell for Vec<f32> {
    const TY: ColType = ColType::VectorF32;
    fn column<'a>(values: impl Iterator<Item = &'a Self>) -> std::result::Result<ArrayRef, String> {
        let mut values = values.peekable();
        let width = values.peek().map_or(0, |v| v.len());
        let mut flat = Vec::new();
        for v in values {
            if v.len() != width {
                return Err(format!(
                    "vectors of width {} and {width} in one column",
                    v.len()
                ));
            }
            flat.extend_from_slice(v);
        }
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let values = Arc::new(Float32Array::from(flat));
        let list = FixedSizeListArray::try_new(item, width as i32, values, None)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(list))
    }
    fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
        let a = col.as_fixed_size_list();
        let width = a.value_length() as usize;
        let flat = a.values().as_primitive::<Float32Type>().values();
        if width == 0 {
            return Ok(vec![Vec::new(); a.len()]);
        }
        let start = a.offset() * width;
        Ok(flat[start..start + a.len() * width]
            .chunks(width)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

impl Cell for bool {
    const TY: ColType = ColType::Bool;
    fn column<'a>(values: impl Iterator<Item = &'a Self>) -> std::result::Result<ArrayRef, String> {
        Ok(Arc::new(values.map(|v| Some(*v)).collect::<BooleanArray>()))
    }
    fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
        let a = col.as_boolean();
        Ok((0..a.len()).map(|i| a.value(i)).collect())
    }
}

/// Numbers, plain (required) and optional (nullable).
macro_rules! number_cell {
    ($t:ty, $col:ident, $array:ty, $arrow:ty) => {
        impl Cell for $t {
            const TY: ColType = ColType::$col;
            fn column<'a>(
                values: impl Iterator<Item = &'a Self>,
            ) -> std::result::Result<ArrayRef, String> {
                Ok(Arc::new(values.map(|v| Some(*v)).collect::<$array>()))
            }
            fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
                Ok(col.as_primitive::<$arrow>().values().to_vec())
            }
        }
        impl Cell for Option<$t> {
            const TY: ColType = ColType::$col;
            const NULLABLE: bool = true;
            fn column<'a>(
                values: impl Iterator<Item = &'a Self>,
            ) -> std::result::Result<ArrayRef, String> {
                Ok(Arc::new(values.copied().collect::<$array>()))
            }
            fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
                let a = col.as_primitive::<$arrow>();
                Ok((0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect())
            }
        }
    };
}
number_cell!(i32, Int32, Int32Array, Int32Type);
number_cell!(i64, Int64, Int64Array, Int64Type);
number_cell!(f32, Float32, Float32Array, Float32Type);
number_cell!(f64, Float64, Float64Array, Float64Type);
