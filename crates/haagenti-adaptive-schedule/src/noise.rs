//! Noise schedules of diffusion samplers, the log-SNR axis they share, and precision profiles
//! whose zones are noise levels rather than fractions of the run.
//!
//! A [`NoiseSchedule`] produces the noise levels a sampler visits: `sigmas(n)` returns `n + 1`
//! values, strictly decreasing, the last one 0 (every family here ends at 0, as k-diffusion and
//! diffusers do). Step `i` of an `n`-step run evaluates the denoiser at `sigmas(n)[i]`.
//!
//! Families and their sources:
//!
//! | family | formula | source |
//! | --- | --- | --- |
//! | [`NoiseSchedule::Karras`] | `sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`, then 0 | Karras et al. 2022 (EDM) eq. 5; k-diffusion `get_sigmas_karras` |
//! | [`NoiseSchedule::Ddpm`] | betas → `alpha_bar = cumprod(1 - beta)` → `sigma = sqrt((1 - alpha_bar) / alpha_bar)`, read at the spaced timesteps, then 0 | Ho et al. 2020; Nichol & Dhariwal 2021 (cosine); diffusers `EulerDiscreteScheduler` |
//! | [`NoiseSchedule::Flow`] | `t` from 1 in equal steps, `t' = s t / (1 + (s - 1) t)`, then 0 | Esser et al. 2024 (SD3); diffusers `FlowMatchEulerDiscreteScheduler` |
//! | [`NoiseSchedule::Flux`] | `t' = e^mu / (e^mu + (1/t - 1))`, `mu` linear in image tokens | diffusers `FluxPipeline` / `calculate_shift` |
//! | [`NoiseSchedule::Custom`] | a given list, resampled log-linearly | Sabour et al. 2024 (Align Your Steps), `loglinear_interp` |
//!
//! All arithmetic is `f64`; diffusers computes betas and sigmas in `f32`, so its values agree with
//! these to about 1e-6 relative.
//!
//! Variance-exploding sigmas (Karras, DDPM, custom lists) and flow times live on different scales.
//! Both map onto the log signal-to-noise ratio ([`NoiseKind::log_snr`]): `-2 ln sigma` for a
//! sigma, `2 ln((1 - t) / t)` for a flow time. A [`NoiseProfile`] assigns precisions to ranges of
//! log-SNR, so one profile applies to every sampler and every step count.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::Precision;
//! use haagenti_adaptive_schedule::noise::{NoiseProfile, NoiseSchedule};
//!
//! let schedule: NoiseSchedule = "karras:sigma_min=0.002,sigma_max=80,rho=7".parse()?;
//! let sigmas = schedule.sigmas(10)?;
//! assert_eq!(sigmas.len(), 11);
//! assert_eq!(sigmas[0], 80.0);
//! assert_eq!(sigmas[10], 0.0);
//! assert!(sigmas.windows(2).all(|w| w[0] > w[1]));
//!
//! // The same profile serves a Karras run and a flow-matching run.
//! let profile = NoiseProfile::noise_adaptive();
//! let karras = profile.precisions_for(&schedule, 10)?;
//! assert_eq!(karras[0], Precision::INT4); // sigma 80
//! assert_eq!(karras[9], Precision::FP16); // sigma 0.002
//! let flow = profile.precisions_for(&"flow:shift=3".parse()?, 10)?;
//! assert_eq!(flow[0], Precision::INT4); // t = 1, pure noise
//! # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use haagenti_adaptive_core::{AdaptiveError, Precision, Result};
use serde::{Deserialize, Serialize};

/// The most steps [`NoiseSchedule::sigmas`] produces; more is an error, not an allocation failure.
pub const MAX_STEPS: usize = 1_000_000;

/// The most training timesteps a [`NoiseSchedule::Ddpm`] may declare.
pub const MAX_TRAIN_STEPS: u32 = 1_000_000;

/// EDM's default smallest sigma (Karras et al. 2022, table 1).
pub const KARRAS_SIGMA_MIN: f64 = 0.002;
/// EDM's default largest sigma.
pub const KARRAS_SIGMA_MAX: f64 = 80.0;
/// EDM's default `rho`.
pub const KARRAS_RHO: f64 = 7.0;

/// Flux's `mu` at [`FLUX_BASE_TOKENS`] image tokens (diffusers `base_shift`).
pub const FLUX_BASE_SHIFT: f64 = 0.5;
/// Flux's `mu` at [`FLUX_MAX_TOKENS`] image tokens (diffusers `max_shift`).
pub const FLUX_MAX_SHIFT: f64 = 1.15;
/// Image tokens at which Flux's `mu` is [`FLUX_BASE_SHIFT`] (diffusers `base_image_seq_len`).
pub const FLUX_BASE_TOKENS: f64 = 256.0;
/// Image tokens at which Flux's `mu` is [`FLUX_MAX_SHIFT`] (diffusers `max_image_seq_len`).
pub const FLUX_MAX_TOKENS: f64 = 4096.0;

fn err(msg: impl Into<String>) -> AdaptiveError {
    AdaptiveError::ScheduleError(msg.into())
}

fn profile_err(msg: impl Into<String>) -> AdaptiveError {
    AdaptiveError::ProfileError(msg.into())
}

/// What a schedule's noise level measures, which decides how it maps to log-SNR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    /// A variance-exploding sigma, `x = x0 + sigma * eps` (Karras, DDPM seen through
    /// `sigma = sqrt((1 - alpha_bar) / alpha_bar)`, custom lists): `log_snr = -2 ln sigma`.
    #[default]
    Sigma,
    /// A flow-matching time, `x = (1 - t) x0 + t eps` with `t` in `[0, 1]`:
    /// `log_snr = 2 ln((1 - t) / t)`.
    FlowTime,
}

impl NoiseKind {
    /// The log signal-to-noise ratio of noise level `level`.
    ///
    /// For [`NoiseKind::Sigma`], `-2 ln sigma` for `sigma >= 0` (`+inf` at 0, `-inf` at `+inf`).
    /// For [`NoiseKind::FlowTime`], `2 ln((1 - t) / t)` for `t` in `[0, 1]`: `-inf` at `t = 1`
    /// (pure noise), `+inf` at `t = 0` (clean data). Infinities are valid results; a
    /// [`NoiseProfile`] places them in its first and last zones.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] for NaN, a negative sigma, or a flow time outside `[0, 1]`.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_schedule::noise::NoiseKind;
    ///
    /// assert_eq!(NoiseKind::Sigma.log_snr(1.0)?, 0.0);
    /// assert_eq!(NoiseKind::FlowTime.log_snr(0.5)?, 0.0);
    /// assert_eq!(NoiseKind::FlowTime.log_snr(1.0)?, f64::NEG_INFINITY);
    /// assert!(NoiseKind::FlowTime.log_snr(1.5).is_err());
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn log_snr(self, level: f64) -> Result<f64> {
        if level.is_nan() {
            return Err(err("noise level is NaN"));
        }
        match self {
            NoiseKind::Sigma => {
                if level < 0.0 {
                    return Err(err(format!("sigma {level} is negative")));
                }
                Ok(-2.0 * level.ln())
            }
            NoiseKind::FlowTime => {
                if !(0.0..=1.0).contains(&level) {
                    return Err(err(format!("flow time {level} is outside [0, 1]")));
                }
                Ok(2.0 * ((1.0 - level).ln() - level.ln()))
            }
        }
    }

