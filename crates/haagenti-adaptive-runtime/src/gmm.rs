//! The built-in reference model: the exact denoiser of an isotropic Gaussian mixture.

use std::str::FromStr;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_BATCH_VALUES, check_len, check_limit};
use crate::rng::SplitMix64;
use crate::weights::WeightSet;
use crate::{Denoiser, Result, RuntimeError};

/// Configuration of [`GmmModel`]: `k` components with means in `d` dimensions, shared standard
/// deviation `s`, means drawn from `seed`.
///
/// Parses from `gmm:k=1024,d=4096,s=0.05,seed=0` (any subset of the keys, in any order; `gmm`
/// alone gives the defaults).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_runtime::GmmConfig;
///
/// let c: GmmConfig = "gmm:k=16,d=64".parse()?;
/// assert_eq!((c.k, c.d, c.s), (16, 64, 0.05));
/// assert!("gmm:k=0".parse::<GmmConfig>().is_err());
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GmmConfig {
    /// Mixture components.
    pub k: usize,
    /// Values per sample (a square number gives square images).
    pub d: usize,
    /// Standard deviation of every component.
    pub s: f32,
    /// Seed of the means.
    pub seed: u64,
}

impl Default for GmmConfig {
    /// 1024 components of 64 x 64 images, `s = 0.05`.
    fn default() -> Self {
        Self {
            k: 1024,
            d: 64 * 64,
            s: 0.05,
            seed: 0x5EED,
        }
    }
}

impl GmmConfig {
    /// Checks the sizes and the deviation.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidModel`] for `k == 0`, `d == 0`, sizes over 2^24, or `s` not finite
    /// and positive; [`RuntimeError::LimitExceeded`] when `k x d` exceeds
    /// [`MAX_MODEL_VALUES`](crate::MAX_MODEL_VALUES).
    pub fn validate(&self) -> Result<()> {
        const MAX: usize = 1 << 24;
        if self.k == 0 || self.d == 0 || self.k > MAX || self.d > MAX {
            return Err(RuntimeError::InvalidModel(format!(
                "k and d must be in 1..={MAX} (got k={}, d={})",
                self.k, self.d
            )));
        }
        // Checked here, before the means (k x d values, once a resident precision) exist.
        crate::limits::check_limit(
            "model size k x d",
            self.k.saturating_mul(self.d),
            crate::MAX_MODEL_VALUES,
            "the model keeps k x d means once a resident precision (2^26 values is 256 MiB)",
        )?;
        if !(self.s.is_finite() && self.s > 0.0) {
            return Err(RuntimeError::InvalidModel(format!(
                "s must be finite and positive, got {}",
                self.s
            )));
        }
        Ok(())
    }
}

impl FromStr for GmmConfig {
    type Err = RuntimeError;

    fn from_str(spec: &str) -> Result<Self> {
        let bad = |msg: String| RuntimeError::InvalidModel(msg);
        let rest = spec.strip_prefix("gmm").ok_or_else(|| {
            bad(format!(
                "unknown model {spec:?} (expected gmm:k=..,d=..,s=..)"
            ))
        })?;
        let mut c = GmmConfig::default();
        let rest = match rest.strip_prefix(':') {
            Some(r) => r,
            None if rest.is_empty() => "",
            None => {
                return Err(bad(format!(
                    "unknown model {spec:?} (expected gmm:k=..,d=..,s=..)"
                )));
            }
        };
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("expected key=value, got {part:?}")))?;
            let num = |what: &str| bad(format!("bad value {value:?} for {what}"));
            match key.trim() {
                "k" => c.k = value.trim().parse().map_err(|_| num("k"))?,
                "d" => c.d = value.trim().parse().map_err(|_| num("d"))?,
                "s" => c.s = value.trim().parse().map_err(|_| num("s"))?,
                "seed" => c.seed = value.trim().parse().map_err(|_| num("seed"))?,
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (expected k, d, s or seed)"
                    )));
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

fn round_up_32(n: usize) -> usize {
    n.div_ceil(32) * 32
}

