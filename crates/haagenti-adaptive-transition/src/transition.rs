//! One change of precision and its blend window.

use haagenti_adaptive_core::{AdaptiveError, Precision, Result, TransitionStrategy, weight_mb};
use serde::{Deserialize, Serialize};

/// A change from one precision to another, with the blend window that smooths it.
///
/// `blend_factors[k]` is the share of `to` in the output of step `start_step + k` (the output is
/// `(1 - f) * from + f * to`); the transition touches exactly those steps (at least
/// `start_step`), and after them `to` runs alone. Two shapes exist:
///
/// * the seed crate's, from [`PrecisionTransition::gradual`]: `end_step = start_step + duration`
///   and `duration + 1` factors from 0.0 at `start_step` to 1.0 at `end_step`, both ends included;
/// * the planner's, from [`PrecisionTransition::with_window`]: the window `[start_step, end_step)`
///   with one factor a step strictly inside `(0, 1)`, so every step of the window blends and
///   `to` runs alone from `end_step`.
///
/// An immediate transition has `start_step == end_step` and blends nothing: `to` runs alone from
/// `start_step`, where [`PrecisionTransition::blend_at`] is 1.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::{Precision, TransitionStrategy};
/// use haagenti_adaptive_transition::PrecisionTransition;
///
/// // The seed's form: 0 at the start, 1 at the end.
/// let t = PrecisionTransition::gradual(Precision::INT8, Precision::FP16, 10, 4);
/// t.validate()?;
/// assert_eq!((t.start_step, t.end_step), (10, 14));
/// assert_eq!(t.blend_at(10), Some(0.0));
/// assert_eq!(t.blend_at(12), Some(0.5));
/// assert_eq!(t.blend_at(14), Some(1.0));
/// assert_eq!(t.blend_at(15), None);
///
/// // The planner's form: every step of the window blends.
/// let w = PrecisionTransition::with_window(
///     Precision::INT4, Precision::INT8, 10, TransitionStrategy::Gradual { steps: 3 }, 3,
/// );
/// assert_eq!(w.blend_at(10), Some(0.25));
/// assert_eq!(w.blend_at(12), Some(0.75));
/// assert_eq!(w.blend_at(13), None);
/// assert_eq!(w.effective_precision(10), Precision::INT4);
/// assert_eq!(w.effective_precision(11), Precision::INT8);
/// // Both copies are resident while blending.
/// assert_eq!(w.peak_vram_ratio(), (4.5 + 8.5) / 32.0);
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TransitionData")]
pub struct PrecisionTransition {
    /// Precision before the change.
    pub from: Precision,
    /// Precision after the change.
    pub to: Precision,
    /// The first step of the blend window (the switch step of an immediate transition).
    pub start_step: u32,
    /// Where the blend ends: its last step in the seed's form (factor 1.0), the first step after
    /// the window in the planner's.
    pub end_step: u32,
    /// How the change is carried out.
    pub strategy: TransitionStrategy,
    /// The share of `to` at each step from `start_step` on, rising, each in `[0, 1]`.
    pub blend_factors: Vec<f32>,
}

/// The serialised form of a transition, validated before it becomes a [`PrecisionTransition`].
#[derive(Deserialize)]
struct TransitionData {
    from: Precision,
    to: Precision,
    start_step: u32,
    end_step: u32,
    strategy: TransitionStrategy,
    #[serde(default)]
    blend_factors: Vec<f32>,
}

impl TryFrom<TransitionData> for PrecisionTransition {
    type Error = AdaptiveError;

    fn try_from(d: TransitionData) -> Result<Self> {
        let t = PrecisionTransition {
            from: d.from,
            to: d.to,
            start_step: d.start_step,
            end_step: d.end_step,
            strategy: d.strategy,
            blend_factors: d.blend_factors,
        };
        t.validate()?;
        Ok(t)
    }
}

impl PrecisionTransition {
    /// A switch at `step`, with no blend.
    pub fn immediate(from: Precision, to: Precision, step: u32) -> Self {
        PrecisionTransition {
            from,
            to,
            start_step: step,
            end_step: step,
            strategy: TransitionStrategy::Immediate,
            blend_factors: Vec::new(),
        }
    }

    /// The seed crate's linear blend from `start_step` over `duration` steps: `end_step` is
    /// `start_step + duration` and the `duration + 1` factors `0, 1/d, 2/d, …, 1` run from all
    /// `from` at `start_step` to all `to` at `end_step`. A duration of 0 gives
    /// [`PrecisionTransition::immediate`] (the seed divides by zero there); the duration is cut
    /// where `end_step` would pass `u32::MAX`.
    pub fn gradual(from: Precision, to: Precision, start_step: u32, duration: u32) -> Self {
        let duration = duration.min(u32::MAX - start_step);
        if duration == 0 {
            return Self::immediate(from, to, start_step);
        }
        PrecisionTransition {
            from,
            to,
            start_step,
            end_step: start_step + duration,
            strategy: TransitionStrategy::Gradual { steps: duration },
            blend_factors: (0..=duration).map(|i| i as f32 / duration as f32).collect(),
        }
    }

