//! Deterministic samplers of the probability-flow ODE, in the sigma (variance-exploding)
//! parametrisation of Karras et al. (2022): `dx/dsigma = (x - D(x; sigma)) / sigma`, and
//! consistency models' multistep sampler, which adds fresh noise between evaluations.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Result, RuntimeError, SplitMix64};

/// A sampler: how one step from `sigma` to `sigma_next` uses the denoiser.
///
/// - `Euler`: `d = (x - D(x; sigma)) / sigma`, `x += d (sigma_next - sigma)` (k-diffusion's
///   `sample_euler`, EDM's first-order step).
/// - `Heun`: EDM's second-order step (Karras et al. 2022, Algorithm 1): an Euler step to
///   `x'`, then `d' = (x' - D(x'; sigma_next)) / sigma_next` and `x += (sigma_next - sigma)(d + d')/2`;
///   the last step, to `sigma_next = 0`, is a plain Euler step. Two evaluations a step otherwise.
/// - `Ddim`: DDIM with `eta = 0`, `x_next = D + sigma_next / sigma (x - D)`. In the sigma
///   parametrisation this is algebraically the Euler step (Song et al. 2021, section 4.3; Karras
///   et al. 2022, section 3): `x + (sigma_next - sigma)(x - D)/sigma = D + sigma_next/sigma (x - D)`.
///   It is computed in its own form, so the two agree to rounding.
/// - `Consistency`: multistep consistency sampling (Song et al. 2023, Algorithm 1) for a denoiser
///   that is a consistency function `f(x, sigma)`: `x = f(x, sigma)`, then, unless
///   `sigma_next = 0`, `x += sqrt(sigma_next² - sigma_min²) z` with `z` standard normal from the
///   run's [`ConsistencyNoise`] (given through [`StepBuffers::with_noise`]). Starting from
///   `x_T` at `sigma_max`, the steps over a sigma list ending in 0 are exactly Algorithm 1. With
///   an ordinary denoiser it is a stochastic "denoise and re-noise" sampler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// First-order Euler.
    #[default]
    Euler,
    /// EDM's second-order Heun.
    Heun,
    /// DDIM, `eta = 0`.
    Ddim,
    /// Consistency models' multistep sampler.
    Consistency,
}

/// Where the consistency sampler's noise comes from: a seed and the model's smallest sigma.
///
/// The `z` of step `i` depends only on `seed` and `i` ([`ConsistencyNoise::for_step`]), so a run
/// and a calibration branch that starts mid-way draw the same noise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyNoise {
    /// The run's seed.
    pub seed: u64,
    /// The model's `sigma_min` (`epsilon` in Song et al. 2023).
    pub sigma_min: f64,
}

impl ConsistencyNoise {
    /// The noise of step `i`: its own seed, derived from the run's by a SplitMix64 step.
    pub fn for_step(self, i: usize) -> Self {
        let mut rng = SplitMix64::new(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Self {
            seed: rng.next_u64(),
            ..self
        }
    }
}

impl Sampler {
    /// Every sampler.
    pub const ALL: [Sampler; 3] = [Sampler::Euler, Sampler::Heun, Sampler::Ddim];

    /// Denoiser evaluations of one step to `sigma_next`.
    pub fn evals(self, sigma_next: f64) -> usize {
        match self {
            Sampler::Heun if sigma_next > 0.0 => 2,
            _ => 1,
        }
    }