/// Seeded smooth "images": each mean is a sum of five random low-frequency cosines (frequencies
/// 0 to 3 cycles across each axis), scaled to span `[-1, 1]`. A square `d` gives `sqrt(d) x sqrt(d)`
/// images, otherwise 1-D signals.
pub fn smooth_means(k: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let side = (d as f64).sqrt().round() as usize;
    let square = side * side == d;
    let (w, h) = if square { (side, side) } else { (d, 1) };
    let mut out = Vec::with_capacity(k * d);
    let mut img = vec![0f64; d];
    for _ in 0..k {
        img.iter_mut().for_each(|v| *v = 0.0);
        for _ in 0..5 {
            let fx = rng.below(4) as f64;
            let fy = if square { rng.below(4) as f64 } else { 0.0 };
            let fx = if fx == 0.0 && fy == 0.0 { 1.0 } else { fx };
            let amp = rng.next_normal();
            let phase = rng.next_f64() * std::f64::consts::TAU;
            for y in 0..h {
                for x in 0..w {
                    let t = std::f64::consts::TAU
                        * (fx * x as f64 / w as f64 + fy * y as f64 / h as f64);
                    img[y * w + x] += amp * (t + phase).cos();
                }
            }
        }
        let (lo, hi) = img
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let span = hi - lo;
        out.extend(img.iter().map(|&v| {
            if span > 0.0 {
                (2.0 * (v - lo) / span - 1.0) as f32
            } else {
                0.0
            }
        }));
    }
    out
}

/// Seeded Gaussian noise: `batch * dim` values of `sigma * N(0, 1)`.
///
/// # Errors
///
/// [`RuntimeError::LimitExceeded`] when `batch * dim` is above [`MAX_BATCH_VALUES`] (or
/// overflows), before anything is allocated: the sizes are often a user's, and a typo would
/// otherwise ask the allocator for terabytes and abort the process.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_runtime::{MAX_BATCH_VALUES, RuntimeError, gaussian_noise};
///
/// let x = gaussian_noise(2, 3, 1.0, 7)?;
/// assert_eq!(x.len(), 6);
/// assert_eq!(x, gaussian_noise(2, 3, 1.0, 7)?); // seeded
/// assert!(matches!(
///     gaussian_noise(usize::MAX, 2, 1.0, 7),
///     Err(RuntimeError::LimitExceeded { .. })
/// ));
/// assert!(gaussian_noise(MAX_BATCH_VALUES + 1, 1, 1.0, 7).is_err());
/// # Ok::<(), RuntimeError>(())
/// ```
pub fn gaussian_noise(batch: usize, dim: usize, sigma: f64, seed: u64) -> Result<Vec<f32>> {
    let len = batch
        .checked_mul(dim)
        .filter(|&n| n <= MAX_BATCH_VALUES)
        .ok_or(RuntimeError::LimitExceeded {
            what: "noise values (batch x dim)",
            value: batch as u128 * dim as u128,
            limit: MAX_BATCH_VALUES as u128,
            why: "a batch of samples must fit in 2^26 values",
        })?;
    let mut rng = SplitMix64::new(seed);
    Ok((0..len)
        .map(|_| (sigma * rng.next_normal()) as f32)
        .collect())
}

/// The exact denoiser of an equal-weight mixture of `k` Gaussians `N(mu_j, s² I)`:
///
/// `D(x; sigma) = (s² x + sigma² Σ_j g_j mu_j) / (s² + sigma²)`,
/// `g = softmax_j((x · mu_j - |mu_j|² / 2) / (s² + sigma²))`.
///
/// The means are the model's weights (a `k x d` matrix). Both products, `x Mᵀ` and `g M`, run
/// through the kernels at the requested precision, so a lower precision changes the computation
/// as it would in a network. `|mu_j|²` is computed once in f64 from the f32 means and kept in f32
/// at every precision: it is one value a component, a bias rather than a weight matrix.
/// Softmax weights below `1e-30` are flushed to zero (no effect on any f32 output, and it keeps
/// subnormal arithmetic, whose cost depends on the data, out of the timings).
/// Shapes are padded to multiples of 32 with zero rows and columns (the padded components get
/// no weight in the softmax), so any `k` and `d` run at every precision.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_runtime::{Denoiser, GmmConfig, GmmModel};
///
/// let mut m = GmmModel::new(GmmConfig { k: 8, d: 64, ..GmmConfig::default() })?;
/// m.load(Precision::FP32)?;
/// let x = m.means()[..64].to_vec(); // a sample sitting on the first mean
/// let mut out = vec![0.0; 64];
/// m.denoise(&x, 1, 1e-3, Precision::FP32, &mut out)?;
/// assert!(out.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-3));
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct GmmModel {
    config: GmmConfig,
    kp: usize,
    dp: usize,
    means: Vec<f32>,
    half_norms: Vec<f32>,
    weights: WeightSet,
    xpad: Vec<f32>,
    logits: Vec<f32>,
    mean_out: Vec<f32>,
}

