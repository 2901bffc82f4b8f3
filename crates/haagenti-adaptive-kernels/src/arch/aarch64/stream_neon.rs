//! NEON streaming kernels for float weights (F16, BF16, F32; tested under qemu: correctness
//! only).
//!
//! For few activation rows each weight row is read once: eight values at a time are widened to
//! f32 (f32: plain loads; bf16: a 16-bit left shift; f16: `fcvtl`/`fcvtl2`, written as inline
//! `asm!` while `float16x4_t` and `vcvt_f32_f16` are unstable) and fused-multiply-added
//! (`vfmaq_f32`) into up to four activation rows, several weight rows per pass; a scalar tail
//! handles `k` not a multiple of 8. For many activation rows, F16/BF16 weight rows are converted
//! to an f32 panel per task and handed to `gemm` on that task's thread.
//!
//! Every `unsafe fn` here requires NEON; the safe entry points take the [`Neon`] token that
//! proves it and check every length the pointer arithmetic uses.

use std::arch::aarch64::*;

use half::slice::HalfFloatSliceExt;

use crate::dispatch::Neon;
use crate::matmul::{Parallelism, Shape, gemm_f32};

/// A weight element the streaming kernel widens to f32 on the fly: `f16`, `bf16` or `f32`.
pub(crate) trait StreamWeight: Copy {
    /// 8 consecutive weights as f32 (values 0..4, 4..8).
    ///
    /// # Safety
    ///
    /// NEON must be available; `p` must be valid for reading 8 values.
    unsafe fn load8(p: *const Self) -> (float32x4_t, float32x4_t);
    /// One weight as f32.
    fn widen(self) -> f32;
}

impl StreamWeight for half::f16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load8(p: *const Self) -> (float32x4_t, float32x4_t) {
        // SAFETY: the caller guarantees 16 readable bytes; `ld1` needs no alignment.
        let raw = unsafe { vld1q_u16(p.cast()) };
        let (lo, hi): (float32x4_t, float32x4_t);
        // `float16x4_t` and `vcvt_f32_f16` are unstable, so the conversion is written out.
        // SAFETY: `fcvtl`/`fcvtl2` only read and write the named vector registers, and NEON
        // (which includes half-precision conversion) is enabled here.
        unsafe {
            std::arch::asm!(
                "fcvtl {lo:v}.4s, {raw:v}.4h",
                "fcvtl2 {hi:v}.4s, {raw:v}.8h",
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                raw = in(vreg) raw,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        (lo, hi)
    }
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl StreamWeight for half::bf16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load8(p: *const Self) -> (float32x4_t, float32x4_t) {
        // SAFETY: the caller guarantees 16 readable bytes; `ld1` needs no alignment.
        let raw = unsafe { vld1q_u16(p.cast()) };
        // bf16 is the top half of an f32: widen each value to 32 bits, shifted left by 16.
        let lo = vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(raw)));
        let hi = vreinterpretq_f32_u32(vshll_high_n_u16::<16>(raw));
        (lo, hi)
    }
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl StreamWeight for f32 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load8(p: *const Self) -> (float32x4_t, float32x4_t) {
        // SAFETY: the caller guarantees 32 readable bytes; `ld1` needs no alignment.
        unsafe { (vld1q_f32(p), vld1q_f32(p.add(4))) }
    }
    #[inline]
    fn widen(self) -> f32 {
        self
    }
}

/// `f16` and `bf16`: 2-byte values for which every bit pattern is valid.
pub(crate) trait HalfBits {}
impl HalfBits for half::f16 {}
impl HalfBits for half::bf16 {}

