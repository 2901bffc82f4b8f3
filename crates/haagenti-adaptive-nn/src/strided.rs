//! f32 products of strided matrix views, for the attention's activation-by-activation products:
//! q, k and v are read where the qkv convolution wrote them (interleaved per pixel), and each
//! head's output is written into its columns of the attended activation, with no per-head
//! copies.
//!
//! On the SIMD paths the `gemm` crate (which takes any strides) multiplies; under
//! `HAAGENTI_FORCE_SCALAR=1` (the kernels' [`KernelPath::Scalar`]) a plain triple loop does, the
//! oracle the tests hold the `gemm` path to.

use haagenti_adaptive_kernels::{KernelPath, kernel_path};

use crate::{NnError, Result};

/// Where a view's elements lie in its slice: element `(i, j)` is at
/// `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Index of element `(0, 0)`.
    pub(crate) offset: usize,
    /// Rows.
    pub(crate) rows: usize,
    /// Columns.
    pub(crate) cols: usize,
    /// Distance between rows.
    pub(crate) row_stride: usize,
    /// Distance between columns.
    pub(crate) col_stride: usize,
}

impl Layout {
    /// A row-major `rows x cols` block at `offset` whose rows are `row_stride` apart.
    pub(crate) fn rows(offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of the same elements.
    pub(crate) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The index of `(i, j)` (unchecked arithmetic: only called on checked layouts).
    fn at(&self, i: usize, j: usize) -> usize {
        self.offset + i * self.row_stride + j * self.col_stride
    }

    /// Checks that every element lies inside a slice of `len` values.
    fn check(&self, len: usize, what: &'static str) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Ok(());
        }
        // A stride a one-row or one-column view never steps is not bounded by the slice, but
        // it is still handed to `gemm` as an isize.
        let wide = |s: usize| isize::try_from(s).is_err();
        if wide(self.row_stride) || wide(self.col_stride) {
            return Err(NnError::ShapeMismatch {
                what,
                expected: usize::MAX,
                actual: len,
            });
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|e| e.checked_add(self.offset));
        match last {
            Some(last) if last < len => Ok(()),
            _ => Err(NnError::ShapeMismatch {
                what,
                expected: last.map_or(usize::MAX, |l| l.saturating_add(1)),
                actual: len,
            }),
        }
    }
}

