//! NEON quantize and dequantize kernels, bit-exact with [`crate::scalar`].
//!
//! Each public-in-crate function is a safe wrapper taking the [`Neon`] token, which only
//! [`dispatch::neon`](crate::dispatch::neon) hands out after checking the CPU features; the
//! `#[target_feature]` functions behind them are private.
//!
//! `roundf` is `vcvtaq_s32_f32` (FCVTAS: to nearest, ties away from zero); truncation is
//! `vcvtq_s32_f32` (FCVTZS). Multiplies and adds stay separate, never fused, as in the oracle;
//! the signs of zero that ggml's loops pick are reproduced as on x86_64.

use std::arch::aarch64::*;

use half::f16;

use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use crate::dispatch::Neon;

/// [`crate::scalar::quantize_row_q8_0`] with NEON.
pub(crate) fn quantize_row_q8_0(_t: Neon, x: &[f32], out: &mut [BlockQ8_0]) {
    // SAFETY: the `Neon` token exists only when NEON was detected.
    unsafe { quantize_row_q8_0_neon(x, out) }
}

/// [`crate::scalar::quantize_row_q4_0`] with NEON.
pub(crate) fn quantize_row_q4_0(_t: Neon, x: &[f32], out: &mut [BlockQ4_0]) {
    // SAFETY: the `Neon` token exists only when NEON was detected.
    unsafe { quantize_row_q4_0_neon(x, out) }
}

/// [`crate::scalar::quantize_row_q4_1`] with NEON.
pub(crate) fn quantize_row_q4_1(_t: Neon, x: &[f32], out: &mut [BlockQ4_1]) {
    // SAFETY: the `Neon` token exists only when NEON was detected.
    unsafe { quantize_row_q4_1_neon(x, out) }
}

/// [`crate::scalar::dequantize_row_q8_0`] with NEON.
pub(crate) fn dequantize_row_q8_0(_t: Neon, b: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: the `Neon` token exists only when NEON was detected.
    unsafe { dequantize_row_q8_0_neon(b, out) }
}

/// [`crate::scalar::dequantize_row_q4_0`] with NEON.
pub(crate) fn dequantize_row_q4_0(_t: Neon, b: &[BlockQ4_0], out: &mut [f32]) {
    // SAFETY: the `Neon` token exists only when NEON was detected.
    unsafe { dequantize_row_q4_0_neon(b, out) }
}

/// [`crate::scalar::dequantize_row_q4_1`] with NEON.
pub(crate) fn dequantize_row_q4_1(_t: Neon, b: &[BlockQ4_1], out: &mut [f32]) {
    // SAFETY: the `Neon` token exists only when NEON was detected.
    unsafe { dequantize_row_q4_1_neon(b, out) }
}

/// Loads a 32-value block as eight vectors.
#[inline]
#[target_feature(enable = "neon")]
fn load_block(xb: &[f32; QK]) -> [float32x4_t; 8] {
    let p = xb.as_ptr();
    // SAFETY: `xb` holds 32 f32, so the eight 4-lane loads at offsets 0, 4, ..., 28 stay in bounds.
    std::array::from_fn(|k| unsafe { vld1q_f32(p.add(4 * k)) })
}

/// Stores eight vectors into a 32-value block.
#[inline]
#[target_feature(enable = "neon")]
fn store_block(yb: &mut [f32; QK], v: [float32x4_t; 8]) {
    let p = yb.as_mut_ptr();
    for (k, vk) in v.into_iter().enumerate() {
        // SAFETY: `yb` holds 32 f32 and `k < 8`, so the 4-lane store at `4 k` stays in bounds; the
        // borrow is exclusive.
        unsafe { vst1q_f32(p.add(4 * k), vk) };
    }
}

/// Largest lane of eight vectors.
#[inline]
#[target_feature(enable = "neon")]
fn max8(v: &[float32x4_t; 8]) -> f32 {
    let a = vmaxq_f32(vmaxq_f32(v[0], v[1]), vmaxq_f32(v[2], v[3]));
    let b = vmaxq_f32(vmaxq_f32(v[4], v[5]), vmaxq_f32(v[6], v[7]));
    vmaxvq_f32(vmaxq_f32(a, b))
}

