//! The precisions a diffusion step can run at.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Numeric precision for one denoising step.
///
/// Ordered by fidelity: `INT4 < INT8 < BF16 < FP16 < FP32`. BF16 sits below FP16 because it keeps
/// 8 mantissa bits where FP16 keeps 11: it trades precision for range.
///
/// Each label maps to a real storage format in `haagenti-adaptive-kernels`: INT4 is GGUF `Q4_0`
/// (32-value blocks of 4-bit values with an f16 scale), INT8 is `Q8_0`, the float labels are plain
/// `f16`, `bf16` and `f32`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
///
/// let p: Precision = "bfloat16".parse().unwrap();
/// assert_eq!(p, Precision::BF16);
/// assert_eq!(p.to_string(), "BF16");
/// assert!(Precision::INT4 < Precision::FP32);
/// // Nominal bits against f32, and the figure that counts each block's f16 scale.
/// assert_eq!(Precision::INT4.vram_ratio(), 0.125);
/// assert_eq!(Precision::INT4.effective_bits(), 4.5);
/// ```
#[allow(
    clippy::upper_case_acronyms,
    reason = "the seed crate's spelling, kept so its users change nothing"
)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Precision {
    /// 4-bit integers in 32-value blocks with an f16 scale (GGUF `Q4_0`).
    INT4,
    /// 8-bit integers in 32-value blocks with an f16 scale (GGUF `Q8_0`).
    INT8,
    /// bfloat16: 8 exponent bits, 7 stored mantissa bits.
    BF16,
    /// IEEE 754 binary16.
    #[default]
    FP16,
    /// IEEE 754 binary32, the reference.
    FP32,
}

impl Precision {
    /// Every precision, in fidelity order.
    pub const ALL: [Precision; 5] = [
        Precision::INT4,
        Precision::INT8,
        Precision::BF16,
        Precision::FP16,
        Precision::FP32,
    ];

    /// Nominal bits a value, ignoring block scales.
    pub const fn bits(self) -> u32 {
        match self {
            Precision::INT4 => 4,
            Precision::INT8 => 8,
            Precision::BF16 | Precision::FP16 => 16,
            Precision::FP32 => 32,
        }
    }

    /// Nominal bytes a value (`bits() / 8`, so 0.5 for INT4).
    pub fn bytes(self) -> f32 {
        self.bits() as f32 / 8.0
    }

    /// Bits a weight as stored, counting the per-block scales of the integer formats.
    ///
    /// A `Q4_0` block holds 32 four-bit values and one f16 scale: 18 bytes, 4.5 bits a weight.
    /// A `Q8_0` block holds 32 bytes and one f16 scale: 34 bytes, 8.5 bits a weight. Every memory
    /// estimate in this project uses this figure.
    pub const fn effective_bits(self) -> f32 {
        match self {
            Precision::INT4 => 4.5,
            Precision::INT8 => 8.5,
            Precision::BF16 | Precision::FP16 => 16.0,
            Precision::FP32 => 32.0,
        }
    }

    /// Nominal memory relative to FP32: `bits() / 32`, the seed crate's figure.
    ///
    /// It ignores block scales; see [`Precision::effective_vram_ratio`] for what memory really holds.
    pub fn vram_ratio(self) -> f32 {
        self.bits() as f32 / 32.0
    }

    /// Memory relative to FP32 as stored: `effective_bits() / 32` (0.140625 for INT4).
    pub fn effective_vram_ratio(self) -> f32 {
        self.effective_bits() / 32.0
    }

    /// The seed crate's assumed speed relative to FP32 (INT4 4.0, INT8 2.5, BF16 1.8, FP16 2.0,
    /// FP32 1.0).
    ///
    /// These are heuristics, not measurements: they are what a schedule falls back on when no
    /// measured cost table is given.
    pub const fn speedup_factor(self) -> f32 {
        match self {
            Precision::INT4 => 4.0,
            Precision::INT8 => 2.5,
            Precision::BF16 => 1.8,
            Precision::FP16 => 2.0,
            Precision::FP32 => 1.0,
        }
    }

    /// The seed crate's assumed quality relative to FP32, in `[0, 1]` (INT4 0.92, INT8 0.97,
    /// BF16 0.995, FP16 0.998, FP32 1.0).
    ///
    /// Heuristics, not measurements, like [`Precision::speedup_factor`].
    pub const fn quality_factor(self) -> f32 {
        match self {
            Precision::INT4 => 0.92,
            Precision::INT8 => 0.97,
            Precision::BF16 => 0.995,
            Precision::FP16 => 0.998,
            Precision::FP32 => 1.0,
        }
    }