    /// A transition at `start` blended by `strategy` over `window` steps, the factors from
    /// [`TransitionStrategy::blend_factor`] (smoothstep for `StepAware`). `Immediate`, or a window
    /// of 0, gives [`PrecisionTransition::immediate`]. The window is cut where it would pass
    /// `u32::MAX`.
    pub fn with_window(
        from: Precision,
        to: Precision,
        start: u32,
        strategy: TransitionStrategy,
        window: u32,
    ) -> Self {
        let window = window.min(u32::MAX - start);
        if strategy == TransitionStrategy::Immediate || window == 0 {
            return Self::immediate(from, to, start);
        }
        PrecisionTransition {
            from,
            to,
            start_step: start,
            end_step: start + window,
            strategy,
            blend_factors: (0..window)
                .map(|k| strategy.blend_factor(k, window))
                .collect(),
        }
    }

    /// Whether the transition blends: some step runs both precisions (a factor below 1).
    pub fn is_blend(&self) -> bool {
        self.blend_factors.iter().any(|&f| f < 1.0)
    }

    /// Whether `step` is touched by the transition: a step with a blend factor, or the switch
    /// step of an immediate transition.
    pub fn contains_step(&self, step: u32) -> bool {
        let touched = self.blend_factors.len().max(1) as u64;
        step >= self.start_step && u64::from(step - self.start_step) < touched
    }

    /// The share of `to` at `step` (0 = all `from`, 1 = all `to`): the step's factor, 1 at the
    /// switch step of an immediate transition, `None` for steps the transition does not touch.
    pub fn blend_at(&self, step: u32) -> Option<f32> {
        if !self.contains_step(step) {
            return None;
        }
        Some(
            self.blend_factors
                .get((step - self.start_step) as usize)
                .copied()
                .unwrap_or(1.0),
        )
    }

    /// The precision that dominates `step`'s output: `from` before the transition, `to` after it,
    /// and inside the window whichever has the larger share (`to` from a share of 0.5).
    pub fn effective_precision(&self, step: u32) -> Precision {
        if step < self.start_step {
            return self.from;
        }
        match self.blend_at(step) {
            Some(f) if f < 0.5 => self.from,
            _ => self.to,
        }
    }

