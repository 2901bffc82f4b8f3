//! AVX2 + FMA + F16C matmul kernels.
//!
//! Quantized weights: activations come pre-quantized to Q8_0 in [`PackedX`] row blocks. With
//! two or more activation rows, each task repacks its weight rows eight at a time into a
//! *strip*: per block, eight vectors of 32 bytes, vector `s` holding values `4s..4s + 4` of the
//! eight rows (Q4_x nibbles unpacked to bytes `0..=15`), plus the eight rows' scales (and Q4_1
//! minimums) as f32 vectors. The strip kernel then runs up to 6 activation rows against the
//! strip (full passes of 6 in inline assembly, see [`strip_kernel6`], so that no accumulator
//! spills): for each group of four values it broadcasts four activation bytes per row and
//! multiplies them into all eight weight rows at once (`maddubs`, unsigned x signed bytes to
//! i16 pairs), so products accumulate lane-wise with no horizontal reduction. Q4_x sums stay
//! in i16 for the whole block (at most 8 x 2 x 15 x 127 = 30480 per lane, no saturation) and
//! widen once per block (`madd` with ones); Q8_0 uses the `sign` trick (`|w|` x `x·sgn(w)`, a
//! pair at most 2 x 128 x 127 < 32767) and widens every step. Per block and row one f32
//! conversion and one FMA by `d_w · d_x` (a vector over the eight weight rows) scale the
//! eight sums; Q4_0 takes `8 Σ q_x` off first, Q4_1 adds `m_w · d_x Σ q_x`.
//!
//! The row kernel (a single activation row, M = 1, where repacking would cost more than it
//! saves) reads the weights in place, eight rows per pass: per block and weight row one
//! `maddubs` + `madd` over the 32 values, an f32 conversion and an FMA by `d_w · d_x` (the
//! scale converted from f16 inline) into that row's vector accumulator, summed horizontally
//! once at the end; Q4_0's `8 Σ q_x` and Q4_1's minimum terms go to a scalar sum per row.
//!
//! Float weights with few activation rows: [`stream`] reads each weight row once, widening 8
//! values at a time (`vcvtph2ps` for f16, a 16-bit shift for bf16, a plain load for f32), and
//! FMAs them into up to four activation rows. With many activation rows F16/BF16 go to `gemm`
//! as f32: small matrices converted whole by [`half_to_f32_t`] into the `k x n` transpose
//! (8 x 8 blocks transposed in registers), large ones through [`half_panel_gemm`] (a panel of
//! weight rows converted to f32 per task); F32 goes straight to `gemm`.
//!
//! Every `unsafe fn` here requires AVX2, FMA and F16C; the safe wrappers take the
//! [`Avx2`] token that proves them and check every length the kernels' pointer arithmetic uses.

use std::arch::x86_64::*;

use crate::dispatch::Avx2;
use crate::format::Format;
use crate::matmul::pack::{PackedX, RowBlock};
use crate::matmul::{Shape, TileOut};

/// Kernel selector for Q8_0 weights.
const Q8_0: u8 = 0;
/// Kernel selector for Q4_0 weights.
const Q4_0: u8 = 1;
/// Kernel selector for Q4_1 weights.
const Q4_1: u8 = 2;

/// Weight rows in a strip (the lanes of one vector of i32 or f32).
const NR: usize = 8;
/// Weight rows per pass of the row kernel.
const RW: usize = 8;

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

/// Activation rows per strip-kernel pass (what the 16 vector registers allow: 6 f32
/// accumulators, 6 integer block sums, the weight vector, `|w|` for Q8_0, a temporary and the
/// `madd` ones). Passes of six rows run [`strip_kernel6`]; the last, shorter pass of a task
/// [`strip_kernel`].
const MR: usize = 6;

/// Activation rows per pass the driver should group rows by when there are `m` in all: the
/// strip kernel's [`MR`] from two rows on, 1 for a single row (the row kernel).
pub(crate) fn rows_per_pass(m: usize) -> usize {
    if m < 2 { 1 } else { MR }
}

/// Per-lane i32 sums of 4 products of a weight block (`wq`, with `aw = |wq|` for Q8_0) and an
/// activation block `x`; lanes 0..4 cover values 0..16, lanes 4..8 values 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_dot<const F: u8>(wq: __m256i, aw: __m256i, x: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    if F == Q8_0 {
        // |w| * (x with w's sign) = w * x; pairs of products fit i16 (|w| <= 128, |x| <= 127).
        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, wq)), ones)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(wq, x), ones)
    }
}

/// Horizontal sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 32 values of a weight block as bytes, for the row kernel: signed for Q8_0; for Q4_x
/// `0..=15`, split by a per-lane variable shift of the 16 bytes broadcast to both halves.
///
/// # Safety
///
/// AVX2 must be available; `p` must be valid for reading 32 bytes (Q8_0) or 16 bytes (Q4_x).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_values<const F: u8>(p: *const u8) -> __m256i {
    if F == Q8_0 {
        // SAFETY: the caller guarantees 32 readable bytes at `p`; `loadu` needs no alignment.
        unsafe { _mm256_loadu_si256(p.cast()) }
    } else {
        // SAFETY: the caller guarantees 16 readable bytes at `p`; `loadu` needs no alignment.
        let raw = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(p.cast()) });
        // Low half: low nibbles (values 0..16); high half: high nibbles (values 16..32).
        let shifted = _mm256_srlv_epi32(raw, _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
    }
}

/// The f16 at byte `off` of block `b` of weight rows `0..NW` (`w + i * stride`), as f32
/// lanes `0..NW` (lanes past `NW` zero).
///
/// # Safety
///
/// F16C must be available; block `b` of every row `i < NW` must be readable at
/// `w + i * stride + b * bb`, and `off + 2 <= bb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves<const NW: usize>(
    w: *const u8,
    stride: usize,
    b: usize,
    bb: usize,
    off: usize,
) -> __m256 {
    let mut h = [0u16; 8];
    for (i, h) in h.iter_mut().enumerate().take(NW) {
        // SAFETY: `i < NW`: inside block `b` of row `i`, as the caller guarantees.
        *h = unsafe { std::ptr::read_unaligned(w.add(i * stride + b * bb + off).cast()) };
    }
    // SAFETY: `h` is 16 readable bytes; `loadu` needs no alignment.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
}

