//! Quality of generated images against reference images from the same noise: PSNR over a stated
//! data range, and SSIM (Wang et al. 2004) with the usual 11x11 gaussian window.

use serde::{Deserialize, Serialize};

use crate::metrics::{mse, psnr_from_mse};
use crate::{Quality, Result, RuntimeError};

/// The data range of samples in `[-1, 1]`: height maps (the terrain network clips its output to
/// `[-1, 1]`) and images scaled as diffusion models see them.
///
/// PSNR and SSIM use this fixed range rather than each batch's own max - min, so that a PSNR
/// bound is one MSE bound whatever the batch ([`mse_for_psnr`]) and two runs' figures compare.
pub const SIGNED_UNIT_RANGE: f64 = 2.0;

/// Side of SSIM's gaussian window, in pixels.
pub const SSIM_WINDOW: usize = 11;

/// Standard deviation of SSIM's gaussian window, in pixels.
pub const SSIM_SIGMA: f64 = 1.5;

/// The size of one single-channel image of a batch: a sample of `width x height` values, row
/// by row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Pixels a row.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

impl ImageShape {
    /// Values an image.
    pub fn pixels(self) -> usize {
        self.width * self.height
    }

    /// Checks `reference` and `approx` against this shape; returns the number of images.
    fn batch(self, reference: &[f32], approx: &[f32]) -> Result<usize> {
        if self.width < SSIM_WINDOW || self.height < SSIM_WINDOW {
            return Err(RuntimeError::InvalidImage(format!(
                "{}x{} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window",
                self.width, self.height
            )));
        }
        if reference.len() != approx.len() {
            return Err(RuntimeError::ShapeMismatch {
                what: "compared images",
                expected: reference.len(),
                actual: approx.len(),
            });
        }
        let px = self.pixels();
        if reference.is_empty() || !reference.len().is_multiple_of(px) {
            return Err(RuntimeError::InvalidImage(format!(
                "{} values are not a whole number of {}x{} images",
                reference.len(),
                self.width,
                self.height
            )));
        }
        Ok(reference.len() / px)
    }
}

/// PSNR in dB of `approx` against `reference` over the whole batch: `10 log10(range² / MSE)`
/// with the MSE over every value of the batch (`+inf` when they are equal).
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] when the lengths differ.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_runtime::{SIGNED_UNIT_RANGE, psnr};
///
/// // A constant offset of 0.02 on a range of 2: 10 log10(4 / 0.0004) = 40 dB.
/// let x = vec![0.5f32; 64];
/// let y: Vec<f32> = x.iter().map(|v| v + 0.02).collect();
/// assert!((psnr(&x, &y, SIGNED_UNIT_RANGE)? - 40.0).abs() < 1e-4);
/// assert!(psnr(&x, &x, SIGNED_UNIT_RANGE)?.is_infinite());
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn psnr(reference: &[f32], approx: &[f32], range: f64) -> Result<f64> {
    Ok(psnr_from_mse(mse(reference, approx)?, range))
}

/// The MSE that a PSNR of `psnr_db` dB over `range` allows: `range² / 10^(psnr_db / 10)`.
///
/// # Examples
///
/// ```
/// let budget = haagenti_adaptive_runtime::mse_for_psnr(40.0, 2.0);
/// assert!((budget - 4e-4).abs() < 1e-15);
/// ```
pub fn mse_for_psnr(psnr_db: f64, range: f64) -> f64 {
    range * range / 10f64.powf(psnr_db / 10.0)
}

