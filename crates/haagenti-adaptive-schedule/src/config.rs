//! What a schedule is generated from.

use haagenti_adaptive_core::{AdaptiveError, PrecisionCapabilities, Result, TransitionStrategy};
use serde::{Deserialize, Serialize};

use crate::noise::{NoiseProfile, NoiseSchedule};
use crate::{PrecisionProfile, ProfilePreset};

/// The longest schedule generated, in steps: 100 000, a hundred times the longest samplers use. A
/// guard against configurations (`--steps`, or JSON) that would allocate without bound: a
/// schedule keeps one entry of about 40 bytes a step, and a plan and its JSON copy it.
pub const MAX_STEPS: u32 = 100_000;

/// Configuration for [`crate::PrecisionSchedule::generate`].
///
/// Missing fields take their defaults when deserialised (30 steps, `balanced`, a modern 8 GiB GPU,
/// `min_quality` 0.9, immediate transitions, strict capabilities as in the seed crate, no noise
/// schedule, no noise profile), and deserialising checks the same things as [`ScheduleConfig::validate`].
///
/// # Profiles: by fraction or by noise level
///
/// The profile in force is, in order: `custom_noise_profile` (a [`NoiseProfile`], zones by
/// log-SNR), `custom_profile` (a [`PrecisionProfile`], zones by fraction of the run), then the
/// preset. Setting both custom profiles is an error. A noise-based profile needs the sampler's
/// noise schedule (`noise`); without it validation fails, except for the
/// [`ProfilePreset::NoiseAdaptive`] preset, which falls back to EDM's Karras schedule
/// ([`NoiseSchedule::default`]: sigma 0.002 to 80, rho 7) and records that fallback in the
/// generated schedule's `config.noise`. When `noise` is set, every generated step carries the
/// sigma at which it evaluates the denoiser, whatever the kind of profile.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::{PrecisionCapabilities, TransitionStrategy};
/// use haagenti_adaptive_schedule::{PrecisionSchedule, ProfilePreset, ScheduleConfig};
///
/// let config = ScheduleConfig::with_preset(ProfilePreset::Quality)
///     .steps(50)
///     .capabilities(PrecisionCapabilities::legacy_gpu(8192))
///     .strategy(TransitionStrategy::Gradual { steps: 3 })
///     .min_quality(0.95);
/// let schedule = PrecisionSchedule::generate(config)?;
/// assert_eq!(schedule.steps.len(), 50);
/// assert!(ScheduleConfig::default().steps(0).validate().is_err());
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigData")]
pub struct ScheduleConfig {
    /// Number of denoising steps (at least 1, at most [`MAX_STEPS`]).
    pub total_steps: u32,
    /// The preset used when `custom_profile` is `None`.
    pub preset: ProfilePreset,
    /// A profile that replaces the preset.
    pub custom_profile: Option<PrecisionProfile>,
    /// A noise-level profile that replaces the preset; it needs `noise`. Exclusive with
    /// `custom_profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_noise_profile: Option<NoiseProfile>,
    /// The sampler's noise schedule: step `i` of an `n`-step run evaluates the denoiser at
    /// `noise.sigmas(n)[i]`, which noise-based profiles look up and every step records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseSchedule>,
    /// What the device executes: each zone's precision becomes the cheapest supported one at or
    /// above it.
    pub capabilities: PrecisionCapabilities,
    /// The lowest average quality accepted, in `[0, 1]` (seed constants, relative to FP32).
    pub min_quality: f32,
    /// How each precision change is blended.
    pub transition_strategy: TransitionStrategy,
    /// Whether a zone precision with nothing supported at or above it is an error
    /// ([`AdaptiveError::UnsupportedPrecision`]) rather than a fall back to the most faithful
    /// supported precision. `true` by default, as in the seed crate.
    pub strict_capabilities: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            total_steps: 30,
            preset: ProfilePreset::default(),
            custom_profile: None,
            custom_noise_profile: None,
            noise: None,
            capabilities: PrecisionCapabilities::default(),
            min_quality: 0.9,
            transition_strategy: TransitionStrategy::default(),
            strict_capabilities: true,
        }
    }
}

impl ScheduleConfig {
    /// The default configuration with `preset`.
    pub fn with_preset(preset: ProfilePreset) -> Self {
        ScheduleConfig {
            preset,
            ..ScheduleConfig::default()
        }
    }

    /// Sets the number of steps.
    pub fn steps(mut self, total_steps: u32) -> Self {
        self.total_steps = total_steps;
        self
    }

