//! Precision profiles: which precision each part of a run asks for, by fraction of the run.

use haagenti_adaptive_core::{AdaptiveError, Precision, Result};
use serde::{Deserialize, Serialize};

/// One zone of a [`PrecisionProfile`]: the fractions `[start_step, end_step)` of the run ask for
/// `precision`.
///
/// The field names are the seed crate's; despite the names they hold fractions of the run in
/// `[0, 1]`, not step indices. Step `i` of an `n`-step run sits at fraction `i / n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrecisionZone {
    /// Where the zone starts, as a fraction of the run (inclusive).
    pub start_step: f32,
    /// Where the zone ends, as a fraction of the run (exclusive).
    pub end_step: f32,
    /// The precision the zone asks for.
    pub precision: Precision,
    /// Why this precision suits this part of the run.
    pub rationale: String,
}

impl PrecisionZone {
    /// The zone's share of the run (`end_step - start_step`).
    pub fn width(&self) -> f32 {
        self.end_step - self.start_step
    }

    /// Whether `fraction` lies in `[start_step, end_step)`.
    pub fn contains(&self, fraction: f32) -> bool {
        self.start_step <= fraction && fraction < self.end_step
    }
}

/// A mapping from the fraction of the run completed to the precision a step asks for.
///
/// A valid profile has zones that are finite, inside `[0, 1]`, each non-empty (`start < end`),
/// sorted, each starting exactly where the previous one ends, from 0 to 1: no gaps, no overlaps,
/// and every fraction in `[0, 1)` falls in exactly one zone. [`PrecisionProfile::validate`] checks
/// all of this, and deserialising a profile runs it, so a profile read from JSON is always valid.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_schedule::PrecisionProfile;
///
/// let profile = PrecisionProfile::new("two-phase", "INT8 first, FP16 after")
///     .add_zone(0.4, 1.0, Precision::FP16, "details form late")
///     .add_zone(0.0, 0.4, Precision::INT8, "noise masks rounding early");
/// profile.validate()?;
/// assert_eq!(profile.precision_at(0.1), Precision::INT8);
/// assert_eq!(profile.precision_at(0.4), Precision::FP16);
/// assert_eq!(profile.transition_count(), 1);
///
/// // A zone that runs backwards is rejected.
/// let bad = PrecisionProfile::new("bad", "").add_zone(0.5, 0.2, Precision::INT4, "");
/// assert!(bad.validate().is_err());
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProfileData")]
pub struct PrecisionProfile {
    /// Short name, shown in schedules.
    pub name: String,
    /// What the profile is for.
    pub description: String,
    /// The zones, sorted by start.
    pub zones: Vec<PrecisionZone>,
    /// The quality the profile is designed to keep, relative to FP32, in `[0, 1]` (informational;
    /// [`crate::ScheduleConfig::min_quality`] is what generation enforces).
    pub quality_target: f32,
    /// The weight memory the profile is designed for, relative to FP32, in `[0, 1]`
    /// (informational).
    pub vram_target: f32,
}

/// The serialised form of a profile, checked before it becomes a [`PrecisionProfile`].
#[derive(Deserialize)]
struct ProfileData {
    name: String,
    #[serde(default)]
    description: String,
    zones: Vec<PrecisionZone>,
    #[serde(default = "default_quality_target")]
    quality_target: f32,
    #[serde(default = "default_vram_target")]
    vram_target: f32,
}

/// The seed crate's default targets.
fn default_quality_target() -> f32 {
    0.95
}

fn default_vram_target() -> f32 {
    0.8
}

impl TryFrom<ProfileData> for PrecisionProfile {
    type Error = AdaptiveError;

    fn try_from(data: ProfileData) -> Result<Self> {
        let profile = PrecisionProfile {
            name: data.name,
            description: data.description,
            zones: data.zones,
            quality_target: data.quality_target,
            vram_target: data.vram_target,
        };
        profile.validate()?;
        Ok(profile)
    }
}

