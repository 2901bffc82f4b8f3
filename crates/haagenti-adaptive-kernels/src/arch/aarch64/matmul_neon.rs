//! NEON matmul kernels for quantized weights (tested under qemu: correctness only).
//!
//! A row kernel: one activation row (pre-quantized to Q8_0 in [`PackedX`] row blocks) against
//! up to four weight rows. Q4_0 nibbles become `q - 8` as signed bytes, so every weight format is
//! a signed x signed byte dot product: `sdot` (`vdotq_s32`) where the CPU has the dot-product
//! extension (written as inline `asm!` while `vdotq_s32` is unstable), otherwise `smull` (`vmull_s8`) and pairwise accumulation (`vpadalq_s16`). Each
//! block's exact `i32` sum is then scaled in f32 in the oracle's order, so the result equals
//! [`matmul_scalar`](crate::matmul_scalar)'s.
//!
//! Every `unsafe fn` here requires NEON (and `dotprod` for the `sdot` kernel); the safe wrapper
//! takes the [`Neon`] token that proves them and checks every length the pointer arithmetic uses.

use std::arch::aarch64::*;

use crate::dispatch::Neon;
use crate::format::Format;
use crate::matmul::Shape;
use crate::matmul::pack::{PackedX, RowBlock};

/// Kernel selector for Q8_0 weights.
const Q8_0: u8 = 0;
/// Kernel selector for Q4_0 weights.
const Q4_0: u8 = 1;
/// Kernel selector for Q4_1 weights.
const Q4_1: u8 = 2;

/// Bytes of one weight block.
const fn block_bytes(f: u8) -> usize {
    match f {
        Q8_0 => 34,
        Q4_0 => 18,
        _ => 20,
    }
}

/// Offset of the quantized values in a weight block.
const fn qs_offset(f: u8) -> usize {
    match f {
        Q4_1 => 4,
        _ => 2,
    }
}

/// The 32 values of a weight block as two vectors of signed bytes (values 0..16, 16..32).
///
/// # Safety
///
/// NEON must be available; `p` must be valid for reading 32 bytes (Q8_0) or 16 bytes (Q4_x).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn weight_values<const F: u8>(p: *const u8) -> (int8x16_t, int8x16_t) {
    if F == Q8_0 {
        // SAFETY: the caller guarantees 32 readable bytes at `p`.
        unsafe { (vld1q_s8(p.cast()), vld1q_s8(p.add(16).cast())) }
    } else {
        // SAFETY: the caller guarantees 16 readable bytes at `p`.
        let raw = unsafe { vld1q_u8(p) };
        let lo = vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw));
        if F == Q4_0 {
            let eight = vdupq_n_s8(8);
            (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
        } else {
            (lo, hi)
        }
    }
}

/// Exact dot product of two 32-byte signed blocks with `sdot`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn block_dot_sdot(w: (int8x16_t, int8x16_t), x: (int8x16_t, int8x16_t)) -> i32 {
    // `vdotq_s32` is still unstable (stdarch_neon_dotprod), so `sdot` is written out.
    let mut acc = vdupq_n_s32(0);
    // SAFETY: `sdot` only reads and writes the named vector registers; this function enables
    // `dotprod`, and its callers hold a token proving the CPU has it.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            "sdot {acc:v}.4s, {c:v}.16b, {d:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) w.0,
            b = in(vreg) x.0,
            c = in(vreg) w.1,
            d = in(vreg) x.1,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    vaddvq_s32(acc)
}

/// Exact dot product of two 32-byte signed blocks with widening multiplies.
#[inline]
#[target_feature(enable = "neon")]
fn block_dot_mull(w: (int8x16_t, int8x16_t), x: (int8x16_t, int8x16_t)) -> i32 {
    // Each product fits i16 (|w| <= 128, |x| <= 127); pairs are added in i32.
    let mut acc = vpaddlq_s16(vmull_s8(vget_low_s8(w.0), vget_low_s8(x.0)));
    acc = vpadalq_s16(acc, vmull_high_s8(w.0, x.0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w.1), vget_low_s8(x.1)));
    acc = vpadalq_s16(acc, vmull_high_s8(w.1, x.1));
    vaddvq_s32(acc)
}

/// `NR` weight rows x one activation row over `nb` blocks, with block dots from `dot`.
///
/// # Safety
///
/// NEON must be available (and `dotprod` when `SDOT`). `w + i * stride` must be valid for
/// reading `nb` blocks of format `F` for `i < NR`; `x` valid for reading `nb` row blocks.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn row_kernel<const NR: usize, const F: u8, const SDOT: bool>(
    w: *const u8,
    stride: usize,
    nb: usize,
    x: *const RowBlock,
) -> [f32; NR] {
    let (bb, qo) = (block_bytes(F), qs_offset(F));
    let mut sum = [0.0f32; NR];
    for b in 0..nb {
        // SAFETY: `b < nb` and the caller guarantees `nb` readable blocks at `x`.
        let rb = unsafe { &*x.add(b) };
        // SAFETY: `qs` is 32 readable bytes.
        let xv = unsafe { (vld1q_s8(rb.qs.as_ptr()), vld1q_s8(rb.qs.as_ptr().add(16))) };
        for (i, s) in sum.iter_mut().enumerate() {
            // SAFETY: `i < NR`, `b < nb`: inside the weight rows the caller guarantees; the
            // block's values start `qo` bytes in and fit in its `bb` bytes.
            let blk = unsafe { w.add(i * stride + b * bb) };
            // SAFETY: as above.
            let wv = unsafe { weight_values::<F>(blk.add(qo)) };
            let isum = if SDOT {
                // SAFETY: `SDOT` is only chosen when the token says `dotprod` is present.
                unsafe { block_dot_sdot(wv, xv) }
            } else {
                block_dot_mull(wv, xv)
            };
            // SAFETY: the block's first 2 (Q4_1: 4) bytes are inside it.
            let (d, m) = unsafe {
                (
                    read_f16(blk),
                    if F == Q4_1 { read_f16(blk.add(2)) } else { 0.0 },
                )
            };
            *s += (d * rb.d) * isum as f32;
            if F == Q4_1 {
                *s += m * rb.s;
            }
        }
    }
    sum
}