    /// The noise level whose log-SNR is `log_snr`: the inverse of [`NoiseKind::log_snr`].
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if `log_snr` is NaN.
    pub fn level(self, log_snr: f64) -> Result<f64> {
        if log_snr.is_nan() {
            return Err(err("log-SNR is NaN"));
        }
        Ok(match self {
            NoiseKind::Sigma => (-0.5 * log_snr).exp(),
            NoiseKind::FlowTime => 1.0 / (1.0 + (0.5 * log_snr).exp()),
        })
    }
}

/// How betas grow over the training timesteps of a [`NoiseSchedule::Ddpm`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Betas linear from `beta_start` to `beta_end` (Ho et al. 2020 use 1e-4 to 0.02).
    Linear {
        /// Beta of the first training timestep.
        beta_start: f64,
        /// Beta of the last training timestep.
        beta_end: f64,
    },
    /// `sqrt(beta)` linear from `sqrt(beta_start)` to `sqrt(beta_end)`, squared: Stable Diffusion
    /// 1.x/2.x/XL with 0.00085 and 0.012.
    ScaledLinear {
        /// Beta of the first training timestep.
        beta_start: f64,
        /// Beta of the last training timestep.
        beta_end: f64,
    },
    /// Nichol & Dhariwal's cosine schedule: `alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)^2`
    /// with `s = 0.008`, `beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), 0.999)`
    /// (diffusers `squaredcos_cap_v2`).
    Cosine,
}

impl BetaSchedule {
    /// Stable Diffusion's betas: scaled-linear from 0.00085 to 0.012.
    pub const STABLE_DIFFUSION: BetaSchedule = BetaSchedule::ScaledLinear {
        beta_start: 0.00085,
        beta_end: 0.012,
    };

    /// The original DDPM betas: linear from 1e-4 to 0.02 (diffusers' defaults).
    pub const DDPM: BetaSchedule = BetaSchedule::Linear {
        beta_start: 0.0001,
        beta_end: 0.02,
    };

    fn validate(&self) -> Result<()> {
        if let BetaSchedule::Linear {
            beta_start,
            beta_end,
        }
        | BetaSchedule::ScaledLinear {
            beta_start,
            beta_end,
        } = *self
        {
            for (name, b) in [("beta_start", beta_start), ("beta_end", beta_end)] {
                if !(b > 0.0 && b < 1.0) {
                    return Err(err(format!("{name} {b} is not in (0, 1)")));
                }
            }
        }
        Ok(())
    }

    /// The `train_steps` betas.
    fn betas(&self, train_steps: usize) -> Vec<f64> {
        match *self {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => linspace(beta_start, beta_end, train_steps),
            BetaSchedule::ScaledLinear {
                beta_start,
                beta_end,
            } => linspace(beta_start.sqrt(), beta_end.sqrt(), train_steps)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::Cosine => {
                let alpha_bar = |t: f64| {
                    let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
                    c * c
                };
                let t = train_steps as f64;
                (0..train_steps)
                    .map(|i| {
                        let b = 1.0 - alpha_bar((i + 1) as f64 / t) / alpha_bar(i as f64 / t);
                        b.min(0.999)
                    })
                    .collect()
            }
        }
    }
}

/// How `n` inference timesteps are picked from the training timesteps, as diffusers' schedulers
/// define `timestep_spacing` (`T` training steps, `n` inference steps, descending timesteps):
///
/// - `Linspace`: `linspace(0, T - 1, n)` reversed (not rounded: Euler interpolates sigmas).
/// - `Leading`: `arange(0, n) * (T // n)` reversed, plus `steps_offset`.
/// - `Trailing`: `round(arange(T, 0, -T / n)) - 1`, the first `n` values (numpy's `arange`
///   yields `n + 1` values for some `n`, 62 of 1..=1000 at `T = 1000`, because of rounding;
///   the extra one would be a duplicate at timestep 0 and is not taken here).
///
/// Sigmas are then read from the training sigmas by linear interpolation at those timesteps,
/// clamped to the ends (numpy's `interp`), and a final 0 appended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly spaced over `[0, T - 1]`, including both ends.
    Linspace,
    /// Multiples of `T // n` from 0, shifted by `steps_offset` (Stable Diffusion's shipped
    /// scheduler configurations: SDXL's Euler and SD 1.x's PNDM use `leading` with offset 1).
    #[default]
    Leading,
    /// Multiples of `T / n` down from `T`, minus one: starts at the last training timestep.
    Trailing,
}

impl TimestepSpacing {
    /// The lower-case name used in specs and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

impl fmt::Display for TimestepSpacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for TimestepSpacing {
    type Err = AdaptiveError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linspace" => Ok(TimestepSpacing::Linspace),
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            _ => Err(err(format!(
                "unknown spacing {s:?} (expected linspace, leading or trailing)"
            ))),
        }
    }
}

