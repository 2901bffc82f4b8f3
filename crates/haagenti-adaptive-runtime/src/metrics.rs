//! Quality measures of a run against a reference run.

use serde::{Deserialize, Serialize};

use crate::{GmmModel, Result, RuntimeError};

/// Mean squared difference, in f64.
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] when the lengths differ.
pub fn mse(reference: &[f32], approx: &[f32]) -> Result<f64> {
    if reference.len() != approx.len() {
        return Err(RuntimeError::ShapeMismatch {
            what: "compared samples",
            expected: reference.len(),
            actual: approx.len(),
        });
    }
    if reference.is_empty() {
        return Ok(0.0);
    }
    let sum: f64 = reference
        .iter()
        .zip(approx)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    Ok(sum / reference.len() as f64)
}

/// Peak signal-to-noise ratio in dB for an MSE, with the data's peak-to-peak range
/// (2 for images in `[-1, 1]`): `10 log10(range² / mse)`; `+inf` when `mse == 0`.
pub fn psnr_from_mse(mse: f64, range: f64) -> f64 {
    if mse <= 0.0 {
        f64::INFINITY
    } else {
        10.0 * (range * range / mse).log10()
    }
}

/// Quality of a run's final samples against the reference run's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Mean squared difference over the whole batch.
    pub mse: f64,
    /// PSNR over the batch, peak-to-peak range 2 (the means span `[-1, 1]`).
    pub psnr_db: f64,
    /// Share of samples ending nearest the same mixture component as in the reference.
    pub mode_agreement: f64,
    /// PSNR over the samples whose component agrees (`NaN` when none does).
    pub psnr_agreeing_db: f64,
    /// Mean SSIM over the batch's images, for samples that are images ([`image_quality`]);
    /// `None` otherwise.
    #[serde(default)]
    pub ssim: Option<f64>,
}

impl Quality {
    /// Quality from the MSE alone, for a model with no modes to compare: PSNR over a range of 2
    /// (samples in `[-1, 1]`), every sample counted as agreeing.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ShapeMismatch`] for samples of different lengths.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_runtime::Quality;
    ///
    /// let q = Quality::from_mse(&[0.0, 0.0], &[0.25, -0.25])?;
    /// assert_eq!(q.mse, 0.0625);
    /// assert!((q.psnr_db - 10.0 * 64f64.log10()).abs() < 1e-9);
    /// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
    /// ```
    pub fn from_mse(reference: &[f32], samples: &[f32]) -> Result<Self> {
        let e = mse(reference, samples)?;
        let psnr = psnr_from_mse(e, 2.0);
        Ok(Self {
            mse: e,
            psnr_db: psnr,
            mode_agreement: 1.0,
            psnr_agreeing_db: psnr,
            ssim: None,
        })
    }
}

/// Compares `samples` with `reference` (both `batch x d`) under `model`'s components.
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] for wrong lengths.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_runtime::{GmmConfig, GmmModel, quality};
///
/// let m = GmmModel::new(GmmConfig { k: 4, d: 32, ..GmmConfig::default() })?;
/// let x = m.means()[..64].to_vec();
/// let q = quality(&m, &x, &x, 2)?;
/// assert_eq!(q.mode_agreement, 1.0);
/// assert!(q.psnr_db.is_infinite());
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn quality(
    model: &GmmModel,
    reference: &[f32],
    samples: &[f32],
    batch: usize,
) -> Result<Quality> {
    let d = model.config().d;
    let mse_all = mse(reference, samples)?;
    let a = model.nearest_components(reference, batch)?;
    let b = model.nearest_components(samples, batch)?;
    let agree: Vec<usize> = (0..batch).filter(|&i| a[i] == b[i]).collect();
    let psnr_agreeing_db = if agree.is_empty() {
        f64::NAN
    } else {
        let mut s = 0.0;
        for &i in &agree {
            s += mse(&reference[i * d..(i + 1) * d], &samples[i * d..(i + 1) * d])?;
        }
        psnr_from_mse(s / agree.len() as f64, 2.0)
    };
    Ok(Quality {
        mse: mse_all,
        psnr_db: psnr_from_mse(mse_all, 2.0),
        mode_agreement: if batch == 0 {
            1.0
        } else {
            agree.len() as f64 / batch as f64
        },
        psnr_agreeing_db,
        ssim: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_values() {
        assert_eq!(mse(&[1.0, 2.0], &[1.0, 4.0]).unwrap(), 2.0);
        assert!((psnr_from_mse(0.04, 2.0) - 20.0).abs() < 1e-12);
        assert!(psnr_from_mse(0.0, 2.0).is_infinite());
        assert!(mse(&[1.0], &[]).is_err());
    }
}