/// `NW` (at most 8) weight rows x one activation row, over `nb` blocks.
///
/// Per block: the `NW` rows' scales converted from f16 at once and multiplied by `d_x`
/// (lane `i` broadcast to row `i` with one permute); per weight row the integer block product
/// (`maddubs` + `madd` over the 32 values), converted and FMA'd by that scale into the row's
/// vector accumulator, summed horizontally once at the end. Q4_0's `-8 d_w · d_x Σ q_x` and
/// Q4_1's `m_w · d_x Σ q_x` go to one vector over the rows (`d_w` or `m_w` times `d_x Σ q_x`).
///
/// # Safety
///
/// AVX2, FMA and F16C must be available. `w + i * stride` must be valid for reading `nb`
/// blocks of format `F` for every `i < NW`; `x` valid for reading `nb` row blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_kernel<const NW: usize, const F: u8>(
    w: *const u8,
    stride: usize,
    nb: usize,
    x: *const RowBlock,
) -> [f32; NW] {
    let (bb, qo) = (block_bytes(F), qs_offset(F));
    let mut acc = [_mm256_setzero_ps(); NW];
    let mut corr = _mm256_setzero_ps();
    for b in 0..nb {
        // SAFETY: `b < nb` and the caller guarantees `nb` readable blocks at `x`.
        let rb = unsafe { &*x.add(b) };
        // SAFETY: `qs` is 32 readable bytes; `loadu` needs no alignment.
        let xv = unsafe { _mm256_loadu_si256(rb.qs.as_ptr().cast()) };
        // SAFETY: `b < nb`: block `b` of rows `i < NW` is readable; the scale is its first 2
        // bytes, Q4_1's minimum the next 2.
        let dw = unsafe { halves::<NW>(w, stride, b, bb, 0) };
        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(rb.d));
        if F == Q4_0 {
            corr = _mm256_fmadd_ps(dw, _mm256_set1_ps(rb.s), corr);
        } else if F == Q4_1 {
            // SAFETY: as for `dw`.
            let mw = unsafe { halves::<NW>(w, stride, b, bb, 2) };
            corr = _mm256_fmadd_ps(mw, _mm256_set1_ps(rb.s), corr);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `i < NW`, `b < nb`: block `b` of row `i`, which the caller guarantees;
            // its values start `qo` bytes in and fit in its `bb` bytes.
            let wq = unsafe { row_values::<F>(w.add(i * stride + b * bb + qo)) };
            let aw = if F == Q8_0 {
                _mm256_sign_epi8(wq, wq)
            } else {
                wq
            };
            let p = block_dot::<F>(wq, aw, xv);
            let si = _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(i as i32));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), si, *acc);
        }
    }
    let mut c = [0.0f32; 8];
    // SAFETY: `c` is 8 writable f32; `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(c.as_mut_ptr(), corr) };
    let mut res = [0.0f32; NW];
    for i in 0..NW {
        res[i] = match F {
            Q4_0 => hsum(acc[i]) - 8.0 * c[i],
            Q4_1 => hsum(acc[i]) + c[i],
            _ => hsum(acc[i]),
        };
    }
    res
}

/// Eight weight rows repacked for the strip kernel (see the module docs).
struct Strip {
    /// `nb * 8` vectors, step `s` of block `b` at `b * 8 + s`: row `r`'s values `4s..4s + 4`
    /// in bytes `4r..4r + 4` (Q4_x nibbles unpacked to `0..=15`).
    q: Vec<__m256i>,
    /// Per block, the eight rows' scales.
    d: Vec<__m256>,
    /// Per block, the eight rows' minimums (Q4_1; empty otherwise).
    m: Vec<__m256>,
}

impl Strip {
    /// A zeroed strip for `nb` blocks of format `F`.
    fn new<const F: u8>(nb: usize) -> Strip {
        // SAFETY: all-zero bits are a valid `__m256i` and `__m256`; no CPU feature is needed.
        let (zi, zf) = unsafe { (std::mem::zeroed::<__m256i>(), std::mem::zeroed::<__m256>()) };
        Strip {
            q: vec![zi; nb * 8],
            d: vec![zf; nb],
            m: if F == Q4_1 { vec![zf; nb] } else { Vec::new() },
        }
    }
}

/// Transposes 16 bytes of each of 8 rows as 4-byte groups: result `t` holds group `t` of rows
/// 0..8 (row `r` in bytes `4r..4r + 4`). Rows `r >= nr` read as zeros.
///
/// # Safety
///
/// AVX2 must be available; `p(r)` must be valid for reading 16 bytes for every `r < nr`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transpose_8x16(p: impl Fn(usize) -> *const u8, nr: usize) -> [__m256i; 4] {
    let ld = |r: usize| {
        if r < nr {
            // SAFETY: the caller guarantees 16 readable bytes at `p(r)` for `r < nr`.
            unsafe { _mm_loadu_si128(p(r).cast()) }
        } else {
            _mm_setzero_si128()
        }
    };
    // Rows r and r + 4 share a vector (low and high 128-bit lanes).
    let y0 = _mm256_set_m128i(ld(4), ld(0));
    let y1 = _mm256_set_m128i(ld(5), ld(1));
    let y2 = _mm256_set_m128i(ld(6), ld(2));
    let y3 = _mm256_set_m128i(ld(7), ld(3));
    let t0 = _mm256_unpacklo_epi32(y0, y1);
    let t1 = _mm256_unpackhi_epi32(y0, y1);
    let t2 = _mm256_unpacklo_epi32(y2, y3);
    let t3 = _mm256_unpackhi_epi32(y2, y3);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// Repacks weight rows `0..nr` (`nr <= 8`, at `w + r * stride`, `nb` blocks of format `F`)
/// into `strip`; rows `nr..8` become zeros.
///
/// # Safety
///
/// AVX2, FMA and F16C must be available; `w + r * stride` must be valid for reading `nb`
/// blocks of format `F` for every `r < nr`; `strip` must have been made for `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_strip<const F: u8>(
    w: *const u8,
    stride: usize,
    nr: usize,
    nb: usize,
    strip: &mut Strip,
) {
    let (bb, qo) = (block_bytes(F), qs_offset(F));
    let nr = nr.min(NR);
    let nb = nb.min(strip.d.len()).min(strip.q.len() / 8);
    let nibble = _mm256_set1_epi8(0x0F);
    // The f16 at byte `off` of block `b` of the eight rows, as f32 (zero past `nr`).
    let half_bits = |b: usize, off: usize| {
        let mut h = [0u16; NR];
        for (r, h) in h.iter_mut().enumerate().take(nr) {
            // SAFETY: `r < nr`, `b < nb`: the block's first bytes lie inside row `r`.
            *h = unsafe { std::ptr::read_unaligned(w.add(r * stride + b * bb + off).cast()) };
        }
        // SAFETY: `h` is 16 readable bytes; `loadu` needs no alignment.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
    };
    for b in 0..nb {
        let at = |r: usize| w.wrapping_add(r * stride + b * bb + qo);
        let q = &mut strip.q[b * 8..(b + 1) * 8];
        if F == Q8_0 {
            // SAFETY: rows r < nr hold 32 value bytes from `at(r)`: both halves are readable.
            let (lo, hi) = unsafe {
                (
                    transpose_8x16(at, nr),
                    transpose_8x16(|r| at(r).wrapping_add(16), nr),
                )
            };
            q[..4].copy_from_slice(&lo);
            q[4..].copy_from_slice(&hi);
        } else {
            // SAFETY: rows r < nr hold 16 value bytes from `at(r)`.
            let g = unsafe { transpose_8x16(at, nr) };
            // Byte j holds value j (low nibble) and value j + 16 (high nibble).
            for t in 0..4 {
                q[t] = _mm256_and_si256(g[t], nibble);
                q[4 + t] = _mm256_and_si256(_mm256_srli_epi16(g[t], 4), nibble);
            }
        }
        strip.d[b] = half_bits(b, 0);
        if F == Q4_1 {
            strip.m[b] = half_bits(b, 2);
        }
    }
}