/// A sampler's noise schedule: which noise levels an `n`-step run visits.
///
/// Build one with the constructors ([`NoiseSchedule::karras`], [`NoiseSchedule::stable_diffusion`],
/// [`NoiseSchedule::flow`], [`NoiseSchedule::flux_for_tokens`], [`NoiseSchedule::custom`], …), parse
/// a CLI spec with [`str::parse`] (see [`NoiseSchedule::from_str`] for the forms), or deserialise
/// one: deserialising validates. [`fmt::Display`] writes the spec back, and parsing it gives the
/// same schedule.
///
/// The variants' fields are public for reading; a schedule built by hand with bad fields is
/// caught by [`NoiseSchedule::validate`], which [`NoiseSchedule::sigmas`] runs first.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_schedule::noise::{NoiseKind, NoiseSchedule};
///
/// let sd = NoiseSchedule::stable_diffusion();
/// let sigmas = sd.sigmas(30)?;
/// assert_eq!(sigmas.len(), 31);
/// // `leading` spacing starts at timestep 29 * (1000 / 30) + 1 = 958, below the top (999).
/// assert!((sigmas[0] - 11.4768).abs() < 1e-4);
/// assert_eq!(sd.kind(), NoiseKind::Sigma);
///
/// let flux = NoiseSchedule::flux_for_tokens(4096)?;
/// assert_eq!(flux.to_string(), "flux:mu=1.15");
/// assert_eq!(flux.sigmas(4)?[0], 1.0);
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "family",
    rename_all = "snake_case",
    try_from = "NoiseScheduleData"
)]
pub enum NoiseSchedule {
    /// Karras et al.'s (EDM) schedule: evenly spaced in `sigma^(1/rho)` from `sigma_max` down to
    /// `sigma_min`, then 0; the first and last nonzero values are exactly `sigma_max` and
    /// `sigma_min` (k-diffusion's are within a few ulps of them). One step gives `[sigma_max, 0]` (k-diffusion's `linspace(0, 1, 1)`
    /// is `[0]`). `sigma_min == sigma_max` is accepted, but only a one-step run can use it.
    Karras {
        /// The smallest nonzero sigma, the last step's.
        sigma_min: f64,
        /// The largest sigma, the first step's.
        sigma_max: f64,
        /// The curvature: larger spends more steps at low noise (EDM uses 7).
        rho: f64,
    },
    /// A DDPM-family (variance-preserving) schedule as diffusers' `EulerDiscreteScheduler`
    /// reads it: `sigma = sqrt((1 - alpha_bar) / alpha_bar)` at the spaced timesteps, then 0.
    Ddpm {
        /// How betas grow.
        betas: BetaSchedule,
        /// Training timesteps `T` (1000 for every Stable Diffusion).
        train_steps: u32,
        /// How inference timesteps are picked.
        spacing: TimestepSpacing,
        /// Added to `leading` timesteps (diffusers' `steps_offset`; 1 in Stable Diffusion's
        /// configurations); ignored by the other spacings.
        steps_offset: u32,
    },
    /// Flow matching with SD3's constant shift: `t = linspace(1, 1/n, n)`, then
    /// `t' = shift t / (1 + (shift - 1) t)`, then 0. SD3 uses `shift = 3`; 1 is no shift.
    ///
    /// The equal-step grid `linspace(1, 1/n, n)` is the one diffusers' Flux pipeline passes.
    /// diffusers' SD3 pipeline instead lets `FlowMatchEulerDiscreteScheduler` space timesteps
    /// from 1 down to its training `sigma_min` (`shift(1/1000)`, 0.003 at shift 3) and shifts
    /// again; this crate keeps the equal steps the issue asks for.
    Flow {
        /// SD3's shift `s > 0`.
        shift: f64,
    },
    /// Flux's resolution-dependent shift: `t = linspace(1, 1/n, n)`, then
    /// `t' = e^mu / (e^mu + (1/t - 1))`, then 0. See [`NoiseSchedule::flux_mu`].
    Flux {
        /// The shift exponent; 0.5 at 256 image tokens, 1.15 at 4096.
        mu: f64,
    },
    /// A given list of noise levels (for example a published Align Your Steps list), resampled to
    /// other step counts by log-linear interpolation; see [`NoiseSchedule::custom`].
    Custom {
        /// Strictly decreasing, positive, the last one possibly 0.
        sigmas: Vec<f64>,
        /// How the values map to log-SNR (sigma unless stated).
        #[serde(default)]
        kind: NoiseKind,
    },
}

/// The serialised form of a [`NoiseSchedule`], validated before it becomes one.
#[derive(Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
enum NoiseScheduleData {
    Karras {
        sigma_min: f64,
        sigma_max: f64,
        rho: f64,
    },
    Ddpm {
        betas: BetaSchedule,
        train_steps: u32,
        #[serde(default)]
        spacing: TimestepSpacing,
        #[serde(default = "default_steps_offset")]
        steps_offset: u32,
    },
    Flow {
        shift: f64,
    },
    Flux {
        mu: f64,
    },
    Custom {
        sigmas: Vec<f64>,
        #[serde(default)]
        kind: NoiseKind,
    },
}

fn default_steps_offset() -> u32 {
    1
}

impl TryFrom<NoiseScheduleData> for NoiseSchedule {
    type Error = AdaptiveError;