impl GmmModel {
    /// Builds the model, drawing its means with [`smooth_means`]. No precision is resident yet.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidModel`] for a configuration [`GmmConfig::validate`] rejects.
    pub fn new(config: GmmConfig) -> Result<Self> {
        config.validate()?;
        let means = smooth_means(config.k, config.d, config.seed);
        Self::with_means(config, means)
    }

    /// Builds the model over given means (`config.k x config.d`, row-major); `config.seed` is
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidModel`] for a bad configuration or a non-finite mean,
    /// [`RuntimeError::ShapeMismatch`] for a wrong length.
    pub fn with_means(config: GmmConfig, means: Vec<f32>) -> Result<Self> {
        config.validate()?;
        let (k, d) = (config.k, config.d);
        if means.len() != k * d {
            return Err(RuntimeError::ShapeMismatch {
                what: "means",
                expected: k * d,
                actual: means.len(),
            });
        }
        let (kp, dp) = (round_up_32(k), round_up_32(d));
        let mut padded = vec![0f32; kp * dp];
        for j in 0..k {
            padded[j * dp..j * dp + d].copy_from_slice(&means[j * d..(j + 1) * d]);
        }
        let weights = WeightSet::new(kp, dp, padded)?;
        let half_norms = means
            .chunks(d)
            .map(|m| (m.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / 2.0) as f32)
            .collect();
        Ok(Self {
            config,
            kp,
            dp,
            means,
            half_norms,
            weights,
            xpad: Vec::new(),
            logits: Vec::new(),
            mean_out: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GmmConfig {
        &self.config
    }

    /// The means, `k x d` row-major.
    pub fn means(&self) -> &[f32] {
        &self.means
    }

    /// The resident weight copies.
    pub fn weights(&self) -> &WeightSet {
        &self.weights
    }

    /// The component whose mean is nearest each sample (squared distance in f64), for `batch`
    /// samples of `d` values.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ShapeMismatch`] when `x` is not `batch * d` long.
    pub fn nearest_components(&self, x: &[f32], batch: usize) -> Result<Vec<usize>> {
        let d = self.config.d;
        check_len("samples", x.len(), batch, d)?;
        Ok(x.chunks(d)
            .map(|s| {
                let mut best = (f64::INFINITY, 0);
                for (j, m) in self.means.chunks(d).enumerate() {
                    let dist: f64 = s
                        .iter()
                        .zip(m)
                        .map(|(&a, &b)| f64::from(a - b).powi(2))
                        .sum();
                    if dist < best.0 {
                        best = (dist, j);
                    }
                }
                best.1
            })
            .collect())
    }
}

impl Denoiser for GmmModel {
    fn dim(&self) -> usize {
        self.config.d
    }

    fn load(&mut self, p: Precision) -> Result<()> {
        self.weights.load(p).map(|_| ())
    }

    fn release(&mut self, p: Precision) {
        self.weights.release(p);
    }

