//! What a generation runs at, step by step, and when each weight copy is loaded and dropped.

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::{Blend, Mix, Result, RuntimeError};

/// A run plan: the precision (and blend) of every step, and how far ahead a precision is loaded.
///
/// Residency follows the plan: a precision is loaded `lookahead` steps before its first use (at
/// its first use when 0) and dropped right after its last use, a blended step needing both of its
/// precisions. Between its first and last use a precision stays resident.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision::{FP16, INT8};
/// use haagenti_adaptive_runtime::RunPlan;
///
/// let plan = RunPlan::from_precisions("two-zone", &[INT8, INT8, FP16]);
/// let res = plan.residency();
/// assert_eq!(res[0].load, vec![INT8]);
/// assert_eq!(res[1].release, vec![INT8]);
/// assert_eq!(res[2].load, vec![FP16]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// A name for reports (`fp32`, `balanced`, `calibrated`, ...).
    pub name: String,
    /// One entry a step.
    pub steps: Vec<Mix>,
    /// Steps ahead of its first use that a precision is loaded.
    pub lookahead: usize,
    /// The precisions resident during each step, when a transition plan decides them
    /// ([`RunPlan::from_transition_plan`]): a precision is then loaded before a step whose set
    /// holds it and the previous one's does not, and dropped after a step whose set holds it and
    /// the next one's does not, so a precision unused for a stretch of steps is dropped and
    /// loaded again. `None`: first use to last use, as above.
    #[serde(default)]
    pub resident: Option<Vec<Vec<Precision>>>,
}

/// Loads before and releases after one step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResidency {
    /// Precisions to load before the step.
    pub load: Vec<Precision>,
    /// Precisions to drop after the step.
    pub release: Vec<Precision>,
}

impl RunPlan {
    /// Every step at `p`.
    pub fn uniform(name: impl Into<String>, p: Precision, steps: usize) -> Self {
        Self {
            name: name.into(),
            steps: vec![Mix::at(p); steps],
            lookahead: 0,
            resident: None,
        }
    }

    /// Plain steps at the given precisions.
    pub fn from_precisions(name: impl Into<String>, precisions: &[Precision]) -> Self {
        Self {
            name: name.into(),
            steps: precisions.iter().map(|&p| Mix::at(p)).collect(),
            lookahead: 0,
            resident: None,
        }
    }

    /// Steps at the given precisions with optional blends: `blends[i] = Some((from, f))` makes
    /// step `i` evaluate `(1 - f) D_from + f D_precision`, as a gradual transition window does.
    /// A blend whose `from` equals the step's own precision is dropped.
    pub fn with_blends(
        name: impl Into<String>,
        precisions: &[Precision],
        blends: &[Option<(Precision, f32)>],
    ) -> Self {
        let steps = precisions
            .iter()
            .enumerate()
            .map(|(i, &p)| Mix {
                precision: p,
                blend: blends
                    .get(i)
                    .copied()
                    .flatten()
                    .filter(|&(from, _)| from != p)
                    .map(|(from, factor)| Blend { from, factor }),
            })
            .collect();
        Self {
            name: name.into(),
            steps,
            lookahead: 0,
            resident: None,
        }
    }