    fn try_from(data: NoiseScheduleData) -> Result<Self> {
        let schedule = match data {
            NoiseScheduleData::Karras {
                sigma_min,
                sigma_max,
                rho,
            } => NoiseSchedule::Karras {
                sigma_min,
                sigma_max,
                rho,
            },
            NoiseScheduleData::Ddpm {
                betas,
                train_steps,
                spacing,
                steps_offset,
            } => NoiseSchedule::Ddpm {
                betas,
                train_steps,
                spacing,
                steps_offset,
            },
            NoiseScheduleData::Flow { shift } => NoiseSchedule::Flow { shift },
            NoiseScheduleData::Flux { mu } => NoiseSchedule::Flux { mu },
            NoiseScheduleData::Custom { sigmas, kind } => NoiseSchedule::Custom { sigmas, kind },
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

impl Default for NoiseSchedule {
    /// EDM's Karras schedule: sigma 0.002 to 80, rho 7.
    fn default() -> Self {
        NoiseSchedule::Karras {
            sigma_min: KARRAS_SIGMA_MIN,
            sigma_max: KARRAS_SIGMA_MAX,
            rho: KARRAS_RHO,
        }
    }
}

impl NoiseSchedule {
    /// A Karras/EDM schedule.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] unless `0 < sigma_min <= sigma_max` are finite and
    /// `rho` is positive and finite.
    pub fn karras(sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Self> {
        let s = NoiseSchedule::Karras {
            sigma_min,
            sigma_max,
            rho,
        };
        s.validate()?;
        Ok(s)
    }

    /// Stable Diffusion 1.x/2.x/XL: scaled-linear betas 0.00085 to 0.012, 1000 training steps,
    /// `leading` spacing with offset 1 (SDXL's shipped Euler configuration).
    pub fn stable_diffusion() -> Self {
        NoiseSchedule::Ddpm {
            betas: BetaSchedule::STABLE_DIFFUSION,
            train_steps: 1000,
            spacing: TimestepSpacing::Leading,
            steps_offset: 1,
        }
    }

    /// A DDPM-family schedule with 1000 training steps and `leading` spacing with offset 1.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if a beta is outside `(0, 1)`.
    pub fn ddpm(betas: BetaSchedule) -> Result<Self> {
        let s = NoiseSchedule::Ddpm {
            betas,
            train_steps: 1000,
            spacing: TimestepSpacing::Leading,
            steps_offset: 1,
        };
        s.validate()?;
        Ok(s)
    }

    /// SD3-style flow matching with shift `shift`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] unless `shift` is positive and finite.
    pub fn flow(shift: f64) -> Result<Self> {
        let s = NoiseSchedule::Flow { shift };
        s.validate()?;
        Ok(s)
    }

    /// Flux's flow matching with exponent `mu`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] unless `mu` is finite.
    pub fn flux(mu: f64) -> Result<Self> {
        let s = NoiseSchedule::Flux { mu };
        s.validate()?;
        Ok(s)
    }

    /// Flux's flow matching for an image of `tokens` latent tokens (4096 for 1024×1024).
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if `tokens` is 0.
    pub fn flux_for_tokens(tokens: u64) -> Result<Self> {
        if tokens == 0 {
            return Err(err("flux tokens must be at least 1"));
        }
        NoiseSchedule::flux(NoiseSchedule::flux_mu(tokens as f64))
    }

    /// Flux's `mu` for `tokens` image tokens, as diffusers' `calculate_shift` computes it:
    /// linear through `(256, 0.5)` and `(4096, 1.15)`, extrapolated beyond.
    ///
    /// ```
    /// use haagenti_adaptive_schedule::noise::NoiseSchedule;
    ///
    /// assert_eq!(NoiseSchedule::flux_mu(256.0), 0.5);
    /// assert_eq!(NoiseSchedule::flux_mu(4096.0), 1.15);
    /// ```
    pub fn flux_mu(tokens: f64) -> f64 {
        let m = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_MAX_TOKENS - FLUX_BASE_TOKENS);
        let b = FLUX_BASE_SHIFT - m * FLUX_BASE_TOKENS;
        tokens * m + b
    }

    /// A custom list of variance-exploding sigmas, such as a published Align Your Steps list.
    ///
    /// The list holds the `m + 1` boundaries of an `m`-step run, `s_0 > s_1 > … > s_m >= 0`, as
    /// the AYS lists are published. [`NoiseSchedule::sigmas`]`(n)`:
    ///
    /// - if `s_m > 0` (the AYS convention: the last value is the model's smallest sigma), the
    ///   whole list is resampled to `n + 1` points by AYS's `loglinear_interp` (linear
    ///   interpolation of `ln sigma` over evenly spaced positions) and the last point set to 0,
    ///   as ComfyUI's AlignYourSteps node does; at `n = m` that is the list with its last value
    ///   replaced by 0;
    /// - if `s_m = 0`, the positive levels `s_0 … s_{m-1}` are resampled to `n` points the same
    ///   way and 0 appended; at `n = m` that is the list itself.
    ///
    /// A one-step run is `[s_0, 0]` in both cases.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] naming the bad entry if a value is NaN, infinite or
    /// negative, if the list is not strictly decreasing, or if it has no positive value followed
    /// by another value.
    pub fn custom(sigmas: Vec<f64>) -> Result<Self> {
        let s = NoiseSchedule::Custom {
            sigmas,
            kind: NoiseKind::Sigma,
        };
        s.validate()?;
        Ok(s)
    }

    /// What the schedule's noise levels measure.
    pub fn kind(&self) -> NoiseKind {
        match self {
            NoiseSchedule::Flow { .. } | NoiseSchedule::Flux { .. } => NoiseKind::FlowTime,
            NoiseSchedule::Custom { kind, .. } => *kind,
            _ => NoiseKind::Sigma,
        }
    }

    /// Checks the parameters.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] naming the bad parameter.
    pub fn validate(&self) -> Result<()> {
        match self {
            NoiseSchedule::Karras {
                sigma_min,
                sigma_max,
                rho,
            } => {
                for (name, v) in [
                    ("sigma_min", *sigma_min),
                    ("sigma_max", *sigma_max),
                    ("rho", *rho),
                ] {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(err(format!(
                            "karras {name} {v} is not a positive finite number"
                        )));
                    }
                }
                if sigma_min > sigma_max {
                    return Err(err(format!(
                        "karras sigma_min {sigma_min} is above sigma_max {sigma_max}"
                    )));
                }
                Ok(())
            }
            NoiseSchedule::Ddpm {
                betas, train_steps, ..
            } => {
                if *train_steps == 0 || *train_steps > MAX_TRAIN_STEPS {
                    return Err(err(format!(
                        "train_steps {train_steps} is not in 1..={MAX_TRAIN_STEPS}"
                    )));
                }
                betas.validate()
            }
            NoiseSchedule::Flow { shift } => {
                if !(shift.is_finite() && *shift > 0.0) {
                    return Err(err(format!(
                        "flow shift {shift} is not a positive finite number"
                    )));
                }
                Ok(())
            }
            NoiseSchedule::Flux { mu } => {
                if !mu.is_finite() {
                    return Err(err(format!("flux mu {mu} is not finite")));
                }
                Ok(())
            }
            NoiseSchedule::Custom { sigmas, kind } => validate_custom(sigmas, *kind),
        }
    }

    /// The noise levels of an `n`-step run: `n + 1` values, strictly decreasing, the last 0.
    /// Step `i` evaluates the denoiser at `sigmas(n)[i]`. For flow families the values are the
    /// shifted flow times `t'`, the first one exactly 1.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if `n` is 0 or above [`MAX_STEPS`], if the parameters
    /// are invalid, or if the family cannot give `n` distinct levels (a Karras schedule with
    /// `sigma_min == sigma_max` and `n > 1`; `leading` or `trailing` spacing with more steps
    /// than training timesteps; a custom list of one positive level resampled to `n > 1`); the
    /// message names the first offending index.
    pub fn sigmas(&self, n: usize) -> Result<Vec<f64>> {
        if n == 0 {
            return Err(err("a schedule needs at least 1 step"));
        }
        if n > MAX_STEPS {
            return Err(err(format!("{n} steps is above the maximum {MAX_STEPS}")));
        }
        self.validate()?;
        let mut out = match self {
            NoiseSchedule::Karras {
                sigma_min,
                sigma_max,
                rho,
            } => {
                if n > 1 && sigma_min == sigma_max {
                    return Err(err(format!(
                        "karras sigma_min equals sigma_max ({sigma_min}): {n} steps cannot be \
                         strictly decreasing"
                    )));
                }
                let hi = sigma_max.powf(1.0 / rho);
                let lo = sigma_min.powf(1.0 / rho);
                let mut v: Vec<f64> = linspace(0.0, 1.0, n)
                    .into_iter()
                    .map(|r| (hi + r * (lo - hi)).powf(*rho))
                    .collect();
                // Pin the ends to the exact parameters (the power round trip is off by ulps).
                v[0] = *sigma_max;
                if n > 1 {
                    v[n - 1] = *sigma_min;
                }
                v
            }
            NoiseSchedule::Ddpm {
                betas,
                train_steps,
                spacing,
                steps_offset,
            } => ddpm_sigmas(betas, *train_steps as usize, *spacing, *steps_offset, n),
            NoiseSchedule::Flow { shift } => linspace(1.0, 1.0 / n as f64, n)
                .into_iter()
                .map(|t| {
                    // t = 1 is pure noise for every shift; the formula is off by ulps there.
                    if t == 1.0 {
                        1.0
                    } else {
                        shift * t / (1.0 + (shift - 1.0) * t)
                    }
                })
                .collect(),
            NoiseSchedule::Flux { mu } => {
                let e = mu.exp();
                linspace(1.0, 1.0 / n as f64, n)
                    .into_iter()
                    .map(|t| e / (e + (1.0 / t - 1.0)))
                    .collect()
            }
            NoiseSchedule::Custom { sigmas, .. } => custom_sigmas(sigmas, n)?,
        };
        out.push(0.0);
        check_decreasing(&out)?;
        Ok(out)
    }

    /// The log-SNR of noise level `level` of this schedule (see [`NoiseKind::log_snr`]).
    ///
    /// # Errors
    ///
    /// As [`NoiseKind::log_snr`].
    pub fn log_snr(&self, level: f64) -> Result<f64> {
        self.kind().log_snr(level)
    }

    /// The log-SNR of each of the `n + 1` levels of [`NoiseSchedule::sigmas`]`(n)`: strictly
    /// increasing, the last `+inf` (the final 0), the first `-inf` for flow schedules (`t = 1`).
    ///
    /// # Errors
    ///
    /// As [`NoiseSchedule::sigmas`].
    pub fn log_snrs(&self, n: usize) -> Result<Vec<f64>> {
        let kind = self.kind();
        self.sigmas(n)?
            .into_iter()
            .map(|s| kind.log_snr(s))
            .collect()
    }
}

fn validate_custom(sigmas: &[f64], kind: NoiseKind) -> Result<()> {
    for (i, &s) in sigmas.iter().enumerate() {
        if s.is_nan() {
            return Err(err(format!("sigma {i} is NaN")));
        }
        if !s.is_finite() {
            return Err(err(format!("sigma {i} is infinite")));
        }
        if s < 0.0 {
            return Err(err(format!("sigma {i} ({s}) is negative")));
        }
        if kind == NoiseKind::FlowTime && s > 1.0 {
            return Err(err(format!("sigma {i} ({s}) is a flow time above 1")));
        }
        if i > 0 && s >= sigmas[i - 1] {
            return Err(err(format!(
                "sigma {i} ({s}) is not below sigma {} ({})",
                i - 1,
                sigmas[i - 1]
            )));
        }
    }
    if sigmas.len() < 2 {
        return Err(err(format!(
            "a custom list needs at least 2 values (the levels of one step and its end), got {}",
            sigmas.len()
        )));
    }
    Ok(())
}

/// numpy's `linspace(start, stop, n)`: `start + i * step`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// numpy's `interp(x, arange(len(ys)), ys)`: linear, clamped to the ends.
fn interp_index(ys: &[f64], x: f64) -> f64 {
    let last = ys.len() - 1;
    if x <= 0.0 {
        return ys[0];
    }
    if x >= last as f64 {
        return ys[last];
    }
    let j = x.floor() as usize;
    ys[j] + (ys[j + 1] - ys[j]) * (x - j as f64)
}

fn ddpm_sigmas(
    betas: &BetaSchedule,
    train_steps: usize,
    spacing: TimestepSpacing,
    steps_offset: u32,
    n: usize,
) -> Vec<f64> {
    let mut alpha_bar = 1.0;
    let train_sigmas: Vec<f64> = betas
        .betas(train_steps)
        .into_iter()
        .map(|b| {
            alpha_bar *= 1.0 - b;
            ((1.0 - alpha_bar) / alpha_bar).sqrt()
        })
        .collect();
    let t = train_steps as f64;
    let timesteps: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let mut ts = linspace(0.0, t - 1.0, n);
            ts.reverse();
            ts
        }
        TimestepSpacing::Leading => {
            let ratio = (train_steps / n) as f64;
            (0..n)
                .rev()
                .map(|i| i as f64 * ratio + f64::from(steps_offset))
                .collect()
        }
        TimestepSpacing::Trailing => {
            // numpy's arange(T, 0, -T/n) fills `start + i * delta` with
            // `delta = (start + step) - start`; reproduce it so ties round as diffusers does.
            let step = -(t / n as f64);
            let delta = (t + step) - t;
            (0..n)
                .map(|i| (t + i as f64 * delta).round_ties_even() - 1.0)
                .collect()
        }
    };
    timesteps
        .into_iter()
        .map(|x| interp_index(&train_sigmas, x))
        .collect()
}

