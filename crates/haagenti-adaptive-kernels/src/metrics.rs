//! Error metrics between a tensor and its reconstruction.

use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};

/// How far a reconstruction is from its reference. Sums run in f64.
///
/// Exact and zero cases are defined rather than NaN:
/// - an exact reconstruction (including two empty slices) has `mse = 0`, `max_abs = 0`,
///   `sqnr_db = +inf` and `cosine = 1` exactly;
/// - a zero reference with a non-zero error has `sqnr_db = -inf`;
/// - `cosine` of two all-zero vectors (or two empty ones) is 1, of an all-zero vector and a
///   non-zero one 0; otherwise it is clamped to `[-1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// Mean squared error, `sum (r - a)^2 / n`.
    pub mse: f64,
    /// Largest absolute error, `max |r - a|`.
    pub max_abs: f64,
    /// Signal-to-quantization-noise ratio in decibels, `10 log10(sum r^2 / sum (r - a)^2)`.
    pub sqnr_db: f64,
    /// Cosine similarity, `sum r a / sqrt(sum r^2 * sum a^2)`.
    pub cosine: f64,
}

/// Error metrics of `approx` against `reference`.
///
/// # Errors
///
/// [`KernelError::ShapeMismatch`] when the lengths differ; [`KernelError::NonFinite`] naming the
/// first index where either slice holds a NaN or an infinity.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::error_stats;
///
/// let s = error_stats(&[1.0, 2.0], &[1.0, 2.0])?;
/// assert_eq!((s.mse, s.max_abs, s.cosine), (0.0, 0.0, 1.0));
/// assert_eq!(s.sqnr_db, f64::INFINITY);
///
/// let s = error_stats(&[3.0, 4.0], &[3.0, 3.0])?;
/// assert_eq!(s.mse, 0.5);
/// assert_eq!(s.max_abs, 1.0);
/// assert!((s.sqnr_db - 10.0 * 25f64.log10()).abs() < 1e-12);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn error_stats(reference: &[f32], approx: &[f32]) -> Result<ErrorStats> {
    if reference.len() != approx.len() {
        return Err(KernelError::ShapeMismatch {
            what: "approx",
            expected: reference.len(),
            actual: approx.len(),
        });
    }
    let mut sum_rr = 0.0f64;
    let mut sum_aa = 0.0f64;
    let mut sum_ra = 0.0f64;
    let mut sum_ee = 0.0f64;
    let mut max_abs = 0.0f64;
    for (index, (&r, &a)) in reference.iter().zip(approx).enumerate() {
        if !r.is_finite() || !a.is_finite() {
            let value = if r.is_finite() { a } else { r };
            return Err(KernelError::NonFinite { index, value });
        }
        let (r, a) = (f64::from(r), f64::from(a));
        let e = r - a;
        sum_rr += r * r;
        sum_aa += a * a;
        sum_ra += r * a;
        sum_ee += e * e;
        max_abs = max_abs.max(e.abs());
    }
    let n = reference.len();
    let mse = if n == 0 { 0.0 } else { sum_ee / n as f64 };
    let sqnr_db = if sum_ee == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (sum_rr / sum_ee).log10()
    };
    let cosine = match (sum_rr == 0.0, sum_aa == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) if sum_ee == 0.0 => 1.0,
        (false, false) => (sum_ra / (sum_rr * sum_aa).sqrt()).clamp(-1.0, 1.0),
    };
    Ok(ErrorStats {
        mse,
        max_abs,
        sqnr_db,
        cosine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_degenerate_cases() {
        let s = error_stats(&[], &[]).unwrap();
        assert_eq!(
            s,
            ErrorStats {
                mse: 0.0,
                max_abs: 0.0,
                sqnr_db: f64::INFINITY,
                cosine: 1.0
            }
        );
        let s = error_stats(&[0.0, 0.0], &[0.0, 0.0]).unwrap();
        assert_eq!((s.sqnr_db, s.cosine), (f64::INFINITY, 1.0));
        let s = error_stats(&[0.0, 0.0], &[1.0, 0.0]).unwrap();
        assert_eq!((s.sqnr_db, s.cosine, s.mse), (f64::NEG_INFINITY, 0.0, 0.5));
        let s = error_stats(&[1.0, -2.0], &[-1.0, 2.0]).unwrap();
        assert_eq!(s.cosine, -1.0);
        assert_eq!(s.max_abs, 4.0);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            error_stats(&[1.0], &[1.0, 2.0]),
            Err(KernelError::ShapeMismatch {
                what: "approx",
                expected: 1,
                actual: 2
            })
        );
        let e = error_stats(&[1.0, 2.0, 3.0], &[1.0, f32::NAN, f32::INFINITY]).unwrap_err();
        assert!(matches!(e, KernelError::NonFinite { index: 1, value } if value.is_nan()));
    }
}
