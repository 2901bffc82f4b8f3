//! Activation rows quantized to Q8_0 once per call and laid out for the SIMD kernels.

use rayon::prelude::*;

use super::Parallelism;
use crate::blocks::{BlockQ8_0, QK};
use crate::error::{KernelError, Result};
use crate::format::Format;

/// One 32-value block of one activation row, as the SIMD kernels read it.
///
/// The AVX2 strip kernel broadcasts `qs` four bytes at a time and reads the per-block terms
/// below once per block; the row kernels (AVX2 and NEON) load `qs` whole.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
pub(crate) struct RowBlock {
    /// Quantized values.
    pub(crate) qs: [i8; QK],
    /// Scale, as f32.
    pub(crate) d: f32,
    /// `d * Σ q` (what Q4_1's minimum multiplies).
    pub(crate) s: f32,
    /// `Σ q`.
    pub(crate) sum: i32,
    /// `8 * Σ q`: the offset Q4_0's `q - 8` takes off a block sum.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // reason: only AVX2 reads it
    pub(crate) sum8: i32,
}

const _: () = assert!(size_of::<RowBlock>() == 48);

/// The activation rows of one call, quantized to Q8_0, as [`RowBlock`]s row after row.
///
/// Work is split over row groups; here a group is one row (kernels that take several rows
/// per pass group them themselves).
#[derive(Debug)]
pub(crate) struct PackedX {
    /// Blocks per row.
    pub(crate) nb: usize,
    /// Number of rows.
    pub(crate) m: usize,
    /// `m * nb` blocks, row after row.
    pub(crate) rows: Vec<RowBlock>,
}

impl RowBlock {
    /// The block of an all-zero stretch of activations (a padding tap of a convolution): it
    /// adds nothing to any product, whatever the weight format.
    #[allow(dead_code)] // reason: the convolution's im2col builds padding from it
    pub(crate) const ZERO: RowBlock = RowBlock {
        qs: [0; QK],
        d: 0.0,
        s: 0.0,
        sum: 0,
        sum8: 0,
    };

    /// A Q8_0 block with the per-block terms the kernels read.
    pub(crate) fn from_q8_0(qb: &BlockQ8_0) -> RowBlock {
        let d = qb.d.to_f32();
        let sum: i32 = qb.qs.iter().map(|&v| i32::from(v)).sum();
        RowBlock {
            qs: qb.qs,
            d,
            s: d * sum as f32,
            sum,
            sum8: 8 * sum,
        }
    }
}

/// A packer of f32 values (whole blocks) into [`RowBlock`]s; `false` when a value is NaN or
/// infinite.
type RowPacker = fn(&[f32], &mut [RowBlock]) -> bool;

/// Quantizes `x` (`32 * dst.len()` values) into `dst` on the dispatched path (a fused AVX2
/// pass on x86_64); `false` when a value of `x` is NaN or infinite (`dst` is then
/// meaningless). Bit-exact with [`pack_rows_scalar`] for finite values.
pub(crate) fn pack_rows(x: &[f32], dst: &mut [RowBlock]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return crate::arch::x86_64::quant_avx2::pack_row_q8_0(t, x, dst);
    }
    pack_rows_with(x, dst, crate::quantize::quantize_row_q8_0)
}

/// [`pack_rows`] with the scalar quantizer (the oracle).
pub(crate) fn pack_rows_scalar(x: &[f32], dst: &mut [RowBlock]) -> bool {
    pack_rows_with(x, dst, crate::scalar::quantize_row_q8_0)
}

/// [`pack_rows`] through a row quantizer into Q8_0 blocks, eight blocks at a time.
fn pack_rows_with(x: &[f32], dst: &mut [RowBlock], quantize: fn(&[f32], &mut [BlockQ8_0])) -> bool {
    let mut q = [BlockQ8_0::default(); 8];
    for (xc, dc) in x.chunks(8 * QK).zip(dst.chunks_mut(8)) {
        let q = &mut q[..dc.len()];
        quantize(xc, q);
        for (rb, qb) in dc.iter_mut().zip(q.iter()) {
            *rb = RowBlock::from_q8_0(qb);
        }
    }
    x.iter().fold(true, |ok, v| ok & v.is_finite())
}

impl PackedX {
    /// Quantizes the `m x k` rows of `x` (`k` a multiple of 32, `x.len() == m * k`, every
    /// value finite), rows split over threads by `par` when there are many.
    #[cfg_attr(not(test), allow(dead_code))] // reason: the tests' unchecked quantizer
    pub(crate) fn new(x: &[f32], m: usize, k: usize, par: Parallelism) -> PackedX {
        Self::with_packer(x, m, k, par, pack_rows).0
    }