/// AYS's `loglinear_interp(values, n)`: `ln` of the values linearly interpolated over evenly
/// spaced positions. `values` is strictly decreasing and positive.
fn loglinear_interp(values: &[f64], n: usize) -> Vec<f64> {
    let logs: Vec<f64> = values.iter().map(|v| v.ln()).collect();
    let m = values.len();
    if m == 1 {
        return vec![values[0]; n];
    }
    let scale = (m - 1) as f64;
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| interp_index(&logs, x * scale).exp())
        .collect()
}

fn custom_sigmas(list: &[f64], n: usize) -> Result<Vec<f64>> {
    let m = list.len();
    if list[m - 1] == 0.0 {
        let positive = &list[..m - 1];
        if n == 1 {
            return Ok(vec![positive[0]]);
        }
        if positive.len() == 1 {
            return Err(err(format!(
                "a custom list with one positive level ({}) cannot be resampled to {n} steps",
                positive[0]
            )));
        }
        if n == positive.len() {
            return Ok(positive.to_vec());
        }
        Ok(loglinear_interp(positive, n))
    } else {
        if n == 1 {
            return Ok(vec![list[0]]);
        }
        if n + 1 == m {
            return Ok(list[..m - 1].to_vec());
        }
        let mut v = loglinear_interp(list, n + 1);
        v.pop();
        Ok(v)
    }
}

/// Checks that `levels` is finite, strictly decreasing and ends in 0, naming the first bad index.
fn check_decreasing(levels: &[f64]) -> Result<()> {
    for (i, &s) in levels.iter().enumerate() {
        if s.is_nan() {
            return Err(err(format!("sigma {i} is NaN")));
        }
        if !s.is_finite() {
            return Err(err(format!("sigma {i} is infinite")));
        }
        if i > 0 && s >= levels[i - 1] {
            return Err(err(format!(
                "sigma {i} ({s}) is not below sigma {} ({}): the schedule cannot give {} \
                 distinct steps",
                i - 1,
                levels[i - 1],
                levels.len() - 1
            )));
        }
    }
    Ok(())
}