/// `MR` activation rows (`x + j * xs` for row `j`, `nb` blocks each) against a [`Strip`]:
/// per activation row, the eight dot products with the strip's rows.
///
/// # Safety
///
/// AVX2, FMA and F16C must be available; `strip` must have been made and packed for `nb`
/// blocks of format `F`; `x + j * xs` must be valid for reading `nb` row blocks for `j < MR`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn strip_kernel<const MR: usize, const F: u8>(
    strip: &Strip,
    nb: usize,
    x: *const RowBlock,
    xs: usize,
) -> [__m256; MR] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); MR];
    let (q, d) = (strip.q.as_ptr(), strip.d.as_ptr());
    let nb = nb.min(strip.d.len()).min(strip.q.len() / 8);
    for b in 0..nb {
        let mut isum = [_mm256_setzero_si256(); MR];
        for s in 0..8 {
            // SAFETY: `b < nb` and the strip holds `nb * 8` vectors.
            let wv = unsafe { _mm256_load_si256(q.add(b * 8 + s)) };
            let aw = if F == Q8_0 { _mm256_abs_epi8(wv) } else { wv };
            for (j, isum) in isum.iter_mut().enumerate() {
                // SAFETY: `j < MR`, `b < nb`: a block of row `j`; `4 * s + 4 <= 32` bytes of
                // its values are read (unaligned).
                let xb = unsafe {
                    let p = (*x.add(j * xs + b)).qs.as_ptr().add(4 * s);
                    _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()))
                };
                *isum = if F == Q8_0 {
                    // |w| x (x with w's sign) = w x; a pair of products fits i16.
                    let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xb, wv));
                    _mm256_add_epi32(*isum, _mm256_madd_epi16(p, ones))
                } else {
                    // Unsigned nibbles x signed bytes: i16 lanes stay within 8 * 3810.
                    _mm256_add_epi16(*isum, _mm256_maddubs_epi16(wv, xb))
                };
            }
        }
        // SAFETY: `b < nb <= strip.d.len()` (and `strip.m.len()` for Q4_1).
        let dv = unsafe { *d.add(b) };
        for (j, (acc, isum)) in acc.iter_mut().zip(isum).enumerate() {
            // SAFETY: `j < MR`, `b < nb`: a block of row `j`.
            let rb = unsafe { &*x.add(j * xs + b) };
            let mut i = if F == Q8_0 {
                isum
            } else {
                _mm256_madd_epi16(isum, ones)
            };
            if F == Q4_0 {
                i = _mm256_sub_epi32(i, _mm256_set1_epi32(rb.sum8));
            }
            let scale = _mm256_mul_ps(dv, _mm256_set1_ps(rb.d));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, *acc);
            if F == Q4_1 {
                // SAFETY: Q4_1 strips hold `nb` minimum vectors.
                let mv = unsafe { *strip.m.as_ptr().add(b) };
                *acc = _mm256_fmadd_ps(mv, _mm256_set1_ps(rb.s), *acc);
            }
        }
    }
    acc
}

// The assembly in `strip_kernel6` reads `RowBlock` fields at these byte offsets.
const _: () = assert!(
    std::mem::offset_of!(RowBlock, qs) == 0
        && std::mem::offset_of!(RowBlock, d) == 32
        && std::mem::offset_of!(RowBlock, s) == 36
        && std::mem::offset_of!(RowBlock, sum8) == 44
        && size_of::<RowBlock>() == 48
);

// Templates of `strip_kernel6`'s assembly, one block of six activation rows against the
// strip. Each macro expands (through `concat!`) to one string literal of instructions ending
// in newlines, which `asm!` takes as its template; the arithmetic is `strip_kernel`'s for
// `MR = 6` (the intrinsics version, to check these against). Template operands:
// `{q}` the block's eight weight vectors (32 bytes each), `{x0}`/`{x3}` block `b` of
// activation rows 0 and 3, `{xs}` the byte distance between consecutive rows, `{dv}` (and
// `{mv}`) the block's scale (and Q4_1 minimum) vector; `{w}` the step's weight vector,
// `{aw}` its `|w|` (Q8_0), `{i0}`..`{i5}` the rows' integer block sums, `{a0}`..`{a5}` their
// f32 accumulators, `{t}` a temporary, `{ones}` sixteen i16 ones. Offsets into a `RowBlock`
// (values 0..32, `d` 32, `s` 36, `sum8` 44) are the ones the compile-time assert above checks.

/// The address of activation row `$j`'s block (plus byte offset `$off`): rows 0..3 from
/// `{x0}`, rows 3..6 from `{x3}`, each plus 0, 1 or 2 times `{xs}` (an index scales only by
/// 1, 2, 4 or 8, so rows 3 and 5 could not be reached from one base).
macro_rules! x_at {
    (0) => {
        "{x0}"
    };
    (1) => {
        "{x0} + {xs}"
    };
    (2) => {
        "{x0} + {xs}*2"
    };
    (3) => {
        "{x3}"
    };
    (4) => {
        "{x3} + {xs}"
    };
    (5) => {
        "{x3} + {xs}*2"
    };
    ($j:tt + $off:literal) => {
        concat!(x_at!($j), " + ", $off)
    };
}

/// One instruction: the pieces concatenated, ending in a newline.
macro_rules! ins {
    ($($piece:expr),+ $(,)?) => {
        concat!($($piece),+, "\n")
    };
}

/// `concat!` of `$m!(j $($arg)*)` for the six rows `j = 0..6`, in order.
macro_rules! each_row {
    ($m:ident $($arg:tt)*) => {
        concat!(
            $m!(0 $($arg)*),
            $m!(1 $($arg)*),
            $m!(2 $($arg)*),
            $m!(3 $($arg)*),
            $m!(4 $($arg)*),
            $m!(5 $($arg)*),
        )
    };
}