/// `dst = alpha * lhs · rhs` (overwriting `dst`, never reading it) for `m x k` `lhs` and `k x n`
/// `rhs`, all three strided views, on the calling thread.
///
/// # Errors
///
/// [`NnError::ShapeMismatch`] when the inner or outer sizes disagree or a view reaches past
/// its slice.
pub(crate) fn gemm(
    dst: &mut [f32],
    d: Layout,
    lhs: &[f32],
    l: Layout,
    rhs: &[f32],
    r: Layout,
    alpha: f32,
) -> Result<()> {
    if l.cols != r.rows || d.rows != l.rows || d.cols != r.cols {
        return Err(NnError::ShapeMismatch {
            what: "strided product",
            expected: l.rows * r.cols,
            actual: d.rows * d.cols,
        });
    }
    d.check(dst.len(), "strided product output")?;
    l.check(lhs.len(), "strided product left factor")?;
    r.check(rhs.len(), "strided product right factor")?;
    if d.rows == 0 || d.cols == 0 {
        return Ok(());
    }
    if kernel_path() == KernelPath::Scalar || l.cols == 0 {
        // (An empty inner size is a zero product; its empty factors' offsets are unchecked,
        // so no pointer is formed from them.)
        gemm_scalar(dst, d, lhs, l, rhs, r, alpha);
        return Ok(());
    }
    // The checked strides fit isize.
    let [(d_rs, d_cs), (l_rs, l_cs), (r_rs, r_cs)] =
        [d, l, r].map(|v| (v.row_stride as isize, v.col_stride as isize));
    // SAFETY: every view is non-empty here and every element of it lies inside its slice
    // (checked above), so each offset pointer is in bounds and gemm reads and writes only
    // checked elements.
    // `dst` is exclusively borrowed, so it overlaps neither input, and with `read_dst` false
    // gemm writes dst = beta_g * lhs · rhs (its alpha_g, here 0, multiplies old dst values it
    // does not read).
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
            d_cs,
            d_rs,
            false,
            lhs.as_ptr().add(l.offset),
            l_cs,
            l_rs,
            rhs.as_ptr().add(r.offset),
            r_cs,
            r_rs,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// The oracle of [`gemm`]: one f32 sum per output element, in order of `k`.
fn gemm_scalar(
    dst: &mut [f32],
    d: Layout,
    lhs: &[f32],
    l: Layout,
    rhs: &[f32],
    r: Layout,
    alpha: f32,
) {
    for i in 0..d.rows {
        for j in 0..d.cols {
            let acc: f32 = (0..l.cols).map(|p| lhs[l.at(i, p)] * rhs[r.at(p, j)]).sum();
            dst[d.at(i, j)] = alpha * acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
    }

    #[test]
    fn strided_views_multiply_as_the_scalar_oracle() {
        // q and kᵀ read out of interleaved rows of 3c, the output into a c-wide row's columns,
        // as the attention uses them.
        let (t, c, dh, off) = (37, 12, 4, 4);
        let qkv = values(t * 3 * c, 0.5);
        let q = Layout::rows(off, t, dh, 3 * c);
        let kt = Layout::rows(c + off, t, dh, 3 * c).transposed();
        let mut got = vec![7.0; t * t];
        let mut want = got.clone();
        let s = Layout::rows(0, t, t, t);
        gemm(&mut got, s, &qkv, q, &qkv, kt, 0.5).unwrap();
        gemm_scalar(&mut want, s, &qkv, q, &qkv, kt, 0.5);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (a, b) = (i / t, i % t);
            let exact: f32 = (0..dh)
                .map(|j| qkv[a * 3 * c + off + j] * qkv[b * 3 * c + c + off + j])
                .sum::<f32>()
                * 0.5;
            assert!(
                (g - w).abs() < 1e-5 && (w - exact).abs() < 1e-5,
                "{g} {w} {exact}"
            );
        }
        // Into columns off..off + dh of a t x c output; the other columns stay as they were.
        let v = Layout::rows(2 * c + off, t, dh, 3 * c);
        let mut out = vec![3.0; t * c];
        let o = Layout::rows(off, t, dh, c);
        gemm(&mut out, o, &got, s, &qkv, v, 1.0).unwrap();
        let mut oracle = vec![3.0; t * c];
        gemm_scalar(&mut oracle, o, &got, s, &qkv, v, 1.0);
        for (i, (g, w)) in out.iter().zip(&oracle).enumerate() {
            assert!((g - w).abs() < 1e-4, "{i}: {g} {w}");
            if !(off..off + dh).contains(&(i % c)) {
                assert_eq!(*g, 3.0);
            }
        }
    }

    #[test]
    fn views_past_their_slice_or_disagreeing_sizes_are_refused() {
        let a = vec![0f32; 12];
        let mut out = vec![0f32; 9];
        let sq = Layout::rows(0, 3, 3, 3);
        assert!(gemm(&mut out, sq, &a, Layout::rows(4, 3, 3, 3), &a, sq, 1.0).is_err());
        assert!(gemm(&mut out, sq, &a, Layout::rows(0, 3, 4, 4), &a, sq, 1.0).is_err());
        let two = Layout::rows(0, 2, 2, 2);
        let huge = Layout::rows(0, 2, 2, usize::MAX);
        assert!(gemm(&mut out, two, &a, huge, &a, two, 1.0).is_err());
        let one_row = Layout::rows(0, 1, 2, usize::MAX);
        let (d1, r2) = (Layout::rows(0, 1, 2, 2), Layout::rows(0, 2, 2, 2));
        assert!(gemm(&mut out, d1, &a, one_row, &a, r2, 1.0).is_err());
        // An empty inner size is a zero product, whatever the empty factors' offsets.
        let mut z = vec![5f32; 4];
        let (le, re) = (Layout::rows(99, 2, 0, 0), Layout::rows(99, 0, 2, 2));
        gemm(&mut z, two, &a, le, &a, re, 1.0).unwrap();
        assert_eq!(z, [0.0; 4]);
        assert!(gemm(&mut out, sq, &a, sq, &a, sq, 1.0).is_ok());
    }
}
