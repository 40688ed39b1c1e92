//! Columns of a report table as plain vectors, for the sections that format them cell by cell.

use anyhow::{Context, Result};
use polars::prelude::{AnyValue, DataFrame, DataType};

/// Column `name` of `df` as strings (any string encoding), naming the column on error.
pub fn strs(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df
        .column(name)
        .with_context(|| format!("column `{name}` missing"))?;
    let c = c.cast(&DataType::String)?;
    (0..c.len())
        .map(|i| {
            Ok(match c.get(i)? {
                AnyValue::String(v) => v.to_string(),
                AnyValue::StringOwned(v) => v.to_string(),
                _ => String::new(),
            })
        })
        .collect()
}

/// Column `name` as f64 (nulls as NaN).
pub fn f64s(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let c = df
        .column(name)
        .with_context(|| format!("column `{name}` missing"))?;
    let c = c.cast(&DataType::Float64)?;
    (0..c.len())
        .map(|i| {
            Ok(match c.get(i)? {
                AnyValue::Float64(v) => v,
                _ => f64::NAN,
            })
        })
        .collect()
}
