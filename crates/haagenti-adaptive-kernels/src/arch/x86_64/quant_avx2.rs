//! AVX2 + F16C quantize and dequantize kernels, bit-exact with [`crate::scalar`].
//!
//! Each public-in-crate function is a safe wrapper taking the [`Avx2`] token, which only
//! [`dispatch::avx2`](crate::dispatch::avx2) hands out after checking the CPU features; the
//! `#[target_feature]` functions behind them are private.
//!
//! Bit-exactness notes. The scalar oracle does `roundf(x * id)` (ties away from zero), which no
//! AVX rounding mode does; here `t = trunc(v)`, and `t ± 1` when `|v - t| >= 0.5` (`v - t` is
//! exact), which is `roundf` for every finite `v` (adding 0.5 and truncating is not: it turns
//! 0.49999997 into 1). Multiplies and adds stay separate instructions, as in the oracle, never
//! fused. The signs of zero that ggml's loops pick (the first of several equal minima, `+0.0` for
//! an all-zero Q4_0 block) are reproduced on the rare branches where they matter.

use std::arch::x86_64::*;

use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use crate::dispatch::Avx2;
use crate::matmul::pack::RowBlock;

/// [`crate::scalar::quantize_row_q8_0`] with AVX2.
pub(crate) fn quantize_row_q8_0(_t: Avx2, x: &[f32], out: &mut [BlockQ8_0]) {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { quantize_row_q8_0_avx2(x, out) }
}

/// Quantizes `x` (`32 * out.len()` values) to Q8_0 straight into the matmul's activation
/// blocks, with their per-block sums, bit-exact with [`crate::scalar::quantize_row_q8_0`]
/// followed by [`RowBlock::from_q8_0`]; `false` when a value is NaN or infinite (the blocks
/// are then meaningless). One pass over `x`: the finiteness test rides on the block maximum's
/// loads instead of a separate scan of the activations.
pub(crate) fn pack_row_q8_0(_t: Avx2, x: &[f32], out: &mut [RowBlock]) -> bool {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { pack_row_q8_0_avx2(x, out) }
}

/// [`crate::scalar::quantize_row_q4_0`] with AVX2.
pub(crate) fn quantize_row_q4_0(_t: Avx2, x: &[f32], out: &mut [BlockQ4_0]) {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { quantize_row_q4_0_avx2(x, out) }
}

/// [`crate::scalar::quantize_row_q4_1`] with AVX2.
pub(crate) fn quantize_row_q4_1(_t: Avx2, x: &[f32], out: &mut [BlockQ4_1]) {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { quantize_row_q4_1_avx2(x, out) }
}

/// [`crate::scalar::dequantize_row_q8_0`] with AVX2.
pub(crate) fn dequantize_row_q8_0(_t: Avx2, b: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { dequantize_row_q8_0_avx2(b, out) }
}

/// [`crate::scalar::dequantize_row_q4_0`] with AVX2.
pub(crate) fn dequantize_row_q4_0(_t: Avx2, b: &[BlockQ4_0], out: &mut [f32]) {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { dequantize_row_q4_0_avx2(b, out) }
}

/// [`crate::scalar::dequantize_row_q4_1`] with AVX2.
pub(crate) fn dequantize_row_q4_1(_t: Avx2, b: &[BlockQ4_1], out: &mut [f32]) {
    // SAFETY: the `Avx2` token exists only when AVX2, FMA and F16C were detected.
    unsafe { dequantize_row_q4_1_avx2(b, out) }
}

/// Loads a 32-value block as four vectors.
#[inline]
#[target_feature(enable = "avx2")]
fn load_block(xb: &[f32; QK]) -> [__m256; 4] {
    let p = xb.as_ptr();
    // SAFETY: `xb` holds 32 f32, so the four unaligned 8-lane loads at offsets 0, 8, 16 and 24 stay
    // in bounds; this function enables AVX2.
    unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

/// Largest lane of `v`.
#[inline]
#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// Smallest lane of `v`.
#[inline]
#[target_feature(enable = "avx2")]
fn hmin(v: __m256) -> f32 {
    let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)))
}

/// Bit `i` set when lane `i` of the block (0..32) equals `target`.
#[inline]
#[target_feature(enable = "avx2")]
fn eq_mask(v: &[__m256; 4], target: f32) -> u32 {
    let t = _mm256_set1_ps(target);
    let mut bits = 0u32;
    for (k, &vk) in v.iter().enumerate() {
        let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(vk, t)) as u32;
        bits |= m << (8 * k);
    }
    bits
}

/// f32 to f16 bits, round to nearest even (as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn to_f16_bits(v: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16
}