/// Smallest lane of eight vectors.
#[inline]
#[target_feature(enable = "neon")]
fn min8(v: &[float32x4_t; 8]) -> f32 {
    let a = vminq_f32(vminq_f32(v[0], v[1]), vminq_f32(v[2], v[3]));
    let b = vminq_f32(vminq_f32(v[4], v[5]), vminq_f32(v[6], v[7]));
    vminvq_f32(vminq_f32(a, b))
}

/// Packs 32 nibble values (eight vectors of i32 in 0..=15, in order) into 16 bytes: byte `j` holds
/// value `j` low and value `j + 16` high.
#[inline]
#[target_feature(enable = "neon")]
fn pack_nibbles(q: [int32x4_t; 8]) -> uint8x16_t {
    let c: [uint32x4_t; 4] =
        std::array::from_fn(|k| vreinterpretq_u32_s32(vorrq_s32(q[k], vshlq_n_s32::<4>(q[k + 4]))));
    let lo = vmovn_u16(vcombine_u16(vmovn_u32(c[0]), vmovn_u32(c[1])));
    let hi = vmovn_u16(vcombine_u16(vmovn_u32(c[2]), vmovn_u32(c[3])));
    vcombine_u8(lo, hi)
}

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn quantize_row_q8_0_neon(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let v = load_block(xb);
        let a = v.map(|vk| vabsq_f32(vk));
        let amax = max8(&a);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // A scale so small that its inverse overflows: ggml's float-to-int conversions would
            // be undefined; the oracle's saturating casts define them, so let it do the block.
            crate::scalar::quantize_row_q8_0(xb, std::slice::from_mut(yb));
            continue;
        }
        yb.d = f16::from_f32(d);
        let idv = vdupq_n_f32(id);
        let q = v.map(|vk| vcvtaq_s32_f32(vmulq_f32(vk, idv)));
        for k in 0..4 {
            let h = vcombine_s16(vqmovn_s32(q[2 * k]), vqmovn_s32(q[2 * k + 1]));
            // SAFETY: `qs` is 32 bytes and `k < 4`, so the 8-byte store at `8 k` stays in bounds.
            unsafe { vst1_s8(yb.qs.as_mut_ptr().add(8 * k), vqmovn_s16(h)) };
        }
    }
}

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn quantize_row_q4_0_neon(x: &[f32], out: &mut [BlockQ4_0]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let v = load_block(xb);
        let amax = max8(&v.map(|vk| vabsq_f32(vk)));
        // The oracle keeps the first value of largest magnitude, and +0.0 when all are zero.
        let max = if amax == 0.0 {
            0.0
        } else {
            xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
        };
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // A scale so small that its inverse overflows: ggml's float-to-int conversions would
            // be undefined; the oracle's saturating casts define them, so let it do the block.
            crate::scalar::quantize_row_q4_0(xb, std::slice::from_mut(yb));
            continue;
        }
        yb.d = f16::from_f32(d);
        let idv = vdupq_n_f32(id);
        let bias = vdupq_n_f32(8.5);
        let fifteen = vdupq_n_s32(15);
        let q = v.map(|vk| vminq_s32(vcvtq_s32_f32(vaddq_f32(vmulq_f32(vk, idv), bias)), fifteen));
        // SAFETY: `qs` is 16 bytes, the size of one 128-bit store.
        unsafe { vst1q_u8(yb.qs.as_mut_ptr(), pack_nibbles(q)) };
    }
}

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn quantize_row_q4_1_neon(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let v = load_block(xb);
        let mut min = min8(&v);
        let mut max = max8(&v);
        // The oracle keeps the first of equal extremes: only the sign of a zero can tell.
        if min == 0.0 {
            min = xb.iter().copied().find(|&v| v == 0.0).unwrap_or(0.0);
        }
        if max == 0.0 {
            max = xb.iter().copied().find(|&v| v == 0.0).unwrap_or(0.0);
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !(d.is_finite() && id.is_finite()) {
            // A range that overflows f32, or a scale whose inverse does: the products turn
            // infinite or NaN and the oracle's saturating casts define the result.
            crate::scalar::quantize_row_q4_1(xb, std::slice::from_mut(yb));
            continue;
        }
        yb.d = f16::from_f32(d);
        yb.m = f16::from_f32(min);
        let idv = vdupq_n_f32(id);
        let minv = vdupq_n_f32(min);
        let bias = vdupq_n_f32(0.5);
        let fifteen = vdupq_n_s32(15);
        let q = v.map(|vk| {
            let s = vmulq_f32(vsubq_f32(vk, minv), idv);
            vminq_s32(vcvtq_s32_f32(vaddq_f32(s, bias)), fifteen)
        });
        // SAFETY: `qs` is 16 bytes, the size of one 128-bit store.
        unsafe { vst1q_u8(yb.qs.as_mut_ptr(), pack_nibbles(q)) };
    }
}

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn dequantize_row_q8_0_neon(b: &[BlockQ8_0], out: &mut [f32]) {
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let Ok(yb) = <&mut [f32; QK]>::try_from(yb) else {
            continue;
        };
        let d = vdupq_n_f32(xb.d.to_f32());
        // SAFETY: `qs` is 32 bytes: two 16-byte loads at offsets 0 and 16.
        let (q0, q1) = unsafe { (vld1q_s8(xb.qs.as_ptr()), vld1q_s8(xb.qs.as_ptr().add(16))) };
        let h = [
            vmovl_s8(vget_low_s8(q0)),
            vmovl_s8(vget_high_s8(q0)),
            vmovl_s8(vget_low_s8(q1)),
            vmovl_s8(vget_high_s8(q1)),
        ];
        let w: [int32x4_t; 8] = std::array::from_fn(|k| {
            let hk = h[k / 2];
            if k % 2 == 0 {
                vmovl_s16(vget_low_s16(hk))
            } else {
                vmovl_s16(vget_high_s16(hk))
            }
        });
        store_block(yb, w.map(|wk| vmulq_f32(vcvtq_f32_s32(wk), d)));
    }
}

