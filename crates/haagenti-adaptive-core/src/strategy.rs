//! How one precision hands over to the next.

use serde::{Deserialize, Serialize};

/// Strategy for moving between precision levels.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::TransitionStrategy;
///
/// let s: TransitionStrategy = "gradual:3".parse().unwrap();
/// assert_eq!(s, TransitionStrategy::Gradual { steps: 3 });
/// assert_eq!(s.window(), 3);
/// assert_eq!(TransitionStrategy::default().window(), 1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransitionStrategy {
    /// Switch at the step boundary; only the new precision runs from then on.
    #[default]
    Immediate,
    /// Blend the outputs of both precisions over `steps` steps, the new one's share rising
    /// linearly from 0 towards 1.
    Gradual {
        /// Length of the blending window, in steps (at least 1).
        steps: u32,
    },
    /// Blend over a window whose length follows the schedule (a tenth of the run, 2 to 5
    /// steps), with a smoothstep curve so the share changes slowly at both ends.
    StepAware,
}

impl TransitionStrategy {
    /// The blending window in steps for a schedule whose length is unknown: 1 for `Immediate`,
    /// `steps` (at least 1) for `Gradual`, 3 for `StepAware`.
    pub fn window(self) -> u32 {
        match self {
            TransitionStrategy::Immediate => 1,
            TransitionStrategy::Gradual { steps } => steps.max(1),
            TransitionStrategy::StepAware => 3,
        }
    }

    /// The blending window in steps for a schedule of `total_steps`: `StepAware` takes a tenth of
    /// the run, clamped to 2..=5; the others as [`TransitionStrategy::window`].
    pub fn window_for(self, total_steps: u32) -> u32 {
        match self {
            TransitionStrategy::StepAware => (total_steps / 10).clamp(2, 5),
            other => other.window(),
        }
    }

    /// The new precision's share of the output at position `offset` of a window of `window`
    /// steps: 0 means all the old precision, 1 all the new.
    ///
    /// Offsets run `0..window`; the share at offset `k` is `(k + 1) / (window + 1)` passed through
    /// the strategy's curve (linear for `Gradual`, smoothstep for `StepAware`), so every step of the
    /// window blends and the step after it runs the new precision alone. `Immediate` gives 1.
    pub fn blend_factor(self, offset: u32, window: u32) -> f32 {
        if window == 0 {
            return 1.0;
        }
        let t = ((offset.min(window - 1) + 1) as f32 / (window + 1) as f32).clamp(0.0, 1.0);
        match self {
            TransitionStrategy::Immediate => 1.0,
            TransitionStrategy::Gradual { .. } => t,
            TransitionStrategy::StepAware => t * t * (3.0 - 2.0 * t),
        }
    }
}

/// The error of parsing a [`TransitionStrategy`] from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown transition strategy {0:?} (expected immediate, gradual:N with N >= 1, or step-aware)"
)]
pub struct ParseStrategyError(pub String);

impl std::str::FromStr for TransitionStrategy {
    type Err = ParseStrategyError;

    /// Parses `immediate`, `gradual:N` (N >= 1) or `step-aware`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let err = || ParseStrategyError(s.to_owned());
        match lower.as_str() {
            "immediate" => Ok(TransitionStrategy::Immediate),
            "step-aware" | "stepaware" | "step_aware" => Ok(TransitionStrategy::StepAware),
            other => {
                let n = other.strip_prefix("gradual:").ok_or_else(err)?;
                let steps: u32 = n.parse().map_err(|_| err())?;
                if steps == 0 {
                    return Err(err());
                }
                Ok(TransitionStrategy::Gradual { steps })
            }
        }
    }
}

impl std::fmt::Display for TransitionStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransitionStrategy::Immediate => f.write_str("immediate"),
            TransitionStrategy::Gradual { steps } => write!(f, "gradual:{steps}"),
            TransitionStrategy::StepAware => f.write_str("step-aware"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradual_factors_rise_strictly_inside_zero_one() {
        let s = TransitionStrategy::Gradual { steps: 4 };
        let f: Vec<f32> = (0..4).map(|k| s.blend_factor(k, 4)).collect();
        assert_eq!(f, vec![0.2, 0.4, 0.6, 0.8]);
    }

    #[test]
    fn step_aware_is_smoothstep_and_symmetric() {
        let s = TransitionStrategy::StepAware;
        let f: Vec<f32> = (0..3).map(|k| s.blend_factor(k, 3)).collect();
        assert!((f[1] - 0.5).abs() < 1e-6);
        assert!((f[0] + f[2] - 1.0).abs() < 1e-6);
        assert!(f[0] < 0.25, "smoothstep flattens the ends: {f:?}");
        assert_eq!(s.window_for(30), 3);
        assert_eq!(s.window_for(5), 2);
        assert_eq!(s.window_for(1000), 5);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            TransitionStrategy::Immediate,
            TransitionStrategy::Gradual { steps: 7 },
            TransitionStrategy::StepAware,
        ] {
            assert_eq!(s.to_string().parse::<TransitionStrategy>(), Ok(s));
        }
        assert!("gradual:0".parse::<TransitionStrategy>().is_err());
        assert!("gradual:x".parse::<TransitionStrategy>().is_err());
        assert!("sudden".parse::<TransitionStrategy>().is_err());
    }
}