/// f16 bits to f32 (exact).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn from_f16_bits(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// `roundf(v)` lane-wise, as i32: ties away from zero.
#[inline]
#[target_feature(enable = "avx2")]
fn round_away(v: __m256) -> __m256i {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
    _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, one)))
}

/// Packs 32 nibble values (four vectors of i32 in 0..=15, in order) into 16 bytes: byte `j` holds
/// value `j` low and value `j + 16` high.
#[inline]
#[target_feature(enable = "avx2")]
fn pack_nibbles(q: [__m256i; 4]) -> __m128i {
    let a = _mm256_or_si256(q[0], _mm256_slli_epi32::<4>(q[2]));
    let b = _mm256_or_si256(q[1], _mm256_slli_epi32::<4>(q[3]));
    // u16 lanes [a0..4 b0..4 | a4..8 b4..8] -> [a0..8 b0..8].
    let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
    _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p))
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_q8_0_avx2(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let v = load_block(xb);
        let (_, d, id) = abs_scale(&v);
        if !id.is_finite() {
            // A scale so small that its inverse overflows: ggml's float-to-int conversions would
            // be undefined; the oracle's saturating casts define them, so let it do the block.
            crate::scalar::quantize_row_q8_0(xb, std::slice::from_mut(yb));
            continue;
        }
        yb.d = half::f16::from_bits(to_f16_bits(d));
        store_values(&v, id, &mut yb.qs);
    }
}

/// `|v|` of block `v`, its Q8_0 scale `d = max |v| / 127` and the inverse `1 / d` (`0` for an
/// all-zero block; infinite when `d` is too small to invert).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn abs_scale(v: &[__m256; 4]) -> ([__m256; 4], f32, f32) {
    let sign = _mm256_set1_ps(-0.0);
    let a = v.map(|vk| _mm256_andnot_ps(sign, vk));
    let amax = hmax(_mm256_max_ps(
        _mm256_max_ps(a[0], a[1]),
        _mm256_max_ps(a[2], a[3]),
    ));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (a, d, id)
}

/// Block `v` scaled by `id`, rounded half away from zero and saturated to i8, stored in order
/// into `qs`; returns the stored bytes as one vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_values(v: &[__m256; 4], id: f32, qs: &mut [i8; QK]) -> __m256i {
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let idv = _mm256_set1_ps(id);
    let q = v.map(|vk| round_away(_mm256_mul_ps(vk, idv)));
    // i32 -> i16 -> i8 saturating packs interleave 4-value groups across the two lanes; the
    // permutation puts them back in order.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, perm);
    // SAFETY: `qs` is 32 bytes, the size of one unaligned 256-bit store.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast::<__m256i>(), p) };
    p
}

/// Lane `b` = the largest lane of `m[b]` (a transpose-and-reduce of eight vectors).
#[inline]
#[target_feature(enable = "avx2")]
fn hmax8(m: &[__m256; 8]) -> __m256 {
    // Per 128-bit half: [a{0,2}, b{0,2}, a{1,3}, b{1,3}] for the pair (a, b).
    let pair =
        |a: __m256, b: __m256| _mm256_max_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    // Per 128-bit half: the maxima of that half of the four vectors, in order.
    let quad = |p: __m256, q: __m256| {
        _mm256_max_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(p, q),
            _mm256_shuffle_ps::<0b11_10_11_10>(p, q),
        )
    };
    let c = quad(pair(m[0], m[1]), pair(m[2], m[3]));
    let d = quad(pair(m[4], m[5]), pair(m[6], m[7]));
    _mm256_max_ps(
        _mm256_permute2f128_ps::<0x20>(c, d),
        _mm256_permute2f128_ps::<0x31>(c, d),
    )
}

/// Block `xb` quantized with inverse scale `id` (finite) into `yb`, whose scale as f32 is
/// `df`: values, sums and scale terms.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_values(v: &[__m256; 4], id: f32, df: f32, yb: &mut RowBlock) {
    let p = store_values(v, id, &mut yb.qs);
    // Σ q of the stored (saturated) bytes: pairs to i16, then to i32, then across lanes.
    let s = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), p),
        _mm256_set1_epi16(1),
    );
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    let sum = _mm_cvtsi128_si32(s);
    yb.d = df;
    yb.s = df * sum as f32;
    yb.sum = sum;
    yb.sum8 = 8 * sum;
}

/// Lanes set where `|v|` (`a`) is infinite or NaN, OR'ed into `bad`.
#[inline]
#[target_feature(enable = "avx2")]
fn flag_non_finite(a: &[__m256; 4], bad: &mut __m256) {
    let inf = _mm256_set1_ps(f32::INFINITY);
    for &ak in a {
        // Not-less-than, unordered: |x| >= inf, or NaN.
        *bad = _mm256_or_ps(*bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(ak, inf));
    }
}

