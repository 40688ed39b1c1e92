//! GGUF metadata values.

/// One metadata value, typed exactly as stored (GGUF value types 0-12).
///
/// Arrays keep their elements as `MetaValue`s (an empty array loses its element type, which no
/// consumer needs). Typed access with conversions lives on [`crate::GgufFile`] (`get_u32`, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

/// GGUF value type codes (`enum gguf_type`).
pub(crate) mod code {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl MetaValue {
    /// The GGUF value type code of this value.
    pub fn type_code(&self) -> u32 {
        match self {
            MetaValue::U8(_) => code::U8,
            MetaValue::I8(_) => code::I8,
            MetaValue::U16(_) => code::U16,
            MetaValue::I16(_) => code::I16,
            MetaValue::U32(_) => code::U32,
            MetaValue::I32(_) => code::I32,
            MetaValue::U64(_) => code::U64,
            MetaValue::I64(_) => code::I64,
            MetaValue::F32(_) => code::F32,
            MetaValue::F64(_) => code::F64,
            MetaValue::Bool(_) => code::BOOL,
            MetaValue::String(_) => code::STRING,
            MetaValue::Array(_) => code::ARRAY,
        }
    }

    /// A short type name for error messages: `u32`, `string`, `array<string>`, ...
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(items) => match items.first() {
                Some(first) => format!("array<{}>[{}]", first.type_name(), items.len()),
                None => "empty array".to_owned(),
            },
            other => scalar_type_name(other.type_code()).to_owned(),
        }
    }

    /// Any integer value (not bool), widened.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// An `F32` or `F64` value, widened.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

pub(crate) fn scalar_type_name(code: u32) -> &'static str {
    match code {
        code::U8 => "u8",
        code::I8 => "i8",
        code::U16 => "u16",
        code::I16 => "i16",
        code::U32 => "u32",
        code::I32 => "i32",
        code::F32 => "f32",
        code::BOOL => "bool",
        code::STRING => "string",
        code::ARRAY => "array",
        code::U64 => "u64",
        code::I64 => "i64",
        code::F64 => "f64",
        _ => "unknown",
    }
}

macro_rules! from_scalar {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for MetaValue {
            fn from(v: $t) -> Self {
                MetaValue::$v(v)
            }
        })*
    };
}

from_scalar!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64,
    f32 => F32, f64 => F64, bool => Bool, String => String,
);

impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        MetaValue::String(v.to_owned())
    }
}

impl<T: Into<MetaValue>> From<Vec<T>> for MetaValue {
    fn from(v: Vec<T>) -> Self {
        MetaValue::Array(v.into_iter().map(Into::into).collect())
    }
}