/// Spec keys and values after the family name: `key=value` pairs separated by commas.
fn parse_pairs<'a>(
    family: &str,
    rest: &'a str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if rest.is_empty() {
        return Ok(pairs);
    }
    for part in rest.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(err(format!(
                "{family}: {part:?} is not key=value (keys: {})",
                allowed.join(", ")
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        if !allowed.contains(&key) {
            return Err(err(format!(
                "{family}: unknown key {key:?} (keys: {})",
                allowed.join(", ")
            )));
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(err(format!("{family}: key {key:?} given twice")));
        }
        if value.is_empty() {
            return Err(err(format!("{family}: key {key:?} has no value")));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn parse_num<T: FromStr>(family: &str, key: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| err(format!("{family}: {key}={value:?} is not a valid number")))
}

fn ddpm_from_spec(family: &str, rest: &str) -> Result<NoiseSchedule> {
    let (mut beta_start, mut beta_end, allowed): (f64, f64, &[&str]) = match family {
        "cosine" => (0.0, 0.0, &["spacing", "train_steps", "steps_offset"]),
        "linear" => (
            0.0001,
            0.02,
            &[
                "beta_start",
                "beta_end",
                "train_steps",
                "spacing",
                "steps_offset",
            ],
        ),
        _ => (
            0.00085,
            0.012,
            &[
                "beta_start",
                "beta_end",
                "train_steps",
                "spacing",
                "steps_offset",
            ],
        ),
    };
    let mut train_steps = 1000u32;
    let mut spacing = TimestepSpacing::Leading;
    let mut steps_offset = 1u32;
    for (key, value) in parse_pairs(family, rest, allowed)? {
        match key {
            "beta_start" => beta_start = parse_num(family, key, value)?,
            "beta_end" => beta_end = parse_num(family, key, value)?,
            "train_steps" => train_steps = parse_num(family, key, value)?,
            "steps_offset" => steps_offset = parse_num(family, key, value)?,
            _ => {
                spacing = value
                    .parse()
                    .map_err(|e: AdaptiveError| err(format!("{family}: {}", strip(&e))))?
            }
        }
    }
    let betas = match family {
        "cosine" => BetaSchedule::Cosine,
        "linear" => BetaSchedule::Linear {
            beta_start,
            beta_end,
        },
        _ => BetaSchedule::ScaledLinear {
            beta_start,
            beta_end,
        },
    };
    let s = NoiseSchedule::Ddpm {
        betas,
        train_steps,
        spacing,
        steps_offset,
    };
    s.validate()
        .map_err(|e| err(format!("{family}: {}", strip(&e))))?;
    Ok(s)
}

/// The message of a [`AdaptiveError::ScheduleError`] without its "schedule error: " prefix.
fn strip(e: &AdaptiveError) -> String {
    match e {
        AdaptiveError::ScheduleError(m) => m.clone(),
        other => other.to_string(),
    }
}

impl FromStr for NoiseSchedule {
    type Err = AdaptiveError;

    /// Parses a CLI noise spec, one of:
    ///
    /// - `karras[:sigma_min=A,sigma_max=B,rho=R]`, missing keys defaulting to 0.002, 80, 7;
    /// - `scaled-linear[:spacing=linspace|leading|trailing]` (Stable Diffusion's betas; also
    ///   accepts `beta_start`, `beta_end`, `train_steps`, `steps_offset`);
    /// - `linear[:beta_start=..,beta_end=..,train_steps=..]` (defaults 1e-4, 0.02, 1000; also
    ///   `spacing`, `steps_offset`);
    /// - `cosine` (also `spacing`, `train_steps`, `steps_offset`);
    ///
    ///   DDPM families default to 1000 training steps and `leading` spacing with offset 1;
    /// - `flow[:shift=S]` (default shift 1, no shift);
    /// - `flux:mu=M` or `flux:tokens=T` (exactly one of them);
    /// - `sigmas:s0,s1,...` (see [`NoiseSchedule::custom`]).
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] naming the bad part: an unknown family or key, a key
    /// given twice, a value that is not a number, or a parameter out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_schedule::noise::{NoiseSchedule, TimestepSpacing};
    ///
    /// let s: NoiseSchedule = "scaled-linear:spacing=trailing".parse()?;
    /// assert!(matches!(s, NoiseSchedule::Ddpm { spacing: TimestepSpacing::Trailing, .. }));
    /// let e = "karras:sigma_max=eighty".parse::<NoiseSchedule>().unwrap_err();
    /// assert!(e.to_string().contains("sigma_max"));
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let (family, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let family = family.trim();
        let rest = rest.trim();
        match family {
            "karras" => {
                let (mut lo, mut hi, mut rho) = (KARRAS_SIGMA_MIN, KARRAS_SIGMA_MAX, KARRAS_RHO);
                for (key, value) in parse_pairs(family, rest, &["sigma_min", "sigma_max", "rho"])? {
                    let v = parse_num(family, key, value)?;
                    match key {
                        "sigma_min" => lo = v,
                        "sigma_max" => hi = v,
                        _ => rho = v,
                    }
                }
                NoiseSchedule::karras(lo, hi, rho)
            }
            "scaled-linear" | "scaled_linear" => ddpm_from_spec("scaled-linear", rest),
            "linear" | "cosine" => ddpm_from_spec(family, rest),
            "flow" => {
                let mut shift = 1.0;
                for (key, value) in parse_pairs(family, rest, &["shift"])? {
                    shift = parse_num(family, key, value)?;
                }
                NoiseSchedule::flow(shift)
            }
            "flux" => {
                let pairs = parse_pairs(family, rest, &["mu", "tokens"])?;
                match pairs.as_slice() {
                    [("mu", v)] => NoiseSchedule::flux(parse_num(family, "mu", v)?),
                    [("tokens", v)] => {
                        NoiseSchedule::flux_for_tokens(parse_num(family, "tokens", v)?)
                    }
                    _ => Err(err("flux: give exactly one of mu=M or tokens=T")),
                }
            }
            "sigmas" => {
                if rest.is_empty() {
                    return Err(err("sigmas: no values given (sigmas:s0,s1,...)"));
                }
                let values = rest
                    .split(',')
                    .enumerate()
                    .map(|(i, v)| {
                        v.trim().parse::<f64>().map_err(|_| {
                            err(format!(
                                "sigmas: value {i} ({:?}) is not a number",
                                v.trim()
                            ))
                        })
                    })
                    .collect::<Result<Vec<f64>>>()?;
                NoiseSchedule::custom(values)
            }
            "" => Err(err("empty noise spec")),
            other => Err(err(format!(
                "unknown noise schedule {other:?} (expected karras, scaled-linear, linear, \
                 cosine, flow, flux or sigmas)"
            ))),
        }
    }
}

impl fmt::Display for NoiseSchedule {
    /// The spec that parses back to this schedule (for a custom list of flow times, the kind is
    /// not part of the spec: it parses back as sigmas).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoiseSchedule::Karras {
                sigma_min,
                sigma_max,
                rho,
            } => write!(
                f,
                "karras:sigma_min={sigma_min},sigma_max={sigma_max},rho={rho}"
            ),
            NoiseSchedule::Ddpm {
                betas,
                train_steps,
                spacing,
                steps_offset,
            } => {
                match betas {
                    BetaSchedule::Linear {
                        beta_start,
                        beta_end,
                    } => write!(f, "linear:beta_start={beta_start},beta_end={beta_end},")?,
                    BetaSchedule::ScaledLinear {
                        beta_start,
                        beta_end,
                    } => write!(
                        f,
                        "scaled-linear:beta_start={beta_start},beta_end={beta_end},"
                    )?,
                    BetaSchedule::Cosine => write!(f, "cosine:")?,
                }
                write!(
                    f,
                    "train_steps={train_steps},spacing={spacing},steps_offset={steps_offset}"
                )
            }
            NoiseSchedule::Flow { shift } => write!(f, "flow:shift={shift}"),
            NoiseSchedule::Flux { mu } => write!(f, "flux:mu={mu}"),
            NoiseSchedule::Custom { sigmas, .. } => {
                write!(f, "sigmas:")?;
                for (i, s) in sigmas.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// Serde for a zone's lower bound: `null` (or a missing field) is `-inf`.
mod lower_bound {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if *v == f64::NEG_INFINITY {
            None::<f64>.serialize(s)
        } else {
            Some(*v).serialize(s)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
    }
}

/// Serde for a zone's upper bound: `null` (or a missing field) is `+inf`.
mod upper_bound {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if *v == f64::INFINITY {
            None::<f64>.serialize(s)
        } else {
            Some(*v).serialize(s)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

fn neg_inf() -> f64 {
    f64::NEG_INFINITY
}

fn pos_inf() -> f64 {
    f64::INFINITY
}

/// One zone of a [`NoiseProfile`]: log-SNR in `[start_log_snr, end_log_snr)` asks for
/// `precision` (the last zone of a profile also takes `+inf`).
///
/// In JSON an unbounded end is `null` or absent: `start_log_snr` is `-inf` then, `end_log_snr`
/// `+inf`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseZone {
    /// Lowest log-SNR of the zone (inclusive); `-inf` only for a profile's first zone.
    #[serde(with = "lower_bound", default = "neg_inf")]
    pub start_log_snr: f64,
    /// Log-SNR where the zone ends (exclusive); `+inf` only for a profile's last zone.
    #[serde(with = "upper_bound", default = "pos_inf")]
    pub end_log_snr: f64,
    /// The precision the zone asks for.
    pub precision: Precision,
    /// Why this precision suits this noise range.
    #[serde(default)]
    pub rationale: String,
}

impl NoiseZone {
    /// A zone.
    pub fn new(
        start_log_snr: f64,
        end_log_snr: f64,
        precision: Precision,
        rationale: impl Into<String>,
    ) -> Self {
        NoiseZone {
            start_log_snr,
            end_log_snr,
            precision,
            rationale: rationale.into(),
        }
    }

    /// Whether `log_snr` lies in `[start_log_snr, end_log_snr)`.
    pub fn contains(&self, log_snr: f64) -> bool {
        self.start_log_snr <= log_snr && log_snr < self.end_log_snr
    }
}

/// A mapping from noise level (as log-SNR) to the precision a step asks for.
///
/// Zones run from noisy to clean: increasing log-SNR. A valid profile has at least one zone; the
/// first starts at `-inf`, the last ends at `+inf` (the only places infinities are allowed), every
/// other bound is finite, each zone is non-empty (`start < end`) and starts exactly where the
/// previous one ends: no NaN, no gap, no overlap, nothing backwards, and every log-SNR, the
/// infinities included, falls in exactly one zone. [`NoiseProfile::validate`] checks this, every
/// constructor runs it, and so does deserialising.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_schedule::noise::{NoiseKind, NoiseProfile};
///
/// // INT8 while sigma > 2, FP16 below.
/// let p = NoiseProfile::from_sigma_thresholds(
///     "two-phase",
///     "INT8 at high noise",
///     NoiseKind::Sigma,
///     &[2.0],
///     &[(Precision::INT8, "noise masks rounding"), (Precision::FP16, "details form")],
/// )?;
/// assert_eq!(p.precision_at_sigma(NoiseKind::Sigma, 5.0)?, Precision::INT8);
/// assert_eq!(p.precision_at_sigma(NoiseKind::Sigma, 2.0)?, Precision::FP16);
/// assert_eq!(p.precision_at_log_snr(f64::INFINITY)?, Precision::FP16);
///
/// let json = serde_json::to_string(&p).unwrap();
/// let back: NoiseProfile = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, p);
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NoiseProfileData")]
pub struct NoiseProfile {
    /// Short name, shown in schedules.
    pub name: String,
    /// What the profile is for and where its thresholds come from.
    pub description: String,
    /// The zones, by increasing log-SNR.
    pub zones: Vec<NoiseZone>,
}

/// The serialised form of a [`NoiseProfile`], validated before it becomes one.
#[derive(Deserialize)]
struct NoiseProfileData {
    name: String,
    #[serde(default)]
    description: String,
    zones: Vec<NoiseZone>,
}

impl TryFrom<NoiseProfileData> for NoiseProfile {
    type Error = AdaptiveError;

    fn try_from(d: NoiseProfileData) -> Result<Self> {
        NoiseProfile::new(d.name, d.description, d.zones)
    }
}

impl NoiseProfile {
    /// A profile from its zones.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ProfileError`] naming the bad zone (see [`NoiseProfile::validate`]).
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        zones: Vec<NoiseZone>,
    ) -> Result<Self> {
        let p = NoiseProfile {
            name: name.into(),
            description: description.into(),
            zones,
        };
        p.validate()?;
        Ok(p)
    }

    /// A profile from `k` log-SNR thresholds, strictly increasing, and `k + 1` zones
    /// `(precision, rationale)` from noisiest to cleanest: zone 0 is `[-inf, thresholds[0])`,
    /// zone `k` is `[thresholds[k-1], +inf]`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ProfileError`] if the counts disagree or a threshold is not finite or not
    /// above the previous one.
    pub fn from_log_snr_thresholds(
        name: impl Into<String>,
        description: impl Into<String>,
        thresholds: &[f64],
        zones: &[(Precision, &str)],
    ) -> Result<Self> {
        if zones.len() != thresholds.len() + 1 {
            return Err(profile_err(format!(
                "{} thresholds need {} zones, got {}",
                thresholds.len(),
                thresholds.len() + 1,
                zones.len()
            )));
        }
        for (i, t) in thresholds.iter().enumerate() {
            if !t.is_finite() {
                return Err(profile_err(format!("threshold {i} ({t}) is not finite")));
            }
        }
        let bounds: Vec<f64> = std::iter::once(f64::NEG_INFINITY)
            .chain(thresholds.iter().copied())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let zones = zones
            .iter()
            .enumerate()
            .map(|(i, (p, why))| NoiseZone::new(bounds[i], bounds[i + 1], *p, *why))
            .collect();
        NoiseProfile::new(name, description, zones)
    }

    /// A profile from `k` noise-level thresholds of kind `kind`, strictly decreasing (noisy to
    /// clean), and `k + 1` zones from noisiest to cleanest. A level exactly at a threshold
    /// belongs to the cleaner zone.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ProfileError`] if the counts disagree or a threshold is not a valid level
    /// of `kind` strictly between the extremes (sigma in `(0, inf)`, flow time in `(0, 1)`), or
    /// not below the previous one.
    pub fn from_sigma_thresholds(
        name: impl Into<String>,
        description: impl Into<String>,
        kind: NoiseKind,
        thresholds: &[f64],
        zones: &[(Precision, &str)],
    ) -> Result<Self> {
        let logs = thresholds
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let l = kind
                    .log_snr(s)
                    .map_err(|e| profile_err(format!("threshold {i}: {}", strip(&e))))?;
                if !l.is_finite() {
                    return Err(profile_err(format!(
                        "threshold {i} ({s}) is an extreme noise level"
                    )));
                }
                Ok(l)
            })
            .collect::<Result<Vec<f64>>>()?;
        NoiseProfile::from_log_snr_thresholds(name, description, &logs, zones)
    }

    /// The profile the `NoiseAdaptive` preset stands for: INT4 while sigma > 10
    /// (log-SNR < -4.61), INT8 while 1 < sigma <= 10, FP16 for sigma <= 1 (log-SNR >= 0).
    ///
    /// Reasoning: an Euler step moves the sample by `(sigma_next - sigma) * eps_hat`, so a
    /// relative error `delta` in the denoiser's output perturbs the sample by about
    /// `|d sigma| * delta`, while the noise in the sample has standard deviation `sigma`. When
    /// that noise dwarfs the data (latents have unit standard deviation, so sigma > 10 is ten
    /// times the signal) the perturbation is a small fraction of noise the sampler is about to
    /// remove anyway, and later steps treat it as part of that noise: it changes which image
    /// comes out, not its quality. Between sigma 10 and 1 composition and large shapes settle,
    /// and INT8's error (about 16 times smaller than INT4's) is still small beside the
    /// remaining noise. Once sigma falls below the data's own scale, what the denoiser outputs
    /// is the detail of the final image, and nothing later masks an error, so FP16. On a flow
    /// schedule the thresholds are `t' > 0.909` for INT4 and `t' > 0.5` for INT8.
    ///
    /// These thresholds are reasoned, not measured: they are to be replaced by the values a
    /// calibration run measures (see [`crate::solver`]).
    pub fn noise_adaptive() -> Self {
        // log-SNR of sigma 10 and sigma 1, computed as `NoiseKind::Sigma.log_snr` does so that
        // a level exactly at a threshold lands in the cleaner zone.
        let below_ten = -2.0 * 10f64.ln();
        let below_one = 0.0;
        NoiseProfile {
            name: "noise-adaptive".into(),
            description: "INT4 while sigma > 10, INT8 while sigma > 1, FP16 below: reasoned \
                          thresholds, to be replaced by measured ones"
                .into(),
            zones: vec![
                NoiseZone::new(
                    f64::NEG_INFINITY,
                    below_ten,
                    Precision::INT4,
                    "noise std at least 10x the data's: quantization error is a small part of \
                     the noise the sampler removes",
                ),
                NoiseZone::new(
                    below_ten,
                    below_one,
                    Precision::INT8,
                    "composition settles while noise still exceeds the data's scale",
                ),
                NoiseZone::new(
                    below_one,
                    f64::INFINITY,
                    Precision::FP16,
                    "noise below the data's scale: the output is final detail",
                ),
            ],
        }
    }

    /// Checks the zones (see the type's documentation for the rules).
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ProfileError`] naming the first bad zone and bound.
    pub fn validate(&self) -> Result<()> {
        let n = self.zones.len();
        if n == 0 {
            return Err(profile_err(format!(
                "noise profile {:?} has no zones",
                self.name
            )));
        }
        for (i, z) in self.zones.iter().enumerate() {
            for (what, v) in [("start", z.start_log_snr), ("end", z.end_log_snr)] {
                if v.is_nan() {
                    return Err(profile_err(format!("zone {i} {what} is NaN")));
                }
            }
            if i == 0 {
                if z.start_log_snr != f64::NEG_INFINITY {
                    return Err(profile_err(format!(
                        "zone 0 starts at log-SNR {}, not -inf: noise levels below it have no \
                         zone",
                        z.start_log_snr
                    )));
                }
            } else if !z.start_log_snr.is_finite() {
                return Err(profile_err(format!(
                    "zone {i} starts at log-SNR {}: only zone 0 may start at -inf",
                    z.start_log_snr
                )));
            }
            if i == n - 1 {
                if z.end_log_snr != f64::INFINITY {
                    return Err(profile_err(format!(
                        "zone {i} (the last) ends at log-SNR {}, not +inf: noise levels above it \
                         have no zone",
                        z.end_log_snr
                    )));
                }
            } else if !z.end_log_snr.is_finite() {
                return Err(profile_err(format!(
                    "zone {i} ends at log-SNR {}: only the last zone may end at +inf",
                    z.end_log_snr
                )));
            }
            if z.start_log_snr >= z.end_log_snr {
                return Err(profile_err(format!(
                    "zone {i} is empty or backwards: [{}, {})",
                    z.start_log_snr, z.end_log_snr
                )));
            }
            if i > 0 {
                let prev = self.zones[i - 1].end_log_snr;
                if z.start_log_snr > prev {
                    return Err(profile_err(format!(
                        "gap between zone {} (ends {prev}) and zone {i} (starts {})",
                        i - 1,
                        z.start_log_snr
                    )));
                }
                if z.start_log_snr < prev {
                    return Err(profile_err(format!(
                        "zone {i} (starts {}) overlaps zone {} (ends {prev})",
                        z.start_log_snr,
                        i - 1
                    )));
                }
            }
        }
        Ok(())
    }

    /// The precision at log-SNR `log_snr` (`-inf` and `+inf` included).
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if `log_snr` is NaN; [`AdaptiveError::ProfileError`] if
    /// the profile is invalid (edited after construction).
    pub fn precision_at_log_snr(&self, log_snr: f64) -> Result<Precision> {
        if log_snr.is_nan() {
            return Err(err("log-SNR is NaN"));
        }
        self.validate()?;
        let last = self.zones.len() - 1;
        let zone = self
            .zones
            .iter()
            .position(|z| z.contains(log_snr))
            .unwrap_or(last);
        Ok(self.zones[zone].precision)
    }

    /// The precision at noise level `level` of kind `kind`.
    ///
    /// # Errors
    ///
    /// As [`NoiseKind::log_snr`] and [`NoiseProfile::precision_at_log_snr`].
    pub fn precision_at_sigma(&self, kind: NoiseKind, level: f64) -> Result<Precision> {
        self.precision_at_log_snr(kind.log_snr(level)?)
    }

    /// The precision of each step of an `n`-step run of `schedule`: step `i` is looked up at
    /// `schedule.sigmas(n)[i]`, the level where it evaluates the denoiser.
    ///
    /// # Errors
    ///
    /// As [`NoiseSchedule::sigmas`] and [`NoiseProfile::precision_at_log_snr`].
    pub fn precisions_for(&self, schedule: &NoiseSchedule, n: usize) -> Result<Vec<Precision>> {
        self.validate()?;
        let kind = schedule.kind();
        let sigmas = schedule.sigmas(n)?;
        sigmas[..n]
            .iter()
            .map(|&s| self.precision_at_sigma(kind, s))
            .collect()
    }

    /// How many times the precision changes between adjacent zones.
    pub fn transition_count(&self) -> usize {
        self.zones
            .windows(2)
            .filter(|w| w[0].precision != w[1].precision)
            .count()
    }
}
