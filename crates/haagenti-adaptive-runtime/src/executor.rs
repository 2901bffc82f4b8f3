//! Runs a whole generation from a plan and records what each step cost.

use std::time::Instant;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::noise::validate_sigmas;
use crate::sampler::{ConsistencyNoise, StepBuffers};
use crate::{Blend, Denoiser, Result, RunPlan, RuntimeError, Sampler, denoise_mix};

/// What one step ran at and cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step index.
    pub step: usize,
    /// Noise level at the start of the step.
    pub sigma: f64,
    /// Noise level at its end.
    pub sigma_next: f64,
    /// The step's precision.
    pub precision: Precision,
    /// The blend, during a gradual transition.
    pub blend: Option<Blend>,
    /// Denoiser evaluations (each blended evaluation counts its two precisions).
    pub evals: usize,
    /// Seconds of the step's computation (denoiser and update), loads excluded.
    pub wall_s: f64,
    /// Seconds spent loading (quantizing) weights before the step.
    pub load_s: f64,
    /// Resident weight bytes during the step.
    pub resident_bytes: usize,
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The plan's name.
    pub name: String,
    /// One record a step.
    pub steps: Vec<StepRecord>,
    /// Largest resident weight bytes of any step.
    pub peak_resident_bytes: usize,
    /// Sum of the steps' `wall_s`.
    pub compute_s: f64,
    /// Sum of the steps' `load_s`.
    pub load_s: f64,
    /// The final samples, `batch x dim`.
    pub samples: Vec<f32>,
}

/// Runs generations over one noise-level list with one sampler.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_runtime::{Executor, GmmConfig, GmmModel, RunPlan, Sampler, gaussian_noise, karras_sigmas};
///
/// let mut model = GmmModel::new(GmmConfig { k: 16, d: 64, ..GmmConfig::default() })?;
/// let sigmas = karras_sigmas(6, 0.002, 80.0, 7.0)?;
/// let exec = Executor::new(Sampler::Euler, sigmas)?;
/// let x0 = gaussian_noise(2, 64, 80.0, 1)?;
/// let run = exec.run(&mut model, &RunPlan::uniform("int8", Precision::INT8, 6), &x0, 2, |_| {})?;
/// assert_eq!(run.steps.len(), 6);
/// assert!(run.peak_resident_bytes > 0);
/// assert_eq!(model.weights().resident_bytes(), 0); // dropped after the last use
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Executor {
    sampler: Sampler,
    sigmas: Vec<f64>,
    noise: Option<ConsistencyNoise>,
}

impl Executor {
    /// An executor over `sigmas` (descending, last may be 0; `sigmas.len() - 1` steps).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidSigmas`] for a list [`validate_sigmas`] rejects.
    pub fn new(sampler: Sampler, sigmas: Vec<f64>) -> Result<Self> {
        validate_sigmas(&sigmas)?;
        Ok(Self {
            sampler,
            sigmas,
            noise: None,
        })
    }

    /// The same executor drawing the consistency sampler's noise from `noise` (step `i` uses
    /// [`ConsistencyNoise::for_step`]`(i)`, in [`Executor::run`] and [`Executor::advance`] alike).
    pub fn with_noise(self, noise: ConsistencyNoise) -> Self {
        Self {
            noise: Some(noise),
            ..self
        }
    }

    /// The consistency sampler's noise source, if set.
    pub fn noise(&self) -> Option<ConsistencyNoise> {
        self.noise
    }

