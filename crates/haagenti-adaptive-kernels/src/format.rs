//! The storage formats a tensor can have, and their GGUF identities.

use std::fmt;
use std::str::FromStr;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::blocks::QK;
use crate::error::{KernelError, ParseFormatError, Result};

/// A tensor storage format, byte-compatible with the GGUF type of the same name.
///
/// Serialized (serde) as its [`name`](Format::name), e.g. `"q8_0"`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_kernels::Format;
///
/// let f = Format::from(Precision::INT4);
/// assert_eq!(f, Format::Q4_0);
/// assert_eq!(f.effective_bits(), 4.5);
/// assert_eq!(f.row_bytes(4096)?, 4096 / 32 * 18);
/// assert_eq!("q4_0".parse::<Format>().unwrap(), f);
/// assert!(Format::Q8_0.row_bytes(33).is_err());
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
#[allow(
    non_camel_case_types,
    reason = "GGUF's own spelling (Q8_0), which users search for"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// IEEE 754 binary32, little-endian.
    F32,
    /// IEEE 754 binary16, little-endian.
    F16,
    /// bfloat16 (the upper half of an f32), little-endian.
    BF16,
    /// 32-value blocks of `i8` with an f16 scale: 34 bytes a block.
    Q8_0,
    /// 32-value blocks of 4-bit values with an f16 scale: 18 bytes a block.
    Q4_0,
    /// 32-value blocks of 4-bit values with an f16 scale and an f16 minimum: 20 bytes a block.
    Q4_1,
}

impl Format {
    /// Every format, widest first.
    pub const ALL: [Format; 6] = [
        Format::F32,
        Format::F16,
        Format::BF16,
        Format::Q8_0,
        Format::Q4_1,
        Format::Q4_0,
    ];

    /// Values a block holds: 1 for the float formats, 32 for the block formats.
    pub const fn block_len(self) -> usize {
        match self {
            Format::F32 | Format::F16 | Format::BF16 => 1,
            Format::Q8_0 | Format::Q4_0 | Format::Q4_1 => QK,
        }
    }

    /// Bytes a block takes: 4, 2, 2, 34, 18, 20.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::F16 | Format::BF16 => 2,
            Format::Q8_0 => 34,
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
        }
    }

    /// Bits a value takes, counting each block's scale and minimum: 32, 16, 16, 8.5, 4.5, 5.
    pub const fn effective_bits(self) -> f32 {
        match self {
            Format::F32 => 32.0,
            Format::F16 | Format::BF16 => 16.0,
            Format::Q8_0 => 8.5,
            Format::Q4_0 => 4.5,
            Format::Q4_1 => 5.0,
        }
    }

    /// The GGML type id written in GGUF files: F32 0, F16 1, Q4_0 2, Q4_1 3, Q8_0 8, BF16 30.
    pub const fn ggml_type(self) -> u32 {
        match self {
            Format::F32 => 0,
            Format::F16 => 1,
            Format::Q4_0 => 2,
            Format::Q4_1 => 3,
            Format::Q8_0 => 8,
            Format::BF16 => 30,
        }
    }

    /// The format of a GGML type id, if it is one of ours.
    pub const fn from_ggml_type(id: u32) -> Option<Format> {
        match id {
            0 => Some(Format::F32),
            1 => Some(Format::F16),
            2 => Some(Format::Q4_0),
            3 => Some(Format::Q4_1),
            8 => Some(Format::Q8_0),
            30 => Some(Format::BF16),
            _ => None,
        }
    }

    /// Whether values are stored in 32-value blocks with scales (`Q8_0`, `Q4_0`, `Q4_1`).
    pub const fn is_block(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes one row of `cols` values takes.
    ///
    /// # Errors
    ///
    /// [`KernelError::RowLengthNotBlockMultiple`] when `cols` is not a multiple of
    /// [`block_len`](Format::block_len); [`KernelError::SizeOverflow`] when the count overflows.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return Err(KernelError::RowLengthNotBlockMultiple { format: self, cols });
        }
        (cols / self.block_len())
            .checked_mul(self.block_bytes())
            .ok_or(KernelError::SizeOverflow { rows: 1, cols })
    }

    /// The format a precision label runs at: INT4 -> `Q4_0`, INT8 -> `Q8_0`, FP16 -> `F16`,
    /// BF16 -> `BF16`, FP32 -> `F32`.
    pub fn from_precision(p: Precision) -> Format {
        match p {
            Precision::INT4 => Format::Q4_0,
            Precision::INT8 => Format::Q8_0,
            Precision::BF16 => Format::BF16,
            Precision::FP16 => Format::F16,
            Precision::FP32 => Format::F32,
        }
    }

    /// The lowercase GGML name: `"f32"`, `"f16"`, `"bf16"`, `"q8_0"`, `"q4_0"`, `"q4_1"`.
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::BF16 => "bf16",
            Format::Q8_0 => "q8_0",
            Format::Q4_0 => "q4_0",
            Format::Q4_1 => "q4_1",
        }
    }
}

impl From<Precision> for Format {
    fn from(p: Precision) -> Self {
        Format::from_precision(p)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = ParseFormatError;

    /// Parses a [`name`](Format::name), in any case.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseFormatError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_agree_with_bits() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string().to_uppercase().parse::<Format>().unwrap(), f);
            assert_eq!(Format::from_ggml_type(f.ggml_type()), Some(f));
            let bits = (f.block_bytes() * 8) as f32 / f.block_len() as f32;
            assert_eq!(bits, f.effective_bits(), "{f}");
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.name()));
        }
        assert!("q5_0".parse::<Format>().is_err());
    }

    #[test]
    fn row_bytes_checks_block_multiple() {
        assert_eq!(Format::Q8_0.row_bytes(64), Ok(68));
        assert_eq!(Format::F16.row_bytes(3), Ok(6));
        assert_eq!(Format::Q4_1.row_bytes(0), Ok(0));
        assert_eq!(
            Format::Q4_0.row_bytes(48),
            Err(KernelError::RowLengthNotBlockMultiple {
                format: Format::Q4_0,
                cols: 48
            })
        );
        assert!(Format::F32.row_bytes(usize::MAX).is_err());
    }
}