    /// Checks the transition.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::InvalidTransition`] when `from == to`, the window ends before it starts,
    /// an immediate transition has a window or a factor other than 1, the number of factors is
    /// neither the window's length (the planner's form) nor one more (the seed's form), or a
    /// factor is not a number in `[0, 1]` or does not rise.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| {
            Err(AdaptiveError::InvalidTransition {
                from: self.from,
                to: self.to,
                reason,
            })
        };
        if self.from == self.to {
            return invalid("from and to are the same precision".into());
        }
        if self.end_step < self.start_step {
            return invalid(format!(
                "the window ends at step {} before it starts at step {}",
                self.end_step, self.start_step
            ));
        }
        let window = (self.end_step - self.start_step) as usize;
        if self.strategy == TransitionStrategy::Immediate {
            if window != 0 {
                return invalid(format!(
                    "an immediate transition has a window of {window} steps"
                ));
            }
            if self.blend_factors.iter().any(|&f| f != 1.0) {
                return invalid("an immediate transition blends".into());
            }
        }
        let factors = self.blend_factors.len();
        if factors != window && factors != window + 1 {
            return invalid(format!(
                "{factors} blend factors for a window of {window} steps"
            ));
        }
        for (k, &f) in self.blend_factors.iter().enumerate() {
            if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                return invalid(format!("blend factor {k} is {f}, not a number in [0, 1]"));
            }
            if k > 0 && f <= self.blend_factors[k - 1] {
                return invalid(format!(
                    "blend factor {k} ({f}) does not rise above factor {} ({})",
                    k - 1,
                    self.blend_factors[k - 1]
                ));
            }
        }
        Ok(())
    }

    /// The most weight memory resident during the transition, relative to one FP32 copy
    /// (effective bits): both copies while blending, the larger one for an immediate switch
    /// (which frees `from` before loading `to`).
    pub fn peak_vram_ratio(&self) -> f32 {
        let (a, b) = (
            self.from.effective_vram_ratio(),
            self.to.effective_vram_ratio(),
        );
        if self.is_blend() { a + b } else { a.max(b) }
    }

    /// The most weight memory resident during the transition for a model of `params` weights,
    /// in MiB ([`weight_mb`]): both copies while blending, the larger one otherwise.
    pub fn peak_mb(&self, params: u64) -> u64 {
        let (a, b) = (weight_mb(params, self.from), weight_mb(params, self.to));
        if self.is_blend() {
            a.saturating_add(b)
        } else {
            a.max(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(t: &PrecisionTransition) -> String {
        match t.validate() {
            Err(AdaptiveError::InvalidTransition { reason, .. }) => reason,
            other => panic!("expected an invalid transition, got {other:?}"),
        }
    }

    #[test]
    fn every_malformed_transition_is_rejected() {
        let good = PrecisionTransition::gradual(Precision::INT8, Precision::FP16, 5, 4);
        good.validate().unwrap();
        assert!(
            reason(&PrecisionTransition::immediate(
                Precision::INT8,
                Precision::INT8,
                3
            ))
            .contains("same")
        );
        let mut t = good.clone();
        t.end_step = 2;
        assert!(reason(&t).contains("before it starts"));
        let mut t = good.clone();
        t.blend_factors.truncate(3);
        assert!(reason(&t).contains("3 blend factors"));
        // The planner's form of the same window (4 factors) is valid too.
        let mut t = good.clone();
        t.blend_factors.pop();
        t.validate().unwrap();
        let mut t = good.clone();
        t.blend_factors[1] = f32::NAN;
        assert!(reason(&t).contains("not a number"));
        let mut t = good.clone();
        t.blend_factors[3] = 1.5;
        assert!(reason(&t).contains("not a number"));
        let mut t = good.clone();
        t.blend_factors.swap(0, 1);
        assert!(reason(&t).contains("does not rise"));
        let mut t = PrecisionTransition::immediate(Precision::INT4, Precision::FP16, 3);
        t.end_step = 5;
        assert!(reason(&t).contains("immediate"));
        // The seed's immediate transition carries one factor, 1.0; any other factor blends.
        let mut t = PrecisionTransition::immediate(Precision::INT4, Precision::FP16, 3);
        t.blend_factors = vec![1.0];
        t.validate().unwrap();
        assert!(!t.is_blend());
        t.blend_factors = vec![0.5];
        assert!(reason(&t).contains("blends"));
    }

    #[test]
    fn step_aware_uses_smoothstep_per_step() {
        let t = PrecisionTransition::with_window(
            Precision::INT4,
            Precision::FP16,
            0,
            TransitionStrategy::StepAware,
            3,
        );
        t.validate().unwrap();
        let s = |x: f32| x * x * (3.0 - 2.0 * x);
        for (k, &f) in t.blend_factors.iter().enumerate() {
            assert!((f - s((k + 1) as f32 / 4.0)).abs() < 1e-6);
        }
        assert_eq!(t.blend_at(1), Some(0.5));
        assert_eq!(t.effective_precision(1), Precision::FP16);
    }

    #[test]
    fn immediate_switches_at_its_step() {
        let t = PrecisionTransition::immediate(Precision::FP16, Precision::INT8, 7);
        assert!(t.contains_step(7) && !t.contains_step(8));
        assert_eq!(t.blend_at(7), Some(1.0));
        assert_eq!(t.effective_precision(6), Precision::FP16);
        assert_eq!(t.effective_precision(7), Precision::INT8);
        assert_eq!(t.peak_vram_ratio(), 0.5);
        assert_eq!(t.peak_mb(1 << 20), 2);
        let near_end =
            PrecisionTransition::gradual(Precision::INT4, Precision::INT8, u32::MAX - 1, 5);
        near_end.validate().unwrap();
        assert_eq!(near_end.end_step, u32::MAX);
        assert_eq!(near_end.blend_at(u32::MAX), Some(1.0));
        let zero = PrecisionTransition::gradual(Precision::INT4, Precision::INT8, 4, 0);
        assert_eq!(
            zero,
            PrecisionTransition::immediate(Precision::INT4, Precision::INT8, 4)
        );
    }

    #[test]
    fn gradual_is_the_seed_form() {
        let t = PrecisionTransition::gradual(Precision::INT4, Precision::FP16, 10, 4);
        t.validate().unwrap();
        assert_eq!(t.blend_factors, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(t.strategy, TransitionStrategy::Gradual { steps: 4 });
        assert!(t.is_blend());
        assert!(!t.contains_step(9) && t.contains_step(14) && !t.contains_step(15));
        let effective: Vec<_> = (9..=15).map(|s| t.effective_precision(s)).collect();
        use Precision::{FP16, INT4};
        assert_eq!(effective, vec![INT4, INT4, INT4, FP16, FP16, FP16, FP16]);
    }

    #[test]
    fn json_round_trips_and_validates() {
        let t = PrecisionTransition::gradual(Precision::INT4, Precision::INT8, 2, 3);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            serde_json::from_str::<PrecisionTransition>(&json).unwrap(),
            t
        );
        let bad = json.replace("\"from\":\"INT4\"", "\"from\":\"INT8\"");
        let err = serde_json::from_str::<PrecisionTransition>(&bad).unwrap_err();
        assert!(err.to_string().contains("same precision"), "{err}");
        assert!(serde_json::from_str::<PrecisionTransition>("{}").is_err());
    }
}
