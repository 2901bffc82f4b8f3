//! Weight copies per precision, loaded and dropped as a plan says, with their bytes counted.

use std::collections::BTreeMap;

use haagenti_adaptive_core::Precision;

use crate::backend::QMatrix;
use crate::{Result, RuntimeError};

/// One resident copy of a weight matrix: both layouts a model multiplies with.
///
/// `w` is the matrix as given (`rows x cols`), `wt` its transpose (`cols x rows`), so both `x Wᵀ`
/// and `g W` run as `matmul(·, wᵀ)` through the kernels.
#[derive(Clone, Debug)]
pub struct ResidentCopy {
    /// The matrix, `rows x cols`.
    pub w: QMatrix,
    /// Its transpose, `cols x rows`.
    pub wt: QMatrix,
}

impl ResidentCopy {
    /// Bytes of both layouts.
    pub fn byte_len(&self) -> usize {
        self.w.byte_len() + self.wt.byte_len()
    }
}

/// A weight matrix kept in f32 on the host, with resident copies at the precisions in use.
///
/// The f32 master stands for the checkpoint: it is not counted as resident. Each resident copy is
/// what a device would hold to compute at that precision; [`WeightSet::resident_bytes`] sums them.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_runtime::WeightSet;
///
/// let mut w = WeightSet::new(64, 32, vec![0.5; 64 * 32])?;
/// assert!(w.load(Precision::INT8)?);
/// // 64 x 32 values in Q8_0 (34 bytes per 32 values), in both layouts.
/// assert_eq!(w.resident_bytes(), 2 * 64 * 34);
/// w.release(Precision::INT8);
/// assert_eq!(w.resident_bytes(), 0);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct WeightSet {
    rows: usize,
    cols: usize,
    master: Vec<f32>,
    resident: BTreeMap<Precision, ResidentCopy>,
}

impl WeightSet {
    /// A weight set over a row-major `rows x cols` f32 matrix. Block formats need both `rows` and
    /// `cols` to be multiples of 32 (both layouts are quantized along their rows).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ShapeMismatch`] when `master.len() != rows * cols`,
    /// [`RuntimeError::InvalidModel`] when a value is not finite.
    pub fn new(rows: usize, cols: usize, master: Vec<f32>) -> Result<Self> {
        if master.len() != rows * cols {
            return Err(RuntimeError::ShapeMismatch {
                what: "weight matrix",
                expected: rows * cols,
                actual: master.len(),
            });
        }
        if let Some(i) = master.iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::InvalidModel(format!(
                "weight {i} is not finite"
            )));
        }
        Ok(Self {
            rows,
            cols,
            master,
            resident: BTreeMap::new(),
        })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The f32 master values.
    pub fn master(&self) -> &[f32] {
        &self.master
    }

    /// Makes the copy at `p` resident, quantizing both layouts. Returns whether it was newly
    /// loaded (`false` if it was already resident).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Kernel`] when the kernels reject the shape for `p`.
    /// The transpose is built in f32 and quantized along its own rows.
    pub fn load(&mut self, p: Precision) -> Result<bool> {
        if self.resident.contains_key(&p) {
            return Ok(false);
        }
        let w = QMatrix::quantize(p, self.rows, self.cols, &self.master)?;
        let mut t = vec![0f32; self.master.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                t[c * self.rows + r] = self.master[r * self.cols + c];
            }
        }
        let wt = QMatrix::quantize(p, self.cols, self.rows, &t)?;
        self.resident.insert(p, ResidentCopy { w, wt });
        Ok(true)
    }

    /// Drops the copy at `p`; returns whether one was resident.
    pub fn release(&mut self, p: Precision) -> bool {
        self.resident.remove(&p).is_some()
    }

    /// The copy at `p`.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::NotResident`] when it is not loaded.
    pub fn get(&self, p: Precision) -> Result<&ResidentCopy> {
        self.resident.get(&p).ok_or(RuntimeError::NotResident(p))
    }

    /// The precisions resident now, in fidelity order.
    pub fn resident(&self) -> Vec<Precision> {
        self.resident.keys().copied().collect()
    }

    /// Bytes of all resident copies, both layouts each.
    pub fn resident_bytes(&self) -> usize {
        self.resident.values().map(ResidentCopy::byte_len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_follows_loads_and_releases() {
        let (r, c) = (64, 96);
        let mut w =
            WeightSet::new(r, c, (0..r * c).map(|i| (i % 7) as f32 - 3.0).collect()).unwrap();
        assert_eq!(w.resident_bytes(), 0);
        assert!(w.load(Precision::FP32).unwrap());
        assert!(!w.load(Precision::FP32).unwrap());
        assert_eq!(w.resident_bytes(), 2 * r * c * 4);
        w.load(Precision::INT4).unwrap();
        w.load(Precision::FP16).unwrap();
        let int4 = 2 * (r * c / 32) * 18;
        assert_eq!(w.resident_bytes(), 2 * r * c * 4 + int4 + 2 * r * c * 2);
        assert_eq!(
            w.resident(),
            vec![Precision::INT4, Precision::FP16, Precision::FP32]
        );
        assert!(w.release(Precision::FP32));
        assert!(!w.release(Precision::FP32));
        assert_eq!(w.resident_bytes(), int4 + 2 * r * c * 2);
        assert!(matches!(
            w.get(Precision::FP32),
            Err(RuntimeError::NotResident(Precision::FP32))
        ));
        w.load(Precision::BF16).unwrap();
        w.load(Precision::INT8).unwrap();
        assert_eq!(
            w.resident_bytes(),
            int4 + 4 * r * c * 2 + 2 * (r * c / 32) * 34
        );
    }

    #[test]
    fn transpose_layout_holds_the_transpose() {
        let mut w = WeightSet::new(32, 64, (0..32 * 64).map(|i| i as f32).collect()).unwrap();
        w.load(Precision::FP32).unwrap();
        let copy = w.get(Precision::FP32).unwrap();
        assert_eq!((copy.wt.rows(), copy.wt.cols()), (64, 32));
        // Row 5 of the transpose times e_3 is element (3, 5) of the matrix.
        let mut e = vec![0f32; 32];
        e[3] = 1.0;
        let mut out = vec![0f32; 64];
        copy.wt.matmul(&e, 1, &mut out).unwrap();
        assert_eq!(out[5], (3 * 64 + 5) as f32);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            WeightSet::new(2, 2, vec![0.0; 3]),
            Err(RuntimeError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            WeightSet::new(1, 1, vec![f32::NAN]),
            Err(RuntimeError::InvalidModel(_))
        ));
        let mut w = WeightSet::new(2, 16, vec![0.0; 32]).unwrap();
        assert!(w.load(Precision::INT8).is_err());
        assert_eq!(w.resident_bytes(), 0);
    }
}
