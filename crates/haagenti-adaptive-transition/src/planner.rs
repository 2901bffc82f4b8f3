//! Turning a schedule into a plan of transitions, resident weight copies and memory checks.

use haagenti_adaptive_core::{AdaptiveError, Precision, Result, TransitionStrategy, weight_mb};
use haagenti_adaptive_schedule::PrecisionSchedule;
use serde::{Deserialize, Serialize};

use crate::PrecisionTransition;

/// The minimum number of steps between two precision changes that [`TransitionPlanner::new`]
/// keeps: 3, as in the seed crate.
pub const DEFAULT_MIN_GAP: u32 = 3;

/// Plans the transitions of a schedule: where each change happens, how it blends, which weight
/// copies must be resident, and whether they fit in memory.
///
/// # Minimum gap
///
/// Every run of one precision that lies between two changes must last at least `min_gap` steps
/// (the first and last runs may be shorter). A shorter run is merged into whichever neighbour has
/// the higher precision, at the higher of the two precisions, so no step's precision is ever
/// lowered; runs are examined from the first step on. The planner never drops a change while
/// keeping the schedule: it changes the schedule, and the [`TransitionPlan`] carries the merged
/// schedule, which agrees with the plan step for step.
///
/// # Memory
///
/// With a model size ([`TransitionPlanner::with_model_params`]), each precision's weights take
/// [`weight_mb`] MiB (block scales counted). A blend keeps both copies resident; a blend that does
/// not fit in `vram_mb` becomes an immediate switch, and a precision that does not fit even alone
/// is an [`AdaptiveError::VramConstraint`].
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::{Precision, TransitionStrategy};
/// use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset};
/// use haagenti_adaptive_transition::TransitionPlanner;
///
/// let schedule = quick_schedule(ProfilePreset::Balanced, 20)?;
/// // 2.6 billion parameters: INT8 is 2.6 GiB, FP16 4.8 GiB; both fit 8 GiB together.
/// let plan = TransitionPlanner::new(8192)
///     .with_strategy(TransitionStrategy::Gradual { steps: 2 })
///     .with_model_params(2_600_000_000)
///     .plan_schedule(&schedule)?;
/// assert_eq!(plan.transitions.len(), 2);
/// assert_eq!(plan.resident_at(10)?, vec![Precision::INT8, Precision::FP16]);
/// assert_eq!(plan.resident_at(12)?, vec![Precision::FP16]);
/// // With 6 GiB the INT8 -> FP16 blend does not fit: it becomes an immediate switch.
/// let tight = TransitionPlanner::new(6144)
///     .with_strategy(TransitionStrategy::Gradual { steps: 2 })
///     .with_model_params(2_600_000_000)
///     .plan_schedule(&schedule)?;
/// assert!(tight.transitions[0].is_blend());
/// assert!(!tight.transitions[1].is_blend());
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionPlanner {
    vram_mb: u64,
    strategy: Option<TransitionStrategy>,
    min_gap: u32,
    model_params: Option<u64>,
}

/// A run of one precision over the steps `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u32,
    end: u32,
    precision: Precision,
}

impl Run {
    fn len(self) -> u32 {
        self.end - self.start
    }
}

impl TransitionPlanner {
    /// A planner for a device with `vram_mb` MiB for weights, keeping [`DEFAULT_MIN_GAP`] steps
    /// between changes, with no model size and the schedule's own strategy.
    pub fn new(vram_mb: u64) -> Self {
        TransitionPlanner {
            vram_mb,
            strategy: None,
            min_gap: DEFAULT_MIN_GAP,
            model_params: None,
        }
    }

