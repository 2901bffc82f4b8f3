//! [`QuantizedTensor`]: a row-major matrix in any [`Format`], stored as GGUF stores it.

use half::{bf16, f16};

use crate::blocks::{self, Block, BlockQ4_0, BlockQ4_1, BlockQ8_0};
use crate::error::{KernelError, Result};
use crate::format::Format;
use crate::quantize;

/// A row-major `[rows, cols]` matrix in one [`Format`]: blocks run along a row, and the bytes are
/// exactly those a GGUF file stores (little-endian).
///
/// Every tensor holds finite values only: [`quantize`](Self::quantize) rejects NaN and infinity
/// and values whose encoding would overflow, and [`from_bytes`](Self::from_bytes) rejects bytes
/// with non-finite scales or values. The bytes are kept 8-byte aligned, so
/// [`blocks::cast_blocks`] on [`row_bytes`](Self::row_bytes) always succeeds for the matching
/// block type.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Format, QuantizedTensor, error_stats};
///
/// let (rows, cols) = (4, 64);
/// let x: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.1).cos()).collect();
/// let t = QuantizedTensor::quantize(Format::Q4_0, rows, cols, &x)?;
/// assert_eq!(t.byte_len(), rows * cols / 32 * 18);
///
/// let y = t.to_f32();
/// let stats = error_stats(&x, &y)?;
/// assert!(stats.sqnr_db > 15.0 && stats.cosine > 0.99);
///
/// let t8 = t.convert(Format::Q8_0)?; // through f32
/// assert_eq!(t8.format(), Format::Q8_0);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    format: Format,
    rows: usize,
    cols: usize,
    data: AlignedBytes,
}