    /// [`PackedX::new`] with the scalar quantizer (for the oracle, independent of dispatch).
    pub(crate) fn new_scalar(x: &[f32], m: usize, k: usize) -> PackedX {
        Self::with_packer(x, m, k, Parallelism::None, pack_rows_scalar).0
    }

    /// [`PackedX::new`] for `x` whose values have not been checked: the finiteness test rides
    /// on the quantizer's pass, and only on failure is `x` scanned for the first bad value.
    ///
    /// # Errors
    ///
    /// [`KernelError::NonFinite`] naming the first NaN or infinite value.
    pub(crate) fn new_checked(x: &[f32], m: usize, k: usize, par: Parallelism) -> Result<PackedX> {
        let (packed, finite) = Self::with_packer(x, m, k, par, pack_rows);
        if !finite {
            super::check_finite(x)?;
        }
        Ok(packed)
    }

    /// Checked [`PackedX::new`]: the quantizer of
    /// [`matmul_q8_activations`](super::matmul_q8_activations)'s input.
    ///
    /// # Errors
    ///
    /// [`KernelError::RowLengthNotBlockMultiple`] when `k` is not a multiple of 32,
    /// [`KernelError::SizeOverflow`] / [`KernelError::ShapeMismatch`] when `x.len() != m * k`,
    /// [`KernelError::NonFinite`] naming the first NaN or infinite value.
    #[allow(dead_code)] // reason: the convolution's entry point
    pub(crate) fn quantize(x: &[f32], m: usize, k: usize, par: Parallelism) -> Result<PackedX> {
        if !k.is_multiple_of(QK) {
            return Err(KernelError::RowLengthNotBlockMultiple {
                format: Format::Q8_0,
                cols: k,
            });
        }
        super::check_len("x", m, k, x.len())?;
        Self::new_checked(x, m, k, par)
    }

    /// `m` rows of `nb` blocks each, given row after row (e.g. an im2col gather of the
    /// blocks of [`PackedX::quantize`]d pixels, [`RowBlock::ZERO`] for padding).
    ///
    /// # Errors
    ///
    /// [`KernelError::ShapeMismatch`] when `rows.len() != m * nb`,
    /// [`KernelError::SizeOverflow`] when `m * nb` overflows.
    #[allow(dead_code)] // reason: the convolution's entry point
    pub(crate) fn from_rows(nb: usize, m: usize, rows: Vec<RowBlock>) -> Result<PackedX> {
        super::check_len("packed activation blocks", m, nb, rows.len())?;
        Ok(PackedX { nb, m, rows })
    }

    /// Number of activation rows.
    #[allow(dead_code)] // reason: the convolution's entry point
    pub(crate) fn m(&self) -> usize {
        self.m
    }

    /// Values per row (`32 * nb`).
    pub(crate) fn k(&self) -> usize {
        self.nb * QK
    }

    /// The rows of `x` packed by `pack`, and whether every value was finite.
    fn with_packer(
        x: &[f32],
        m: usize,
        k: usize,
        par: Parallelism,
        pack: RowPacker,
    ) -> (PackedX, bool) {
        debug_assert!(k.is_multiple_of(QK) && x.len() == m * k);
        let nb = k / QK;
        let mut rows = vec![RowBlock::default(); m * nb];
        let mut finite = true;
        if nb > 0 {
            // Rows in chunks of about 64K values (the packer runs at GB/s; smaller pieces
            // cost more in scheduling than they gain in balance).
            let per = ((1usize << 16) / k).max(1);
            let one = |(xr, dst): (&[f32], &mut [RowBlock])| pack(xr, dst);
            finite = match par {
                Parallelism::Rayon if m > per => x
                    .par_chunks(per * k)
                    .zip(rows.par_chunks_mut(per * nb))
                    .map(one)
                    .reduce(|| true, |a, b| a & b),
                _ => x
                    .chunks(per * k)
                    .zip(rows.chunks_mut(per * nb))
                    .fold(true, |ok, c| ok & one(c)),
            };
        }
        (PackedX { nb, m, rows }, finite)
    }

    /// Number of row groups (one per row).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // reason: the NEON driver's
    pub(crate) fn groups(&self) -> usize {
        self.m
    }

    /// First activation row of group `g` (`g == groups()` gives the row count).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // reason: the NEON driver's
    pub(crate) fn group_row(&self, g: usize) -> usize {
        g
    }