/// Q8_0, one step's products for one row into `$d`: the four activation bytes at `$x`
/// broadcast to every lane, given `w`'s signs (`vpsignb`: `x·sgn(w)`, within -127..=127
/// since Q8_0 activations are), multiplied by `|w|` (`vpmaddubsw`, `|w| <= 128`: a pair sums
/// to at most 2 x 128 x 127 = 32512 < 32767, no saturation) and the pairs summed to i32
/// (`vpmaddwd` with ones): lane `i` = `Σ_{k<4} w[i][4s + k] · x[4s + k]`, as `block_dot`.
macro_rules! q8_dot {
    ($d:expr, $x:expr) => {
        concat!(
            ins!("vpbroadcastd ", $d, ", dword ptr [", $x, "]"),
            ins!("vpsignb ", $d, ", ", $d, ", {w}"),
            ins!("vpmaddubsw ", $d, ", {aw}, ", $d),
            ins!("vpmaddwd ", $d, ", ", $d, ", {ones}"),
        )
    };
}

/// Q8_0, row `$j` at step 0 (`i_j` = the products of values 0..4) or at the step whose
/// values start at byte `$off` (`i_j += ` those products; i32, at most 32 x 128 x 127 in all).
macro_rules! q8_row {
    ($j:tt) => {
        q8_dot!(concat!("{i", $j, "}"), x_at!($j))
    };
    ($j:tt + $off:literal) => {
        concat!(
            q8_dot!("{t}", x_at!($j + $off)),
            ins!("vpaddd {i", $j, "}, {i", $j, "}, {t}"),
        )
    };
}

/// Q4_x, one step's products for one row into `$d`: the four activation bytes at `$x`
/// broadcast to every lane and multiplied as signed bytes by the weight nibbles (unsigned,
/// `0..=15`) with adjacent pairs summed (`vpmaddubsw`): i16 lanes, a pair at most
/// 2 x 15 x 127 = 3810.
macro_rules! q4_dot {
    ($d:expr, $x:expr) => {
        concat!(
            ins!("vpbroadcastd ", $d, ", dword ptr [", $x, "]"),
            ins!("vpmaddubsw ", $d, ", {w}, ", $d),
        )
    };
}

/// Q4_x, row `$j` at step 0 (`i_j` = the pair sums of values 0..4) or at the step whose
/// values start at byte `$off` (`i_j += ` those, in i16: eight steps add at most
/// 8 x 3810 = 30480 < 32767 per lane, so the sums stay exact without widening).
macro_rules! q4_row {
    ($j:tt) => {
        q4_dot!(concat!("{i", $j, "}"), x_at!($j))
    };
    ($j:tt + $off:literal) => {
        concat!(
            q4_dot!("{t}", x_at!($j + $off)),
            ins!("vpaddw {i", $j, "}, {i", $j, "}, {t}"),
        )
    };
}

/// Step `s` of a block for all six rows (`$row` is `q8_row` or `q4_row`): weight vector `s`
/// loaded from `{q} + 32s` (and `|w|` for Q8_0), then each row's step at byte `4s` of its
/// values. Steps `s >= 1` take `32s` and `4s` as literals.
macro_rules! strip6_step {
    ($row:ident, 0) => {
        concat!(
            ins!("vmovdqa {w}, ymmword ptr [{q} + 0]"),
            abs_w!($row),
            each_row!($row),
        )
    };
    ($row:ident, $qoff:literal, $xoff:literal) => {
        concat!(
            ins!("vmovdqa {w}, ymmword ptr [{q} + ", $qoff, "]"),
            abs_w!($row),
            each_row!($row + $xoff),
        )
    };
}

/// `|w|` into `{aw}` for Q8_0's sign trick; nothing for Q4_x.
macro_rules! abs_w {
    (q8_row) => {
        ins!("vpabsb {aw}, {w}")
    };
    (q4_row) => {
        ""
    };
}

/// The eight steps of a block: the six rows' integer sums over its 32 values.
macro_rules! block_sums {
    ($row:ident) => {
        concat!(
            strip6_step!($row, 0),
            strip6_step!($row, 32, 4),
            strip6_step!($row, 64, 8),
            strip6_step!($row, 96, 12),
            strip6_step!($row, 128, 16),
            strip6_step!($row, 160, 20),
            strip6_step!($row, 192, 24),
            strip6_step!($row, 224, 28),
        )
    };
}

/// Row `$j`'s block into its accumulator: `a_j += f32(i_j) · (d_w · d_x)`, `d_x` the f32 at
/// byte 32 of the row's block and `d_w` the scale vector, loaded into `{w}` beforehand (exact
/// conversion: a block sum is far below 2^24).
macro_rules! scale_fma {
    ($j:tt) => {
        concat!(
            ins!("vcvtdq2ps {i", $j, "}, {i", $j, "}"),
            ins!("vbroadcastss {t}, dword ptr [", x_at!($j + 32), "]"),
            ins!("vmulps {t}, {t}, {w}"),
            ins!("vfmadd231ps {a", $j, "}, {i", $j, "}, {t}"),
        )
    };
}

/// Q8_0's block end for row `$j`: the i32 sum scaled (see `scale_fma`).
macro_rules! q8_end {
    ($j:tt) => {
        scale_fma!($j)
    };
}

/// Q4_0's block end for row `$j`: the i16 pair sums widened (`vpmaddwd` with ones), the
/// row's `8 Σ q_x` (i32 at byte 44) taken off, as the nibbles are `q + 8`, then scaled.
macro_rules! q4_0_end {
    ($j:tt) => {
        concat!(
            ins!("vpmaddwd {i", $j, "}, {i", $j, "}, {ones}"),
            ins!("vpbroadcastd {t}, dword ptr [", x_at!($j + 44), "]"),
            ins!("vpsubd {i", $j, "}, {i", $j, "}, {t}"),
            scale_fma!($j),
        )
    };
}

/// Q4_1's block end for row `$j`: the i16 pair sums widened, scaled, and the minimums'
/// term added: `a_j += m_w · s_x`, `s_x = d_x Σ q_x` the f32 at byte 36, `m_w` at `{mv}`.
macro_rules! q4_1_end {
    ($j:tt) => {
        concat!(
            ins!("vpmaddwd {i", $j, "}, {i", $j, "}, {ones}"),
            scale_fma!($j),
            ins!("vbroadcastss {i", $j, "}, dword ptr [", x_at!($j + 36), "]"),
            ins!("vfmadd231ps {a", $j, "}, {i", $j, "}, ymmword ptr [{mv}]"),
        )
    };
}

/// A whole block for six rows: the integer sums (`$row`), the scale vector into `{w}`, and
/// each row's end (`$end`).
macro_rules! strip6_block {
    ($row:ident, $end:ident) => {
        concat!(
            block_sums!($row),
            ins!("vmovaps {w}, ymmword ptr [{dv}]"),
            each_row!($end),
        )
    };
}