    /// Blends every change with `strategy` (instead of the schedule's).
    pub fn with_strategy(mut self, strategy: TransitionStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Keeps at least `min_gap` steps between changes (0 and 1 keep every change).
    pub fn with_min_gap(mut self, min_gap: u32) -> Self {
        self.min_gap = min_gap;
        self
    }

    /// Sets the model's size in parameters, which turns on the memory checks.
    pub fn with_model_params(mut self, params: u64) -> Self {
        self.model_params = Some(params);
        self
    }

    /// MiB available for weights.
    pub fn vram_mb(&self) -> u64 {
        self.vram_mb
    }

    /// The minimum number of steps between changes.
    pub fn min_gap(&self) -> u32 {
        self.min_gap
    }

    /// The model's size in parameters, if set.
    pub fn model_params(&self) -> Option<u64> {
        self.model_params
    }

    /// The strategy set with [`TransitionPlanner::with_strategy`], if any.
    pub fn strategy(&self) -> Option<TransitionStrategy> {
        self.strategy
    }

    /// Plans the transitions between zones given as `(start, end, precision)` step ranges
    /// `[start, end)`.
    ///
    /// Zones are taken in order of their start; empty or backward zones are skipped, neighbours of
    /// equal precision joined, and runs shorter than the minimum gap merged (see the type's docs),
    /// so the result may have fewer changes than the input. Each change blends over the
    /// strategy's window (default `Immediate`), cut to the length of the run it starts.
    pub fn plan_transitions(&self, zones: &[(u32, u32, Precision)]) -> Vec<PrecisionTransition> {
        let mut sorted: Vec<Run> = zones
            .iter()
            .filter(|z| z.0 < z.1)
            .map(|&(start, end, precision)| Run {
                start,
                end,
                precision,
            })
            .collect();
        sorted.sort_by_key(|r| r.start);
        let runs = merge_short_runs(sorted, self.min_gap).0;
        let total = match (runs.first(), runs.last()) {
            (Some(a), Some(b)) => b.end - a.start,
            _ => 0,
        };
        transitions_for(&runs, self.strategy.unwrap_or_default(), total)
    }

    /// Makes blends that do not fit in memory immediate switches, as the seed crate's method of
    /// this name does, but by the model size set with [`TransitionPlanner::with_model_params`]
    /// rather than fixed ratio thresholds: a blend whose two copies of the weights exceed
    /// [`TransitionPlanner::vram_mb`] becomes an immediate switch at its start. Without a model
    /// size nothing can be judged and nothing changes. [`TransitionPlanner::fit_to_vram`] also
    /// reports a precision that does not fit even alone, and how many blends it changed.
    pub fn optimize_for_vram(&self, transitions: &mut [PrecisionTransition]) {
        if let Some(params) = self.model_params {
            self.drop_blends_over(params, transitions);
        }
    }

    /// Makes `transitions` fit the memory available for the model size set with
    /// [`TransitionPlanner::with_model_params`]: a blend whose two copies do not fit becomes an
    /// immediate switch. Returns how many blends were changed.
    ///
    /// # Errors
    ///
    /// * [`AdaptiveError::VramConstraint`] when a transition's target precision alone does not
    ///   fit (nothing is changed then);
    /// * [`AdaptiveError::ScheduleError`] when no model size is set: without one nothing can be
    ///   checked.
    pub fn fit_to_vram(&self, transitions: &mut [PrecisionTransition]) -> Result<usize> {
        let params = self.model_params.ok_or_else(|| {
            AdaptiveError::ScheduleError(
                "the model size is unknown: set it with with_model_params".into(),
            )
        })?;
        for t in transitions.iter() {
            self.check_fits(params, t.to)?;
        }
        Ok(self.drop_blends_over(params, transitions))
    }

    /// Turns every blend of `transitions` whose two copies of `params` weights exceed the memory
    /// into an immediate switch; returns how many changed.
    fn drop_blends_over(&self, params: u64, transitions: &mut [PrecisionTransition]) -> usize {
        let mut changed = 0;
        for t in transitions.iter_mut() {
            if t.is_blend() && t.peak_mb(params) > self.vram_mb {
                *t = PrecisionTransition::immediate(t.from, t.to, t.start_step);
                changed += 1;
            }
        }
        changed
    }

    fn check_fits(&self, params: u64, precision: Precision) -> Result<()> {
        let required_mb = weight_mb(params, precision);
        if required_mb > self.vram_mb {
            return Err(AdaptiveError::VramConstraint {
                required_mb,
                available_mb: self.vram_mb,
            });
        }
        Ok(())
    }

    /// Plans `schedule`: merges runs shorter than the minimum gap (never lowering a step's
    /// precision), blends each change with the planner's strategy (or the schedule's when none is
    /// set), and, with a model size, applies [`TransitionPlanner::fit_to_vram`].
    ///
    /// The plan's schedule is the input with those changes applied (its blend factors and
    /// estimates recomputed); the plan and its schedule agree step for step.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::VramConstraint`] when, with a model size, some scheduled precision does
    /// not fit alone; [`AdaptiveError::ScheduleError`] when the schedule has no steps or does not
    /// recompute.
    pub fn plan_schedule(&self, schedule: &PrecisionSchedule) -> Result<TransitionPlan> {
        let steps = &schedule.steps;
        if steps.is_empty() {
            return Err(AdaptiveError::ScheduleError(
                "the schedule has no steps".into(),
            ));
        }
        let total = u32::try_from(steps.len()).map_err(|_| {
            AdaptiveError::ScheduleError(format!("{} steps is too many", steps.len()))
        })?;
        let mut runs = Vec::new();
        let mut start = 0u32;
        for i in 1..=total {
            let i_us = i as usize;
            if i == total || steps[i_us].precision != steps[i_us - 1].precision {
                runs.push(Run {
                    start,
                    end: i,
                    precision: steps[i_us - 1].precision,
                });
                start = i;
            }
        }
        let (runs, merged_zones) = merge_short_runs(runs, self.min_gap);
        let strategy = self.strategy.unwrap_or(schedule.config.transition_strategy);
        let mut transitions = transitions_for(&runs, strategy, total);
        let mut vram_fallbacks = 0;
        if let Some(params) = self.model_params {
            if let Some(first) = runs.first() {
                self.check_fits(params, first.precision)?;
            }
            vram_fallbacks = self.fit_to_vram(&mut transitions)?;
        }

        let mut merged = schedule.clone();
        merged.config.transition_strategy = strategy;
        for run in &runs {
            for s in &mut merged.steps[run.start as usize..run.end as usize] {
                s.precision = run.precision;
                s.blend_factor = None;
            }
        }
        for t in &transitions {
            for (k, &f) in t.blend_factors.iter().enumerate() {
                merged.steps[t.start_step as usize + k].blend_factor = Some(f);
            }
        }
        merged.recompute()?;
        let peak_vram_mb = self.model_params.map(|params| {
            let mut from = merged.steps[0].precision;
            let mut changes = merged.transitions.iter().peekable();
            let mut peak = 0;
            for s in &merged.steps {
                if let Some(&(_, old, _)) = changes.next_if(|t| t.0 == s.step) {
                    from = old;
                }
                let own = weight_mb(params, s.precision);
                let resident = match s.blend_factor {
                    Some(_) => own.saturating_add(weight_mb(params, from)),
                    None => own,
                };
                peak = peak.max(resident);
            }
            peak
        });
        Ok(TransitionPlan {
            schedule: merged,
            transitions,
            merged_zones,
            vram_fallbacks: vram_fallbacks as u32,
            min_gap: self.min_gap,
            vram_mb: self.vram_mb,
            model_params: self.model_params,
            peak_vram_mb,
        })
    }
}

/// One transition a change between consecutive runs; each blend window is the strategy's window
/// for `total` steps cut to the length of the run it starts.
fn transitions_for(
    runs: &[Run],
    strategy: TransitionStrategy,
    total: u32,
) -> Vec<PrecisionTransition> {
    let window = strategy.window_for(total);
    runs.windows(2)
        .filter(|w| w[0].precision != w[1].precision)
        .map(|w| {
            let next = w[1];
            PrecisionTransition::with_window(
                w[0].precision,
                next.precision,
                next.start,
                strategy,
                window.min(next.len()),
            )
        })
        .collect()
}

/// Joins neighbours of equal precision and merges every run that lies between two others and is
/// shorter than `min_gap` into its neighbour of higher precision, at the higher precision.
/// Returns the runs and the number of merges. Linear: a stack of finished runs.
fn merge_short_runs(runs: Vec<Run>, min_gap: u32) -> (Vec<Run>, u32) {
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    let mut merges = 0;
    // Pushes `run`, joining it with the top when their precisions are equal.
    fn push(out: &mut Vec<Run>, run: Run) {
        match out.last_mut() {
            Some(top) if top.precision == run.precision => top.end = run.end,
            _ => out.push(run),
        }
    }
    for mut next in runs {
        loop {
            // The top is interior now that `next` follows it: check its length.
            let n = out.len();
            if n < 2 || out[n - 1].precision == next.precision || out[n - 1].len() >= min_gap {
                break;
            }
            let short = out.pop().unwrap_or(next);
            merges += 1;
            let left = out[n - 2];
            if next.precision > left.precision {
                // Into the right neighbour.
                next = Run {
                    start: short.start,
                    end: next.end,
                    precision: next.precision.max(short.precision),
                };
            } else {
                // Into the left neighbour (also on a tie).
                let top = out.pop().unwrap_or(left);
                let joined = Run {
                    start: top.start,
                    end: short.end,
                    precision: top.precision.max(short.precision),
                };
                push(&mut out, joined);
            }
        }
        push(&mut out, next);
    }
    (out, merges)
}

/// A schedule with its transitions planned: per step, the precision, the resident weight copies
/// and the blend factor.
///
/// `schedule` is the schedule as it will run (short runs merged, blends as planned), and
/// `transitions` lists exactly its changes, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionPlan {
    /// The schedule as planned.
    pub schedule: PrecisionSchedule,
    /// One transition a precision change of `schedule`, in step order.
    pub transitions: Vec<PrecisionTransition>,
    /// How many short runs were merged into a neighbour.
    pub merged_zones: u32,
    /// How many blends became immediate switches for lack of memory.
    pub vram_fallbacks: u32,
    /// The minimum gap the plan keeps.
    pub min_gap: u32,
    /// MiB available for weights.
    pub vram_mb: u64,
    /// The model's size in parameters, when the memory was checked.
    pub model_params: Option<u64>,
    /// The most weight memory resident at any step, in MiB, when the model size is known.
    pub peak_vram_mb: Option<u64>,
}