/// The normalised 1-D gaussian of SSIM's window (the 2-D window is its outer product).
fn gaussian_window() -> [f64; SSIM_WINDOW] {
    let mut w = [0.0; SSIM_WINDOW];
    let c = (SSIM_WINDOW / 2) as f64;
    for (k, v) in w.iter_mut().enumerate() {
        let d = k as f64 - c;
        *v = (-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| v / sum)
}

/// SSIM of one image against its reference: the mean of the SSIM map over the window positions
/// that lie wholly inside the image (`valid` filtering, as Wang et al.'s reference code), with
/// `C1 = (0.01 range)²` and `C2 = (0.03 range)²`.
fn ssim_one(reference: &[f32], approx: &[f32], shape: ImageShape, range: f64) -> f64 {
    let (w, h) = (shape.width, shape.height);
    let g = gaussian_window();
    let ow = w - SSIM_WINDOW + 1;
    let oh = h - SSIM_WINDOW + 1;
    // Horizontal pass of x, y, x², y², xy: `h x ow` each.
    let mut rows = vec![[0.0f64; 5]; h * ow];
    for r in 0..h {
        let a = &reference[r * w..(r + 1) * w];
        let b = &approx[r * w..(r + 1) * w];
        for c in 0..ow {
            let mut acc = [0.0f64; 5];
            for (k, &gk) in g.iter().enumerate() {
                let x = f64::from(a[c + k]);
                let y = f64::from(b[c + k]);
                acc[0] += gk * x;
                acc[1] += gk * y;
                acc[2] += gk * x * x;
                acc[3] += gk * y * y;
                acc[4] += gk * x * y;
            }
            rows[r * ow + c] = acc;
        }
    }
    let c1 = (0.01 * range).powi(2);
    let c2 = (0.03 * range).powi(2);
    let mut total = 0.0;
    for r in 0..oh {
        for c in 0..ow {
            let mut m = [0.0f64; 5];
            for (k, &gk) in g.iter().enumerate() {
                let v = &rows[(r + k) * ow + c];
                for (mi, vi) in m.iter_mut().zip(v) {
                    *mi += gk * vi;
                }
            }
            let (mx, my) = (m[0], m[1]);
            let vx = m[2] - mx * mx;
            let vy = m[3] - my * my;
            let cov = m[4] - mx * my;
            total += ((2.0 * mx * my + c1) * (2.0 * cov + c2))
                / ((mx * mx + my * my + c1) * (vx + vy + c2));
        }
    }
    total / (ow * oh) as f64
}

/// Mean SSIM over a batch of single-channel images (each `shape`, back to back), each image's
/// SSIM computed with an 11x11 gaussian window of sigma 1.5 ([`SSIM_WINDOW`], [`SSIM_SIGMA`])
/// over the positions wholly inside it, `C1 = (0.01 range)²`, `C2 = (0.03 range)²`.
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] when the lengths differ; [`RuntimeError::InvalidImage`] for
/// an image side below 11 or a length that is not a whole number of images.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_runtime::{ImageShape, SIGNED_UNIT_RANGE, ssim};
///
/// let shape = ImageShape { width: 16, height: 16 };
/// let x: Vec<f32> = (0..2 * 256).map(|i| ((i as f32) * 0.37).sin()).collect();
/// assert!((ssim(&x, &x, shape, SIGNED_UNIT_RANGE)? - 1.0).abs() < 1e-12);
/// let noisy: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + 0.3 * ((i * 7) as f32).cos()).collect();
/// assert!(ssim(&x, &noisy, shape, SIGNED_UNIT_RANGE)? < 0.99);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn ssim(reference: &[f32], approx: &[f32], shape: ImageShape, range: f64) -> Result<f64> {
    let batch = shape.batch(reference, approx)?;
    let px = shape.pixels();
    let sum: f64 = reference
        .chunks_exact(px)
        .zip(approx.chunks_exact(px))
        .map(|(a, b)| ssim_one(a, b, shape, range))
        .sum();
    Ok(sum / batch as f64)
}

