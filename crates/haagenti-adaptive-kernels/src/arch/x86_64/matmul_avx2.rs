//! AVX2 + FMA + F16C matmul kernels.
//!
//! Quantized weights: activations come pre-quantized to Q8_0 in [`PackedX`]. The tile kernel
//! takes four activation rows and up to four weight rows per pass: each weight block is loaded
//! (and its nibbles unpacked) once for the four activation rows, each activation block once for
//! all weight rows. A 32-value block product is `maddubs` (unsigned x signed bytes to i16 pairs,
//! with the `sign` trick for Q8_0's signed weights) then `madd` with ones (to i32); `hadd`s pack
//! the four activation rows' sums of one weight row into one vector (low and high half-block in
//! separate lanes), so one f32 conversion and one FMA by `d_w * d_x` serve four products, and four
//! accumulators hold a 4 x 4 tile. The row kernel does one activation row (M = 1, leftovers).
//!
//! F16/BF16 weights: a streaming kernel converts 8 weights at a time (`vcvtph2ps`, or a 16-bit
//! shift for bf16) and FMAs them into several activation rows; for many activation rows
//! [`half_panel_gemm`] converts a panel of weight rows to f32 and hands it to `gemm`.
//!
//! Every `unsafe fn` here requires AVX2, FMA and F16C; the safe wrappers take the
//! [`Avx2`] token that proves them and check every length the kernels' pointer arithmetic uses.

use std::arch::x86_64::*;

use crate::dispatch::Avx2;
use crate::format::Format;
use crate::matmul::Shape;
use crate::matmul::pack::{PackedX, RowBlock, TileBlock};

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

/// The 32 values of a weight block as bytes: signed for Q8_0, `0..=15` for Q4_x.
///
/// # Safety
///
/// AVX2 must be available; `p` must be valid for reading 32 bytes (Q8_0) or 16 bytes (Q4_x).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weight_values<const F: u8>(p: *const u8) -> __m256i {
    if F == Q8_0 {
        // SAFETY: the caller guarantees 32 readable bytes at `p`; `loadu` needs no alignment.
        unsafe { _mm256_loadu_si256(p.cast()) }
    } else {
        // SAFETY: the caller guarantees 16 readable bytes at `p`; `loadu` needs no alignment.
        let raw = unsafe { _mm_loadu_si128(p.cast()) };
        // Low nibbles are values 0..16, high nibbles values 16..32.
        _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
            _mm256_set1_epi8(0x0F),
        )
    }
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

/// `NR` weight rows x the 4 activation rows of one tile, over `nb` blocks. Returns, per weight
/// row, the 4 products.
///
/// # Safety
///
/// AVX2, FMA and F16C must be available. `w + i * stride` must be valid for reading `nb` blocks
/// of format `F` for every `i < NR`; `dw` and (for Q4_1) `mw` valid for reading `NR * nb` f32
/// (row `i` at `i * nb`); `tile` valid for reading `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_kernel<const NR: usize, const F: u8>(
    w: *const u8,
    stride: usize,
    dw: *const f32,
    mw: *const f32,
    nb: usize,
    tile: *const TileBlock,
) -> [[f32; 4]; NR] {
    let (bb, qo) = (block_bytes(F), qs_offset(F));
    let mut acc = [_mm256_setzero_ps(); NR];
    for b in 0..nb {
        // SAFETY: `b < nb` and the caller guarantees `nb` readable blocks at `tile`.
        let tb = unsafe { &*tile.add(b) };
        // SAFETY: `TileBlock` is 32-byte aligned and its rows are 32-byte aligned 32-byte arrays;
        // `d` sits at offset 192 (16-byte aligned) and holds 4 f32.
        let (x0, x1, x2, x3, dx) = unsafe {
            (
                _mm256_load_si256(tb.qs[0].as_ptr().cast()),
                _mm256_load_si256(tb.qs[1].as_ptr().cast()),
                _mm256_load_si256(tb.qs[2].as_ptr().cast()),
                _mm256_load_si256(tb.qs[3].as_ptr().cast()),
                _mm256_broadcast_ps(&*tb.d.as_ptr().cast::<__m128>()),
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `i < NR`, `b < nb`: inside the weight rows and scale arrays the caller
            // guarantees; the block's values start `qo` bytes in and fit in its `bb` bytes.
            let (wq, d) = unsafe {
                (
                    weight_values::<F>(w.add(i * stride + b * bb + qo)),
                    *dw.add(i * nb + b),
                )
            };
            let aw = if F == Q8_0 {
                _mm256_sign_epi8(wq, wq)
            } else {
                wq
            };
            let p0 = block_dot::<F>(wq, aw, x0);
            let p1 = block_dot::<F>(wq, aw, x1);
            let p2 = block_dot::<F>(wq, aw, x2);
            let p3 = block_dot::<F>(wq, aw, x3);
            // Lane j: row j's values 0..16; lane 4 + j: row j's values 16..32.
            let mut h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
            if F == Q4_0 {
                // Σ (q - 8) x = Σ q x - 8 Σ x, per half-block: exact in i32.
                // SAFETY: `c` is a 32-byte aligned [i32; 8] (offset 128 of an aligned block).
                h = _mm256_sub_epi32(h, unsafe { _mm256_load_si256(tb.c.as_ptr().cast()) });
            }
            let scale = _mm256_mul_ps(_mm256_set1_ps(d), dx);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), scale, *acc);
            if F == Q4_1 {
                // SAFETY: as for `dw`; `s` is a 32-byte aligned [f32; 8] (offset 160).
                let (m, s) = unsafe { (*mw.add(i * nb + b), _mm256_load_ps(tb.s.as_ptr())) };
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(m), s, *acc);
            }
        }
    }
    let mut res = [[0.0f32; 4]; NR];
    for (r, a) in res.iter_mut().zip(&acc) {
        let v = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps(*a, 1));
        // SAFETY: `r` is a [f32; 4]: 16 writable bytes; `storeu` needs no alignment.
        unsafe { _mm_storeu_ps(r.as_mut_ptr(), v) };
    }
    res
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

