//! Whole-column accessors over a batch returned by [`crate::read_table`] (types are canonical
//! after conforming, so a wrong type here is a bug, not bad input).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("conformed batch lacks column {name}"))
        .as_ref()
}

/// A Utf8 column (nulls as empty strings).
pub fn strs(b: &RecordBatch, name: &str) -> Vec<String> {
    let a = col(b, name).as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

pub fn f64s(b: &RecordBatch, name: &str) -> Vec<f64> {
    col(b, name).as_primitive::<Float64Type>().values().to_vec()
}

pub fn i32s(b: &RecordBatch, name: &str) -> Vec<i32> {
    col(b, name).as_primitive::<Int32Type>().values().to_vec()
}

pub fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    col(b, name).as_primitive::<Int64Type>().values().to_vec()
}