    fn resident_bytes(&self) -> usize {
        self.weights.resident_bytes()
    }

    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        sigma: f64,
        p: Precision,
        out: &mut [f32],
    ) -> Result<()> {
        let (k, d, kp, dp) = (self.config.k, self.config.d, self.kp, self.dp);
        for (what, len) in [("samples", x.len()), ("denoised output", out.len())] {
            check_len(what, len, batch, d)?;
        }
        // The scratch holds batch x kp distances: with a small d and a large k that is far more
        // than the samples, so it gets the run's limit before it is allocated.
        check_limit(
            "batch",
            batch,
            MAX_BATCH_VALUES / kp.max(dp).max(1),
            "a batch of samples (batch x max(d, k) values) must fit in 2^26 values",
        )?;
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(RuntimeError::InvalidSigmas(format!(
                "sigma {sigma} is not finite and non-negative"
            )));
        }
        let copy = self.weights.get(p)?;
        let s2 = f64::from(self.config.s).powi(2);
        let var = s2 + sigma * sigma;

        // x, padded to dp columns.
        self.xpad.clear();
        self.xpad.resize(batch * dp, 0.0);
        for (dst, src) in self.xpad.chunks_mut(dp).zip(x.chunks(d)) {
            dst[..d].copy_from_slice(src);
        }
        // logits = x Mᵀ  (M is kp x dp).
        self.logits.resize(batch * kp, 0.0);
        copy.w.matmul(&self.xpad, batch, &mut self.logits)?;
        // g = softmax over the k real components; padded ones get 0.
        for row in self.logits.chunks_mut(kp) {
            let mut max = f64::NEG_INFINITY;
            for (l, &h) in row[..k].iter().zip(&self.half_norms) {
                max = max.max((f64::from(*l) - f64::from(h)) / var);
            }
            let mut sum = 0.0;
            for (l, &h) in row[..k].iter_mut().zip(&self.half_norms) {
                let e = ((f64::from(*l) - f64::from(h)) / var - max).exp();
                sum += e;
                *l = e as f32;
            }
            let inv = 1.0 / sum;
            // Weights below 1e-30 are flushed to 0: they change no output value in f32, and as
            // subnormal products they would make the cost of a call depend on sigma.
            row[..k].iter_mut().for_each(|l| {
                let g = f64::from(*l) * inv;
                *l = if g < 1e-30 { 0.0 } else { g as f32 };
            });
            row[k..].iter_mut().for_each(|l| *l = 0.0);
        }
        // sum_j g_j mu_j = g M, through the transpose layout (dp x kp).
        self.mean_out.resize(batch * dp, 0.0);
        copy.wt.matmul(&self.logits, batch, &mut self.mean_out)?;
        let (a, b) = ((s2 / var) as f32, (sigma * sigma / var) as f32);
        for ((o, xs), m) in out
            .chunks_mut(d)
            .zip(x.chunks(d))
            .zip(self.mean_out.chunks(dp))
        {
            for ((o, &xv), &mv) in o.iter_mut().zip(xs).zip(&m[..d]) {
                *o = a * xv + b * mv;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mixture denoiser written directly in f64 from its definition.
    fn reference(means: &[f32], k: usize, d: usize, s: f64, x: &[f32], sigma: f64) -> Vec<f64> {
        let var = s * s + sigma * sigma;
        x.chunks(d)
            .flat_map(|xs| {
                let z: Vec<f64> = (0..k)
                    .map(|j| {
                        let m = &means[j * d..(j + 1) * d];
                        let dot: f64 = xs
                            .iter()
                            .zip(m)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        let nn: f64 = m.iter().map(|&b| f64::from(b).powi(2)).sum();
                        (dot - nn / 2.0) / var
                    })
                    .collect();
                let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
                let tot: f64 = e.iter().sum();
                (0..d)
                    .map(|i| {
                        let mix: f64 = (0..k)
                            .map(|j| e[j] / tot * f64::from(means[j * d + i]))
                            .sum();
                        (s * s * f64::from(xs[i]) + sigma * sigma * mix) / var
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn max_err(a: &[f32], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn matches_f64_reference_at_fp32_on_odd_sizes() {
        // k and d not multiples of 32 exercise the padding.
        for (k, d) in [(5, 50), (40, 64), (33, 100)] {
            let cfg = GmmConfig {
                k,
                d,
                s: 0.3,
                seed: 3,
            };
            let mut m = GmmModel::new(cfg).unwrap();
            m.load(Precision::FP32).unwrap();
            let batch = 3;
            for sigma in [80.0f64, 2.0, 0.3, 0.01, 0.0] {
                let x = gaussian_noise(batch, d, sigma.max(0.5), 11).unwrap();
                let mut out = vec![0f32; batch * d];
                m.denoise(&x, batch, sigma, Precision::FP32, &mut out)
                    .unwrap();
                let r = reference(m.means(), k, d, 0.3, &x, sigma);
                let scale = r.iter().map(|v| v.abs()).fold(1.0, f64::max);
                assert!(
                    max_err(&out, &r) < 2e-4 * scale,
                    "k={k} d={d} sigma={sigma}: {}",
                    max_err(&out, &r)
                );
            }
        }
    }

    #[test]
    fn lower_precisions_stay_close_and_order_by_error() {
        let cfg = GmmConfig {
            k: 64,
            d: 256,
            s: 0.5,
            seed: 9,
        };
        let mut m = GmmModel::new(cfg).unwrap();
        let x = gaussian_noise(4, 256, 1.0, 5).unwrap();
        let r = reference(m.means(), 64, 256, 0.5, &x, 1.0);
        let mut errs = Vec::new();
        for p in [Precision::INT4, Precision::INT8, Precision::FP16] {
            m.load(p).unwrap();
            let mut out = vec![0f32; 4 * 256];
            m.denoise(&x, 4, 1.0, p, &mut out).unwrap();
            errs.push(max_err(&out, &r));
        }
        assert!(errs[0] > errs[1] && errs[1] > errs[2], "{errs:?}");
        assert!(errs[0] < 0.5, "{errs:?}");
    }

    #[test]
    fn errors_on_bad_calls() {
        let mut m = GmmModel::new(GmmConfig {
            k: 4,
            d: 32,
            ..GmmConfig::default()
        })
        .unwrap();
        let x = vec![0f32; 32];
        let mut out = vec![0f32; 32];
        assert_eq!(
            m.denoise(&x, 1, 1.0, Precision::INT8, &mut out),
            Err(RuntimeError::NotResident(Precision::INT8))
        );
        m.load(Precision::INT8).unwrap();
        assert!(matches!(
            m.denoise(&x, 2, 1.0, Precision::INT8, &mut out),
            Err(RuntimeError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            m.denoise(&x, 1, f64::NAN, Precision::INT8, &mut out),
            Err(RuntimeError::InvalidSigmas(_))
        ));
    }

    #[test]
    fn config_parsing() {
        let c: GmmConfig = "gmm:k=16,d=64,s=0.1,seed=4".parse().unwrap();
        assert_eq!(
            c,
            GmmConfig {
                k: 16,
                d: 64,
                s: 0.1,
                seed: 4
            }
        );
        assert_eq!("gmm".parse::<GmmConfig>().unwrap(), GmmConfig::default());
        for bad in [
            "gmx:k=1",
            "gmm:k=",
            "gmm:q=3",
            "gmm:s=-1",
            "gmm:s=nan",
            "gmm:d=0",
            "gmmk=3",
            "gmm:k",
        ] {
            assert!(bad.parse::<GmmConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn means_are_smooth_and_span_the_range() {
        let m = smooth_means(8, 64 * 64, 1);
        for img in m.chunks(64 * 64) {
            let lo = img.iter().copied().fold(f32::MAX, f32::min);
            let hi = img.iter().copied().fold(f32::MIN, f32::max);
            assert!((lo + 1.0).abs() < 1e-5 && (hi - 1.0).abs() < 1e-5);
            // Neighbouring pixels differ little: low-pass content.
            let step = img
                .windows(2)
                .map(|w| (w[0] - w[1]).abs())
                .fold(0f32, f32::max);
            assert!(step < 0.5, "{step}");
        }
        assert_ne!(m[..64 * 64], m[64 * 64..2 * 64 * 64]);
        assert_eq!(smooth_means(2, 50, 3), smooth_means(2, 50, 3));
    }

    #[test]
    fn huge_batches_are_errors_before_any_allocation() {
        assert!(matches!(
            gaussian_noise(1 << 40, 1 << 30, 1.0, 1),
            Err(RuntimeError::LimitExceeded { .. })
        ));
        assert!(matches!(
            gaussian_noise(usize::MAX, usize::MAX, 1.0, 1),
            Err(RuntimeError::LimitExceeded { .. })
        ));
        let cfg = GmmConfig {
            k: 1 << 16,
            d: 1,
            s: 0.5,
            seed: 1,
        };
        let mut m = GmmModel::new(cfg).unwrap();
        m.load(Precision::FP32).unwrap();
        // 2^63 x 2 wraps to 0 and would have matched empty buffers.
        assert!(matches!(
            m.denoise(&[], 1 << 63, 1.0, Precision::FP32, &mut []),
            Err(RuntimeError::ShapeMismatch { .. })
        ));
        let mut m2 = GmmModel::new(GmmConfig { d: 2, ..cfg }).unwrap();
        m2.load(Precision::FP32).unwrap();
        assert!(matches!(
            m2.denoise(&[], 1 << 63, 1.0, Precision::FP32, &mut []),
            Err(RuntimeError::ShapeMismatch { .. })
        ));
        assert!(m2.nearest_components(&[], 1 << 63).is_err());
        // 1 025 samples of d = 1 hold 1 025 values, but their 2^16 distances each do not fit.
        let x = vec![0.5f32; 1025];
        let mut out = vec![0f32; 1025];
        assert!(matches!(
            m.denoise(&x, 1025, 1.0, Precision::FP32, &mut out),
            Err(RuntimeError::LimitExceeded { what: "batch", .. })
        ));
        m.denoise(&x[..1024], 1024, 1.0, Precision::FP32, &mut out[..1024])
            .unwrap();
    }
}