/// `NR` weight rows x one activation row, over `nb` blocks.
///
/// # Safety
///
/// As [`tile_kernel`], with `x` valid for reading `nb` row blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_kernel<const NR: usize, const F: u8>(
    w: *const u8,
    stride: usize,
    dw: *const f32,
    mw: *const f32,
    nb: usize,
    x: *const RowBlock,
) -> [f32; NR] {
    let (bb, qo) = (block_bytes(F), qs_offset(F));
    let mut acc = [_mm256_setzero_ps(); NR];
    let mut msum = [0.0f32; NR];
    for b in 0..nb {
        // SAFETY: `b < nb` and the caller guarantees `nb` readable blocks at `x`.
        let rb = unsafe { &*x.add(b) };
        // SAFETY: `qs` is 32 readable bytes; `loadu` needs no alignment.
        let xv = unsafe { _mm256_loadu_si256(rb.qs.as_ptr().cast()) };
        let dx = _mm256_set1_ps(rb.d);
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as in `tile_kernel`.
            let (wq, d) = unsafe {
                (
                    weight_values::<F>(w.add(i * stride + b * bb + qo)),
                    *dw.add(i * nb + b),
                )
            };
            let aw = if F == Q8_0 {
                _mm256_sign_epi8(wq, wq)
            } else {
                wq
            };
            let mut p = block_dot::<F>(wq, aw, xv);
            if F == Q4_0 {
                // 8 lanes each take Σ x off: 8 Σ x in all, exact in i32.
                p = _mm256_sub_epi32(p, _mm256_set1_epi32(rb.sum));
            }
            *acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_mul_ps(_mm256_set1_ps(d), dx),
                *acc,
            );
            if F == Q4_1 {
                // SAFETY: as for `dw`.
                msum[i] += unsafe { *mw.add(i * nb + b) } * rb.s;
            }
        }
    }
    let mut res = [0.0f32; NR];
    for i in 0..NR {
        res[i] = hsum(acc[i]) + msum[i];
    }
    res
}

/// Runs [`tile_kernel`] and writes its `4 x NR` results into `buf` at `at + j * ldo + i`
/// (activation row `j`, weight row `i`), without allocating.
///
/// # Safety
///
/// As [`tile_kernel`]. `buf` indexing is checked (a bad `at` or `ldo` panics, never corrupts).
#[allow(clippy::too_many_arguments)] // reason: the kernel's arguments plus the destination
#[inline]
unsafe fn tile_to<const NR: usize, const F: u8>(
    w: *const u8,
    stride: usize,
    dw: *const f32,
    mw: *const f32,
    nb: usize,
    tile: *const TileBlock,
    buf: &mut [f32],
    at: usize,
    ldo: usize,
) {
    // SAFETY: forwarded from the caller.
    let r = unsafe { tile_kernel::<NR, F>(w, stride, dw, mw, nb, tile) };
    for (i, col) in r.iter().enumerate() {
        for (j, &v) in col.iter().enumerate() {
            buf[at + j * ldo + i] = v;
        }
    }
}