/// One block of [`pack_row_q8_0_avx2`], its scale computed on its own.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_block(xb: &[f32; QK], yb: &mut RowBlock, bad: &mut __m256) {
    let v = load_block(xb);
    let (a, d, id) = abs_scale(&v);
    flag_non_finite(&a, bad);
    if !id.is_finite() {
        // As `quantize_row_q8_0_avx2`: the oracle defines this block.
        let mut q = BlockQ8_0::default();
        crate::scalar::quantize_row_q8_0(xb, std::slice::from_mut(&mut q));
        *yb = RowBlock::from_q8_0(&q);
        return;
    }
    pack_values(&v, id, from_f16_bits(to_f16_bits(d)), yb);
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_row_q8_0_avx2(x: &[f32], out: &mut [RowBlock]) -> bool {
    let sign = _mm256_set1_ps(-0.0);
    let mut bad = _mm256_setzero_ps();
    // Eight blocks at a time: their maxima, scales, inverse scales and f16 roundings as one
    // vector each (the same IEEE operations as the scalar code, lane by lane), so that no
    // block waits on a horizontal maximum and two scalar divisions before its values.
    let mut xg = x.chunks_exact(8 * QK);
    let mut og = out.chunks_exact_mut(8);
    for (xs, os) in (&mut xg).zip(&mut og) {
        let mut m = [_mm256_setzero_ps(); 8];
        let mut blocks = [[_mm256_setzero_ps(); 4]; 8];
        for (b, (xb, mb)) in xs.chunks_exact(QK).zip(m.iter_mut()).enumerate() {
            let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
                continue;
            };
            let v = load_block(xb);
            let a = v.map(|vk| _mm256_andnot_ps(sign, vk));
            flag_non_finite(&a, &mut bad);
            *mb = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            blocks[b] = v;
        }
        let d = _mm256_div_ps(hmax8(&m), _mm256_set1_ps(127.0));
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(d, _mm256_setzero_ps());
        let id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), d), nonzero);
        let df = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d));
        let (mut ids, mut dfs) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: both arrays are 8 writable f32; `storeu` needs no alignment.
        unsafe {
            _mm256_storeu_ps(ids.as_mut_ptr(), id);
            _mm256_storeu_ps(dfs.as_mut_ptr(), df);
        }
        if ids.iter().all(|v| v.is_finite()) {
            for (b, yb) in os.iter_mut().enumerate() {
                pack_values(&blocks[b], ids[b], dfs[b], yb);
            }
        } else {
            // A scale whose inverse overflows (or a non-finite value): block by block.
            for (xb, yb) in xs.chunks_exact(QK).zip(os.iter_mut()) {
                if let Ok(xb) = <&[f32; QK]>::try_from(xb) {
                    pack_block(xb, yb, &mut bad);
                }
            }
        }
    }
    for (xb, yb) in xg.remainder().chunks_exact(QK).zip(og.into_remainder()) {
        if let Ok(xb) = <&[f32; QK]>::try_from(xb) {
            pack_block(xb, yb, &mut bad);
        }
    }
    _mm256_movemask_ps(bad) == 0
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_q4_0_avx2(x: &[f32], out: &mut [BlockQ4_0]) {
    let sign = _mm256_set1_ps(-0.0);
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let v = load_block(xb);
        let a = v.map(|vk| _mm256_andnot_ps(sign, vk));
        let amax = hmax(_mm256_max_ps(
            _mm256_max_ps(a[0], a[1]),
            _mm256_max_ps(a[2], a[3]),
        ));
        // The oracle keeps the first value of largest magnitude, and +0.0 when all are zero.
        let max = if amax == 0.0 {
            0.0
        } else {
            xb[eq_mask(&a, amax).trailing_zeros() as usize % QK]
        };
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // A scale so small that its inverse overflows: ggml's float-to-int conversions would
            // be undefined; the oracle's saturating casts define them, so let it do the block.
            crate::scalar::quantize_row_q4_0(xb, std::slice::from_mut(yb));
            continue;
        }
        yb.d = half::f16::from_bits(to_f16_bits(d));
        let idv = _mm256_set1_ps(id);
        let bias = _mm256_set1_ps(8.5);
        let fifteen = _mm256_set1_epi32(15);
        let q = v.map(|vk| {
            let t = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(vk, idv), bias));
            _mm256_min_epi32(t, fifteen)
        });
        let bytes = pack_nibbles(q);
        // SAFETY: `qs` is 16 bytes, the size of one unaligned 128-bit store.
        unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr().cast::<__m128i>(), bytes) };
    }
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_q4_1_avx2(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let v = load_block(xb);
        let mut min = hmin(_mm256_min_ps(
            _mm256_min_ps(v[0], v[1]),
            _mm256_min_ps(v[2], v[3]),
        ));
        let mut max = hmax(_mm256_max_ps(
            _mm256_max_ps(v[0], v[1]),
            _mm256_max_ps(v[2], v[3]),
        ));
        // The oracle keeps the first of equal extremes: only the sign of a zero can tell.
        if min == 0.0 {
            min = xb[eq_mask(&v, 0.0).trailing_zeros() as usize % QK];
        }
        if max == 0.0 {
            max = xb[eq_mask(&v, 0.0).trailing_zeros() as usize % QK];
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !(d.is_finite() && id.is_finite()) {
            // A range that overflows f32, or a scale whose inverse does: the products turn
            // infinite or NaN and the oracle's saturating casts define the result.
            crate::scalar::quantize_row_q4_1(xb, std::slice::from_mut(yb));
            continue;
        }
        yb.d = half::f16::from_bits(to_f16_bits(d));
        yb.m = half::f16::from_bits(to_f16_bits(min));
        let idv = _mm256_set1_ps(id);
        let minv = _mm256_set1_ps(min);
        let bias = _mm256_set1_ps(0.5);
        let fifteen = _mm256_set1_epi32(15);
        let q = v.map(|vk| {
            let s = _mm256_mul_ps(_mm256_sub_ps(vk, minv), idv);
            _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_add_ps(s, bias)), fifteen)
        });
        let bytes = pack_nibbles(q);
        // SAFETY: `qs` is 16 bytes, the size of one unaligned 128-bit store.
        unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr().cast::<__m128i>(), bytes) };
    }
}

