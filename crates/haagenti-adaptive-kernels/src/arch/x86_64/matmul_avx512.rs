//! AVX-512 VNNI micro-kernels for block-format weights (Q8_0, Q4_0, Q4_1) with two or more
//! activation rows.
//!
//! The AVX2 strip scheme at twice the width, with `vpdpbusd` (unsigned x signed bytes, four
//! products summed into each i32 lane, no saturation) in place of `maddubs` + `madd`: each task
//! repacks its weight rows sixteen at a time into a *strip* (per block, eight vectors of 64
//! bytes, vector `s` holding values `4s..4s + 4` of the sixteen rows, row `r` in bytes
//! `4r..4r + 4`), plus the sixteen rows' scales (and Q4_1 minimums) as f32 vectors. The kernel
//! runs up to [`MR`] activation rows against a strip: per step it broadcasts four activation
//! bytes per row and `vpdpbusd`s them into all sixteen weight rows at once, so products
//! accumulate lane-wise with no horizontal reduction.
//!
//! `vpdpbusd` wants the unsigned operand first, so weights are stored unsigned: Q4_x nibbles as
//! they are (`0..=15`), Q8_0 values offset by 128 (`w + 128`, `0..=255`). The offsets come
//! off the exact i32 block sum per activation row: Q4_0 `8 Σ q_x` (the `q - 8` of its
//! nibbles), Q8_0 `128 Σ q_x = 16 · (8 Σ q_x)`. A block sum is at most 32 x 255 x 127, far
//! inside i32. Then per block and row one f32 conversion and one FMA by `d_w · d_x`, and for
//! Q4_1 one FMA of `m_w` by `d_x Σ q_x`, as the AVX2 kernel does.
//!
//! Every `unsafe fn` here requires AVX2, FMA, F16C, AVX-512 F/BW/VL and AVX512-VNNI; the safe
//! entry point takes the [`Avx512`] token (with `vnni`) that proves them.

use std::arch::x86_64::*;

use super::matmul_avx2::transpose_8x16;
use crate::dispatch::Avx512;
use crate::format::Format;
use crate::matmul::pack::{PackedX, RowBlock};
use crate::matmul::{Shape, TileOut};

/// Weight rows in a strip (the i32 / f32 lanes of one 512-bit vector).
const NR: usize = 16;
/// Activation rows per kernel pass: `MR` f32 accumulators and `MR` block sums, the weight
/// vector and the scale vector stay within the 32 vector registers.
pub(crate) const MR: usize = 12;

/// A block-format weight layout as the strip packer reads it.
trait WeightBlock {
    /// Bytes of one block.
    const BYTES: usize;
    /// Offset of the quantized values in a block.
    const QS: usize;
    /// Whether the values are 32 signed bytes (Q8_0) rather than 16 bytes of nibbles.
    const BYTES_PER_VALUE: bool;
    /// Whether the block has a minimum after its scale (Q4_1).
    const MIN: bool;
    /// Per activation row and block, the multiple of `sum8 = 8 Σ q_x` the unsigned weight
    /// encoding adds to the block sum (taken off before scaling).
    const SUM8_OFFSET: i32;
}

/// Q8_0: f16 scale, 32 signed bytes, stored `+ 128`.
struct Q8;
/// Q4_0: f16 scale, 16 bytes of nibbles meaning `q - 8`.
struct Q40;
/// Q4_1: f16 scale, f16 minimum, 16 bytes of nibbles.
struct Q41;

impl WeightBlock for Q8 {
    const BYTES: usize = size_of::<crate::blocks::BlockQ8_0>();
    const QS: usize = std::mem::offset_of!(crate::blocks::BlockQ8_0, qs);
    const BYTES_PER_VALUE: bool = true;
    const MIN: bool = false;
    const SUM8_OFFSET: i32 = 16;
}
impl WeightBlock for Q40 {
    const BYTES: usize = size_of::<crate::blocks::BlockQ4_0>();
    const QS: usize = std::mem::offset_of!(crate::blocks::BlockQ4_0, qs);
    const BYTES_PER_VALUE: bool = false;
    const MIN: bool = false;
    const SUM8_OFFSET: i32 = 1;
}
impl WeightBlock for Q41 {
    const BYTES: usize = size_of::<crate::blocks::BlockQ4_1>();
    const QS: usize = std::mem::offset_of!(crate::blocks::BlockQ4_1, qs);
    const BYTES_PER_VALUE: bool = false;
    const MIN: bool = true;
    const SUM8_OFFSET: i32 = 0;
}

/// Sixteen weight rows repacked for the kernel (see the module docs).
struct Strip {
    /// `nb * 8` vectors, step `s` of block `b` at `b * 8 + s`.
    q: Vec<__m512i>,
    /// Per block, the sixteen rows' scales.
    d: Vec<__m512>,
    /// Per block, the sixteen rows' minimums (Q4_1; empty otherwise).
    m: Vec<__m512>,
}