    /// The lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Sampler::Euler => "euler",
            Sampler::Heun => "heun",
            Sampler::Ddim => "ddim",
            Sampler::Consistency => "consistency",
        }
    }

    /// Advances `x` (`batch` samples) from `sigma` to `sigma_next`, calling `denoise(x, sigma, out)`
    /// for each evaluation. `buf` is scratch space, resized as needed.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidSigmas`] when `sigma` is not positive or `sigma_next` is not in
    /// `[0, sigma)`, [`RuntimeError::InvalidPlan`] for a consistency step without noise in `buf`,
    /// and the denoiser's errors.
    pub fn step<F>(
        self,
        x: &mut [f32],
        sigma: f64,
        sigma_next: f64,
        buf: &mut StepBuffers,
        mut denoise: F,
    ) -> Result<()>
    where
        F: FnMut(&[f32], f64, &mut [f32]) -> Result<()>,
    {
        if !(sigma.is_finite() && sigma > 0.0 && sigma_next >= 0.0 && sigma_next < sigma) {
            return Err(RuntimeError::InvalidSigmas(format!(
                "a step needs sigma > sigma_next >= 0, got {sigma} -> {sigma_next}"
            )));
        }
        let n = x.len();
        buf.den.resize(n, 0.0);
        denoise(x, sigma, &mut buf.den)?;
        let h = sigma_next - sigma;
        match self {
            Sampler::Euler => {
                for (xv, &dv) in x.iter_mut().zip(&buf.den) {
                    let d = (f64::from(*xv) - f64::from(dv)) / sigma;
                    *xv = (f64::from(*xv) + h * d) as f32;
                }
            }
            Sampler::Ddim => {
                let r = sigma_next / sigma;
                for (xv, &dv) in x.iter_mut().zip(&buf.den) {
                    *xv = (f64::from(dv) + r * (f64::from(*xv) - f64::from(dv))) as f32;
                }
            }
            Sampler::Consistency => {
                x.copy_from_slice(&buf.den);
                if sigma_next > 0.0 {
                    let noise = buf.noise.ok_or_else(|| {
                        RuntimeError::InvalidPlan(
                            "consistency sampling needs a noise source (StepBuffers::with_noise)"
                                .into(),
                        )
                    })?;
                    let std = (sigma_next * sigma_next - noise.sigma_min * noise.sigma_min)
                        .max(0.0)
                        .sqrt();
                    let mut rng = SplitMix64::new(noise.seed);
                    for xv in x.iter_mut() {
                        *xv = (f64::from(*xv) + std * rng.next_normal()) as f32;
                    }
                }
            }
            Sampler::Heun => {
                buf.deriv.resize(n, 0.0);
                buf.x2.resize(n, 0.0);
                for ((d, x2), (&xv, &dv)) in buf
                    .deriv
                    .iter_mut()
                    .zip(buf.x2.iter_mut())
                    .zip(x.iter().zip(&buf.den))
                {
                    *d = ((f64::from(xv) - f64::from(dv)) / sigma) as f32;
                    *x2 = (f64::from(xv) + h * f64::from(*d)) as f32;
                }
                if sigma_next == 0.0 {
                    x.copy_from_slice(&buf.x2);
                } else {
                    denoise(&buf.x2, sigma_next, &mut buf.den)?;
                    for (((xv, &d1), &x2), &dv) in
                        x.iter_mut().zip(&buf.deriv).zip(&buf.x2).zip(&buf.den)
                    {
                        let d2 = (f64::from(x2) - f64::from(dv)) / sigma_next;
                        *xv = (f64::from(*xv) + h * 0.5 * (f64::from(d1) + d2)) as f32;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Scratch space of [`Sampler::step`], kept between steps to avoid allocations, and the noise of
/// the step for the consistency sampler.
#[derive(Clone, Debug, Default)]
pub struct StepBuffers {
    den: Vec<f32>,
    deriv: Vec<f32>,
    x2: Vec<f32>,
    noise: Option<ConsistencyNoise>,
}

impl StepBuffers {
    /// Buffers whose consistency steps draw `z` from `noise` (used as is: pass
    /// [`ConsistencyNoise::for_step`] for step-dependent noise).
    pub fn with_noise(noise: ConsistencyNoise) -> Self {
        Self {
            noise: Some(noise),
            ..Self::default()
        }
    }

    /// Sets (or clears) the noise of the next consistency step.
    pub fn set_noise(&mut self, noise: Option<ConsistencyNoise>) {
        self.noise = noise;
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Sampler {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "euler" => Ok(Sampler::Euler),
            "heun" => Ok(Sampler::Heun),
            "ddim" => Ok(Sampler::Ddim),
            "consistency" => Ok(Sampler::Consistency),
            _ => Err(RuntimeError::InvalidPlan(format!(
                "unknown sampler {s:?} (expected euler, heun, ddim or consistency)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::karras_sigmas;

    // One Gaussian component N(mu, s²): D(x; sigma) = (s² x + sigma² mu) / (s² + sigma²), and the
    // probability-flow ODE has the exact solution
    // x(sigma) - mu = (x0 - mu) sqrt(s² + sigma²) / sqrt(s² + sigma0²).
    const S: f64 = 0.5;
    const MU: f64 = 0.25;

    fn single(x: &[f32], sigma: f64, out: &mut [f32]) -> Result<()> {
        let v = S * S + sigma * sigma;
        for (o, &xv) in out.iter_mut().zip(x) {
            *o = ((S * S * f64::from(xv) + sigma * sigma * MU) / v) as f32;
        }
        Ok(())
    }

    fn solve(sampler: Sampler, sigmas: &[f64], x0: f32) -> f64 {
        let mut x = vec![x0];
        let mut buf = StepBuffers::default();
        for w in sigmas.windows(2) {
            sampler.step(&mut x, w[0], w[1], &mut buf, single).unwrap();
        }
        f64::from(x[0])
    }

    #[test]
    fn consistency_step_denoises_then_renoises_to_the_next_sigma() {
        let n = 20_000;
        let constant = |_: &[f32], _: f64, out: &mut [f32]| {
            out.fill(0.75);
            Ok(())
        };
        let noise = ConsistencyNoise {
            seed: 7,
            sigma_min: 0.5,
        };
        let mut x = vec![3.0f32; n];
        let mut buf = StepBuffers::with_noise(noise);
        Sampler::Consistency
            .step(&mut x, 10.0, 1.3, &mut buf, constant)
            .unwrap();
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        // x = 0.75 + sqrt(1.3² - 0.5²) z = 0.75 + 1.2 z.
        assert!((mean - 0.75).abs() < 0.03, "{mean}");
        assert!((var.sqrt() - 1.2).abs() < 0.03, "{}", var.sqrt());
        // The same noise gives the same samples; the last step to 0 returns f exactly.
        let mut again = vec![3.0f32; n];
        Sampler::Consistency
            .step(
                &mut again,
                10.0,
                1.3,
                &mut StepBuffers::with_noise(noise),
                constant,
            )
            .unwrap();
        assert_eq!(x, again);
        Sampler::Consistency
            .step(&mut x, 1.3, 0.0, &mut buf, constant)
            .unwrap();
        assert!(x.iter().all(|&v| v == 0.75));
        assert_ne!(noise.for_step(0), noise.for_step(1));
        assert!(matches!(
            Sampler::Consistency.step(&mut x, 2.0, 1.0, &mut StepBuffers::default(), constant),
            Err(RuntimeError::InvalidPlan(_))
        ));
        assert_eq!(
            "consistency".parse::<Sampler>().unwrap(),
            Sampler::Consistency
        );
    }

    fn exact(x0: f64, sigma0: f64, sigma: f64) -> f64 {
        MU + (x0 - MU) * (S * S + sigma * sigma).sqrt() / (S * S + sigma0 * sigma0).sqrt()
    }

    #[test]
    fn euler_is_first_order_and_heun_second_order() {
        let (smax, x0) = (10.0, 7.0f32);
        let err = |s: Sampler, n: usize| {
            // Stop at sigma_min (no final 0) so every Heun step is second order.
            let mut sig = karras_sigmas(n, 0.05, smax, 7.0).unwrap();
            sig.pop();
            let last = *sig.last().unwrap();
            (solve(s, &sig, x0) - exact(f64::from(x0), smax, last)).abs()
        };
        let (e1, e2) = (err(Sampler::Euler, 20), err(Sampler::Euler, 40));
        let (h1, h2) = (err(Sampler::Heun, 20), err(Sampler::Heun, 40));
        // Doubling the steps: about 2x less error for Euler, about 4x for Heun.
        assert!(e1 / e2 > 1.6 && e1 / e2 < 2.6, "euler ratio {}", e1 / e2);
        assert!(h1 / h2 > 3.0 && h1 / h2 < 5.5, "heun ratio {}", h1 / h2);
        assert!(h2 < e2 / 10.0, "heun {h2} euler {e2}");
    }

    #[test]
    fn ddim_equals_euler_and_is_not_exact_for_one_gaussian() {
        // Per step, DDIM maps x - mu to (x - mu)(s² + sigma sigma')/(s² + sigma²), the exact flow
        // maps it to (x - mu) sqrt(s² + sigma'²)/sqrt(s² + sigma²): equal only when sigma' = sigma.
        let sig = karras_sigmas(12, 0.01, 20.0, 7.0).unwrap();
        let x0 = 30.0f32;
        let ddim = solve(Sampler::Ddim, &sig, x0);
        let euler = solve(Sampler::Euler, &sig, x0);
        assert!(
            (ddim - euler).abs() < 1e-5 * euler.abs().max(1.0),
            "{ddim} vs {euler}"
        );
        let mut predicted = f64::from(x0) - MU;
        for w in sig.windows(2) {
            predicted *= (S * S + w[0] * w[1]) / (S * S + w[0] * w[0]);
        }
        assert!(
            (ddim - MU - predicted).abs() < 1e-5,
            "{ddim} vs {}",
            predicted + MU
        );
        let truth = exact(f64::from(x0), 20.0, 0.0);
        assert!(
            (ddim - truth).abs() > 1e-3,
            "ddim unexpectedly exact: {ddim} vs {truth}"
        );
        // More steps bring it closer.
        let fine = solve(
            Sampler::Ddim,
            &karras_sigmas(200, 0.01, 20.0, 7.0).unwrap(),
            x0,
        );
        assert!((fine - truth).abs() < (ddim - truth).abs() / 5.0);
    }

    #[test]
    fn evaluation_counts() {
        assert_eq!(Sampler::Heun.evals(1.0), 2);
        assert_eq!(Sampler::Heun.evals(0.0), 1);
        assert_eq!(Sampler::Euler.evals(1.0), 1);
        let mut n = 0;
        let mut x = vec![1.0f32];
        let mut buf = StepBuffers::default();
        for w in [3.0, 1.0, 0.0].windows(2) {
            Sampler::Heun
                .step(&mut x, w[0], w[1], &mut buf, |x, s, o| {
                    n += 1;
                    single(x, s, o)
                })
                .unwrap();
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn bad_steps_and_names() {
        let mut buf = StepBuffers::default();
        let mut x = vec![1.0f32];
        assert!(
            Sampler::Euler
                .step(&mut x, 1.0, 1.0, &mut buf, single)
                .is_err()
        );
        assert!(
            Sampler::Euler
                .step(&mut x, 0.0, 0.0, &mut buf, single)
                .is_err()
        );
        assert!(
            Sampler::Heun
                .step(&mut x, 1.0, -0.5, &mut buf, single)
                .is_err()
        );
        assert_eq!("HEUN".parse::<Sampler>().unwrap(), Sampler::Heun);
        assert!("dpm".parse::<Sampler>().is_err());
        for s in Sampler::ALL {
            assert_eq!(s.to_string().parse::<Sampler>().unwrap(), s);
        }
    }
}