/// `NR` weight rows x `MR` f32 activation rows, over `k` values, widening the weights to f32.
///
/// # Safety
///
/// NEON must be available; `w + i * k` valid for reading `k` values for `i < NR`, `x + j * k`
/// valid for reading `k` f32 for `j < MR`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn stream_kernel<const NR: usize, const MR: usize, E: StreamWeight>(
    w: *const E,
    x: *const f32,
    k: usize,
) -> [[f32; MR]; NR] {
    let mut acc = [[vdupq_n_f32(0.0); MR]; NR];
    let k8 = k / 8 * 8;
    let mut l = 0;
    while l < k8 {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: l + 8 <= k, i < NR: inside row i of the weights.
            let (w0, w1) = unsafe { E::load8(w.add(i * k + l)) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: l + 8 <= k, j < MR: inside activation row j.
                let (x0, x1) =
                    unsafe { (vld1q_f32(x.add(j * k + l)), vld1q_f32(x.add(j * k + l + 4))) };
                *a = vfmaq_f32(vfmaq_f32(*a, w0, x0), w1, x1);
            }
        }
        l += 8;
    }
    let mut res = [[0.0f32; MR]; NR];
    for i in 0..NR {
        for j in 0..MR {
            let mut s = vaddvq_f32(acc[i][j]);
            for l in k8..k {
                // SAFETY: l < k: inside row i of the weights and row j of the activations.
                let (wb, xv) = unsafe { (*w.add(i * k + l), *x.add(j * k + l)) };
                s += xv * wb.widen();
            }
            res[i][j] = s;
        }
    }
    res
}

/// Runs `stream_kernel::<NR, MR, E>` on `nr` (up to `NR`) weight rows, writing weight row `i`
/// against activation row `j` to `dst[j * ld + i]`.
///
/// # Safety
///
/// As [`stream_kernel`] for `nr` weight rows; `dst` must hold `(MR - 1) * ld + nr` values
/// (checked: nothing is written past it).
#[target_feature(enable = "neon")]
unsafe fn stream_kernel_n<const NR: usize, const MR: usize, E: StreamWeight>(
    nr: usize,
    w: *const E,
    x: *const f32,
    k: usize,
    dst: &mut [f32],
    ld: usize,
) {
    let mut put = |i: usize, col: [f32; MR]| {
        for (j, v) in col.into_iter().enumerate() {
            dst[j * ld + i] = v;
        }
    };
    if nr == NR {
        // SAFETY: forwarded from the caller.
        let r = unsafe { stream_kernel::<NR, MR, E>(w, x, k) };
        for (i, col) in r.into_iter().enumerate() {
            put(i, col);
        }
    } else {
        for i in 0..nr.min(NR) {
            // SAFETY: forwarded from the caller: row i < nr starts at w + i * k.
            let [col] = unsafe { stream_kernel::<1, MR, E>(w.add(i * k), x, k) };
            put(i, col);
        }
    }
}

/// Weight rows `n0..n1` of `w` (`n x k`, any [`StreamWeight`]) streamed against all activation
/// rows, into `buf` (`m x (n1 - n0)`). Does nothing when the lengths are inconsistent.
pub(crate) fn stream<E: StreamWeight>(
    _t: Neon,
    w: &[E],
    s: &Shape,
    x: &[f32],
    n0: usize,
    n1: usize,
    buf: &mut [f32],
) {
    let (m, k) = (s.m, s.k);
    let nc = n1.saturating_sub(n0);
    let consistent =
        n0 <= n1 && n1 <= s.n && w.len() >= n1 * k && x.len() == m * k && buf.len() == m * nc;
    debug_assert!(consistent, "stream: inconsistent lengths");
    if !consistent || nc == 0 || k == 0 {
        return;
    }
    let mut j0 = 0;
    while j0 < m {
        let mr = (m - j0).min(4);
        let xp = x[j0 * k..].as_ptr();
        let nr_max = if mr <= 2 { 4 } else { 2 };
        let mut i0 = 0;
        while i0 < nc {
            let nr = (nc - i0).min(nr_max);
            let wp = w[(n0 + i0) * k..].as_ptr();
            let dst = &mut buf[j0 * nc + i0..];
            // SAFETY: the token's holder checked NEON. Weight rows n0 + i0 .. + nr lie in `w`
            // (checked `w.len() >= n1 * k`), activation rows j0 .. j0 + mr in `x` (checked
            // `x.len() == m * k`); `dst` indexing is bounds-checked.
            unsafe {
                match mr {
                    1 => stream_kernel_n::<4, 1, E>(nr, wp, xp, k, dst, nc),
                    2 => stream_kernel_n::<4, 2, E>(nr, wp, xp, k, dst, nc),
                    3 => stream_kernel_n::<2, 3, E>(nr, wp, xp, k, dst, nc),
                    _ => stream_kernel_n::<2, 4, E>(nr, wp, xp, k, dst, nc),
                }
            }
            i0 += nr;
        }
        j0 += mr;
    }
}