/// [`strip_kernel`] for six activation rows (the full pass), with the block body written out
/// in assembly: the same arithmetic, but each weight vector loaded at its step and used by
/// the six rows in turn, so that the six block sums, the six f32 accumulators, the weight
/// vector (and `|w|` for Q8_0), a temporary and the `madd` ones fit the 16 vector registers
/// without spills. (Compiled from intrinsics, LLVM hoists all eight weight loads of a block
/// and spills accumulators: 214 instructions a block against 189 here for Q4_0, and 28%
/// slower on `q4_0 256x1024x1024`.) The assembly of a block is `strip6_block!`'s template
/// (see the macros above), one per weight format.
///
/// # Safety
///
/// As [`strip_kernel`] with `MR = 6`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn strip_kernel6<const F: u8>(
    strip: &Strip,
    nb: usize,
    x: *const RowBlock,
    xs: usize,
) -> [__m256; 6] {
    let ones = _mm256_set1_epi16(1);
    let mut a = [_mm256_setzero_ps(); 6];
    let nb = nb.min(strip.d.len()).min(strip.q.len() / 8);
    // Byte distance between consecutive activation rows' blocks.
    let xsb = xs * size_of::<RowBlock>();
    for b in 0..nb {
        // SAFETY: `b < nb`: the strip holds `nb * 8` value vectors and `nb` scale (Q4_1: and
        // minimum) vectors; rows `j < 6` have `nb` blocks at `x + j * xs`, so block `b` of
        // row `j` is at `x0 + j * xsb` (`x3` is row 3's), and the offsets read are inside the
        // 48-byte `RowBlock` (values 0..32, `d` 32, `s` 36, `sum8` 44).
        unsafe {
            let q = strip.q.as_ptr().add(b * 8);
            let dv = strip.d.as_ptr().add(b);
            let x0 = x.add(b);
            let x3 = x.add(3 * xs + b);
            if F == Q8_0 {
                std::arch::asm!(
                strip6_block!(q8_row, q8_end),
                q = in(reg) q,
                x0 = in(reg) x0,
                x3 = in(reg) x3,
                xs = in(reg) xsb,
                dv = in(reg) dv,
                ones = in(ymm_reg) ones,
                a0 = inout(ymm_reg) a[0],
                a1 = inout(ymm_reg) a[1],
                a2 = inout(ymm_reg) a[2],
                a3 = inout(ymm_reg) a[3],
                a4 = inout(ymm_reg) a[4],
                a5 = inout(ymm_reg) a[5],
                i0 = out(ymm_reg) _,
                i1 = out(ymm_reg) _,
                i2 = out(ymm_reg) _,
                i3 = out(ymm_reg) _,
                i4 = out(ymm_reg) _,
                i5 = out(ymm_reg) _,
                w = out(ymm_reg) _,
                aw = out(ymm_reg) _,
                t = out(ymm_reg) _,
                options(pure, readonly, nostack, preserves_flags),
                );
            } else if F == Q4_0 {
                std::arch::asm!(
                strip6_block!(q4_row, q4_0_end),
                q = in(reg) q,
                x0 = in(reg) x0,
                x3 = in(reg) x3,
                xs = in(reg) xsb,
                dv = in(reg) dv,
                ones = in(ymm_reg) ones,
                a0 = inout(ymm_reg) a[0],
                a1 = inout(ymm_reg) a[1],
                a2 = inout(ymm_reg) a[2],
                a3 = inout(ymm_reg) a[3],
                a4 = inout(ymm_reg) a[4],
                a5 = inout(ymm_reg) a[5],
                i0 = out(ymm_reg) _,
                i1 = out(ymm_reg) _,
                i2 = out(ymm_reg) _,
                i3 = out(ymm_reg) _,
                i4 = out(ymm_reg) _,
                i5 = out(ymm_reg) _,
                w = out(ymm_reg) _,
                t = out(ymm_reg) _,
                options(pure, readonly, nostack, preserves_flags),
                );
            } else {
                let mv = strip.m.as_ptr().add(b);
                std::arch::asm!(
                strip6_block!(q4_row, q4_1_end),
                q = in(reg) q,
                x0 = in(reg) x0,
                x3 = in(reg) x3,
                xs = in(reg) xsb,
                dv = in(reg) dv,
                ones = in(ymm_reg) ones,
                mv = in(reg) mv,
                a0 = inout(ymm_reg) a[0],
                a1 = inout(ymm_reg) a[1],
                a2 = inout(ymm_reg) a[2],
                a3 = inout(ymm_reg) a[3],
                a4 = inout(ymm_reg) a[4],
                a5 = inout(ymm_reg) a[5],
                i0 = out(ymm_reg) _,
                i1 = out(ymm_reg) _,
                i2 = out(ymm_reg) _,
                i3 = out(ymm_reg) _,
                i4 = out(ymm_reg) _,
                i5 = out(ymm_reg) _,
                w = out(ymm_reg) _,
                t = out(ymm_reg) _,
                options(pure, readonly, nostack, preserves_flags),
                );
            }
        }
    }
    a
}

/// Quantized weight rows `n0..n1` against activation rows `r0..r1` of `x`, written into
/// `tile` (which covers exactly those rows and columns of the output).
///
/// Does nothing when the lengths are inconsistent (the caller's checks rule that out).
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn quant_task(
    _t: Avx2,
    format: Format,
    bytes: &[u8],
    s: &Shape,
    x: &PackedX,
    n0: usize,
    n1: usize,
    r0: usize,
    r1: usize,
    tile: &mut TileOut,
) {
    match format {
        Format::Q8_0 => quant_task_f::<Q8_0>(bytes, s, x, n0, n1, r0, r1, tile),
        Format::Q4_0 => quant_task_f::<Q4_0>(bytes, s, x, n0, n1, r0, r1, tile),
        Format::Q4_1 => quant_task_f::<Q4_1>(bytes, s, x, n0, n1, r0, r1, tile),
        _ => debug_assert!(false, "quant_task on {format}"),
    }
}

/// [`quant_task`] for one weight format. Only called with an [`Avx2`] token in hand.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
fn quant_task_f<const F: u8>(
    bytes: &[u8],
    s: &Shape,
    x: &PackedX,
    n0: usize,
    n1: usize,
    r0: usize,
    r1: usize,
    tile: &mut TileOut,
) {
    let (nb, bb, rb) = (x.nb, block_bytes(F), s.row_bytes);
    let nc = n1.saturating_sub(n0);
    let nrows = r1.saturating_sub(r0);
    let consistent = n0 <= n1
        && n1 <= s.n
        && r0 <= r1
        && r1 <= x.m
        && rb == nb * bb
        && bytes.len() >= n1 * rb
        && tile.rows() == nrows
        && tile.cols() == nc
        && x.rows.len() == x.m * nb;
    debug_assert!(consistent, "quant_task: inconsistent lengths");
    if !consistent || nc == 0 || nb == 0 || nrows == 0 {
        return;
    }
    let wbase = bytes[n0 * rb..].as_ptr();
    if x.m >= 2 {
        strip_task::<F>(wbase, rb, nb, x, nc, r0, r1, tile);
    } else {
        row_task::<F>(wbase, rb, nb, x, nc, r0, r1, tile);
    }
}