    /// The sampler.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// The noise levels.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Steps of a generation.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// Runs `plan` from the initial samples `x0` (`batch x dim`), loading and dropping weights as
    /// the plan's residency says, and calling `on_step(i)` after each step. Weights resident
    /// before the call count towards the recorded bytes and are left as they are.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidPlan`] for a plan of the wrong length, [`RuntimeError::ShapeMismatch`]
    /// for `x0` of the wrong length, and the denoiser's errors.
    pub fn run<D, F>(
        &self,
        den: &mut D,
        plan: &RunPlan,
        x0: &[f32],
        batch: usize,
        mut on_step: F,
    ) -> Result<RunRecord>
    where
        D: Denoiser + ?Sized,
        F: FnMut(usize),
    {
        plan.validate(self.steps())?;
        let dim = den.dim();
        crate::limits::check_len("initial samples", x0.len(), batch, dim)?;
        let mut x = x0.to_vec();
        let mut bufs = StepBuffers::default();
        let mut blend_buf = Vec::new();
        let mut records = Vec::with_capacity(self.steps());
        for (i, (mix, res)) in plan.steps.iter().zip(plan.residency()).enumerate() {
            let t0 = Instant::now();
            for &p in &res.load {
                den.load(p)?;
            }
            let load_s = t0.elapsed().as_secs_f64();
            let resident_bytes = den.resident_bytes();
            let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
            let t1 = Instant::now();
            bufs.set_noise(self.noise.map(|n| n.for_step(i)));
            self.sampler
                .step(&mut x, sigma, sigma_next, &mut bufs, |xs, s, out| {
                    denoise_mix(den, xs, batch, s, *mix, out, &mut blend_buf)
                })?;
            let wall_s = t1.elapsed().as_secs_f64();
            for &p in &res.release {
                den.release(p);
            }
            records.push(StepRecord {
                step: i,
                sigma,
                sigma_next,
                precision: mix.precision,
                blend: mix.blend,
                evals: self.sampler.evals(sigma_next) * mix.precisions().count(),
                wall_s,
                load_s,
                resident_bytes,
            });
            on_step(i);
        }
        Ok(RunRecord {
            name: plan.name.clone(),
            peak_resident_bytes: records.iter().map(|r| r.resident_bytes).max().unwrap_or(0),
            compute_s: records.iter().map(|r| r.wall_s).sum(),
            load_s: records.iter().map(|r| r.load_s).sum(),
            steps: records,
            samples: x,
        })
    }

    /// Runs steps `from..to` on `x` in place with every step at `precisions[i]`, with no residency
    /// changes: every precision used must already be resident. Calibration uses this to branch off
    /// a stored trajectory.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidPlan`] for a bad range, and the denoiser's errors.
    pub fn advance<D: Denoiser + ?Sized>(
        &self,
        den: &mut D,
        x: &mut [f32],
        batch: usize,
        from: usize,
        to: usize,
        precisions: &[Precision],
    ) -> Result<()> {
        if from > to || to > self.steps() || precisions.len() != self.steps() {
            return Err(RuntimeError::InvalidPlan(format!(
                "cannot advance steps {from}..{to} of {} with {} precisions",
                self.steps(),
                precisions.len()
            )));
        }
        let mut bufs = StepBuffers::default();
        for (i, &p) in precisions.iter().enumerate().take(to).skip(from) {
            bufs.set_noise(self.noise.map(|n| n.for_step(i)));
            self.sampler.step(
                x,
                self.sigmas[i],
                self.sigmas[i + 1],
                &mut bufs,
                |xs, s, out| den.denoise(xs, batch, s, p, out),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use haagenti_adaptive_core::Precision;

    use super::*;
    use crate::{GmmConfig, GmmModel, gaussian_noise, karras_sigmas};

    #[test]
    fn consistency_runs_and_branches_draw_the_same_noise() {
        let mut model = GmmModel::new(GmmConfig {
            k: 4,
            d: 32,
            ..GmmConfig::default()
        })
        .unwrap();
        let sigmas = karras_sigmas(4, 0.002, 80.0, 7.0).unwrap();
        let noise = ConsistencyNoise {
            seed: 3,
            sigma_min: 0.002,
        };
        let exec = Executor::new(Sampler::Consistency, sigmas)
            .unwrap()
            .with_noise(noise);
        let x0 = gaussian_noise(2, 32, 80.0, 1).unwrap();
        let plan = RunPlan::uniform("fp32", Precision::FP32, 4);
        let run = exec.run(&mut model, &plan, &x0, 2, |_| {}).unwrap();
        model.load(Precision::FP32).unwrap();
        let mut x = x0.clone();
        exec.advance(&mut model, &mut x, 2, 0, 2, &[Precision::FP32; 4])
            .unwrap();
        exec.advance(&mut model, &mut x, 2, 2, 4, &[Precision::FP32; 4])
            .unwrap();
        assert_eq!(x, run.samples);
        // Another seed gives other samples; no noise source is an error.
        let other = exec
            .clone()
            .with_noise(ConsistencyNoise { seed: 4, ..noise });
        let run2 = other.run(&mut model, &plan, &x0, 2, |_| {}).unwrap();
        assert_ne!(run2.samples, run.samples);
        let bare = Executor::new(Sampler::Consistency, exec.sigmas().to_vec()).unwrap();
        assert!(bare.run(&mut model, &plan, &x0, 2, |_| {}).is_err());
    }
}