    /// Whether the precision is lossless or nearly so: the float formats (BF16, FP16, FP32), as
    /// in the seed crate. [`Precision::is_exact`] is true for FP32 alone.
    pub const fn is_lossless(self) -> bool {
        matches!(self, Precision::BF16 | Precision::FP16 | Precision::FP32)
    }

    /// Whether values pass through unchanged: FP32 only, the reference precision.
    pub const fn is_exact(self) -> bool {
        matches!(self, Precision::FP32)
    }

    /// Whether the format is block-quantized integers.
    pub const fn is_integer(self) -> bool {
        matches!(self, Precision::INT4 | Precision::INT8)
    }

    /// The canonical upper-case name (`"INT4"` … `"FP32"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Precision::INT4 => "INT4",
            Precision::INT8 => "INT8",
            Precision::BF16 => "BF16",
            Precision::FP16 => "FP16",
            Precision::FP32 => "FP32",
        }
    }

    /// Parses a name or alias, in any case: `int4`/`i4`/`4bit`, `int8`/`i8`/`8bit`,
    /// `bf16`/`bfloat16`, `fp16`/`f16`/`float16`/`half`, `fp32`/`f32`/`float32`/`full`.
    pub fn parse(name: &str) -> Option<Precision> {
        let lower = name.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "int4" | "i4" | "4bit" => Precision::INT4,
            "int8" | "i8" | "8bit" => Precision::INT8,
            "bf16" | "bfloat16" => Precision::BF16,
            "fp16" | "f16" | "float16" | "half" => Precision::FP16,
            "fp32" | "f32" | "float32" | "full" => Precision::FP32,
            _ => return None,
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error of [`Precision::from_str`]: the name matched no precision or alias.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {0:?} (expected int4, int8, bf16, fp16 or fp32)")]
pub struct ParsePrecisionError(pub String);

impl FromStr for Precision {
    type Err = ParsePrecisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::parse(s).ok_or_else(|| ParsePrecisionError(s.to_owned()))
    }
}

impl From<Precision> for &'static str {
    fn from(p: Precision) -> Self {
        p.as_str()
    }
}

impl TryFrom<String> for Precision {
    type Error = ParsePrecisionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse_in_any_case() {
        for (name, p) in [
            ("INT4", Precision::INT4),
            ("i4", Precision::INT4),
            ("4Bit", Precision::INT4),
            ("int8", Precision::INT8),
            ("I8", Precision::INT8),
            ("8bit", Precision::INT8),
            ("BFloat16", Precision::BF16),
            ("f16", Precision::FP16),
            ("HALF", Precision::FP16),
            ("float16", Precision::FP16),
            ("full", Precision::FP32),
            ("Float32", Precision::FP32),
        ] {
            assert_eq!(name.parse::<Precision>(), Ok(p), "{name}");
        }
        assert!("int3".parse::<Precision>().is_err());
        assert_eq!(Precision::parse(""), None);
    }

    #[test]
    fn display_round_trips_through_parse() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
    }

    #[test]
    fn fidelity_order_and_default() {
        assert!(Precision::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Precision::default(), Precision::FP16);
    }

    #[test]
    fn effective_bits_count_block_scales() {
        // 32 values + one f16 scale per block.
        assert_eq!(Precision::INT4.effective_bits(), (32.0 * 4.0 + 16.0) / 32.0);
        assert_eq!(Precision::INT8.effective_bits(), (32.0 * 8.0 + 16.0) / 32.0);
        for p in Precision::ALL {
            assert!(p.effective_vram_ratio() >= p.vram_ratio());
        }
        assert_eq!(Precision::FP16.vram_ratio(), 0.5);
        assert_eq!(Precision::INT4.bytes(), 0.5);
    }

    #[test]
    fn serde_uses_canonical_names_and_accepts_aliases() {
        assert_eq!(serde_json::to_string(&Precision::BF16).unwrap(), "\"BF16\"");
        let p: Precision = serde_json::from_str("\"half\"").unwrap();
        assert_eq!(p, Precision::FP16);
        assert!(serde_json::from_str::<Precision>("\"int2\"").is_err());
        assert!(serde_json::from_str::<Precision>("3").is_err());
    }
}