/// The 32 nibbles of a block as eight vectors of i32, in value order.
#[inline]
#[target_feature(enable = "neon")]
fn unpack_nibbles(qs: &[u8; QK / 2]) -> [int32x4_t; 8] {
    // SAFETY: `qs` is 16 bytes, the size of one 128-bit load.
    let q = unsafe { vld1q_u8(qs.as_ptr()) };
    let lo = vandq_u8(q, vdupq_n_u8(0x0F));
    let hi = vshrq_n_u8::<4>(q);
    let h = [
        vmovl_u8(vget_low_u8(lo)),
        vmovl_u8(vget_high_u8(lo)),
        vmovl_u8(vget_low_u8(hi)),
        vmovl_u8(vget_high_u8(hi)),
    ];
    std::array::from_fn(|k| {
        let hk = h[k / 2];
        let w = if k % 2 == 0 {
            vmovl_u16(vget_low_u16(hk))
        } else {
            vmovl_u16(vget_high_u16(hk))
        };
        vreinterpretq_s32_u32(w)
    })
}

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn dequantize_row_q4_0_neon(b: &[BlockQ4_0], out: &mut [f32]) {
    let eight = vdupq_n_s32(8);
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let Ok(yb) = <&mut [f32; QK]>::try_from(yb) else {
            continue;
        };
        let d = vdupq_n_f32(xb.d.to_f32());
        let q = unpack_nibbles(&xb.qs);
        store_block(
            yb,
            q.map(|qk| vmulq_f32(vcvtq_f32_s32(vsubq_s32(qk, eight)), d)),
        );
    }
}

/// # Safety
///
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn dequantize_row_q4_1_neon(b: &[BlockQ4_1], out: &mut [f32]) {
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let Ok(yb) = <&mut [f32; QK]>::try_from(yb) else {
            continue;
        };
        let d = vdupq_n_f32(xb.d.to_f32());
        let m = vdupq_n_f32(xb.m.to_f32());
        let q = unpack_nibbles(&xb.qs);
        store_block(
            yb,
            q.map(|qk| vaddq_f32(vmulq_f32(vcvtq_f32_s32(qk), d), m)),
        );
    }
}
