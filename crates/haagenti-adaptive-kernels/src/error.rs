//! The error type of the kernels crate.

use crate::Format;

/// Errors of quantization, dequantization, conversion and matmul.
///
/// Every check on caller input returns one of these; no public function panics on bad input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A row length that does not split into whole 32-value blocks of a block format.
    #[error("row length {cols} is not a multiple of 32, as {format} needs")]
    RowLengthNotBlockMultiple {
        /// The block format asked for.
        format: Format,
        /// The row length given.
        cols: usize,
    },

    /// Two lengths that must agree and do not.
    #[error("{what} has length {actual}, expected {expected}")]
    ShapeMismatch {
        /// What was measured, e.g. `"values"` or `"out"`.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length given.
        actual: usize,
    },

    /// A NaN or infinite input value; `index` is the first one, in row-major order.
    #[error("value at index {index} is {value}: only finite values can be quantized")]
    NonFinite {
        /// Row-major index of the first non-finite value.
        index: usize,
        /// The value found there.
        value: f32,
    },

    /// A finite value whose encoding overflows the format: an f16 or bf16 value that would round to
    /// infinity, or a block whose f16 scale (or minimum) would.
    #[error("value at index {index} is {value}: out of range for {format}")]
    OutOfRange {
        /// The format asked for.
        format: Format,
        /// Row-major index of the first value concerned (for block formats, the value of largest
        /// magnitude in the first block concerned).
        index: usize,
        /// The value found there (for block formats, the block's value of largest magnitude).
        value: f32,
    },

    /// Bytes that cannot be the encoding of a tensor: a wrong length, a NaN or infinite scale.
    #[error("invalid data: {0}")]
    InvalidData(String),

    /// A conversion between two formats that is not supported.
    #[error("conversion from {from} to {to} is not supported")]
    UnsupportedConversion {
        /// Format converted from.
        from: Format,
        /// Format converted to.
        to: Format,
    },

    /// A shape whose element or byte count does not fit in `usize`.
    #[error("shape [{rows}, {cols}] is too large to address")]
    SizeOverflow {
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        cols: usize,
    },

    /// Convolution parameters that give no output: a zero stride, an empty kernel window, or a
    /// window larger than the padded input.
    #[error("invalid convolution: {reason}")]
    InvalidConvolution {
        /// What is wrong.
        reason: &'static str,
    },
}

/// `Result` with [`KernelError`].
pub type Result<T> = std::result::Result<T, KernelError>;

/// A string that names no [`Format`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}: expected one of f32, f16, bf16, q8_0, q4_0, q4_1")]
pub struct ParseFormatError(pub String);