/// The strip path of [`quant_task_f`]: weight rows eight at a time, repacked, against the
/// activation rows `MR` at a time.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
fn strip_task<const F: u8>(
    wbase: *const u8,
    rb: usize,
    nb: usize,
    x: &PackedX,
    nc: usize,
    r0: usize,
    r1: usize,
    tile: &mut TileOut,
) {
    let mut strip = Strip::new::<F>(nb);
    let xr = &x.rows[r0 * nb..r1 * nb];
    let mut i0 = 0;
    while i0 < nc {
        let nr = (nc - i0).min(NR);
        // SAFETY: the token's holder checked AVX2/FMA/F16C. Rows i0 .. i0 + nr of the task
        // start at `wbase + (i0 + r) * rb` and lie in the weights (the caller checked
        // `bytes.len() >= n1 * rb` with rb = nb * bb); the strip was made for `nb` blocks.
        unsafe { pack_strip::<F>(wbase.wrapping_add(i0 * rb), rb, nr, nb, &mut strip) };
        run_strip::<F>(&strip, nb, xr, 0, i0, nr, tile);
        i0 += nr;
    }
}

/// The activation rows `x` (whole rows of `nb` blocks) against one packed strip, `MR` rows
/// per pass, written to tile rows `row0..` and columns `i0..i0 + nr`. Only called with an
/// [`Avx2`] token in hand and a strip packed for `nb` blocks; does nothing when the rows
/// would leave the tile.
fn run_strip<const F: u8>(
    strip: &Strip,
    nb: usize,
    x: &[RowBlock],
    row0: usize,
    i0: usize,
    nr: usize,
    tile: &mut TileOut,
) {
    let nrows = x.len() / nb.max(1);
    let consistent = nb > 0
        && x.len() == nrows * nb
        && strip.d.len() >= nb
        && strip.q.len() >= 8 * nb
        && nr <= NR
        && row0 + nrows <= tile.rows()
        && i0 + nr <= tile.cols();
    debug_assert!(consistent, "run_strip: inconsistent lengths");
    if !consistent {
        return;
    }
    let mut j = 0;
    while j < nrows {
        let mr = (nrows - j).min(MR);
        let xp = x[j * nb..].as_ptr();
        let mut res = [[0.0f32; NR]; MR];
        // SAFETY: the token's holder checked AVX2/FMA/F16C; rows j .. j + mr < nrows of `x`
        // each have `nb` blocks at `xp + jj * nb` (checked `x.len() == nrows * nb`), and the
        // strip holds `nb` blocks (checked above).
        unsafe {
            match mr {
                6 => store(&mut res, &strip_kernel6::<F>(strip, nb, xp, nb)),
                5 => store(&mut res, &strip_kernel::<5, F>(strip, nb, xp, nb)),
                4 => store(&mut res, &strip_kernel::<4, F>(strip, nb, xp, nb)),
                3 => store(&mut res, &strip_kernel::<3, F>(strip, nb, xp, nb)),
                2 => store(&mut res, &strip_kernel::<2, F>(strip, nb, xp, nb)),
                _ => store(&mut res, &strip_kernel::<1, F>(strip, nb, xp, nb)),
            }
        }
        for (jj, r) in res.iter().enumerate().take(mr) {
            tile.write(row0 + j + jj, i0, &r[..nr]);
        }
        j += mr;
    }
}

/// Bytes of repacked strips (every weight row of a matrix) that the row-split driver keeps in
/// L2 for all its activation rows: half of this machine class's 512 KiB L2.
const ROW_SPLIT_STRIP_BYTES: usize = 256 << 10;

/// Bytes of one strip block of format `f`: eight value vectors and the scale vector (and the
/// minimum vector for Q4_1).
fn strip_block_bytes(f: Format) -> usize {
    let v = size_of::<__m256i>();
    if f == Format::Q4_1 { 10 * v } else { 9 * v }
}

/// Whether all `n` weight rows of `nb` blocks, repacked into strips, fit the row-split
/// driver's budget ([`ROW_SPLIT_STRIP_BYTES`]).
pub(crate) fn row_split_fits(f: Format, n: usize, nb: usize) -> bool {
    n.div_ceil(NR)
        .checked_mul(nb)
        .and_then(|b| b.checked_mul(strip_block_bytes(f)))
        .is_some_and(|bytes| bytes <= ROW_SPLIT_STRIP_BYTES)
}

/// Every weight row of a block-format matrix repacked into strips, once per call, for the
/// row-split driver (whose tasks all read every strip).
pub(crate) struct PackedStrips {
    /// Kernel selector of the format.
    f: u8,
    /// Blocks per row.
    nb: usize,
    /// Weight rows.
    n: usize,
    /// `n.div_ceil(8)` strips (the last zero-padded).
    strips: Vec<Strip>,
}

impl PackedStrips {
    /// Repacks all `s.n` rows of `bytes` (format `format`, checked against `s`); no strips
    /// when the lengths are inconsistent or the format is not a block format.
    pub(crate) fn new(_t: Avx2, format: Format, bytes: &[u8], s: &Shape) -> PackedStrips {
        let f = match format {
            Format::Q8_0 => Q8_0,
            Format::Q4_0 => Q4_0,
            _ => Q4_1,
        };
        let nb = s.k / 32;
        let strips = match format {
            Format::Q8_0 => pack_all::<Q8_0>(bytes, s, nb),
            Format::Q4_0 => pack_all::<Q4_0>(bytes, s, nb),
            Format::Q4_1 => pack_all::<Q4_1>(bytes, s, nb),
            _ => Vec::new(),
        };
        PackedStrips {
            f,
            nb,
            n: s.n,
            strips,
        }
    }
}

/// [`PackedStrips::new`] for one format. Only called with an [`Avx2`] token in hand.
fn pack_all<const F: u8>(bytes: &[u8], s: &Shape, nb: usize) -> Vec<Strip> {
    let rb = s.row_bytes;
    let consistent = rb == nb * block_bytes(F) && bytes.len() >= s.n * rb;
    debug_assert!(consistent, "pack_all: inconsistent lengths");
    if !consistent {
        return Vec::new();
    }
    (0..s.n)
        .step_by(NR)
        .map(|i0| {
            let mut strip = Strip::new::<F>(nb);
            let nr = (s.n - i0).min(NR);
            // SAFETY: the token's holder checked AVX2/FMA/F16C; rows i0 .. i0 + nr < n start
            // at `i0 * rb + r * rb` inside `bytes` (checked `bytes.len() >= n * rb`, rb =
            // nb * bb), and the strip was made for `nb` blocks.
            unsafe { pack_strip::<F>(bytes.as_ptr().add(i0 * rb), rb, nr, nb, &mut strip) };
            strip
        })
        .collect()
}