impl TransitionPlan {
    /// The precision `step` runs at (the target precision while blending), `None` past the end.
    pub fn precision_at(&self, step: u32) -> Option<Precision> {
        self.schedule.get(step).map(|s| s.precision)
    }

    /// The share of the new precision in `step`'s output while it blends, `None` when only one
    /// precision runs (or past the end).
    pub fn blend_at(&self, step: u32) -> Option<f32> {
        self.schedule.get(step).and_then(|s| s.blend_factor)
    }

    /// The transition touching `step` (its blend window, or its switch step).
    pub fn transition_at(&self, step: u32) -> Option<&PrecisionTransition> {
        let i = self.transitions.partition_point(|t| t.start_step <= step);
        i.checked_sub(1)
            .map(|i| &self.transitions[i])
            .filter(|t| t.contains_step(step))
    }

    /// The precisions whose weights must be resident at `step`, in fidelity order: the step's
    /// precision, and while blending the one it blends from.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::InvalidStep`] past the end of the schedule.
    pub fn resident_at(&self, step: u32) -> Result<Vec<Precision>> {
        let info = self.schedule.require_step(step)?;
        let mut resident = vec![info.precision];
        if info.blend_factor.is_some()
            && let Some(t) = self.transition_at(step)
        {
            resident.push(t.from);
        }
        resident.sort();
        resident.dedup();
        Ok(resident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(spec: &[(u32, Precision)]) -> Vec<Run> {
        let mut start = 0;
        spec.iter()
            .map(|&(len, precision)| {
                let r = Run {
                    start,
                    end: start + len,
                    precision,
                };
                start += len;
                r
            })
            .collect()
    }

    fn shape(rs: &[Run]) -> Vec<(u32, Precision)> {
        rs.iter().map(|r| (r.len(), r.precision)).collect()
    }

    use Precision::{FP16, FP32, INT4, INT8};

    #[test]
    fn short_runs_merge_upwards_and_never_lower_a_step() {
        // A short INT8 run between INT4 and FP16 joins FP16.
        let (out, merges) = merge_short_runs(runs(&[(5, INT4), (1, INT8), (5, FP16)]), 2);
        assert_eq!(shape(&out), vec![(5, INT4), (6, FP16)]);
        assert_eq!(merges, 1);
        // A short FP32 spike raises its higher neighbour, never lowers itself.
        let (out, _) = merge_short_runs(runs(&[(5, INT4), (1, FP32), (5, INT8)]), 2);
        assert_eq!(shape(&out), vec![(5, INT4), (6, FP32)]);
        // A short dip between equal neighbours joins them all.
        let (out, _) = merge_short_runs(runs(&[(3, FP16), (1, INT8), (3, FP16)]), 3);
        assert_eq!(shape(&out), vec![(7, FP16)]);
        // Cascades: after merging, the grown run is checked against its new neighbour.
        let (out, _) = merge_short_runs(
            runs(&[(4, INT4), (1, INT8), (1, FP16), (1, INT8), (4, FP32)]),
            3,
        );
        // Steps 4 and 6 rise from INT8 to FP16; FP32 is untouched.
        assert_eq!(shape(&out), vec![(4, INT4), (3, FP16), (4, FP32)]);
        // The first and last runs may be short; a gap of 1 keeps everything.
        let input = runs(&[(1, INT4), (5, INT8), (1, FP16)]);
        assert_eq!(merge_short_runs(input.clone(), 3).0, input);
        let input = runs(&[(2, INT4), (1, INT8), (1, FP16), (2, FP32)]);
        assert_eq!(merge_short_runs(input.clone(), 1).0, input);
    }

    #[test]
    fn plan_transitions_blends_within_the_next_run() {
        let planner = TransitionPlanner::new(8192)
            .with_min_gap(1)
            .with_strategy(TransitionStrategy::Gradual { steps: 4 });
        let ts = planner.plan_transitions(&[(10, 30, FP16), (0, 8, INT4), (8, 10, INT8)]);
        assert_eq!(ts.len(), 2);
        assert_eq!((ts[0].start_step, ts[0].end_step), (8, 10));
        assert_eq!(ts[0].blend_factors.len(), 2);
        assert_eq!(
            (ts[1].from, ts[1].to, ts[1].start_step, ts[1].end_step),
            (INT8, FP16, 10, 14)
        );
        assert!(ts.iter().all(|t| t.validate().is_ok()));
        // With a gap of 2 the zones still stand; with the default of 3 the INT8 zone joins FP16.
        assert_eq!(
            TransitionPlanner::new(1)
                .with_min_gap(2)
                .plan_transitions(&[(0, 8, INT4), (8, 10, INT8), (10, 30, FP16)])
                .len(),
            2
        );
        assert_eq!(TransitionPlanner::new(1).min_gap(), 3);
        let merged = TransitionPlanner::new(1).plan_transitions(&[
            (0, 8, INT4),
            (8, 10, INT8),
            (10, 30, FP16),
        ]);
        assert_eq!(merged, vec![PrecisionTransition::immediate(INT4, FP16, 8)]);
        assert!(TransitionPlanner::new(1).plan_transitions(&[]).is_empty());
        assert!(
            TransitionPlanner::new(1)
                .plan_transitions(&[(5, 2, INT4)])
                .is_empty()
        );
    }

    #[test]
    fn memory_checks_fall_back_and_fail() {
        let params = 1_000_000_000; // INT4 537, INT8 1014, FP16 1908 MiB
        let mut ts = vec![
            PrecisionTransition::gradual(INT4, INT8, 5, 2),
            PrecisionTransition::gradual(INT8, FP16, 10, 2),
        ];
        let planner = TransitionPlanner::new(2500).with_model_params(params);
        let mut seed_form = ts.clone();
        assert_eq!(planner.fit_to_vram(&mut ts), Ok(1));
        assert!(ts[0].is_blend() && !ts[1].is_blend());
        planner.optimize_for_vram(&mut seed_form);
        assert_eq!(seed_form, ts, "both methods change the same blends");
        let mut ts2 = ts.clone();
        assert_eq!(
            TransitionPlanner::new(1500)
                .with_model_params(params)
                .fit_to_vram(&mut ts2),
            Err(AdaptiveError::VramConstraint {
                required_mb: 1908,
                available_mb: 1500
            })
        );
        assert_eq!(ts2, ts, "nothing changes on error");
        assert!(matches!(
            TransitionPlanner::new(1500).fit_to_vram(&mut ts2),
            Err(AdaptiveError::ScheduleError(_))
        ));
        // Without a model size the seed's method has nothing to judge by and changes nothing.
        TransitionPlanner::new(1).optimize_for_vram(&mut ts2);
        assert_eq!(ts2, ts);
    }

    #[test]
    fn planner_round_trips_through_json() {
        let p = TransitionPlanner::new(4096)
            .with_strategy(TransitionStrategy::StepAware)
            .with_min_gap(3)
            .with_model_params(7);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<TransitionPlanner>(&json).unwrap(), p);
        assert!(serde_json::from_str::<TransitionPlanner>("{\"vram_mb\": -1}").is_err());
    }
}
