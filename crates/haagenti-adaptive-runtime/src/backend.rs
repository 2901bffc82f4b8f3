//! The one place the runtime touches weight storage and matrix products: a thin wrapper over
//! `haagenti-adaptive-kernels`.

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, matmul};

use crate::Result;

/// A `rows x cols` weight matrix held at one precision, in the kernels' storage format for it
/// (`Format::from_precision`: INT4 is `Q4_0`, INT8 `Q8_0`, the floats `f16`, `bf16`, `f32`).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_runtime::QMatrix;
///
/// let w = QMatrix::quantize(Precision::INT8, 2, 32, &[0.5; 64])?;
/// assert_eq!(w.byte_len(), 2 * 34);
/// let mut out = [0.0; 2];
/// w.matmul(&[1.0; 32], 1, &mut out)?;
/// assert!((out[0] - 16.0).abs() < 0.1);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct QMatrix {
    precision: Precision,
    tensor: QuantizedTensor,
}

impl QMatrix {
    /// Stores `values` (row-major `rows x cols`) at `precision`.
    ///
    /// # Errors
    ///
    /// [`crate::RuntimeError::Kernel`] for a wrong length, a non-finite value, or a row length
    /// that is not a multiple of 32 for a block format.
    pub fn quantize(
        precision: Precision,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self> {
        let tensor =
            QuantizedTensor::quantize(Format::from_precision(precision), rows, cols, values)?;
        Ok(Self { precision, tensor })
    }

    /// The precision the weights are held at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Rows (`n` of the product).
    pub fn rows(&self) -> usize {
        self.tensor.rows()
    }

    /// Columns (`k` of the product).
    pub fn cols(&self) -> usize {
        self.tensor.cols()
    }

    /// Bytes the weights occupy at their precision, block scales included.
    pub fn byte_len(&self) -> usize {
        self.tensor.byte_len()
    }

    /// The kernels' tensor.
    pub fn tensor(&self) -> &QuantizedTensor {
        &self.tensor
    }

    /// `out[m x rows] = x[m x cols] · selfᵀ`, through the kernels on the current rayon pool.
    ///
    /// # Errors
    ///
    /// [`crate::RuntimeError::Kernel`] when `x` or `out` has the wrong length.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        matmul(x, m, &self.tensor, out, Parallelism::Rayon)?;
        Ok(())
    }
}
