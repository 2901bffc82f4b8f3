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

/// A quantizer of one f32 row into Q8_0 blocks.
type RowQuantizer = fn(&[f32], &mut [BlockQ8_0]);

impl PackedX {
    /// Quantizes the `m x k` rows of `x` (`k` a multiple of 32, `x.len() == m * k`), rows
    /// split over threads by `par` when there are many.
    pub(crate) fn new(x: &[f32], m: usize, k: usize, par: Parallelism) -> PackedX {
        Self::with_quantizer(x, m, k, par, crate::quantize::quantize_row_q8_0)
    }

    /// [`PackedX::new`] with the scalar quantizer (for the oracle, independent of dispatch).
    pub(crate) fn new_scalar(x: &[f32], m: usize, k: usize) -> PackedX {
        Self::with_quantizer(x, m, k, Parallelism::None, crate::scalar::quantize_row_q8_0)
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
        super::check_finite(x)?;
        Ok(Self::new(x, m, k, par))
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

    /// The rows of `x` quantized by `quantize`.
    fn with_quantizer(
        x: &[f32],
        m: usize,
        k: usize,
        par: Parallelism,
        quantize: RowQuantizer,
    ) -> PackedX {
        debug_assert!(k.is_multiple_of(QK) && x.len() == m * k);
        let nb = k / QK;
        let mut rows = vec![RowBlock::default(); m * nb];
        if nb > 0 {
            let pack = |(xr, dst): (&[f32], &mut [RowBlock])| {
                let mut q = [BlockQ8_0::default(); 8];
                for (xc, dc) in xr.chunks(8 * QK).zip(dst.chunks_mut(8)) {
                    let q = &mut q[..dc.len()];
                    quantize(xc, q);
                    for (rb, qb) in dc.iter_mut().zip(q.iter()) {
                        *rb = RowBlock::from_q8_0(qb);
                    }
                }
            };
            match par {
                // Worth a split from about 64K values on (the quantizer runs at GB/s).
                Parallelism::Rayon if m > 1 && m * k >= 1 << 16 => x
                    .par_chunks_exact(k)
                    .zip(rows.par_chunks_exact_mut(nb))
                    .for_each(pack),
                _ => x
                    .chunks_exact(k)
                    .zip(rows.chunks_exact_mut(nb))
                    .for_each(pack),
            }
        }
        PackedX { nb, m, rows }
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
