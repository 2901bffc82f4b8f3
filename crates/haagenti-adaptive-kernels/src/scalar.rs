//! Portable scalar kernels: the oracle every SIMD kernel must match bit for bit.
//!
//! Each function follows ggml's `quantize_row_*_ref` / `dequantize_row_*` operation by operation
//! (the same f32 operations in the same order, no fused multiply-add), so the bytes equal
//! ggml's and therefore llama.cpp's and candle's.
//!
//! Where ggml's C is undefined (a block whose scale is so small, below about `1e-37`, that its
//! inverse overflows, making `x * id` infinite or NaN before the float-to-integer conversion), the
//! Rust saturating casts used here define the bytes (as in candle's port), and the SIMD kernels
//! reproduce them. Such blocks dequantize to zeros either way, their f16 scale being zero.
//!
//! Lengths: `x.len()` (or `out.len()`) must be `32 * blocks.len()`. Only the common prefix is
//! processed when they disagree (debug builds assert). Non-finite inputs give unspecified (but
//! memory-safe) blocks; [`QuantizedTensor`](crate::QuantizedTensor) rejects them first.

use half::f16;

use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// Quantizes `x` into Q8_0 blocks: `d = max|x| / 127`, `q = round(x / d)`, ties away from zero.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::blocks::BlockQ8_0;
/// use haagenti_adaptive_kernels::scalar;
///
/// let mut x = [0.0f32; 32];
/// x[0] = -2.0;
/// x[1] = 0.5;
/// let mut b = [BlockQ8_0::default()];
/// scalar::quantize_row_q8_0(&x, &mut b);
/// assert_eq!(b[0].d.to_f32(), half::f16::from_f32(2.0 / 127.0).to_f32());
/// assert_eq!(&b[0].qs[..3], &[-127, 32, 0]); // 0.5 * 127 / 2 = 31.75 rounds to 32
/// ```
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), QK * out.len(), "quantize_row_q8_0 lengths");
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f16::from_f32(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// Quantizes `x` into Q4_0 blocks: `d = v / -8` for the value `v` of largest magnitude (the first
/// one on ties), `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    debug_assert_eq!(x.len(), QK * out.len(), "quantize_row_q4_0 lengths");
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            yb.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Quantizes `x` into Q4_1 blocks: `d = (max - min) / 15`, `m = min`,
/// `q = min(15, trunc((x - min) / d + 0.5))`; `q` uses the f32 `d`, before its rounding to f16.
pub fn quantize_row_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    debug_assert_eq!(x.len(), QK * out.len(), "quantize_row_q4_1 lengths");
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f16::from_f32(d);
        yb.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            yb.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Dequantizes Q8_0 blocks: `x = q * d`.
pub fn dequantize_row_q8_0(b: &[BlockQ8_0], out: &mut [f32]) {
    debug_assert_eq!(out.len(), QK * b.len(), "dequantize_row_q8_0 lengths");
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let d = xb.d.to_f32();
        for (y, &q) in yb.iter_mut().zip(&xb.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// Dequantizes Q4_0 blocks: `x = (q - 8) * d`.
pub fn dequantize_row_q4_0(b: &[BlockQ4_0], out: &mut [f32]) {
    debug_assert_eq!(out.len(), QK * b.len(), "dequantize_row_q4_0 lengths");
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let d = xb.d.to_f32();
        for j in 0..QK / 2 {
            let q = xb.qs[j];
            yb[j] = f32::from(i16::from(q & 0x0F) - 8) * d;
            yb[j + QK / 2] = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

/// Dequantizes Q4_1 blocks: `x = q * d + m` (a multiply, then an add: no fused multiply-add).
pub fn dequantize_row_q4_1(b: &[BlockQ4_1], out: &mut [f32]) {
    debug_assert_eq!(out.len(), QK * b.len(), "dequantize_row_q4_1 lengths");
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let d = xb.d.to_f32();
        let m = xb.m.to_f32();
        for j in 0..QK / 2 {
            let q = xb.qs[j];
            yb[j] = f32::from(q & 0x0F) * d + m;
            yb[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    }
}