    /// `(first row, row count)` of groups `g0..g1`.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // reason: the NEON driver's
    pub(crate) fn rows_of(&self, g0: usize, g1: usize) -> (usize, usize) {
        (g0, g1.saturating_sub(g0))
    }

    /// The blocks of row `r`.
    pub(crate) fn row(&self, r: usize) -> &[RowBlock] {
        self.rows.get(r * self.nb..(r + 1) * self.nb).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit patterns of a packed block, for exact comparison (`-0.0` and NaN included).
    fn bits(b: &RowBlock) -> ([i8; QK], u32, u32, i32, i32) {
        (b.qs, b.d.to_bits(), b.s.to_bits(), b.sum, b.sum8)
    }

    #[test]
    fn dispatched_packer_is_bit_exact_with_the_scalar_one() {
        // Rows of ordinary values, ties at .5, all-zero and tiny blocks (whose inverse scale
        // overflows), saturating magnitudes, a row per case; 19 blocks: groups of eight and a
        // remainder.
        let nb = 19;
        let mut cases: Vec<Vec<f32>> = Vec::new();
        cases.push(
            (0..nb * QK)
                .map(|i| (i as f32 * 0.37).sin() * 3.0)
                .collect(),
        );
        cases.push((0..nb * QK).map(|i| (i as f32 - 100.0) * 0.5).collect());
        cases.push(vec![0.0; nb * QK]);
        cases.push((0..nb * QK).map(|i| (i as f32) * 1e-42).collect());
        cases.push(
            (0..nb * QK)
                .map(|i| if i / QK == 9 { 1e-41 } else { (i as f32).cos() })
                .collect(),
        );
        cases.push(
            (0..nb * QK)
                .map(|i| if i % 3 == 0 { -3e38 } else { 1e38 })
                .collect(),
        );
        cases.push(
            (0..nb * QK)
                .map(|i| {
                    if i % 5 == 0 {
                        -0.0
                    } else {
                        1.0 / (i as f32 + 1.0)
                    }
                })
                .collect(),
        );
        for (c, x) in cases.iter().enumerate() {
            let (mut a, mut b) = (vec![RowBlock::ZERO; nb], vec![RowBlock::ZERO; nb]);
            assert!(pack_rows(x, &mut a), "case {c}");
            assert!(pack_rows_scalar(x, &mut b), "case {c}");
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!(bits(a), bits(b), "case {c} block {i}");
            }
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = cases[0].clone();
            x[13 * QK + 17] = bad;
            let mut a = vec![RowBlock::ZERO; nb];
            assert!(!pack_rows(&x, &mut a), "{bad}");
            assert!(!pack_rows_scalar(&x, &mut a), "{bad}");
        }
    }

    #[test]
    fn checked_packing_names_the_first_non_finite_value() {
        let (m, k) = (3000, 64);
        let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let p = PackedX::new_checked(&x, m, k, Parallelism::Rayon).unwrap();
        let q = PackedX::new_scalar(&x, m, k);
        assert!(p.rows.iter().zip(&q.rows).all(|(a, b)| bits(a) == bits(b)));
        x[150_001] = f32::INFINITY;
        x[2_000] = f32::NAN;
        assert!(matches!(
            PackedX::new_checked(&x, m, k, Parallelism::Rayon),
            Err(KernelError::NonFinite { index: 2_000, .. })
        ));
    }

    #[test]
    fn rows_hold_the_quantized_blocks_and_their_sums() {
        let (m, k) = (7, 64);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = PackedX::new(&x, m, k, Parallelism::None);
        assert_eq!((p.m, p.nb, p.groups()), (7, 2, 7));
        assert_eq!(p.rows_of(1, 4), (1, 3));
        assert_eq!(p.group_row(7), 7);
        let mut q = vec![BlockQ8_0::default(); 2];
        crate::scalar::quantize_row_q8_0(&x[6 * k..7 * k], &mut q);
        let rb = &p.row(6)[1];
        assert_eq!(rb.qs, q[1].qs);
        let sum: i32 = q[1].qs.iter().map(|&v| i32::from(v)).sum();
        assert_eq!((rb.sum, rb.sum8), (sum, 8 * sum));
        assert_eq!(rb.d, q[1].d.to_f32());
        assert_eq!(rb.s, rb.d * sum as f32);
        assert!(p.row(7).is_empty());
        let empty = PackedX::new(&[], 3, 0, Parallelism::Rayon);
        assert_eq!((empty.nb, empty.groups()), (0, 3));
        assert!(empty.row(0).is_empty());
    }
}