impl QuantizedTensor {
    /// Quantizes (or converts) row-major `values` of shape `[rows, cols]` into `format`.
    ///
    /// # Errors
    ///
    /// - [`KernelError::RowLengthNotBlockMultiple`] when `format` is a block format and `cols` is
    ///   not a multiple of 32;
    /// - [`KernelError::ShapeMismatch`] when `values.len() != rows * cols`;
    /// - [`KernelError::NonFinite`] naming the first NaN or infinite value;
    /// - [`KernelError::OutOfRange`] when a value (F16, BF16) or a block's scale or minimum
    ///   (Q8_0, Q4_0, Q4_1) would overflow to infinity in its 16-bit encoding;
    /// - [`KernelError::SizeOverflow`] when the shape cannot be addressed.
    pub fn quantize(format: Format, rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        let (n, nbytes) = checked_shape(format, rows, cols)?;
        if values.len() != n {
            return Err(KernelError::ShapeMismatch {
                what: "values",
                expected: n,
                actual: values.len(),
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite {
                index,
                value: values[index],
            });
        }
        let mut data = AlignedBytes::zeroed(nbytes);
        let bytes = data.as_mut_slice();
        match format {
            Format::F32 => {
                for (b, v) in bytes.chunks_exact_mut(4).zip(values) {
                    b.copy_from_slice(&v.to_le_bytes());
                }
            }
            Format::F16 => {
                let out = cast_mut::<f16>(bytes);
                quantize::f32_to_f16(values, out);
                if let Some(index) = out.iter().position(|h| h.is_infinite()) {
                    return Err(out_of_range(format, index, values[index]));
                }
            }
            Format::BF16 => {
                let out = cast_mut::<bf16>(bytes);
                quantize::f32_to_bf16(values, out);
                if let Some(index) = out.iter().position(|h| h.is_infinite()) {
                    return Err(out_of_range(format, index, values[index]));
                }
            }
            Format::Q8_0 => {
                let out = blocks::cast_blocks_mut::<BlockQ8_0>(bytes)?;
                quantize::quantize_row_q8_0(values, out);
                check_scales(format, values, out.iter().map(|b| [b.d, f16::ZERO]))?;
            }
            Format::Q4_0 => {
                let out = blocks::cast_blocks_mut::<BlockQ4_0>(bytes)?;
                quantize::quantize_row_q4_0(values, out);
                check_scales(format, values, out.iter().map(|b| [b.d, f16::ZERO]))?;
            }
            Format::Q4_1 => {
                let out = blocks::cast_blocks_mut::<BlockQ4_1>(bytes)?;
                quantize::quantize_row_q4_1(values, out);
                check_scales(format, values, out.iter().map(|b| [b.d, b.m]))?;
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// Wraps bytes in GGUF layout (as [`as_bytes`](Self::as_bytes) returns them), checking them.
    ///
    /// # Errors
    ///
    /// - [`KernelError::RowLengthNotBlockMultiple`] and [`KernelError::SizeOverflow`] as for
    ///   [`quantize`](Self::quantize);
    /// - [`KernelError::InvalidData`] when the byte length is not the shape's, or a scale,
    ///   minimum or value is NaN or infinite (as ggml's `ggml_validate_row_data` checks).
    pub fn from_bytes(format: Format, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let (_, nbytes) = checked_shape(format, rows, cols)?;
        if data.len() != nbytes {
            return Err(KernelError::InvalidData(format!(
                "{} bytes for a [{rows}, {cols}] {format} tensor, which takes {nbytes}",
                data.len()
            )));
        }
        let data = AlignedBytes::from_slice(&data);
        let bytes = data.as_slice();
        let bad = match format {
            Format::F32 => bytes
                .chunks_exact(4)
                .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            Format::F16 => cast::<f16>(bytes).iter().position(|h| !h.is_finite()),
            Format::BF16 => cast::<bf16>(bytes).iter().position(|h| !h.is_finite()),
            Format::Q8_0 => blocks::cast_blocks::<BlockQ8_0>(bytes)?
                .iter()
                .position(|b| !b.d.is_finite()),
            Format::Q4_0 => blocks::cast_blocks::<BlockQ4_0>(bytes)?
                .iter()
                .position(|b| !b.d.is_finite()),
            Format::Q4_1 => blocks::cast_blocks::<BlockQ4_1>(bytes)?
                .iter()
                .position(|b| !b.d.is_finite() || !b.m.is_finite()),
        };
        if let Some(i) = bad {
            let what = if format.is_block() { "block" } else { "value" };
            return Err(KernelError::InvalidData(format!(
                "{format} {what} {i} holds a NaN or infinite number"
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The storage format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of values in a row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of values, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, exactly as a GGUF file stores them.
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// Number of bytes.
    pub fn byte_len(&self) -> usize {
        self.data.len
    }

    /// Bytes of one row (`format.row_bytes(cols)` of them); empty when `row >= rows`.
    ///
    /// The slice is 8-byte aligned whenever the row's byte offset is (always 2-byte aligned), so
    /// [`blocks::cast_blocks`] accepts it.
    pub fn row_bytes(&self, row: usize) -> &[u8] {
        let rb = self.data.len.checked_div(self.rows).unwrap_or(0);
        let start = row.saturating_mul(rb);
        self.as_bytes()
            .get(start..start.saturating_add(rb))
            .unwrap_or(&[])
    }

    /// The blocks of one row, when the tensor's format is `B`'s.
    ///
    /// # Errors
    ///
    /// [`KernelError::UnsupportedConversion`] when the tensor is not in `B::FORMAT`;
    /// [`KernelError::ShapeMismatch`] when `row >= rows`.
    pub fn row_blocks<B: Block>(&self, row: usize) -> Result<&[B]> {
        if self.format != B::FORMAT {
            return Err(KernelError::UnsupportedConversion {
                from: self.format,
                to: B::FORMAT,
            });
        }
        if row >= self.rows {
            return Err(KernelError::ShapeMismatch {
                what: "row",
                expected: self.rows,
                actual: row,
            });
        }
        blocks::cast_blocks(self.row_bytes(row))
    }

    /// All blocks, row after row, when the tensor's format is `B`'s.
    ///
    /// # Errors
    ///
    /// [`KernelError::UnsupportedConversion`] when the tensor is not in `B::FORMAT`.
    pub fn blocks<B: Block>(&self) -> Result<&[B]> {
        if self.format != B::FORMAT {
            return Err(KernelError::UnsupportedConversion {
                from: self.format,
                to: B::FORMAT,
            });
        }
        blocks::cast_blocks(self.as_bytes())
    }

    /// Dequantizes (or converts) every value into `out`, row-major.
    ///
    /// # Errors
    ///
    /// [`KernelError::ShapeMismatch`] when `out.len() != rows * cols`.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len() {
            return Err(KernelError::ShapeMismatch {
                what: "out",
                expected: self.len(),
                actual: out.len(),
            });
        }
        let bytes = self.as_bytes();
        match self.format {
            Format::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Format::F16 => quantize::f16_to_f32(cast::<f16>(bytes), out),
            Format::BF16 => quantize::bf16_to_f32(cast::<bf16>(bytes), out),
            Format::Q8_0 => quantize::dequantize_row_q8_0(blocks::cast_blocks(bytes)?, out),
            Format::Q4_0 => quantize::dequantize_row_q4_0(blocks::cast_blocks(bytes)?, out),
            Format::Q4_1 => quantize::dequantize_row_q4_1(blocks::cast_blocks(bytes)?, out),
        }
        Ok(())
    }

    /// Every value as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        // The length is right by construction, so this cannot fail.
        let _ = self.dequantize_into(&mut out);
        out
    }

    /// The same matrix in another format, through f32 (a clone when `to` is the same format).
    ///
    /// # Errors
    ///
    /// As [`quantize`](Self::quantize): a row length that `to` cannot block, or values out of
    /// `to`'s range.
    pub fn convert(&self, to: Format) -> Result<Self> {
        if to == self.format {
            return Ok(self.clone());
        }
        QuantizedTensor::quantize(to, self.rows, self.cols, &self.to_f32())
    }
}

/// Element count and byte count of a shape, checked.
fn checked_shape(format: Format, rows: usize, cols: usize) -> Result<(usize, usize)> {
    let row_bytes = format.row_bytes(cols).map_err(|e| match e {
        KernelError::SizeOverflow { .. } => KernelError::SizeOverflow { rows, cols },
        other => other,
    })?;
    let n = rows
        .checked_mul(cols)
        .ok_or(KernelError::SizeOverflow { rows, cols })?;
    let nbytes = rows
        .checked_mul(row_bytes)
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or(KernelError::SizeOverflow { rows, cols })?;
    Ok((n, nbytes))
}

fn out_of_range(format: Format, index: usize, value: f32) -> KernelError {
    KernelError::OutOfRange {
        format,
        index,
        value,
    }
}

/// Fails on the first block whose f16 scale or minimum overflowed.
fn check_scales(
    format: Format,
    values: &[f32],
    scales: impl Iterator<Item = [f16; 2]>,
) -> Result<()> {
    for (i, [d, m]) in scales.enumerate() {
        if !d.is_finite() || !m.is_finite() {
            // Name the value that overflowed the scale: the block's largest in magnitude.
            let block = &values[i * 32..(i + 1) * 32];
            let (offset, value) =
                block
                    .iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, 0.0f32),
                        |(j, a), (k, v)| if v.abs() > a.abs() { (k, v) } else { (j, a) },
                    );
            return Err(out_of_range(format, i * 32 + offset, value));
        }
    }
    Ok(())
}

/// A 16-bit float type that bytes can be viewed as.
trait Half: Copy + 'static {}
impl Half for f16 {}
impl Half for bf16 {}

fn cast<T: Half>(bytes: &[u8]) -> &[T] {
    debug_assert!(bytes.as_ptr().align_offset(2) == 0 && bytes.len().is_multiple_of(2));
    // SAFETY: `T` is `f16` or `bf16`: 2 bytes, alignment 2, every bit pattern valid. The bytes
    // come from an `AlignedBytes` (8-byte aligned start) and hold whole 2-byte values (the F16 and
    // BF16 byte counts are `2 * n`). The slice borrows `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / 2) }
}

fn cast_mut<T: Half>(bytes: &mut [u8]) -> &mut [T] {
    debug_assert!(bytes.as_ptr().align_offset(2) == 0 && bytes.len().is_multiple_of(2));
    // SAFETY: as `cast`; the borrow is exclusive, and any value written is a valid byte pattern.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / 2) }
}

/// Bytes in 8-byte aligned storage, so that they can be viewed as blocks, `f16` or `f32`.
#[derive(Clone, Debug, PartialEq)]
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    fn from_slice(bytes: &[u8]) -> Self {
        let mut s = Self::zeroed(bytes.len());
        s.as_mut_slice().copy_from_slice(bytes);
        s
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds `len.div_ceil(8) * 8 >= len` initialised bytes (zeroed at
        // construction), `u8` has alignment 1, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; the borrow is exclusive and every byte pattern is a valid `u64`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}
