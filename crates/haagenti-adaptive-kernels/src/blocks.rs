//! GGUF block layouts, byte-compatible with ggml (`ggml-common.h`).

use half::f16;

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