/// Weights as `f16` or `bf16` (`bytes` come 8-byte aligned from `QuantizedTensor`; empty
/// otherwise, which the callers' length checks then refuse).
fn as_half<E: HalfBits>(bytes: &[u8]) -> &[E] {
    // SAFETY: `E` is `f16` or `bf16` (the `HalfBits` bound): 2 bytes, every bit pattern valid;
    // `align_to` only reinterprets the aligned middle.
    let (pre, mid, post) = unsafe { bytes.align_to::<E>() };
    if pre.is_empty() && post.is_empty() {
        mid
    } else {
        &[]
    }
}

/// f16/bf16 weight rows `n0..n1` streamed against all activation rows, into `buf`
/// (`m x (n1 - n0)`). Does nothing when the lengths are inconsistent.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn half_stream(
    t: Neon,
    bf: bool,
    bytes: &[u8],
    s: &Shape,
    x: &[f32],
    n0: usize,
    n1: usize,
    buf: &mut [f32],
) {
    if bf {
        stream(t, as_half::<half::bf16>(bytes), s, x, n0, n1, buf);
    } else {
        stream(t, as_half::<half::f16>(bytes), s, x, n0, n1, buf);
    }
}

/// f16/bf16 weight rows `n0..n1` converted to an f32 panel, multiplied by all activation rows
/// with `gemm` on this thread, into `buf` (`m x (n1 - n0)`). Does nothing when the lengths are
/// inconsistent.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn half_panel_gemm(
    _t: Neon,
    bf: bool,
    bytes: &[u8],
    s: &Shape,
    x: &[f32],
    n0: usize,
    n1: usize,
    buf: &mut [f32],
) {
    if bf {
        panel_gemm(as_half::<half::bf16>(bytes), s, x, n0, n1, buf);
    } else {
        panel_gemm(as_half::<half::f16>(bytes), s, x, n0, n1, buf);
    }
}

/// f16 (`bf` false) or bf16 little-endian `bytes` widened to f32 into `dst`
/// (`bytes.len() == 2 * dst.len()`); misaligned bytes are widened one value at a time.
pub(crate) fn half_to_f32(_t: Neon, bf: bool, bytes: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(bytes.len(), 2 * dst.len());
    if bf {
        let src = as_half::<half::bf16>(bytes);
        if src.len() == dst.len() {
            src.convert_to_f32_slice(dst);
            return;
        }
    } else {
        let src = as_half::<half::f16>(bytes);
        if src.len() == dst.len() {
            src.convert_to_f32_slice(dst);
            return;
        }
    }
    crate::matmul::widen_half_bytes(bf, bytes, dst);
}

/// [`half_panel_gemm`] for one of f16/bf16.
fn panel_gemm<E: HalfBits>(w: &[E], s: &Shape, x: &[f32], n0: usize, n1: usize, buf: &mut [f32])
where
    [E]: HalfFloatSliceExt,
{
    let (m, k) = (s.m, s.k);
    let nc = n1.saturating_sub(n0);
    let consistent =
        n0 <= n1 && n1 <= s.n && w.len() >= n1 * k && x.len() == m * k && buf.len() == m * nc;
    debug_assert!(consistent, "half_panel_gemm: inconsistent lengths");
    if !consistent || nc == 0 || k == 0 {
        return;
    }
    let mut panel = vec![0.0f32; nc * k];
    w[n0 * k..n1 * k].convert_to_f32_slice(&mut panel);
    gemm_f32(x, &panel, m, nc, k, buf, 1.0, 0.0, Parallelism::None);
}