    /// The run a transition plan describes: each step at the plan's precision, blended with the
    /// transition's source precision by the plan's factor while a gradual transition runs, and
    /// the weights resident at each step exactly those of
    /// [`TransitionPlan::resident_at`](haagenti_adaptive_transition::TransitionPlan::resident_at).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Schedule`] if the plan cannot say a step's precision or residency.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::{Precision::{FP32, INT8}, TransitionStrategy};
    /// use haagenti_adaptive_runtime::RunPlan;
    /// use haagenti_adaptive_schedule::{PrecisionSchedule, ScheduleConfig};
    /// use haagenti_adaptive_transition::TransitionPlanner;
    ///
    /// let config = ScheduleConfig::default().strategy(TransitionStrategy::Immediate);
    /// let schedule = PrecisionSchedule::from_precisions(config, "x", &[INT8, INT8, FP32, FP32, INT8])?;
    /// let tplan = TransitionPlanner::new(1 << 20).with_min_gap(1).plan_schedule(&schedule)?;
    /// let plan = RunPlan::from_transition_plan("x", &tplan)?;
    /// assert_eq!(plan.precisions(), vec![INT8, INT8, FP32, FP32, INT8]);
    /// // INT8 is dropped while FP32 runs and loaded again for the last step.
    /// assert_eq!(plan.resident_sets(), vec![vec![INT8], vec![INT8], vec![FP32], vec![FP32], vec![INT8]]);
    /// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
    /// ```
    pub fn from_transition_plan(
        name: impl Into<String>,
        plan: &haagenti_adaptive_transition::TransitionPlan,
    ) -> Result<Self> {
        let n = plan.schedule.total_steps();
        let mut steps = Vec::with_capacity(n as usize);
        let mut resident = Vec::with_capacity(n as usize);
        for i in 0..n {
            let info = plan.schedule.require_step(i)?;
            let blend = match (plan.blend_at(i), plan.transition_at(i)) {
                (Some(factor), Some(t)) if t.from != info.precision => Some(Blend {
                    from: t.from,
                    factor,
                }),
                _ => None,
            };
            let mix = Mix {
                precision: info.precision,
                blend,
            };
            let mut set = plan.resident_at(i)?;
            set.extend(mix.precisions());
            set.sort();
            set.dedup();
            steps.push(mix);
            resident.push(set);
        }
        Ok(Self {
            name: name.into(),
            steps,
            lookahead: 0,
            resident: Some(resident),
        })
    }

    /// The run of a schedule as the transition planner makes it: every change of the
    /// schedule kept (minimum gap 1), blended as the schedule's transition strategy says, the
    /// weights resident at each step those the plan says (no memory limit). Named after the
    /// schedule.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Schedule`] if the planner rejects the schedule.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision::{FP16, INT8};
    /// use haagenti_adaptive_runtime::RunPlan;
    /// use haagenti_adaptive_schedule::{PrecisionSchedule, ProfilePreset, ScheduleConfig};
    ///
    /// let config = ScheduleConfig::with_preset(ProfilePreset::Balanced).steps(20);
    /// let schedule = PrecisionSchedule::generate(config)?;
    /// let plan = RunPlan::from_schedule(&schedule)?;
    /// assert_eq!(plan.steps.len(), 20);
    /// assert_eq!(plan.name, schedule.profile_name);
    /// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
    /// ```
    pub fn from_schedule(schedule: &haagenti_adaptive_schedule::PrecisionSchedule) -> Result<Self> {
        let tplan = haagenti_adaptive_transition::TransitionPlanner::new(u64::MAX)
            .with_min_gap(1)
            .plan_schedule(schedule)?;
        Self::from_transition_plan(schedule.profile_name.clone(), &tplan)
    }

    /// The main precision of every step.
    pub fn precisions(&self) -> Vec<Precision> {
        self.steps.iter().map(|m| m.precision).collect()
    }

    /// Checks the plan against a run of `steps` steps.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidPlan`] for a length mismatch or a blend factor outside `[0, 1]`.
    pub fn validate(&self, steps: usize) -> Result<()> {
        if self.steps.len() != steps {
            return Err(RuntimeError::InvalidPlan(format!(
                "plan {:?} has {} steps, the run has {steps}",
                self.name,
                self.steps.len()
            )));
        }
        for (i, m) in self.steps.iter().enumerate() {
            if let Some(b) = m.blend
                && !(0.0..=1.0).contains(&b.factor)
            {
                return Err(RuntimeError::InvalidPlan(format!(
                    "step {i} of plan {:?} has blend factor {}",
                    self.name, b.factor
                )));
            }
        }
        Ok(())
    }

    /// Loads and releases around each step (see the type's docs).
    pub fn residency(&self) -> Vec<StepResidency> {
        let n = self.steps.len();
        let mut out = vec![StepResidency::default(); n];
        if let Some(sets) = &self.resident {
            // A step's own precisions are always resident, whatever the sets say.
            let need = |i: usize| -> Vec<Precision> {
                let mut v: Vec<Precision> = sets.get(i).cloned().unwrap_or_default();
                v.extend(self.steps[i].precisions());
                v
            };
            let mut prev: Vec<Precision> = Vec::new();
            for (i, step) in out.iter_mut().enumerate() {
                let now = need(i);
                let next = if i + 1 < n { need(i + 1) } else { Vec::new() };
                for p in Precision::ALL {
                    if now.contains(&p) && !prev.contains(&p) {
                        step.load.push(p);
                    }
                    if now.contains(&p) && !next.contains(&p) {
                        step.release.push(p);
                    }
                }
                prev = now;
            }
            return out;
        }
        for p in Precision::ALL {
            let uses: Vec<usize> = (0..n)
                .filter(|&i| self.steps[i].precisions().any(|q| q == p))
                .collect();
            if let (Some(&first), Some(&last)) = (uses.first(), uses.last()) {
                out[first.saturating_sub(self.lookahead)].load.push(p);
                out[last].release.push(p);
            }
        }
        out
    }

