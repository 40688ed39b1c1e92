//! Markdown rendering of report tables.

use polars::prelude::{AnyValue, DataFrame};

/// A Markdown table of every column of `df`; floats with `digits` decimals, nulls as `–`.
pub fn table(df: &DataFrame, digits: usize) -> String {
    let cols = df.columns();
    let mut s = String::new();
    s.push('|');
    for c in cols {
        s.push_str(&format!(" {} |", c.name()));
    }
    s.push_str("\n|");
    for c in cols {
        let numeric = c.dtype().is_primitive_numeric();
        s.push_str(if numeric { "---:|" } else { "---|" });
    }
    s.push('\n');
    for i in 0..df.height() {
        s.push('|');
        for c in cols {
            let cell = match c.get(i) {
                Ok(v) => cell(&v, digits),
                Err(_) => "–".to_string(),
            };
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }
    s
}

fn cell(v: &AnyValue, digits: usize) -> String {
    match v {
        AnyValue::Null => "–".into(),
        AnyValue::Float64(x) => fmt_f(*x, digits),
        AnyValue::Float32(x) => fmt_f(*x as f64, digits),
        AnyValue::String(x) => x.replace('|', "\\|"),
        AnyValue::StringOwned(x) => x.replace('|', "\\|"),
        other => other.to_string(),
    }
}

fn fmt_f(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{x:.digits$}")
    }
}
