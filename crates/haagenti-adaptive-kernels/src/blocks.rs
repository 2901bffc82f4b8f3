//! GGUF block layouts, byte-compatible with ggml (`ggml-common.h`).

use half::f16;

use crate::error::{KernelError, Result};
use crate::format::Format;

/// Values in one block of every block format.
pub const QK: usize = 32;

/// 32 signed 8-bit values and their f16 scale: `x = d * q`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale, `max|x| / 127`.
    pub d: f16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// 32 unsigned 4-bit values and their f16 scale: `x = d * (q - 8)`.
///
/// Byte `j` of `qs` holds value `j` in its low nibble and value `j + 16` in its high nibble.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale, `v / -8` for the value `v` of largest magnitude.
    pub d: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

/// 32 unsigned 4-bit values with scale and minimum: `x = d * q + m`.
///
/// Nibble order as [`BlockQ4_0`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale, `(max - min) / 15`.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const _: () = assert!(align_of::<BlockQ8_0>() == 2);
const _: () = assert!(align_of::<BlockQ4_0>() == 2);
const _: () = assert!(align_of::<BlockQ4_1>() == 2);

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::BlockQ8_0 {}
    impl Sealed for super::BlockQ4_0 {}
    impl Sealed for super::BlockQ4_1 {}
}

/// A GGUF block type: plain bytes with no padding and no invalid bit patterns.
///
/// Sealed: implemented by [`BlockQ8_0`], [`BlockQ4_0`] and [`BlockQ4_1`] only, which is what makes
/// [`cast_blocks`] sound.
pub trait Block: sealed::Sealed + Copy + Default + 'static {
    /// The format whose blocks these are.
    const FORMAT: Format;
}

impl Block for BlockQ8_0 {
    const FORMAT: Format = Format::Q8_0;
}
impl Block for BlockQ4_0 {
    const FORMAT: Format = Format::Q4_0;
}
impl Block for BlockQ4_1 {
    const FORMAT: Format = Format::Q4_1;
}

/// Views bytes as blocks.
///
/// The bytes are the blocks' in-memory representation, which is GGUF's on little-endian hosts
/// (the only ones this crate builds for).
///
/// # Errors
///
/// [`KernelError::InvalidData`] when the length is not a whole number of blocks or the bytes are
/// not 2-byte aligned (byte slices from [`QuantizedTensor`](crate::QuantizedTensor) always are).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::blocks::{BlockQ8_0, cast_blocks};
/// use haagenti_adaptive_kernels::{Format, QuantizedTensor};
///
/// let t = QuantizedTensor::quantize(Format::Q8_0, 1, 64, &[1.0; 64])?;
/// let blocks: &[BlockQ8_0] = cast_blocks(t.row_bytes(0))?;
/// assert_eq!(blocks.len(), 2);
/// assert_eq!(blocks[0].qs, [127; 32]);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn cast_blocks<B: Block>(bytes: &[u8]) -> Result<&[B]> {
    let size = size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(KernelError::InvalidData(format!(
            "{} bytes are not a whole number of {}-byte {} blocks",
            bytes.len(),
            size,
            B::FORMAT
        )));
    }
    if bytes.as_ptr().align_offset(align_of::<B>()) != 0 {
        return Err(KernelError::InvalidData(format!(
            "{} block bytes are not {}-byte aligned",
            B::FORMAT,
            align_of::<B>()
        )));
    }
    // SAFETY: `B` is one of the three sealed block types: `repr(C)`, no padding (the size asserts
    // above pin 34/18/20 bytes = the sum of the fields), and every bit pattern is a valid `f16`,
    // `i8` or `u8`. The pointer is aligned for `B` (checked), the length is a whole number of
    // blocks (checked), and the returned slice borrows `bytes`, so it lives no longer than them.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}

/// Views blocks as their bytes (GGUF's encoding on little-endian hosts).
pub fn block_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B` has no padding (see `cast_blocks`), so all `size_of_val(blocks)` bytes are
    // initialised; `u8` has alignment 1; the slice borrows `blocks`.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), size_of_val(blocks)) }
}

/// Views mutable bytes as blocks, as [`cast_blocks`].
pub(crate) fn cast_blocks_mut<B: Block>(bytes: &mut [u8]) -> Result<&mut [B]> {
    let n = cast_blocks::<B>(bytes)?.len();
    // SAFETY: `cast_blocks` checked alignment and length; every bit pattern is a valid `B`; the
    // borrow of `bytes` is exclusive and outlives the result.
    Ok(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), n) })
}

#[cfg(target_endian = "big")]
compile_error!(
    "haagenti-adaptive-kernels stores GGUF (little-endian) bytes in memory and needs a little-endian target"
);