/// Quantized weight rows `n0..n1` against activation row groups `g0..g1` of `x`, into `buf`
/// (`[rows of the groups] x (n1 - n0)`, row-major).
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
    g0: usize,
    g1: usize,
    buf: &mut [f32],
) {
    match format {
        Format::Q8_0 => quant_task_f::<Q8_0>(bytes, s, x, n0, n1, g0, g1, buf),
        Format::Q4_0 => quant_task_f::<Q4_0>(bytes, s, x, n0, n1, g0, g1, buf),
        Format::Q4_1 => quant_task_f::<Q4_1>(bytes, s, x, n0, n1, g0, g1, buf),
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
        && x.tiles.len() == x.ntiles * nb
        && x.rows.len() == x.nrest * nb;
    debug_assert!(consistent, "quant_task: inconsistent lengths");
    if !consistent || nc == 0 || nb == 0 {
        return;
    }
    // Weight scales (and Q4_1 minimums) as f32, row-major [nc x nb].
    let mut dw = vec![0.0f32; nc * nb];
    let mut mw = if F == Q4_1 {
        vec![0.0f32; nc * nb]
    } else {
        Vec::new()
    };
    for r in 0..nc {
        let row = &bytes[(n0 + r) * rb..(n0 + r + 1) * rb];
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            dw[r * nb + b] = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
            if F == Q4_1 {
                mw[r * nb + b] =
                    half::f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32();
            }
        }
    }
    let wbase = bytes[n0 * rb..].as_ptr();
    for g in g0..g1 {
        let out_row = x.group_row(g) - row0;
        let mut i0 = 0;
        while i0 < nc {
            let nr = (nc - i0).min(4);
            let w = wbase.wrapping_add(i0 * rb);
            let dwp = dw[i0 * nb..].as_ptr();
            let mwp = if F == Q4_1 {
                mw[i0 * nb..].as_ptr()
            } else {
                std::ptr::null()
            };
            if g < x.ntiles {
                let tile = x.tile(g).as_ptr();
                let (ldo, at) = (nc, out_row * nc + i0);
                // SAFETY: the token's holder checked AVX2/FMA/F16C. Weight rows n0 + i0 ..
                // n0 + i0 + nr lie in `bytes` (checked `bytes.len() >= n1 * rb`, rb = nb * bb),
                // `dw`/`mw` hold nc * nb values so rows i0 .. i0 + nr are in range, and the tile
                // has `nb` blocks (checked `tiles.len()`).
                unsafe {
                    match nr {
                        4 => tile_to::<4, F>(w, rb, dwp, mwp, nb, tile, buf, at, ldo),
                        3 => tile_to::<3, F>(w, rb, dwp, mwp, nb, tile, buf, at, ldo),
                        2 => tile_to::<2, F>(w, rb, dwp, mwp, nb, tile, buf, at, ldo),
                        _ => tile_to::<1, F>(w, rb, dwp, mwp, nb, tile, buf, at, ldo),
                    }
                }
            } else {
                let xr = x.row(g - x.ntiles).as_ptr();
                let dst = &mut buf[out_row * nc + i0..out_row * nc + i0 + nr];
                // SAFETY: as above; the row has `nb` blocks (checked `rows.len()`).
                unsafe {
                    match nr {
                        4 => dst.copy_from_slice(&row_kernel::<4, F>(w, rb, dwp, mwp, nb, xr)),
                        3 => dst.copy_from_slice(&row_kernel::<3, F>(w, rb, dwp, mwp, nb, xr)),
                        2 => dst.copy_from_slice(&row_kernel::<2, F>(w, rb, dwp, mwp, nb, xr)),
                        _ => dst.copy_from_slice(&row_kernel::<1, F>(w, rb, dwp, mwp, nb, xr)),
                    }
                }
            }
            i0 += nr;
        }
    }
}

/// 8 f16 or bf16 weights as f32.
///
/// # Safety
///
/// AVX2 and F16C must be available; `p` must be valid for reading 8 `u16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const BF: bool>(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes; `loadu` needs no alignment.
    let raw = unsafe { _mm_loadu_si128(p.cast()) };
    if BF {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
    } else {
        _mm256_cvtph_ps(raw)
    }
}

