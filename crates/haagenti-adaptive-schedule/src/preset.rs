//! The seed crate's ready-made profiles.

use std::fmt;
use std::str::FromStr;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::PrecisionProfile;
use crate::noise::NoiseProfile;

/// Ready-made precision profiles, named in kebab-case (`balanced`, `low-vram`, …) in text and JSON.
/// JSON also accepts the seed crate's names (`"Balanced"`, `"LowVram"`, …), so its files still load.
///
/// Every preset is a rising profile: cheap precisions while noise dominates the latent, more
/// faithful ones as the image forms. The zone boundaries are the project's choices (the seed
/// crate fixes only Balanced); their quality and speed figures come from the seed's constants.
///
/// | preset | zones |
/// | --- | --- |
/// | `performance` | INT4 `[0, 0.5)`, INT8 `[0.5, 0.8)`, FP16 `[0.8, 1)` |
/// | `balanced` (default) | INT4 `[0, 0.25)`, INT8 `[0.25, 0.5)`, FP16 `[0.5, 1)` |
/// | `quality` | INT8 `[0, 0.1)`, FP16 `[0.1, 0.9)`, FP32 `[0.9, 1)` |
/// | `low-vram` | INT4 `[0, 0.4)`, INT8 `[0.4, 1)` |
/// | `conservative` | INT8 `[0, 0.3)`, FP16 `[0.3, 1)` |
/// | `noise-adaptive` | by noise level: INT4 while sigma > 10, INT8 while sigma > 1, FP16 below |
///
/// `noise-adaptive` is a noise-level profile ([`ProfilePreset::noise_profile`],
/// [`NoiseProfile::noise_adaptive`], where its thresholds are reasoned): generation looks each
/// step up at the sigma where it evaluates the denoiser. Without a noise schedule in the
/// configuration it uses EDM's Karras schedule (sigma 0.002 to 80, rho 7) and records it in the
/// schedule's `config.noise`. Its [`ProfilePreset::build`] keeps a fraction approximation
/// (INT4 `[0, 0.3)`, INT8 `[0.3, 0.7)`, FP16 `[0.7, 1)`) for code that needs a fraction profile.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_schedule::ProfilePreset;
///
/// let preset: ProfilePreset = "low-vram".parse()?;
/// assert_eq!(preset, ProfilePreset::LowVram);
/// assert_eq!(preset.to_string(), "low-vram");
/// let balanced = ProfilePreset::default().build();
/// assert_eq!(balanced.precision_at(0.3), Precision::INT8);
/// # Ok::<(), haagenti_adaptive_schedule::ParsePresetError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfilePreset {
    /// Mostly INT4 and INT8: the fastest, at some cost in quality.
    #[serde(alias = "Performance")]
    Performance,
    /// INT4 for the first quarter, INT8 to half way, FP16 after (the seed's default).
    #[default]
    #[serde(alias = "Balanced")]
    Balanced,
    /// INT8 only at the very start, FP16 through the middle, FP32 for the last tenth.
    #[serde(alias = "Quality")]
    Quality,
    /// INT4 then INT8, never a 16-bit copy: the least weight memory.
    #[serde(alias = "LowVram")]
    LowVram,
    /// INT8 then FP16, never INT4.
    #[serde(alias = "Conservative")]
    Conservative,
    /// INT4 / INT8 / FP16 by the sampler's noise level: INT4 while sigma > 10, INT8 while
    /// sigma > 1, FP16 below ([`NoiseProfile::noise_adaptive`]).
    #[serde(alias = "NoiseAdaptive")]
    NoiseAdaptive,
}

