//! Precision schedules for diffusion inference: which precision (INT4 … FP32) each denoising
//! step runs at, and what that is estimated to cost.
//!
//! A [`PrecisionProfile`] maps the fraction of the run completed to a precision through zones
//! (validated strictly: no NaN, no gaps, overlaps or backwards zones, covering `[0, 1)`);
//! [`ProfilePreset`] holds the seed crate's ready-made profiles. [`PrecisionSchedule::generate`]
//! turns a [`ScheduleConfig`] (profile, step count, device capabilities, minimum quality,
//! transition strategy) into one [`StepPrecision`] a step, the list of precision changes, and
//! estimates of memory, quality and speed.
//!
//! By default the estimates use the seed's constant factors ([`EstimateSource::SeedConstants`]): memory
//! counts the block scales of the integer formats (4.5 and 8.5 bits a weight), and the speedup is
//! total FP32 time over total scheduled time (a harmonic mean of the per-step factors), not the
//! seed's arithmetic mean.
//!
//! [`noise`] computes samplers' noise levels (sigmas) and noise-level profiles; [`solver`] picks
//! the cheapest per-step precisions under a measured error budget.
//!
//! Noise drives schedules through [`ScheduleConfig`]: with a noise schedule
//! ([`ScheduleConfig::noise`]) every step records the sigma at which it evaluates the denoiser,
//! and a noise-level profile ([`ScheduleConfig::custom_noise_profile`], or the
//! [`ProfilePreset::NoiseAdaptive`] preset) picks each step's precision by that sigma's log-SNR.
//! `NoiseAdaptive` without a noise schedule uses EDM's Karras schedule (sigma_min 0.002,
//! sigma_max 80, rho 7) and records it in the schedule's `config.noise`.
//!
//! Measured estimates: [`PrecisionSchedule::solve`] runs the solver on an
//! [`ErrorTable`](solver::ErrorTable) of per-step errors and per-precision costs (seconds a
//! step) and [`PrecisionSchedule::from_measurements`] scores a given assignment; such schedules
//! say [`EstimateSource::Measured`], their speedup is total FP32 cost over total scheduled cost,
//! and they carry the predicted cost and error.
//!
//! Every type here serialises with serde, and deserialising validates: a malformed profile,
//! configuration or schedule is an error, never a panic.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::{Precision, PrecisionCapabilities};
//! use haagenti_adaptive_schedule::{PrecisionSchedule, ProfilePreset, ScheduleConfig};
//!
//! let config = ScheduleConfig::with_preset(ProfilePreset::Balanced)
//!     .steps(20)
//!     .capabilities(PrecisionCapabilities::modern_gpu(8192));
//! let schedule = PrecisionSchedule::generate(config)?;
//! assert_eq!(schedule.precision_at(0), Ok(Precision::INT4));
//! assert_eq!(schedule.precision_at(19), Ok(Precision::FP16));
//! assert_eq!(format!("{:.2}", schedule.estimated_speedup), "2.42");
//!
//! // By noise level: INT4 while sigma > 10, INT8 while sigma > 1, FP16 below.
//! use haagenti_adaptive_schedule::noise::NoiseSchedule;
//! let noisy = PrecisionSchedule::generate(
//!     ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive).noise("flow:shift=3".parse()?),
//! )?;
//! assert_eq!(noisy.steps[0].sigma, Some(1.0));
//! assert_eq!(noisy.precision_at(0), Ok(Precision::INT4));
//! assert_eq!(noisy.precision_at(29), Ok(Precision::FP16));
//! # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
//! ```

mod config;
pub mod noise;
mod preset;
mod profile;
mod schedule;
pub mod solver;

pub use config::{MAX_STEPS, ScheduleConfig};
pub use haagenti_adaptive_core::{AdaptiveError, Precision, Result};
pub use preset::{ParsePresetError, ProfilePreset};
pub use profile::{PrecisionProfile, PrecisionZone};
pub use schedule::{EstimateSource, PrecisionSchedule, StepPrecision};
/// The `smallvec` crate, whose `SmallVec<[u32; 32]>` [`PrecisionSchedule::steps_at_precision`]
/// returns, so callers can name that type without their own dependency.
pub use smallvec;

/// Generates the schedule of `preset` over `steps` steps with every other setting at its default:
/// `PrecisionSchedule::generate(ScheduleConfig::with_preset(preset).steps(steps))`.
///
/// # Errors
///
/// As [`PrecisionSchedule::generate`]: zero steps, or an average quality below the default
/// minimum of 0.9 ([`AdaptiveError::QualityConstraint`]; Balanced over 1 step is all INT4).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset};
///
/// let s = quick_schedule(ProfilePreset::Conservative, 30)?;
/// assert_eq!(s.steps.len(), 30);
/// assert!(quick_schedule(ProfilePreset::Balanced, 0).is_err());
/// # Ok::<(), haagenti_adaptive_schedule::AdaptiveError>(())
/// ```
pub fn quick_schedule(preset: ProfilePreset, steps: u32) -> Result<PrecisionSchedule> {
    PrecisionSchedule::generate(ScheduleConfig::with_preset(preset).steps(steps))
}