/// Activation rows `x` (whole rows of the strips' `nb` blocks) against every strip of `w`,
/// written to rows `row0..` of `tile` (which covers all of `w`'s columns). Does nothing when
/// the lengths are inconsistent.
pub(crate) fn strips_task(
    _t: Avx2,
    w: &PackedStrips,
    x: &[RowBlock],
    row0: usize,
    tile: &mut TileOut,
) {
    let consistent = tile.cols() == w.n && w.strips.len() == w.n.div_ceil(NR);
    debug_assert!(consistent, "strips_task: inconsistent lengths");
    if !consistent {
        return;
    }
    for (si, strip) in w.strips.iter().enumerate() {
        let (i0, nr) = (si * NR, (w.n - si * NR).min(NR));
        match w.f {
            Q8_0 => run_strip::<Q8_0>(strip, w.nb, x, row0, i0, nr, tile),
            Q4_0 => run_strip::<Q4_0>(strip, w.nb, x, row0, i0, nr, tile),
            _ => run_strip::<Q4_1>(strip, w.nb, x, row0, i0, nr, tile),
        }
    }
}

/// Stores result vectors as rows of 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store<const P: usize>(res: &mut [[f32; NR]; MR], v: &[__m256; P]) {
    for (r, v) in res.iter_mut().zip(v) {
        // SAFETY: `r` is 8 writable f32; `storeu` needs no alignment.
        unsafe { _mm256_storeu_ps(r.as_mut_ptr(), *v) };
    }
}

/// The row path of [`quant_task_f`] (single activation rows): weights read in place, eight
/// rows per pass.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
fn row_task<const F: u8>(
    wbase: *const u8,
    rb: usize,
    nb: usize,
    x: &PackedX,
    nc: usize,
    r0: usize,
    r1: usize,
    tile: &mut TileOut,
) {
    for j in r0..r1 {
        let out_row = j - r0;
        let xr = x.row(j).as_ptr();
        let mut i0 = 0;
        while i0 < nc {
            let nr = (nc - i0).min(RW);
            let w = wbase.wrapping_add(i0 * rb);
            let mut res = [0.0f32; RW];
            let dst = &mut res[..nr];
            // SAFETY: the token's holder checked AVX2/FMA/F16C. Weight rows i0 .. i0 + nr of
            // the task lie in the weights (the caller checked `bytes.len() >= n1 * rb`, rb =
            // nb * bb), and row `j` has `nb` blocks (checked `rows.len()`).
            unsafe {
                match nr {
                    RW => dst.copy_from_slice(&row_kernel::<RW, F>(w, rb, nb, xr)),
                    4..RW => {
                        dst[..4].copy_from_slice(&row_kernel::<4, F>(w, rb, nb, xr));
                        for (k, o) in dst.iter_mut().enumerate().skip(4) {
                            *o = row_kernel::<1, F>(w.wrapping_add(k * rb), rb, nb, xr)[0];
                        }
                    }
                    _ => {
                        for (k, o) in dst.iter_mut().enumerate() {
                            *o = row_kernel::<1, F>(w.wrapping_add(k * rb), rb, nb, xr)[0];
                        }
                    }
                }
            }
            tile.write(out_row, i0, dst);
            i0 += nr;
        }
    }
}

/// A weight element the streaming kernel widens to f32 on the fly: `f16`, `bf16` or `f32`.
pub(crate) trait StreamWeight: Copy {
    /// 8 consecutive weights as f32.
    ///
    /// # Safety
    ///
    /// AVX2 and F16C must be available; `p` must be valid for reading 8 values.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One weight as f32.
    fn widen(self) -> f32;
}

impl StreamWeight for half::f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes; `loadu` needs no alignment.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl StreamWeight for half::bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes; `loadu` needs no alignment.
        let raw = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
    }
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl StreamWeight for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller guarantees 32 readable bytes; `loadu` needs no alignment.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline]
    fn widen(self) -> f32 {
        self
    }
}

/// `NR` weight rows x `MR` f32 activation rows, over `k` values, widening the weights to f32.
///
/// # Safety
///
/// AVX2, FMA and F16C must be available; `w + i * k` valid for reading `k` values for `i < NR`,
/// `x + j * k` valid for reading `k` f32 for `j < MR`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn stream_kernel<const NR: usize, const MR: usize, E: StreamWeight>(
    w: *const E,
    x: *const f32,
    k: usize,
) -> [[f32; MR]; NR] {
    let mut acc = [[_mm256_setzero_ps(); MR]; NR];
    let k8 = k / 8 * 8;
    let mut l = 0;
    while l < k8 {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: l + 8 <= k, i < NR: inside row i of the weights.
            let wv = unsafe { E::load8(w.add(i * k + l)) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: l + 8 <= k, j < MR: inside activation row j.
                let xv = unsafe { _mm256_loadu_ps(x.add(j * k + l)) };
                *a = _mm256_fmadd_ps(wv, xv, *a);
            }
        }
        l += 8;
    }
    let mut res = [[0.0f32; MR]; NR];
    for i in 0..NR {
        for j in 0..MR {
            let mut s = hsum(acc[i][j]);
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

/// f16/bf16 weight rows `n0..n1` streamed against all activation rows, into `buf`
/// (`m x (n1 - n0)`). Does nothing when the lengths are inconsistent.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn half_stream(
    t: Avx2,
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

/// Weights as `f16` or `bf16` (`bytes` come 8-byte aligned from `QuantizedTensor`; empty
/// otherwise).
fn as_half<E: StreamWeight + HalfBits>(bytes: &[u8]) -> &[E] {
    // SAFETY: `E` is `f16` or `bf16` (the `HalfBits` bound): 2 bytes, every bit pattern valid;
    // `align_to` only reinterprets the aligned middle.
    let (pre, mid, post) = unsafe { bytes.align_to::<E>() };
    if pre.is_empty() && post.is_empty() {
        mid
    } else {
        &[]
    }
}

/// `f16` and `bf16`: 2-byte values for which every bit pattern is valid.
pub(crate) trait HalfBits {}
impl HalfBits for half::f16 {}
impl HalfBits for half::bf16 {}

/// Runs `stream_kernel::<NR, MR, E>` for `nr` (up to `NR`) weight rows, returning `[nr][MR]`.
///
/// # Safety
///
/// As [`stream_kernel`] for `nr` weight rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn stream_kernel_n<const NR: usize, const MR: usize, E: StreamWeight>(
    nr: usize,
    w: *const E,
    x: *const f32,
    k: usize,
) -> Vec<[f32; MR]> {
    if nr == NR {
        // SAFETY: forwarded from the caller.
        unsafe { stream_kernel::<NR, MR, E>(w, x, k) }.to_vec()
    } else {
        (0..nr)
            // SAFETY: forwarded from the caller: row i < nr starts at w + i * k.
            .map(|i| unsafe { stream_kernel::<1, MR, E>(w.add(i * k), x, k) }[0])
            .collect()
    }
}

/// Weight rows `n0..n1` of `w` (`n x k`, any [`StreamWeight`]) streamed against all activation
/// rows, into `buf` (`m x (n1 - n0)`). Does nothing when the lengths are inconsistent.
pub(crate) fn stream<E: StreamWeight>(
    _t: Avx2,
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
            // SAFETY: the token's holder checked AVX2/FMA/F16C. Weight rows n0 + i0 .. + nr lie
            // in `w` (checked `w.len() >= n1 * k`), activation rows j0 .. j0 + mr in `x`
            // (checked `x.len() == m * k`).
            let r: Vec<Vec<f32>> = unsafe {
                match mr {
                    1 => stream_kernel_n::<4, 1, E>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                    2 => stream_kernel_n::<4, 2, E>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                    3 => stream_kernel_n::<2, 3, E>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                    _ => stream_kernel_n::<2, 4, E>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                }
            };
            for (i, col) in r.iter().enumerate() {
                for (j, &v) in col.iter().enumerate() {
                    buf[(j0 + j) * nc + i0 + i] = v;
                }
            }
            i0 += nr;
        }
        j0 += mr;
    }
}

