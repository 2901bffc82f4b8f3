//! A denoising runtime that runs diffusion steps at scheduled precisions and measures what that
//! does to speed, memory and quality.
//!
//! - [`Denoiser`]: the model interface (weights held per precision, loaded and dropped on demand).
//! - [`Sampler`]: Euler, Heun (EDM) and DDIM (`eta = 0`) over any descending sigma list, and
//!   consistency models' multistep sampler (noise from a [`ConsistencyNoise`] seed).
//! - [`RunPlan`] and [`Executor`]: run a whole generation at per-step precisions (with blended
//!   gradual transitions), recording each step's precision, sigma, time and resident weight bytes.
//! - [`GmmModel`]: the built-in reference model, the exact denoiser of a Gaussian mixture whose
//!   means are its weights; both of its matrix products run through the quantized kernels.
//! - [`image_quality`]: PSNR (over the fixed range of `[-1, 1]` data) and SSIM (11x11 gaussian
//!   window, sigma 1.5) of a batch of images against the FP32 result from the same noise.
//! - [`calibrate`]: the whole method for any [`Denoiser`]: per-step costs from real executor
//!   steps ([`measure_step_costs`], with switch costs), per-step [`sensitivity`], the solver
//!   search ([`solve_budget`], the schedule crate's exact solver with step and switch costs), and
//!   the check by round-robin timed runs ([`time_plans`]) on a calibration and a held-out batch.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::Precision;
//! use haagenti_adaptive_runtime::{
//!     Executor, GmmConfig, GmmModel, RunPlan, Sampler, gaussian_noise, karras_sigmas, quality,
//! };
//!
//! let mut model = GmmModel::new(GmmConfig { k: 32, d: 64, ..GmmConfig::default() })?;
//! let exec = Executor::new(Sampler::Heun, karras_sigmas(8, 0.002, 80.0, 7.0)?)?;
//! let x0 = gaussian_noise(4, 64, 80.0, 42)?;
//! let reference = exec.run(&mut model, &RunPlan::uniform("fp32", Precision::FP32, 8), &x0, 4, |_| {})?;
//! let int8 = exec.run(&mut model, &RunPlan::uniform("int8", Precision::INT8, 8), &x0, 4, |_| {})?;
//! let q = quality(&model, &reference.samples, &int8.samples, 4)?;
//! assert!(q.psnr_db > 20.0);
//! assert!(int8.peak_resident_bytes < reference.peak_resident_bytes);
//! # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
//! ```

mod backend;
mod calibrate;
mod denoiser;
mod error;
mod executor;
mod gmm;
mod image;
mod limits;
mod metrics;
mod noise;
mod plan;
mod rng;
mod sampler;
mod timing;
mod weights;

pub use backend::QMatrix;
pub use calibrate::{
    CalibrationOptions, CalibrationPhase, CalibrationProgress, CalibrationReport, CheckBatch,
    CheckRow, SensitivityTable, calibrate, sensitivity, solve_budget,
};
pub use denoiser::{Blend, Denoiser, Mix, denoise_mix};
pub use error::{Result, RuntimeError};
pub use executor::{Executor, RunRecord, StepRecord};
pub use gmm::{GmmConfig, GmmModel, gaussian_noise, smooth_means};
pub use image::{
    ImageShape, SIGNED_UNIT_RANGE, SSIM_SIGMA, SSIM_WINDOW, image_quality, mse_for_psnr, psnr, ssim,
};
pub use limits::{MAX_BATCH_VALUES, MAX_MODEL_VALUES, MAX_REPEATS, MAX_STEPS, RunSize};
pub use metrics::{Quality, mse, psnr_from_mse, quality};
pub use noise::{karras_sigmas, validate_sigmas};
pub use plan::{RunPlan, StepResidency};
pub use rng::SplitMix64;
pub use sampler::{ConsistencyNoise, Sampler, StepBuffers};
pub use timing::{
    CostSampling, PACE_TOLERANCE, StepCosts, TimedRun, fp32_trajectory, measure_step_costs,
    time_plans,
};
pub use weights::{ResidentCopy, WeightSet};
