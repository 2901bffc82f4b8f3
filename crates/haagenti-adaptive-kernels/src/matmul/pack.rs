//! Activation rows quantized to Q8_0 once per call and laid out for the SIMD kernels.

use crate::blocks::{BlockQ8_0, QK};

/// One 32-value block of four activation rows, as the 4-row micro-kernels read it.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
pub(crate) struct TileBlock {
    /// Quantized values of rows 0..4.
    pub(crate) qs: [[i8; QK]; 4],
    /// `8 * Σ q` over values 0..16 of row `j` in lane `j`, over values 16..32 in lane `4 + j`:
    /// the offset Q4_0's `q - 8` takes off each half-block sum.
    pub(crate) c: [i32; 8],
    /// `d * Σ q` of row `j` in lane `j` (what Q4_1's minimum multiplies); lanes 4..8 zero.
    pub(crate) s: [f32; 8],
    /// Scales of rows 0..4, as f32.
    pub(crate) d: [f32; 4],
    /// Keeps the size a multiple of 32 bytes.
    pub(crate) pad: [f32; 4],
}

const _: () = assert!(size_of::<TileBlock>() == 224);

/// One 32-value block of one activation row, for the row kernels.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
pub(crate) struct RowBlock {
    /// Quantized values.
    pub(crate) qs: [i8; QK],
    /// Scale, as f32.
    pub(crate) d: f32,
    /// `d * Σ q`.
    pub(crate) s: f32,
    /// `Σ q`.
    pub(crate) sum: i32,
    /// Keeps the size a multiple of 16 bytes.
    pub(crate) pad: i32,
}

const _: () = assert!(size_of::<RowBlock>() == 48);

/// The activation rows of one call, quantized to Q8_0: full groups of four rows as
/// [`TileBlock`]s, the remaining rows (or all rows, without tiles) as [`RowBlock`]s.
///
/// Row groups are numbered tiles first (group `g < ntiles` is rows `4g..4g + 4`), then one group
/// per remaining row.
#[derive(Debug)]
pub(crate) struct PackedX {
    /// Blocks per row.
    pub(crate) nb: usize,
    /// Number of four-row tiles.
    pub(crate) ntiles: usize,
    /// Number of rows after the tiles.
    pub(crate) nrest: usize,
    /// `ntiles * nb` blocks, tile after tile.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // reason: only AVX2 reads tiles
    pub(crate) tiles: Vec<TileBlock>,
    /// `nrest * nb` blocks, row after row.
    pub(crate) rows: Vec<RowBlock>,
}

impl PackedX {
    /// Quantizes the `m x k` rows of `x` (`k` a multiple of 32, `x.len() == m * k`).
    pub(crate) fn new(x: &[f32], m: usize, k: usize, use_tiles: bool) -> PackedX {
        debug_assert!(k.is_multiple_of(QK) && x.len() == m * k);
        let nb = k / QK;
        let ntiles = if use_tiles { m / 4 } else { 0 };
        let nrest = m - 4 * ntiles;
        let mut tiles = vec![TileBlock::default(); ntiles * nb];
        let mut rows = vec![RowBlock::default(); nrest * nb];
        let mut q = vec![BlockQ8_0::default(); nb];
        for (r, xr) in x.chunks_exact(k.max(1)).take(m).enumerate() {
            crate::quantize::quantize_row_q8_0(xr, &mut q);
            if r < 4 * ntiles {
                let (t, j) = (r / 4, r % 4);
                for (tb, qb) in tiles[t * nb..(t + 1) * nb].iter_mut().zip(&q) {
                    let d = qb.d.to_f32();
                    let lo: i32 = qb.qs[..QK / 2].iter().map(|&v| i32::from(v)).sum();
                    let hi: i32 = qb.qs[QK / 2..].iter().map(|&v| i32::from(v)).sum();
                    tb.qs[j] = qb.qs;
                    tb.c[j] = 8 * lo;
                    tb.c[4 + j] = 8 * hi;
                    tb.s[j] = d * (lo + hi) as f32;
                    tb.d[j] = d;
                }
            } else {
                let rr = r - 4 * ntiles;
                for (rb, qb) in rows[rr * nb..(rr + 1) * nb].iter_mut().zip(&q) {
                    let d = qb.d.to_f32();
                    let sum: i32 = qb.qs.iter().map(|&v| i32::from(v)).sum();
                    *rb = RowBlock {
                        qs: qb.qs,
                        d,
                        s: d * sum as f32,
                        sum,
                        pad: 0,
                    };
                }
            }
        }
        PackedX {
            nb,
            ntiles,
            nrest,
            tiles,
            rows,
        }
    }

    /// Number of row groups.
    pub(crate) fn groups(&self) -> usize {
        self.ntiles + self.nrest
    }

    /// First activation row of group `g` (`g == groups()` gives the row count).
    pub(crate) fn group_row(&self, g: usize) -> usize {
        if g <= self.ntiles {
            4 * g
        } else {
            4 * self.ntiles + (g - self.ntiles)
        }
    }

    /// `(first row, row count)` of groups `g0..g1`.
    pub(crate) fn rows_of(&self, g0: usize, g1: usize) -> (usize, usize) {
        let r0 = self.group_row(g0);
        (r0, self.group_row(g1) - r0)
    }

    /// The blocks of tile `t`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // reason: only AVX2 reads tiles
    pub(crate) fn tile(&self, t: usize) -> &[TileBlock] {
        self.tiles
            .get(t * self.nb..(t + 1) * self.nb)
            .unwrap_or(&[])
    }

    /// The blocks of remaining row `r` (0-based after the tiles).
    pub(crate) fn row(&self, r: usize) -> &[RowBlock] {
        self.rows.get(r * self.nb..(r + 1) * self.nb).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_number_tiles_then_rows() {
        let (m, k) = (7, 64);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = PackedX::new(&x, m, k, true);
        assert_eq!((p.ntiles, p.nrest, p.groups()), (1, 3, 4));
        assert_eq!(p.rows_of(0, 1), (0, 4));
        assert_eq!(p.rows_of(1, 4), (4, 3));
        assert_eq!(p.rows_of(0, 4), (0, 7));
        // Tile sums and row sums agree with the quantized values.
        let mut q = vec![BlockQ8_0::default(); 2];
        crate::scalar::quantize_row_q8_0(&x[2 * k..3 * k], &mut q);
        let tb = &p.tile(0)[1];
        assert_eq!(tb.qs[2], q[1].qs);
        let lo: i32 = q[1].qs[..16].iter().map(|&v| i32::from(v)).sum();
        assert_eq!(tb.c[2], 8 * lo);
        let rb = &p.row(2)[0];
        crate::scalar::quantize_row_q8_0(&x[6 * k..7 * k], &mut q);
        assert_eq!(rb.qs, q[0].qs);
        assert_eq!(rb.sum, q[0].qs.iter().map(|&v| i32::from(v)).sum::<i32>());
        let no_tiles = PackedX::new(&x, m, k, false);
        assert_eq!((no_tiles.ntiles, no_tiles.nrest), (0, 7));
    }
}