/// Converts `src` (f16 or bf16) to f32 into `dst` (same length).
///
/// # Safety
///
/// AVX2 and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn convert_half<E: StreamWeight>(src: &[E], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n8 = n / 8 * 8;
    let mut l = 0;
    while l < n8 {
        // SAFETY: l + 8 <= n <= both lengths.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(l), E::load8(src.as_ptr().add(l))) };
        l += 8;
    }
    for l in n8..n {
        dst[l] = src[l].widen();
    }
}

/// f16 (`bf` false) or bf16 little-endian `bytes` widened to f32 into `dst`
/// (`bytes.len() == 2 * dst.len()`); misaligned bytes are widened one value at a time.
pub(crate) fn half_to_f32(_t: Avx2, bf: bool, bytes: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(bytes.len(), 2 * dst.len());
    fn run<E: StreamWeight + HalfBits>(bf: bool, bytes: &[u8], dst: &mut [f32]) {
        let src = as_half::<E>(bytes);
        if src.len() == dst.len() {
            // SAFETY: only called with the `Avx2` token in hand: AVX2/FMA/F16C are available.
            unsafe { convert_half(src, dst) };
        } else {
            crate::matmul::widen_half_bytes(bf, bytes, dst);
        }
    }
    if bf {
        run::<half::bf16>(bf, bytes, dst);
    } else {
        run::<half::f16>(bf, bytes, dst);
    }
}

/// Transposes the 8 x 8 f32 matrix whose rows are `r`: row `i` of the result is column `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose_8x8_ps(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Rows `l0..l0 + dst.len() / n` of `wᵀ` (the row-major `k x n` transpose of the `n x k`
/// f16/bf16 weights `w`) widened to f32 into `dst`: 8 x 8 blocks loaded a weight row at a time,
/// transposed in registers and stored a row of `wᵀ` at a time, edges one value at a time.
///
/// # Safety
///
/// AVX2 and F16C must be available; `n > 0`, `w.len() >= n * k`, `dst.len()` a multiple of `n`
/// and `l0 + dst.len() / n <= k`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn convert_half_t<E: StreamWeight>(w: &[E], n: usize, k: usize, l0: usize, dst: &mut [f32]) {
    let rows = dst.len() / n;
    let (n8, r8) = (n / 8 * 8, rows / 8 * 8);
    let (wp, dp) = (w.as_ptr(), dst.as_mut_ptr());
    for i in (0..r8).step_by(8) {
        for j in (0..n8).step_by(8) {
            let v = std::array::from_fn(|r| {
                // SAFETY: weight row j + r < n, values l0 + i..l0 + i + 8 <= k: inside `w`.
                unsafe { E::load8(wp.add((j + r) * k + l0 + i)) }
            });
            for (r, t) in transpose_8x8_ps(v).into_iter().enumerate() {
                // SAFETY: row i + r < rows of `dst`, columns j..j + 8 <= n.
                unsafe { _mm256_storeu_ps(dp.add((i + r) * n + j), t) };
            }
        }
    }
    for i in 0..rows {
        let j0 = if i < r8 { n8 } else { 0 };
        for j in j0..n {
            dst[i * n + j] = w[j * k + l0 + i].widen();
        }
    }
}

/// Rows `l0..l0 + dst.len() / n` of the transpose of `n x k` f16 (`bf` false) or bf16
/// little-endian weight rows `bytes`, widened to f32 into `dst` (row-major, `n` per row), so that
/// `gemm` reads the weights as a `k x n` matrix with unit column stride. Does nothing when the
/// lengths are inconsistent; misaligned bytes are widened one value at a time.
pub(crate) fn half_to_f32_t(
    _t: Avx2,
    bf: bool,
    bytes: &[u8],
    (n, k): (usize, usize),
    l0: usize,
    dst: &mut [f32],
) {
    let consistent =
        n > 0 && bytes.len() == 2 * n * k && dst.len().is_multiple_of(n) && l0 + dst.len() / n <= k;
    debug_assert!(consistent, "half_to_f32_t: inconsistent lengths");
    if !consistent {
        return;
    }
    fn run<E: StreamWeight + HalfBits>(
        bf: bool,
        bytes: &[u8],
        (n, k): (usize, usize),
        l0: usize,
        dst: &mut [f32],
    ) {
        let w = as_half::<E>(bytes);
        if w.len() == n * k {
            // SAFETY: only called with the `Avx2` token in hand: AVX2/FMA/F16C are available;
            // the lengths were checked by the caller.
            unsafe { convert_half_t(w, n, k, l0, dst) };
        } else {
            crate::matmul::widen_half_bytes_t(bf, bytes, (n, k), l0, dst);
        }
    }
    if bf {
        run::<half::bf16>(bf, bytes, (n, k), l0, dst);
    } else {
        run::<half::f16>(bf, bytes, (n, k), l0, dst);
    }
}

/// f16/bf16 weight rows `n0..n1` converted to an f32 panel, multiplied by all activation rows
/// with `gemm` on this thread, into `buf` (`m x (n1 - n0)`). Does nothing when the lengths are
/// inconsistent.
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
pub(crate) fn half_panel_gemm(
    _t: Avx2,
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

/// [`half_panel_gemm`] for one of f16/bf16. Only called with an [`Avx2`] token in hand.
fn panel_gemm<E: StreamWeight>(
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
    debug_assert!(consistent, "half_panel_gemm: inconsistent lengths");
    if !consistent || nc == 0 || k == 0 {
        return;
    }
    let mut panel = vec![0.0f32; nc * k];
    // SAFETY: only called with the token in hand: AVX2/FMA/F16C are available.
    unsafe { convert_half(&w[n0 * k..n1 * k], &mut panel) };
    crate::matmul::gemm_f32(
        x,
        &panel,
        m,
        nc,
        k,
        buf,
        1.0,
        0.0,
        crate::matmul::Parallelism::None,
    );
}