impl PrecisionProfile {
    /// An empty profile (not yet valid: add zones covering `[0, 1)`), with the seed crate's
    /// quality target of 0.95 and memory target of 0.8.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        PrecisionProfile {
            name: name.into(),
            description: description.into(),
            zones: Vec::new(),
            quality_target: default_quality_target(),
            vram_target: default_vram_target(),
        }
    }

    /// Adds the zone `[start, end)` asking for `precision`, keeping zones sorted by start.
    ///
    /// Nothing is checked here; [`PrecisionProfile::validate`] checks the whole profile.
    pub fn add_zone(
        mut self,
        start: f32,
        end: f32,
        precision: Precision,
        rationale: impl Into<String>,
    ) -> Self {
        let zone = PrecisionZone {
            start_step: start,
            end_step: end,
            precision,
            rationale: rationale.into(),
        };
        let at = self
            .zones
            .partition_point(|z| z.start_step.total_cmp(&start).is_le());
        self.zones.insert(at, zone);
        self
    }

    /// Sets the informational quality and memory targets.
    pub fn with_targets(mut self, quality_target: f32, vram_target: f32) -> Self {
        self.quality_target = quality_target;
        self.vram_target = vram_target;
        self
    }

    /// Checks that the zones cover `[0, 1)` exactly once.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ProfileError`] naming the first problem: no zones, a NaN or infinite
    /// boundary, a boundary outside `[0, 1]`, a zone that is empty or runs backwards, zones out of
    /// order, a gap or an overlap between neighbours, a first zone not starting at 0 or a last
    /// zone not ending at 1, or a target that is not a finite number in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let err = |msg: String| Err(AdaptiveError::ProfileError(msg));
        if self.zones.is_empty() {
            return err(format!("profile {:?} has no zones", self.name));
        }
        for (i, z) in self.zones.iter().enumerate() {
            for (what, v) in [("start", z.start_step), ("end", z.end_step)] {
                if !v.is_finite() {
                    return err(format!("zone {i} {what} {v} is not a finite number"));
                }
                if !(0.0..=1.0).contains(&v) {
                    return err(format!("zone {i} {what} {v} is outside [0, 1]"));
                }
            }
            if z.end_step < z.start_step {
                return err(format!(
                    "zone {i} runs backwards: it ends at {} before it starts at {}",
                    z.end_step, z.start_step
                ));
            }
            if z.end_step == z.start_step {
                return err(format!(
                    "zone {i} is empty: it starts and ends at {}",
                    z.start_step
                ));
            }
        }
        let first = &self.zones[0];
        if first.start_step != 0.0 {
            return err(format!(
                "the first zone starts at {}, not 0",
                first.start_step
            ));
        }
        for (i, pair) in self.zones.windows(2).enumerate() {
            let (a, b) = (&pair[0], &pair[1]);
            if b.start_step > a.end_step {
                return err(format!(
                    "gap between zone {i} (ends at {}) and zone {} (starts at {})",
                    a.end_step,
                    i + 1,
                    b.start_step
                ));
            }
            if b.start_step < a.end_step {
                return err(format!(
                    "zone {} (starts at {}) overlaps zone {i} (ends at {})",
                    i + 1,
                    b.start_step,
                    a.end_step
                ));
            }
        }
        let last = &self.zones[self.zones.len() - 1];
        if last.end_step != 1.0 {
            return err(format!(
                "the last zone ends at {}, not 1: the profile must cover [0, 1)",
                last.end_step
            ));
        }
        for (what, v) in [
            ("quality target", self.quality_target),
            ("vram target", self.vram_target),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return err(format!("{what} {v} is not a number in [0, 1]"));
            }
        }
        Ok(())
    }

    /// The precision asked for at `fraction` of the run: the precision of the zone holding it, and
    /// FP16 where no zone does (a fraction outside `[0, 1)`, NaN, or a profile with a gap), as in
    /// the seed crate. [`PrecisionProfile::zone_at`] tells the two cases apart.
    pub fn precision_at(&self, fraction: f32) -> Precision {
        self.zone_at(fraction)
            .map_or(Precision::FP16, |z| z.precision)
    }

    /// The zone holding `fraction` of the run, or `None` when no zone does (a fraction outside
    /// `[0, 1)`, NaN, or a profile that does not validate).
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision;
    /// use haagenti_adaptive_schedule::ProfilePreset;
    ///
    /// let balanced = ProfilePreset::Balanced.build();
    /// assert_eq!(balanced.zone_at(0.3).map(|z| z.precision), Some(Precision::INT8));
    /// assert!(balanced.zone_at(1.0).is_none());
    /// assert_eq!(balanced.precision_at(1.0), Precision::FP16);
    /// ```
    pub fn zone_at(&self, fraction: f32) -> Option<&PrecisionZone> {
        self.zones.iter().find(|z| z.contains(fraction))
    }

    /// Weight memory relative to FP32, averaged over the run by zone width, counting block scales
    /// ([`Precision::effective_vram_ratio`]).
    pub fn estimated_vram_ratio(&self) -> f32 {
        self.weighted(|p| p.effective_vram_ratio())
    }

    /// Quality relative to FP32 averaged over the run by zone width, from the seed's constants
    /// ([`Precision::quality_factor`]).
    pub fn estimated_quality(&self) -> f32 {
        self.weighted(|p| p.quality_factor())
    }

    /// How many times the precision changes between neighbouring zones.
    pub fn transition_count(&self) -> usize {
        self.zones
            .windows(2)
            .filter(|w| w[0].precision != w[1].precision)
            .count()
    }

    fn weighted(&self, f: impl Fn(Precision) -> f32) -> f32 {
        let total: f32 = self.zones.iter().map(PrecisionZone::width).sum();
        if total <= 0.0 || !total.is_finite() {
            return 0.0;
        }
        self.zones
            .iter()
            .map(|z| z.width() * f(z.precision))
            .sum::<f32>()
            / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(start: f32, end: f32) -> PrecisionProfile {
        PrecisionProfile::new("t", "")
            .add_zone(0.0, start, Precision::INT4, "")
            .add_zone(start, end, Precision::INT8, "")
            .add_zone(end, 1.0, Precision::FP16, "")
    }

    fn message(p: &PrecisionProfile) -> String {
        match p.validate() {
            Err(AdaptiveError::ProfileError(m)) => m,
            other => panic!("expected a profile error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_every_malformed_shape() {
        assert!(zone(0.25, 0.5).validate().is_ok());
        assert!(message(&PrecisionProfile::new("e", "")).contains("no zones"));
        assert!(message(&zone(f32::NAN, 0.5)).contains("not a finite"));
        assert!(message(&zone(0.25, f32::INFINITY)).contains("not a finite"));
        assert!(message(&zone(0.5, 0.25)).contains("backwards"));
        assert!(message(&zone(0.5, 0.5)).contains("empty"));
        let outside = PrecisionProfile::new("o", "").add_zone(0.0, 1.5, Precision::INT4, "");
        assert!(message(&outside).contains("outside"));
        let gap = PrecisionProfile::new("g", "")
            .add_zone(0.0, 0.3, Precision::INT4, "")
            .add_zone(0.4, 1.0, Precision::FP16, "");
        assert!(message(&gap).contains("gap"));
        let overlap = PrecisionProfile::new("v", "")
            .add_zone(0.0, 0.5, Precision::INT4, "")
            .add_zone(0.4, 1.0, Precision::FP16, "");
        assert!(message(&overlap).contains("overlaps"));
        let short = PrecisionProfile::new("s", "").add_zone(0.0, 0.9, Precision::INT4, "");
        assert!(message(&short).contains("not 1"));
        let late = PrecisionProfile::new("l", "").add_zone(0.1, 1.0, Precision::INT4, "");
        assert!(message(&late).contains("not 0"));
        let target = zone(0.25, 0.5).with_targets(f32::NAN, 0.5);
        assert!(message(&target).contains("quality target"));
    }

    #[test]
    fn add_zone_sorts_and_lookups_follow_half_open_zones() {
        let p = PrecisionProfile::new("t", "")
            .add_zone(0.5, 1.0, Precision::FP16, "")
            .add_zone(0.0, 0.25, Precision::INT4, "")
            .add_zone(0.25, 0.5, Precision::INT8, "");
        p.validate().unwrap();
        assert_eq!(p.precision_at(0.0), Precision::INT4);
        assert_eq!(p.precision_at(0.25), Precision::INT8);
        assert_eq!(p.precision_at(0.999), Precision::FP16);
        assert!(p.zone_at(1.0).is_none());
        assert!(p.zone_at(f32::NAN).is_none());
        // Where no zone holds the fraction, the seed's fallback: FP16.
        assert_eq!(p.precision_at(1.0), Precision::FP16);
        assert_eq!(p.precision_at(f32::NAN), Precision::FP16);
        let int8 = PrecisionProfile::new("i", "").add_zone(0.0, 1.0, Precision::INT8, "");
        assert_eq!(int8.precision_at(0.5), Precision::INT8);
        assert_eq!(int8.precision_at(-0.1), Precision::FP16);
        assert_eq!(p.transition_count(), 2);
        // 0.25 * 4.5/32 + 0.25 * 8.5/32 + 0.5 * 16/32
        let vram = 0.25 * 0.140625 + 0.25 * 0.265625 + 0.5 * 0.5;
        assert!((p.estimated_vram_ratio() - vram).abs() < 1e-6);
        let quality = 0.25 * 0.92 + 0.25 * 0.97 + 0.5 * 0.998;
        assert!((p.estimated_quality() - quality).abs() < 1e-6);
    }

    #[test]
    fn deserialising_validates() {
        let good = zone(0.25, 0.5);
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(
            serde_json::from_str::<PrecisionProfile>(&json).unwrap(),
            good
        );
        let backwards = serde_json::to_string(&zone(0.5, 0.25)).unwrap();
        let err = serde_json::from_str::<PrecisionProfile>(&backwards).unwrap_err();
        assert!(err.to_string().contains("backwards"), "{err}");
        assert!(serde_json::from_str::<PrecisionProfile>("{\"name\": 3}").is_err());
        assert!(serde_json::from_str::<PrecisionProfile>("[").is_err());
    }
}