impl Strip {
    /// A zeroed strip for `nb` blocks.
    fn new<W: WeightBlock>(nb: usize) -> Strip {
        // SAFETY: all-zero bits are a valid `__m512i` and `__m512`; no CPU feature is needed.
        let (zi, zf) = unsafe { (std::mem::zeroed::<__m512i>(), std::mem::zeroed::<__m512>()) };
        Strip {
            q: vec![zi; nb * 8],
            d: vec![zf; nb],
            m: if W::MIN { vec![zf; nb] } else { Vec::new() },
        }
    }

    /// Blocks the strip holds.
    fn blocks(&self) -> usize {
        self.d.len().min(self.q.len() / 8)
    }
}

/// The f16 at byte `off` of block `b` of rows `0..nr` (`w + r * stride`), as f32 lanes
/// (zero past `nr`).
///
/// # Safety
///
/// AVX-512 F must be available; block `b` of every row `r < nr <= 16` must be readable, and
/// `off + 2 <= W::BYTES`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn halves16<W: WeightBlock>(
    w: *const u8,
    stride: usize,
    nr: usize,
    b: usize,
    off: usize,
) -> __m512 {
    let mut h = [0u16; NR];
    for (r, h) in h.iter_mut().enumerate().take(nr) {
        // SAFETY: `r < nr`: inside block `b` of row `r`, as the caller guarantees.
        *h = unsafe { std::ptr::read_unaligned(w.add(r * stride + b * W::BYTES + off).cast()) };
    }
    // SAFETY: `h` is 32 readable bytes; `loadu` needs no alignment.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(h.as_ptr().cast()) })
}

/// Repacks weight rows `0..nr` (`nr <= 16`, at `w + r * stride`) into `strip`.
///
/// # Safety
///
/// The token's features must be available; `w + r * stride` must be valid for reading
/// `strip.blocks()` blocks of `W` for every `r < nr`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pack_strip<W: WeightBlock>(w: *const u8, stride: usize, nr: usize, strip: &mut Strip) {
    let nr = nr.min(NR);
    let (lo_rows, hi_rows) = (nr.min(8), nr.saturating_sub(8));
    let nibble = _mm256_set1_epi8(0x0F);
    let offset = _mm512_set1_epi8(-128);
    for b in 0..strip.blocks() {
        let at = |r: usize| w.wrapping_add(r * stride + b * W::BYTES + W::QS);
        let at_hi = |r: usize| at(r + 8);
        // Four 256-bit vectors of rows 0..8 and of rows 8..16, per 16 value bytes.
        // SAFETY: rows `r < nr` hold their value bytes from `at(r)` (16 for nibbles, 32 for
        // Q8_0, read as two halves); the transposes read rows below the counts given.
        let groups = |off: usize| unsafe {
            (
                transpose_8x16(|r| at(r).wrapping_add(off), lo_rows),
                transpose_8x16(|r| at_hi(r).wrapping_add(off), hi_rows),
            )
        };
        let join =
            |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let q = &mut strip.q[b * 8..(b + 1) * 8];
        if W::BYTES_PER_VALUE {
            let (lo0, hi0) = groups(0);
            let (lo1, hi1) = groups(16);
            for t in 0..4 {
                // `w + 128` as an unsigned byte: the sign bit flipped.
                q[t] = _mm512_xor_si512(join(lo0[t], hi0[t]), offset);
                q[4 + t] = _mm512_xor_si512(join(lo1[t], hi1[t]), offset);
            }
        } else {
            let (lo, hi) = groups(0);
            // Byte j holds value j (low nibble) and value j + 16 (high nibble).
            for t in 0..4 {
                let low = |v: __m256i| _mm256_and_si256(v, nibble);
                let high = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                q[t] = join(low(lo[t]), low(hi[t]));
                q[4 + t] = join(high(lo[t]), high(hi[t]));
            }
        }
        // SAFETY: block `b` of rows `r < nr` is readable; the scale is its first 2 bytes, Q4_1's
        // minimum the next 2.
        strip.d[b] = unsafe { halves16::<W>(w, stride, nr, b, 0) };
        if W::MIN {
            // SAFETY: as for the scale.
            strip.m[b] = unsafe { halves16::<W>(w, stride, nr, b, 2) };
        }
    }
}