    /// Sets the device capabilities.
    pub fn capabilities(mut self, capabilities: PrecisionCapabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Sets the lowest average quality accepted.
    pub fn min_quality(mut self, min_quality: f32) -> Self {
        self.min_quality = min_quality;
        self
    }

    /// Uses `profile` instead of the preset.
    pub fn custom_profile(mut self, profile: PrecisionProfile) -> Self {
        self.custom_profile = Some(profile);
        self
    }

    /// Uses the noise-level profile `profile` instead of the preset; it needs a noise schedule
    /// ([`ScheduleConfig::noise`]).
    pub fn custom_noise_profile(mut self, profile: NoiseProfile) -> Self {
        self.custom_noise_profile = Some(profile);
        self
    }

    /// Sets the sampler's noise schedule.
    pub fn noise(mut self, schedule: NoiseSchedule) -> Self {
        self.noise = Some(schedule);
        self
    }

    /// Sets the transition strategy.
    pub fn strategy(mut self, strategy: TransitionStrategy) -> Self {
        self.transition_strategy = strategy;
        self
    }

    /// Sets whether unsupported precisions are errors.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict_capabilities = strict;
        self
    }

    /// The fraction profile: the custom one if set, else the preset's (for
    /// [`ProfilePreset::NoiseAdaptive`], its approximation by fraction). When
    /// [`ScheduleConfig::active_noise_profile`] is `Some`, that profile is the one in force and
    /// generation ignores this one.
    pub fn profile(&self) -> PrecisionProfile {
        self.custom_profile
            .clone()
            .unwrap_or_else(|| self.preset.build())
    }

    /// The noise-level profile in force, if any: `custom_noise_profile`, else the
    /// [`ProfilePreset::NoiseAdaptive`] preset's ([`NoiseProfile::noise_adaptive`]) when no
    /// custom fraction profile replaces it.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_schedule::{ProfilePreset, ScheduleConfig};
    ///
    /// assert!(ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive).active_noise_profile().is_some());
    /// assert!(ScheduleConfig::with_preset(ProfilePreset::Balanced).active_noise_profile().is_none());
    /// ```
    pub fn active_noise_profile(&self) -> Option<NoiseProfile> {
        if let Some(p) = &self.custom_noise_profile {
            return Some(p.clone());
        }
        if self.custom_profile.is_none() {
            return self.preset.noise_profile();
        }
        None
    }

    /// The noise schedule generation uses: `noise`, or, when the
    /// [`ProfilePreset::NoiseAdaptive`] preset is in force without one, EDM's Karras schedule
    /// ([`NoiseSchedule::default`]: sigma_min 0.002, sigma_max 80, rho 7). `None` when neither
    /// applies (a fraction profile and no noise schedule) or when a custom noise profile lacks
    /// its schedule (which [`ScheduleConfig::validate`] rejects).
    pub fn effective_noise(&self) -> Option<NoiseSchedule> {
        if self.noise.is_some() {
            return self.noise.clone();
        }
        if self.custom_noise_profile.is_none() && self.active_noise_profile().is_some() {
            return Some(NoiseSchedule::default());
        }
        None
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] for zero steps or more than [`MAX_STEPS`], a `min_quality`
    /// that is NaN or outside `[0, 1]`, capabilities that support nothing, or a gradual strategy
    /// of zero steps, an invalid noise schedule, both a fraction and a noise custom profile, or a
    /// custom noise profile without a noise schedule; [`AdaptiveError::ProfileError`] for an
    /// invalid custom profile (fraction or noise).
    pub fn validate(&self) -> Result<()> {
        let err = |msg: String| Err(AdaptiveError::ScheduleError(msg));
        if self.total_steps == 0 {
            return err("total_steps must be at least 1".into());
        }
        if self.total_steps > MAX_STEPS {
            return err(format!(
                "total_steps {} exceeds the maximum of {MAX_STEPS}",
                self.total_steps
            ));
        }
        if !(self.min_quality.is_finite() && (0.0..=1.0).contains(&self.min_quality)) {
            return err(format!(
                "min_quality {} is not a number in [0, 1]",
                self.min_quality
            ));
        }
        if self.capabilities.supported.is_empty() {
            return err("the capabilities support no precision".into());
        }
        if self.transition_strategy == (TransitionStrategy::Gradual { steps: 0 }) {
            return err("a gradual transition needs at least 1 step".into());
        }
        if let Some(profile) = &self.custom_profile {
            profile.validate()?;
        }
        if let Some(noise) = &self.noise {
            noise.validate()?;
        }
        if let Some(profile) = &self.custom_noise_profile {
            if self.custom_profile.is_some() {
                return err(
                    "both custom_profile (by fraction) and custom_noise_profile (by noise level) \
                     are set: give one"
                        .into(),
                );
            }
            profile.validate()?;
            if self.noise.is_none() {
                return err(format!(
                    "the noise-based profile {:?} needs a noise schedule: set noise (for \
                     example karras:sigma_min=0.002,sigma_max=80,rho=7)",
                    profile.name
                ));
            }
        }
        Ok(())
    }
}