    /// The precisions resident during each step under [`RunPlan::residency`].
    pub fn resident_sets(&self) -> Vec<Vec<Precision>> {
        let mut now: Vec<Precision> = Vec::new();
        self.residency()
            .into_iter()
            .map(|r| {
                now.extend(r.load);
                now.sort();
                let during = now.clone();
                now.retain(|p| !r.release.contains(p));
                during
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::*;

    #[test]
    fn residency_spans_first_to_last_use() {
        let plan = RunPlan::from_precisions("p", &[INT4, INT8, INT4, FP16, FP16]);
        let sets = plan.resident_sets();
        assert_eq!(sets[0], vec![INT4]);
        assert_eq!(sets[1], vec![INT4, INT8]);
        assert_eq!(sets[2], vec![INT4]);
        assert_eq!(sets[3], vec![FP16]);
        assert_eq!(sets[4], vec![FP16]);
    }

    #[test]
    fn lookahead_and_blends_extend_residency() {
        let mut plan = RunPlan::with_blends(
            "g",
            &[INT8, FP16, FP16, FP16],
            &[None, Some((INT8, 0.25)), Some((INT8, 0.75)), None],
        );
        assert_eq!(
            plan.resident_sets(),
            vec![vec![INT8], vec![INT8, FP16], vec![INT8, FP16], vec![FP16]]
        );
        plan.lookahead = 1;
        assert_eq!(plan.resident_sets()[0], vec![INT8, FP16]);
        // A blend towards the same precision is not a blend.
        let same = RunPlan::with_blends("s", &[INT8, INT8], &[None, Some((INT8, 0.5))]);
        assert_eq!(same.steps[1].blend, None);
    }

    #[test]
    fn validation() {
        let plan = RunPlan::uniform("u", FP32, 3);
        assert!(plan.validate(3).is_ok());
        assert!(plan.validate(4).is_err());
        let bad = RunPlan::with_blends("b", &[INT8, FP16], &[None, Some((INT8, 1.5))]);
        assert!(bad.validate(2).is_err());
    }

    #[test]
    fn transition_plan_decides_residency_and_blends() {
        use haagenti_adaptive_core::TransitionStrategy;
        use haagenti_adaptive_schedule::{PrecisionSchedule, ScheduleConfig};
        use haagenti_adaptive_transition::TransitionPlanner;

        let config = ScheduleConfig::default().strategy(TransitionStrategy::Gradual { steps: 2 });
        let precisions = [INT8, INT8, INT8, FP32, FP32, FP32, FP32];
        let schedule = PrecisionSchedule::from_precisions(config, "g", &precisions).unwrap();
        let tplan = TransitionPlanner::new(1 << 20)
            .with_min_gap(1)
            .plan_schedule(&schedule)
            .unwrap();
        let plan = RunPlan::from_transition_plan("g", &tplan).unwrap();
        assert_eq!(
            plan.precisions(),
            tplan
                .schedule
                .steps
                .iter()
                .map(|s| s.precision)
                .collect::<Vec<_>>()
        );
        let mut blended = 0;
        for (i, m) in plan.steps.iter().enumerate() {
            let i32_ = u32::try_from(i).unwrap();
            assert_eq!(
                m.blend.map(|b| b.factor),
                tplan.blend_at(i32_).filter(|_| m.blend.is_some())
            );
            if let Some(b) = m.blend {
                blended += 1;
                assert_eq!((b.from, m.precision), (INT8, FP32));
                assert_eq!(plan.resident_sets()[i], vec![INT8, FP32]);
            }
            assert_eq!(plan.resident_sets()[i], tplan.resident_at(i32_).unwrap());
        }
        assert!(blended > 0, "a gradual transition blends at least one step");
        // Every load is matched by a release.
        let res = plan.residency();
        let loads: usize = res.iter().map(|r| r.load.len()).sum();
        let releases: usize = res.iter().map(|r| r.release.len()).sum();
        assert_eq!(loads, releases);
    }
}