/// `P` activation rows (`x + j * xs` for row `j`) against a packed [`Strip`]: per row, the
/// sixteen dot products with the strip's rows.
///
/// # Safety
///
/// The token's features must be available; `x + j * xs` must be valid for reading
/// `strip.blocks()` row blocks for every `j < P`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn strip_kernel<const P: usize, W: WeightBlock>(
    strip: &Strip,
    x: *const RowBlock,
    xs: usize,
) -> [__m512; P] {
    let mut acc = [_mm512_setzero_ps(); P];
    let q = strip.q.as_ptr();
    for b in 0..strip.blocks() {
        let mut isum = [_mm512_setzero_si512(); P];
        for s in 0..8 {
            // SAFETY: `b < blocks()` and the strip holds `blocks() * 8` vectors (aligned).
            let wv = unsafe { _mm512_load_si512(q.add(b * 8 + s).cast()) };
            for (j, isum) in isum.iter_mut().enumerate() {
                // SAFETY: `j < P`, `b < blocks()`: a block of row `j`; bytes `4s..4s + 4` of
                // its 32 values are read (unaligned).
                let xb = unsafe {
                    let p = (*x.add(j * xs + b)).qs.as_ptr().add(4 * s);
                    _mm512_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()))
                };
                *isum = _mm512_dpbusd_epi32(*isum, wv, xb);
            }
        }
        let dv = strip.d[b];
        for (j, (acc, isum)) in acc.iter_mut().zip(isum).enumerate() {
            // SAFETY: `j < P`, `b < blocks()`: a block of row `j`.
            let rb = unsafe { &*x.add(j * xs + b) };
            let i = if W::SUM8_OFFSET == 0 {
                isum
            } else {
                _mm512_sub_epi32(isum, _mm512_set1_epi32(W::SUM8_OFFSET * rb.sum8))
            };
            let scale = _mm512_mul_ps(dv, _mm512_set1_ps(rb.d));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scale, *acc);
            if W::MIN {
                *acc = _mm512_fmadd_ps(strip.m[b], _mm512_set1_ps(rb.s), *acc);
            }
        }
    }
    acc
}

/// Weight rows `n0..n1` of `bytes` against activation rows `r0..r1` of `x`, into `tile`
/// (rows `r0..r1`, columns `n0..n1`). `false` (and `tile` untouched) when the format is not
/// a block format or the lengths disagree, for the caller to run another path.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn quant_task(
    t: Avx512,
    format: Format,
    bytes: &[u8],
    s: &Shape,
    x: &PackedX,
    n0: usize,
    n1: usize,
    r0: usize,
    r1: usize,
    tile: &mut TileOut,
) -> bool {
    match format {
        Format::Q8_0 => task::<Q8>(t, bytes, s, x, n0, n1, r0, r1, tile),
        Format::Q4_0 => task::<Q40>(t, bytes, s, x, n0, n1, r0, r1, tile),
        Format::Q4_1 => task::<Q41>(t, bytes, s, x, n0, n1, r0, r1, tile),
        _ => false,
    }
}

/// [`quant_task`] for one weight layout.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
fn task<W: WeightBlock>(
    t: Avx512,
    bytes: &[u8],
    s: &Shape,
    x: &PackedX,
    n0: usize,
    n1: usize,
    r0: usize,
    r1: usize,
    tile: &mut TileOut,
) -> bool {
    let (nb, rb) = (x.nb, s.row_bytes);
    let consistent = t.vnni
        && n0 <= n1
        && n1 <= s.n
        && r0 <= r1
        && r1 <= x.m
        && rb == nb * W::BYTES
        && bytes.len() >= n1 * rb
        && tile.rows() == r1 - r0
        && tile.cols() == n1 - n0
        && x.rows.len() == x.m * nb;
    if !consistent {
        return false;
    }
    let nc = n1 - n0;
    let wbase = bytes[n0 * rb..].as_ptr();
    let mut strip = Strip::new::<W>(nb);
    let mut i0 = 0;
    while i0 < nc {
        let nr = (nc - i0).min(NR);
        // SAFETY: the token proves the features. Rows i0 .. i0 + nr of the task lie in the
        // weights (checked `bytes.len() >= n1 * rb`, rb = nb * W::BYTES); the strip holds `nb`
        // blocks.
        unsafe { pack_strip::<W>(wbase.wrapping_add(i0 * rb), rb, nr, &mut strip) };
        let mut j = r0;
        while j < r1 {
            let p = (r1 - j).min(MR);
            let xp = x.rows[j * nb..].as_ptr();
            let mut res = [[0.0f32; NR]; MR];
            // SAFETY: as above; activation rows j .. j + p <= x.m each have `nb` blocks at
            // `xp + jj * nb` (checked `rows.len() == m * nb`).
            unsafe {
                macro_rules! run {
                    ($($n:literal)+) => {
                        match p {
                            $($n => store(&mut res, &strip_kernel::<$n, W>(&strip, xp, nb)),)+
                            _ => store(&mut res, &strip_kernel::<MR, W>(&strip, xp, nb)),
                        }
                    };
                }
                run!(1 2 3 4 5 6 7 8 9 10 11)
            }
            for (jj, r) in res.iter().enumerate().take(p) {
                tile.write(j + jj - r0, i0, &r[..nr]);
            }
            j += p;
        }
        i0 += nr;
    }
    true
}

/// Stores result vectors as rows of 16 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn store<const P: usize>(res: &mut [[f32; NR]; MR], v: &[__m512; P]) {
    for (r, v) in res.iter_mut().zip(v) {
        // SAFETY: `r` is 16 writable f32; `storeu` needs no alignment.
        unsafe { _mm512_storeu_ps(r.as_mut_ptr(), *v) };
    }
}