/// The serialised form of a configuration, checked before it becomes a [`ScheduleConfig`].
#[derive(Deserialize)]
#[serde(default)]
struct ConfigData {
    total_steps: u32,
    preset: ProfilePreset,
    custom_profile: Option<PrecisionProfile>,
    custom_noise_profile: Option<NoiseProfile>,
    noise: Option<NoiseSchedule>,
    capabilities: PrecisionCapabilities,
    min_quality: f32,
    transition_strategy: TransitionStrategy,
    strict_capabilities: bool,
}

impl Default for ConfigData {
    fn default() -> Self {
        let d = ScheduleConfig::default();
        ConfigData {
            total_steps: d.total_steps,
            preset: d.preset,
            custom_profile: d.custom_profile,
            custom_noise_profile: d.custom_noise_profile,
            noise: d.noise,
            capabilities: d.capabilities,
            min_quality: d.min_quality,
            transition_strategy: d.transition_strategy,
            strict_capabilities: d.strict_capabilities,
        }
    }
}

impl TryFrom<ConfigData> for ScheduleConfig {
    type Error = AdaptiveError;

    fn try_from(d: ConfigData) -> Result<Self> {
        let config = ScheduleConfig {
            total_steps: d.total_steps,
            preset: d.preset,
            custom_profile: d.custom_profile,
            custom_noise_profile: d.custom_noise_profile,
            noise: d.noise,
            capabilities: d.capabilities,
            min_quality: d.min_quality,
            transition_strategy: d.transition_strategy,
            strict_capabilities: d.strict_capabilities,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule_error(c: &ScheduleConfig) -> String {
        match c.validate() {
            Err(AdaptiveError::ScheduleError(m)) => m,
            other => panic!("expected a schedule error, got {other:?}"),
        }
    }

    #[test]
    fn validation_rejects_out_of_range_values() {
        ScheduleConfig::default().validate().unwrap();
        assert!(schedule_error(&ScheduleConfig::default().steps(0)).contains("at least 1"));
        assert!(
            schedule_error(&ScheduleConfig::default().steps(MAX_STEPS + 1)).contains("maximum")
        );
        for q in [f32::NAN, -0.1, 1.5, f32::INFINITY] {
            assert!(
                schedule_error(&ScheduleConfig::default().min_quality(q)).contains("min_quality")
            );
        }
        let mut nothing = PrecisionCapabilities::default();
        nothing.supported.clear();
        assert!(
            schedule_error(&ScheduleConfig::default().capabilities(nothing))
                .contains("no precision")
        );
        let zero = ScheduleConfig::default().strategy(TransitionStrategy::Gradual { steps: 0 });
        assert!(schedule_error(&zero).contains("gradual"));
        let bad_profile = PrecisionProfile::new("x", "");
        assert!(matches!(
            ScheduleConfig::default()
                .custom_profile(bad_profile)
                .validate(),
            Err(AdaptiveError::ProfileError(_))
        ));
    }

    #[test]
    fn json_fills_defaults_and_validates() {
        let c: ScheduleConfig = serde_json::from_str("{\"total_steps\": 12}").unwrap();
        assert_eq!(c, ScheduleConfig::default().steps(12));
        let full = ScheduleConfig::with_preset(ProfilePreset::LowVram)
            .strategy(TransitionStrategy::StepAware)
            .custom_profile(ProfilePreset::Quality.build())
            .strict(true);
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<ScheduleConfig>(&json).unwrap(), full);
        assert!(serde_json::from_str::<ScheduleConfig>("{\"total_steps\": 0}").is_err());
        assert!(serde_json::from_str::<ScheduleConfig>("{\"total_steps\": -3}").is_err());
        assert!(serde_json::from_str::<ScheduleConfig>("{\"min_quality\": 2.0}").is_err());
        assert!(serde_json::from_str::<ScheduleConfig>("{\"preset\": \"turbo\"}").is_err());
    }
}