/// [`Quality`] of a batch of images (each `shape`, values in `[-1, 1]`) against the reference
/// batch from the same noise: MSE and PSNR over the whole batch and mean SSIM over its images,
/// both with the data range [`SIGNED_UNIT_RANGE`]. Images have no modes: every sample counts as
/// agreeing (`mode_agreement` 1, `psnr_agreeing_db` the PSNR), as in [`Quality::from_mse`].
///
/// # Errors
///
/// As [`ssim`].
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_runtime::{ImageShape, image_quality};
///
/// let shape = ImageShape { width: 12, height: 12 };
/// let x = vec![0.25f32; 144];
/// let y = vec![0.27f32; 144];
/// let q = image_quality(&x, &y, shape)?;
/// assert!((q.psnr_db - 40.0).abs() < 1e-3);
/// assert!(q.ssim.unwrap() > 0.99);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn image_quality(reference: &[f32], samples: &[f32], shape: ImageShape) -> Result<Quality> {
    let s = ssim(reference, samples, shape, SIGNED_UNIT_RANGE)?;
    let e = mse(reference, samples)?;
    let p = psnr_from_mse(e, SIGNED_UNIT_RANGE);
    Ok(Quality {
        mse: e,
        psnr_db: p,
        mode_agreement: 1.0,
        psnr_agreeing_db: p,
        ssim: Some(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| (0.4 * rng.next_normal()) as f32).collect()
    }

    /// SSIM with the 2-D window applied directly: the oracle of the separable passes.
    fn ssim_direct(a: &[f32], b: &[f32], w: usize, h: usize, range: f64) -> f64 {
        let g = gaussian_window();
        let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
        let mut total = 0.0;
        let mut n = 0;
        for r in 0..=h - SSIM_WINDOW {
            for c in 0..=w - SSIM_WINDOW {
                let mut m = [0.0f64; 5];
                for i in 0..SSIM_WINDOW {
                    for j in 0..SSIM_WINDOW {
                        let wt = g[i] * g[j];
                        let x = f64::from(a[(r + i) * w + c + j]);
                        let y = f64::from(b[(r + i) * w + c + j]);
                        m[0] += wt * x;
                        m[1] += wt * y;
                        m[2] += wt * x * x;
                        m[3] += wt * y * y;
                        m[4] += wt * x * y;
                    }
                }
                let (vx, vy, cov) = (m[2] - m[0] * m[0], m[3] - m[1] * m[1], m[4] - m[0] * m[1]);
                total += ((2.0 * m[0] * m[1] + c1) * (2.0 * cov + c2))
                    / ((m[0] * m[0] + m[1] * m[1] + c1) * (vx + vy + c2));
                n += 1;
            }
        }
        total / n as f64
    }

    #[test]
    fn identical_images_give_infinite_psnr_and_ssim_one() {
        let shape = ImageShape {
            width: 20,
            height: 17,
        };
        let x = random(3 * shape.pixels(), 1);
        let q = image_quality(&x, &x, shape).unwrap();
        assert!(q.psnr_db.is_infinite() && q.psnr_db > 0.0);
        assert_eq!(q.mse, 0.0);
        assert!((q.ssim.unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn constant_offset_gives_the_known_psnr_and_ssim() {
        let shape = ImageShape {
            width: 11,
            height: 11,
        };
        // A constant image a against a + c: every window has zero variance, so SSIM is the
        // luminance term (2a(a + c) + C1) / (a² + (a + c)² + C1).
        let (a, c) = (0.25f32, 0.1f32);
        let x = vec![a; 2 * shape.pixels()];
        let y = vec![a + c; 2 * shape.pixels()];
        let (a, b) = (f64::from(a), f64::from(a + c));
        let c1 = (0.01f64 * 2.0).powi(2);
        let want = (2.0 * a * b + c1) / (a * a + b * b + c1);
        let got = ssim(&x, &y, shape, SIGNED_UNIT_RANGE).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // PSNR: 10 log10(4 / c²), c = 0.1 -> 26.02 dB.
        let d = f64::from(0.35f32) - f64::from(0.25f32);
        let want = 10.0 * (4.0 / (d * d)).log10();
        let got = psnr(&x, &y, SIGNED_UNIT_RANGE).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert!((got - 26.0206).abs() < 1e-3);
    }

    #[test]
    fn separable_ssim_matches_the_direct_window() {
        let (w, h) = (23, 14);
        let shape = ImageShape {
            width: w,
            height: h,
        };
        let x = random(w * h, 2);
        let noise = random(w * h, 3);
        for scale in [0.01f32, 0.1, 1.0] {
            let y: Vec<f32> = x.iter().zip(&noise).map(|(a, n)| a + scale * n).collect();
            let got = ssim(&x, &y, shape, SIGNED_UNIT_RANGE).unwrap();
            let want = ssim_direct(&x, &y, w, h, SIGNED_UNIT_RANGE);
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
            assert!(got < 1.0);
        }
    }

    #[test]
    fn ssim_falls_as_noise_grows_and_is_the_batch_mean() {
        let shape = ImageShape {
            width: 16,
            height: 16,
        };
        let x = random(2 * shape.pixels(), 4);
        let noise = random(2 * shape.pixels(), 5);
        let mut last = 1.0;
        for scale in [0.01f32, 0.05, 0.2, 0.8] {
            let y: Vec<f32> = x.iter().zip(&noise).map(|(a, n)| a + scale * n).collect();
            let s = ssim(&x, &y, shape, SIGNED_UNIT_RANGE).unwrap();
            assert!(s < last, "{s} after {last}");
            last = s;
            let px = shape.pixels();
            let each: Vec<f64> = (0..2)
                .map(|i| {
                    let r = i * px..(i + 1) * px;
                    ssim(&x[r.clone()], &y[r], shape, SIGNED_UNIT_RANGE).unwrap()
                })
                .collect();
            assert!((s - (each[0] + each[1]) / 2.0).abs() < 1e-12);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let small = ImageShape {
            width: 10,
            height: 40,
        };
        assert!(matches!(
            ssim(&[0.0; 400], &[0.0; 400], small, 2.0),
            Err(RuntimeError::InvalidImage(_))
        ));
        let shape = ImageShape {
            width: 11,
            height: 11,
        };
        assert!(matches!(
            ssim(&[0.0; 121], &[0.0; 120], shape, 2.0),
            Err(RuntimeError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            ssim(&[0.0; 130], &[0.0; 130], shape, 2.0),
            Err(RuntimeError::InvalidImage(_))
        ));
        assert!(matches!(
            ssim(&[], &[], shape, 2.0),
            Err(RuntimeError::InvalidImage(_))
        ));
    }

    #[test]
    fn psnr_bound_and_mse_budget_agree() {
        for db in [20.0, 35.0, 40.0, 55.5] {
            let e = mse_for_psnr(db, SIGNED_UNIT_RANGE);
            assert!((psnr_from_mse(e, SIGNED_UNIT_RANGE) - db).abs() < 1e-9);
        }
    }
}
