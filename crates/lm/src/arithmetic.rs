//! The arithmetic option of the frozen projections.

/// How a model's frozen projections multiply on the plain CPU.
///
/// `exact` multiplies the f32 values of the file's weights (bit-reproducible; training and
/// everything that compares states always use it). `quantized` multiplies the file's own
/// integer codes by int8-quantized activations (`mosr_kernels::quant`): the same weights,
/// the activations rounded to 8 bits per group of 16 or 32, for volume work (evaluation and
/// response generation). Only GGUF files with integer-coded weights have codes; the
/// projections of other types stay exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arithmetic {
    #[default]
    Exact,
    Quantized,
}

impl Arithmetic {
    pub fn is_exact(&self) -> bool {
        *self == Arithmetic::Exact
    }

    /// What stage and group keys record of the arithmetic: nothing while exact (keys made
    /// before the option existed stay valid), else its name and the version of its kernels
    /// (`mosr_kernels::quant::VERSION`), so answers of an older quantized arithmetic are
    /// never reused.
    pub fn key(&self) -> Option<String> {
        match self {
            Arithmetic::Exact => None,
            Arithmetic::Quantized => Some(format!("quantized-v{}", mosr_kernels::quant::VERSION)),
        }
    }
}

impl std::str::FromStr for Arithmetic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Self::Exact),
            "quantized" => Ok(Self::Quantized),
            other => Err(format!("unknown arithmetic `{other}` (exact, quantized)")),
        }
    }
}