impl ProfilePreset {
    /// Every preset, in declaration order.
    pub fn all() -> &'static [ProfilePreset] {
        &[
            ProfilePreset::Performance,
            ProfilePreset::Balanced,
            ProfilePreset::Quality,
            ProfilePreset::LowVram,
            ProfilePreset::Conservative,
            ProfilePreset::NoiseAdaptive,
        ]
    }

    /// The kebab-case name (`"low-vram"`).
    pub const fn name(self) -> &'static str {
        match self {
            ProfilePreset::Performance => "performance",
            ProfilePreset::Balanced => "balanced",
            ProfilePreset::Quality => "quality",
            ProfilePreset::LowVram => "low-vram",
            ProfilePreset::Conservative => "conservative",
            ProfilePreset::NoiseAdaptive => "noise-adaptive",
        }
    }

    /// One sentence saying what the preset is for.
    pub const fn description(&self) -> &'static str {
        match self {
            ProfilePreset::Performance => {
                "maximum speed: INT4 for the first half, INT8 to 80 %, FP16 for the end"
            }
            ProfilePreset::Balanced => {
                "speed and quality: INT4 for the first quarter, INT8 to half way, FP16 after"
            }
            ProfilePreset::Quality => {
                "maximum quality: INT8 for the first tenth, FP16, FP32 for the last tenth"
            }
            ProfilePreset::LowVram => "least memory: INT4 for the first 40 %, INT8 after",
            ProfilePreset::Conservative => "no INT4: INT8 for the first 30 %, FP16 after",
            ProfilePreset::NoiseAdaptive => {
                "by noise level: INT4 while sigma > 10, INT8 while sigma > 1, FP16 below"
            }
        }
    }

    /// The preset's noise-level profile: `Some` for [`ProfilePreset::NoiseAdaptive`]
    /// ([`NoiseProfile::noise_adaptive`]), `None` for the fraction presets.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision;
    /// use haagenti_adaptive_schedule::ProfilePreset;
    /// use haagenti_adaptive_schedule::noise::NoiseKind;
    ///
    /// let p = ProfilePreset::NoiseAdaptive.noise_profile().unwrap();
    /// assert_eq!(p.precision_at_sigma(NoiseKind::Sigma, 20.0)?, Precision::INT4);
    /// assert_eq!(p.precision_at_sigma(NoiseKind::Sigma, 0.5)?, Precision::FP16);
    /// assert!(ProfilePreset::Balanced.noise_profile().is_none());
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn noise_profile(self) -> Option<NoiseProfile> {
        match self {
            ProfilePreset::NoiseAdaptive => Some(NoiseProfile::noise_adaptive()),
            _ => None,
        }
    }

    /// The preset's profile by fraction of the run (always valid). For
    /// [`ProfilePreset::NoiseAdaptive`] this is its approximation by fraction; generation uses
    /// [`ProfilePreset::noise_profile`] instead.
    pub fn build(self) -> PrecisionProfile {
        use Precision::{FP16, FP32, INT4, INT8};
        const NOISY: &str = "noise dominates the latent; rounding error is masked";
        const FORMING: &str = "structure is set, features are refined";
        const DETAIL: &str = "fine detail forms; errors show";
        let p = PrecisionProfile::new(self.name(), self.description());
        let p = match self {
            ProfilePreset::Performance => p
                .add_zone(0.0, 0.5, INT4, NOISY)
                .add_zone(0.5, 0.8, INT8, FORMING)
                .add_zone(0.8, 1.0, FP16, DETAIL),
            ProfilePreset::Balanced => p
                .add_zone(0.0, 0.25, INT4, NOISY)
                .add_zone(0.25, 0.5, INT8, FORMING)
                .add_zone(0.5, 1.0, FP16, DETAIL),
            ProfilePreset::Quality => p
                .add_zone(0.0, 0.1, INT8, NOISY)
                .add_zone(0.1, 0.9, FP16, FORMING)
                .add_zone(0.9, 1.0, FP32, "last steps at the reference precision"),
            ProfilePreset::LowVram => p.add_zone(0.0, 0.4, INT4, NOISY).add_zone(
                0.4,
                1.0,
                INT8,
                "8-bit weights keep memory low to the end",
            ),
            ProfilePreset::Conservative => p
                .add_zone(0.0, 0.3, INT8, NOISY)
                .add_zone(0.3, 1.0, FP16, DETAIL),
            ProfilePreset::NoiseAdaptive => p
                .add_zone(
                    0.0,
                    0.3,
                    INT4,
                    "high noise (approximated by the run's fraction)",
                )
                .add_zone(
                    0.3,
                    0.7,
                    INT8,
                    "medium noise (approximated by the run's fraction)",
                )
                .add_zone(
                    0.7,
                    1.0,
                    FP16,
                    "low noise (approximated by the run's fraction)",
                ),
        };
        let (quality, vram) = (p.estimated_quality(), p.estimated_vram_ratio());
        p.with_targets(quality, vram)
    }
}

impl fmt::Display for ProfilePreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The error of [`ProfilePreset::from_str`]: the name matched no preset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown preset {0:?} (expected performance, balanced, quality, low-vram, conservative or noise-adaptive)"
)]
pub struct ParsePresetError(pub String);

impl FromStr for ProfilePreset {
    type Err = ParsePresetError;

    /// Parses a kebab-case name, in any case; `_` may stand for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        ProfilePreset::all()
            .iter()
            .copied()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| ParsePresetError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds_a_valid_profile_and_round_trips_its_name() {
        for &preset in ProfilePreset::all() {
            let profile = preset.build();
            profile.validate().unwrap();
            assert_eq!(profile.name, preset.to_string());
            assert_eq!(preset.name().parse::<ProfilePreset>(), Ok(preset));
            let json = serde_json::to_string(&preset).unwrap();
            assert_eq!(json, format!("\"{}\"", preset.name()));
            assert_eq!(
                serde_json::from_str::<ProfilePreset>(&json).unwrap(),
                preset
            );
        }
        assert_eq!(
            "LOW_VRAM".parse::<ProfilePreset>(),
            Ok(ProfilePreset::LowVram)
        );
        assert!("turbo".parse::<ProfilePreset>().is_err());
        assert_eq!(
            serde_json::from_str::<ProfilePreset>("\"LowVram\"").unwrap(),
            ProfilePreset::LowVram
        );
        assert!(serde_json::from_str::<ProfilePreset>("\"lowvram\"").is_err());
    }

    #[test]
    fn balanced_is_the_seed_profile() {
        let p = ProfilePreset::Balanced.build();
        let zones: Vec<_> = p
            .zones
            .iter()
            .map(|z| (z.start_step, z.end_step, z.precision))
            .collect();
        assert_eq!(
            zones,
            vec![
                (0.0, 0.25, Precision::INT4),
                (0.25, 0.5, Precision::INT8),
                (0.5, 1.0, Precision::FP16)
            ]
        );
        assert_eq!(ProfilePreset::default(), ProfilePreset::Balanced);
    }
}