/// Stores four vectors into a 32-value block.
#[inline]
#[target_feature(enable = "avx2")]
fn store_block(yb: &mut [f32; QK], v: [__m256; 4]) {
    let p = yb.as_mut_ptr();
    // SAFETY: `yb` holds 32 f32, so the four unaligned 8-lane stores at offsets 0, 8, 16 and 24
    // stay in bounds; the borrow is exclusive; this function enables AVX2.
    unsafe {
        _mm256_storeu_ps(p, v[0]);
        _mm256_storeu_ps(p.add(8), v[1]);
        _mm256_storeu_ps(p.add(16), v[2]);
        _mm256_storeu_ps(p.add(24), v[3]);
    }
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_row_q8_0_avx2(b: &[BlockQ8_0], out: &mut [f32]) {
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let Ok(yb) = <&mut [f32; QK]>::try_from(yb) else {
            continue;
        };
        let d = _mm256_set1_ps(from_f16_bits(xb.d.to_bits()));
        // SAFETY: `qs` is 32 bytes, the size of one unaligned 256-bit load.
        let q = unsafe { _mm256_loadu_si256(xb.qs.as_ptr().cast::<__m256i>()) };
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        let cvt = |h: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h)), d);
        store_block(
            yb,
            [
                cvt(lo),
                cvt(_mm_srli_si128::<8>(lo)),
                cvt(hi),
                cvt(_mm_srli_si128::<8>(hi)),
            ],
        );
    }
}

/// The 32 nibbles of a block as four vectors of i32, in value order.
#[inline]
#[target_feature(enable = "avx2")]
fn unpack_nibbles(qs: &[u8; QK / 2]) -> [__m256i; 4] {
    // SAFETY: `qs` is 16 bytes, the size of one unaligned 128-bit load.
    let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast::<__m128i>()) };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
    [
        _mm256_cvtepu8_epi32(lo),
        _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo)),
        _mm256_cvtepu8_epi32(hi),
        _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi)),
    ]
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_row_q4_0_avx2(b: &[BlockQ4_0], out: &mut [f32]) {
    let eight = _mm256_set1_epi32(8);
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let Ok(yb) = <&mut [f32; QK]>::try_from(yb) else {
            continue;
        };
        let d = _mm256_set1_ps(from_f16_bits(xb.d.to_bits()));
        let q = unpack_nibbles(&xb.qs);
        store_block(
            yb,
            q.map(|qk| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(qk, eight)), d)),
        );
    }
}

/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_row_q4_1_avx2(b: &[BlockQ4_1], out: &mut [f32]) {
    for (yb, xb) in out.chunks_exact_mut(QK).zip(b) {
        let Ok(yb) = <&mut [f32; QK]>::try_from(yb) else {
            continue;
        };
        let d = _mm256_set1_ps(from_f16_bits(xb.d.to_bits()));
        let m = _mm256_set1_ps(from_f16_bits(xb.m.to_bits()));
        let q = unpack_nibbles(&xb.qs);
        store_block(
            yb,
            q.map(|qk| _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(qk), d), m)),
        );
    }
}
