//! Slice-level quantize and dequantize kernels, dispatched to SIMD or scalar code at run time.
//!
//! Every function here gives exactly the result of its [`scalar`](crate::scalar) oracle, on every
//! path. Lengths: `x.len()` (or `out.len()`) must be `32 * blocks.len()`; when they disagree only
//! the common prefix is processed (and debug builds assert). Non-finite inputs give unspecified,
//! memory-safe blocks: [`QuantizedTensor::quantize`](crate::QuantizedTensor::quantize) checks
//! them first.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use crate::scalar;

/// Quantizes `x` into Q8_0 blocks (see [`scalar::quantize_row_q8_0`]).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::blocks::BlockQ8_0;
/// use haagenti_adaptive_kernels::{dequantize_row_q8_0, quantize_row_q8_0};
///
/// let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
/// let mut blocks = vec![BlockQ8_0::default(); 2];
/// quantize_row_q8_0(&x, &mut blocks);
/// let mut y = vec![0.0; 64];
/// dequantize_row_q8_0(&blocks, &mut y);
/// for (a, b) in x.iter().zip(&y) {
///     assert!((a - b).abs() <= 1.0 / 127.0);
/// }
/// ```
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    let (x, out) = common_prefix(x, out);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::quantize_row_q8_0(t, x, out);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return crate::arch::aarch64::quant_neon::quantize_row_q8_0(t, x, out);
    }
    scalar::quantize_row_q8_0(x, out)
}

/// Quantizes `x` into Q4_0 blocks (see [`scalar::quantize_row_q4_0`]).
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    let (x, out) = common_prefix(x, out);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::quantize_row_q4_0(t, x, out);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return crate::arch::aarch64::quant_neon::quantize_row_q4_0(t, x, out);
    }
    scalar::quantize_row_q4_0(x, out)
}

/// Quantizes `x` into Q4_1 blocks (see [`scalar::quantize_row_q4_1`]).
pub fn quantize_row_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    let (x, out) = common_prefix(x, out);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::quantize_row_q4_1(t, x, out);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return crate::arch::aarch64::quant_neon::quantize_row_q4_1(t, x, out);
    }
    scalar::quantize_row_q4_1(x, out)
}

/// Dequantizes Q8_0 blocks (see [`scalar::dequantize_row_q8_0`]).
pub fn dequantize_row_q8_0(b: &[BlockQ8_0], out: &mut [f32]) {
    let (out, b) = common_prefix_mut(out, b);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::dequantize_row_q8_0(t, b, out);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return crate::arch::aarch64::quant_neon::dequantize_row_q8_0(t, b, out);
    }
    scalar::dequantize_row_q8_0(b, out)
}

/// Dequantizes Q4_0 blocks (see [`scalar::dequantize_row_q4_0`]).
pub fn dequantize_row_q4_0(b: &[BlockQ4_0], out: &mut [f32]) {
    let (out, b) = common_prefix_mut(out, b);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::dequantize_row_q4_0(t, b, out);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return crate::arch::aarch64::quant_neon::dequantize_row_q4_0(t, b, out);
    }
    scalar::dequantize_row_q4_0(b, out)
}

/// Dequantizes Q4_1 blocks (see [`scalar::dequantize_row_q4_1`]).
pub fn dequantize_row_q4_1(b: &[BlockQ4_1], out: &mut [f32]) {
    let (out, b) = common_prefix_mut(out, b);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::dequantize_row_q4_1(t, b, out);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return crate::arch::aarch64::quant_neon::dequantize_row_q4_1(t, b, out);
    }
    scalar::dequantize_row_q4_1(b, out)
}

/// Converts f32 to f16, rounding to nearest even (`half`'s slice conversion, F16C where
/// available). Only the common prefix is converted when lengths disagree.
pub fn f32_to_f16(x: &[f32], out: &mut [f16]) {
    let n = x.len().min(out.len());
    debug_assert_eq!(x.len(), out.len(), "f32_to_f16 lengths");
    out[..n].convert_from_f32_slice(&x[..n]);
}

/// Converts f16 to f32 (exact). Only the common prefix is converted when lengths disagree.
pub fn f16_to_f32(x: &[f16], out: &mut [f32]) {
    let n = x.len().min(out.len());
    debug_assert_eq!(x.len(), out.len(), "f16_to_f32 lengths");
    x[..n].convert_to_f32_slice(&mut out[..n]);
}

/// Converts f32 to bf16, rounding to nearest even. Only the common prefix is converted when
/// lengths disagree.
pub fn f32_to_bf16(x: &[f32], out: &mut [bf16]) {
    let n = x.len().min(out.len());
    debug_assert_eq!(x.len(), out.len(), "f32_to_bf16 lengths");
    out[..n].convert_from_f32_slice(&x[..n]);
}

/// Converts bf16 to f32 (exact). Only the common prefix is converted when lengths disagree.
pub fn bf16_to_f32(x: &[bf16], out: &mut [f32]) {
    let n = x.len().min(out.len());
    debug_assert_eq!(x.len(), out.len(), "bf16_to_f32 lengths");
    x[..n].convert_to_f32_slice(&mut out[..n]);
}

/// The prefixes of `x` and `blocks` that cover the same values.
fn common_prefix<'a, 'b, B>(x: &'a [f32], blocks: &'b mut [B]) -> (&'a [f32], &'b mut [B]) {
    debug_assert_eq!(x.len(), QK * blocks.len(), "values and blocks disagree");
    let nb = blocks.len().min(x.len() / QK);
    (&x[..nb * QK], &mut blocks[..nb])
}

/// The prefixes of `out` and `blocks` that cover the same values.
fn common_prefix_mut<'a, 'b, B>(out: &'a mut [f32], blocks: &'b [B]) -> (&'a mut [f32], &'b [B]) {
    debug_assert_eq!(out.len(), QK * blocks.len(), "values and blocks disagree");
    let nb = blocks.len().min(out.len() / QK);
    (&mut out[..nb * QK], &blocks[..nb])
}