/// [`row_kernel`] compiled with `dotprod` enabled, so that `sdot` inlines into the loop.
///
/// # Safety
///
/// As [`row_kernel`] with `SDOT`: NEON and `dotprod` must be available.
#[target_feature(enable = "neon,dotprod")]
unsafe fn row_kernel_sdot<const NR: usize, const F: u8>(
    w: *const u8,
    stride: usize,
    nb: usize,
    x: *const RowBlock,
) -> [f32; NR] {
    // SAFETY: forwarded from the caller; this function enables `dotprod`.
    unsafe { row_kernel::<NR, F, true>(w, stride, nb, x) }
}

/// The row kernel for `SDOT` (with `dotprod`) or without.
///
/// # Safety
///
/// As [`row_kernel`].
#[inline]
unsafe fn row<const NR: usize, const F: u8, const SDOT: bool>(
    w: *const u8,
    stride: usize,
    nb: usize,
    x: *const RowBlock,
) -> [f32; NR] {
    if SDOT {
        // SAFETY: forwarded from the caller, who guarantees `dotprod` for `SDOT`.
        unsafe { row_kernel_sdot::<NR, F>(w, stride, nb, x) }
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { row_kernel::<NR, F, false>(w, stride, nb, x) }
    }
}

/// Little-endian f16 at `p`, as f32.
///
/// # Safety
///
/// `p` must be valid for reading 2 bytes.
#[inline]
unsafe fn read_f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes.
    let bits = unsafe { u16::from_le_bytes([*p, *p.add(1)]) };
    half::f16::from_bits(bits).to_f32()
}

/// Quantized weight rows `n0..n1` against activation row groups `g0..g1` of `x` (row blocks
/// only), into `buf` (`[rows of the groups] x (n1 - n0)`, row-major).
///
/// Does nothing when the lengths are inconsistent (the caller's checks rule that out).
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn quant_task(
    t: Neon,
    format: Format,
    bytes: &[u8],
    s: &Shape,
    x: &PackedX,
    n0: usize,
    n1: usize,
    g0: usize,
    g1: usize,
    buf: &mut [f32],
) {
    match (format, t.dotprod) {
        (Format::Q8_0, true) => quant_task_f::<Q8_0, true>(bytes, s, x, n0, n1, g0, g1, buf),
        (Format::Q8_0, false) => quant_task_f::<Q8_0, false>(bytes, s, x, n0, n1, g0, g1, buf),
        (Format::Q4_0, true) => quant_task_f::<Q4_0, true>(bytes, s, x, n0, n1, g0, g1, buf),
        (Format::Q4_0, false) => quant_task_f::<Q4_0, false>(bytes, s, x, n0, n1, g0, g1, buf),
        (Format::Q4_1, true) => quant_task_f::<Q4_1, true>(bytes, s, x, n0, n1, g0, g1, buf),
        (Format::Q4_1, false) => quant_task_f::<Q4_1, false>(bytes, s, x, n0, n1, g0, g1, buf),
        _ => debug_assert!(false, "quant_task on {format}"),
    }
}

/// [`quant_task`] for one weight format. Only called with a [`Neon`] token in hand (that had
/// `dotprod` when `SDOT`).
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
fn quant_task_f<const F: u8, const SDOT: bool>(
    bytes: &[u8],
    s: &Shape,
    x: &PackedX,
    n0: usize,
    n1: usize,
    g0: usize,
    g1: usize,
    buf: &mut [f32],
) {
    let (nb, bb, rb) = (x.nb, block_bytes(F), s.row_bytes);
    let nc = n1.saturating_sub(n0);
    let (row0, nrows) = x.rows_of(g0, g1);
    let consistent = n0 <= n1
        && n1 <= s.n
        && g0 <= g1
        && g1 <= x.groups()
        && rb == nb * bb
        && bytes.len() >= n1 * rb
        && buf.len() == nrows * nc
        && x.rows.len() == x.m * nb;
    debug_assert!(consistent, "quant_task: inconsistent lengths");
    if !consistent || nc == 0 || nb == 0 {
        return;
    }
    let wbase = bytes[n0 * rb..].as_ptr();
    for g in g0..g1 {
        let out_row = x.group_row(g) - row0;
        let xr = x.row(g).as_ptr();
        let mut i0 = 0;
        while i0 < nc {
            let nr = (nc - i0).min(4);
            let w = wbase.wrapping_add(i0 * rb);
            let dst = &mut buf[out_row * nc + i0..out_row * nc + i0 + nr];
            // SAFETY: the token's holder checked NEON (and dotprod for SDOT). Weight rows
            // n0 + i0 .. + nr lie in `bytes` (checked `bytes.len() >= n1 * rb`, rb = nb * bb),
            // and row `g` has `nb` blocks (checked `rows.len()`).
            unsafe {
                match nr {
                    4 => dst.copy_from_slice(&row::<4, F, SDOT>(w, rb, nb, xr)),
                    3 => dst.copy_from_slice(&row::<3, F, SDOT>(w, rb, nb, xr)),
                    2 => dst.copy_from_slice(&row::<2, F, SDOT>(w, rb, nb, xr)),
                    _ => dst.copy_from_slice(&row::<1, F, SDOT>(w, rb, nb, xr)),
                }
            }
            i0 += nr;
        }
    }
}