/// One f16 or bf16 value (bits) as f32.
#[inline]
fn half_to_f32<const BF: bool>(bits: u16) -> f32 {
    if BF {
        half::bf16::from_bits(bits).to_f32()
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

/// `NR` f16/bf16 weight rows x `MR` f32 activation rows, over `k` values.
///
/// # Safety
///
/// AVX2, FMA and F16C must be available; `w + i * k` valid for reading `k` u16 for `i < NR`,
/// `x + j * k` valid for reading `k` f32 for `j < MR`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_kernel<const NR: usize, const MR: usize, const BF: bool>(
    w: *const u16,
    x: *const f32,
    k: usize,
) -> [[f32; MR]; NR] {
    let mut acc = [[_mm256_setzero_ps(); MR]; NR];
    let k8 = k / 8 * 8;
    let mut l = 0;
    while l < k8 {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: l + 8 <= k, i < NR: inside row i of the weights.
            let wv = unsafe { load8::<BF>(w.add(i * k + l)) };
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
                s += xv * half_to_f32::<BF>(wb);
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
        half_stream_f::<true>(bytes, s, x, n0, n1, buf);
    } else {
        half_stream_f::<false>(bytes, s, x, n0, n1, buf);
    }
}

/// Weights as `u16`s (`bytes` come 2-byte aligned from `QuantizedTensor`; empty otherwise).
fn as_u16(bytes: &[u8]) -> &[u16] {
    // SAFETY: every bit pattern is a valid u16; `align_to` only reinterprets the aligned middle.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    if pre.is_empty() && post.is_empty() {
        mid
    } else {
        &[]
    }
}

/// Runs `half_kernel::<NR, MR, BF>` for `nr` (up to `NR`) weight rows, returning `[nr][MR]`.
///
/// # Safety
///
/// As [`half_kernel`] for `nr` weight rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_kernel_n<const NR: usize, const MR: usize, const BF: bool>(
    nr: usize,
    w: *const u16,
    x: *const f32,
    k: usize,
) -> Vec<[f32; MR]> {
    if nr == NR {
        // SAFETY: forwarded from the caller.
        unsafe { half_kernel::<NR, MR, BF>(w, x, k) }.to_vec()
    } else {
        (0..nr)
            // SAFETY: forwarded from the caller: row i < nr starts at w + i * k.
            .map(|i| unsafe { half_kernel::<1, MR, BF>(w.add(i * k), x, k) }[0])
            .collect()
    }
}

/// [`half_stream`] for one of f16/bf16. Only called with an [`Avx2`] token in hand.
fn half_stream_f<const BF: bool>(
    bytes: &[u8],
    s: &Shape,
    x: &[f32],
    n0: usize,
    n1: usize,
    buf: &mut [f32],
) {
    let (m, k) = (s.m, s.k);
    let w = as_u16(bytes);
    let nc = n1.saturating_sub(n0);
    let consistent =
        n0 <= n1 && n1 <= s.n && w.len() >= n1 * k && x.len() == m * k && buf.len() == m * nc;
    debug_assert!(consistent, "half_stream: inconsistent lengths");
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
                    1 => half_kernel_n::<4, 1, BF>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                    2 => half_kernel_n::<4, 2, BF>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                    3 => half_kernel_n::<2, 3, BF>(nr, wp, xp, k)
                        .iter()
                        .map(|r| r.to_vec())
                        .collect(),
                    _ => half_kernel_n::<2, 4, BF>(nr, wp, xp, k)
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

/// Converts `src` (f16 or bf16 bits) to f32 into `dst` (same length).
///
/// # Safety
///
/// AVX2 and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn convert_half<const BF: bool>(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let n8 = n / 8 * 8;
    let mut l = 0;
    while l < n8 {
        // SAFETY: l + 8 <= n <= both lengths.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(l), load8::<BF>(src.as_ptr().add(l))) };
        l += 8;
    }
    for l in n8..n {
        dst[l] = half_to_f32::<BF>(src[l]);
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
    let (m, k) = (s.m, s.k);
    let w = as_u16(bytes);
    let nc = n1.saturating_sub(n0);
    let consistent =
        n0 <= n1 && n1 <= s.n && w.len() >= n1 * k && x.len() == m * k && buf.len() == m * nc;
    debug_assert!(consistent, "half_panel_gemm: inconsistent lengths");
    if !consistent || nc == 0 || k == 0 {
        return;
    }
    let mut panel = vec![0.0f32; nc * k];
    let src = &w[n0 * k..n1 * k];
    // SAFETY: the token's holder checked AVX2/FMA/F16C.
    unsafe {
        if bf {
            convert_half::<true>(src, &mut panel);
        } else {
            convert_half::<false>(src, &mut panel);
        }
    }
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
