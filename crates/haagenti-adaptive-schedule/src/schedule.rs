//! Per-step precision schedules.

use std::fmt::Write as _;

use haagenti_adaptive_core::{AdaptiveError, Precision, Result, TransitionStrategy};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::ScheduleConfig;
use crate::solver::{self, ErrorBound, ErrorTable, SolveOptions};

/// Where a schedule's speed and quality estimates come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EstimateSource {
    /// The seed crate's constants ([`Precision::speedup_factor`], [`Precision::quality_factor`]):
    /// heuristics, not measurements.
    #[default]
    SeedConstants,
    /// Measured per-precision costs and per-step errors (an [`ErrorTable`] held in
    /// [`PrecisionSchedule::measurements`]): the speedup is total FP32 cost over total scheduled
    /// cost, and each step carries its measured error. Memory still counts bits; the quality
    /// factors remain the seed's constants.
    Measured,
}

/// The precision of one step, and what it is estimated to cost.
///
/// During a blend (see [`StepPrecision::blend_factor`]) the step runs both the precision of the
/// previous run and `precision`, so its memory and time count both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPrecision {
    /// The step's index, from 0.
    pub step: u32,
    /// The precision the step runs at (the target precision while blending).
    pub precision: Precision,
    /// Whether the precision changes at this step (it differs from the step before).
    pub is_transition: bool,
    /// While blending from the previous run's precision into `precision`: the share of
    /// `precision` in the step's output (0 = all the previous precision, 1 = all `precision`).
    /// `None` when only `precision` runs.
    pub blend_factor: Option<f32>,
    /// Weight memory resident during the step relative to one FP32 copy, counting block scales
    /// ([`Precision::effective_vram_ratio`]); both copies count while blending.
    pub vram_ratio: f32,
    /// Estimated quality relative to FP32 (the blend of both precisions' factors while blending).
    pub quality_factor: f32,
    /// Estimated speed relative to an FP32 step (1 / the step's time; both precisions' time
    /// counts while blending).
    pub speedup_factor: f32,
    /// The sampler's noise level at this step, when the schedule was driven by noise levels;
    /// `None` for fraction profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    /// The step's measured error when the schedule carries measurements (the table's error of
    /// `precision` at this step; while blending, `(1 - f) e[from] + f e[precision]`, a bound on
    /// the blend's error for norm-like errors); `None` otherwise. Recomputed, never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<f64>,
}

/// The precision of every step of one generation, with its estimated cost.
///
/// # Estimates
///
/// * `estimated_speedup` is the total time of the run at FP32 over its total time on this
///   schedule: `n / Σ 1/s_i` for per-step speedups `s_i`, the harmonic mean. Time adds up over
///   steps and speedups do not, so this is the figure a stopwatch would show if the factors held;
///   the seed crate's arithmetic mean overstates it (Balanced at 20 steps: 2.42x, not 2.63x).
/// * `avg_vram_ratio` is the mean over steps of the weight memory resident, relative to one FP32
///   copy, counting the per-block scales of INT4/INT8 (4.5 and 8.5 bits a weight); a step that
///   blends holds two copies. `peak_vram_ratio` is its maximum, which is what must fit.
/// * `avg_quality_factor` is the mean of the per-step quality factors.
///
/// With seed constants (`estimate_source` [`EstimateSource::SeedConstants`]) the factors are
/// heuristics. A schedule built from measurements ([`PrecisionSchedule::from_measurements`],
/// [`PrecisionSchedule::solve`]; [`EstimateSource::Measured`]) instead takes each step's time
/// from the measured per-precision costs: `estimated_speedup` is `n c[FP32]` over the sum of the
/// steps' costs, `predicted_cost` that sum (seconds, if the costs are seconds a step) and
/// `predicted_error` the sum of the steps' measured errors.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset};
///
/// let s = quick_schedule(ProfilePreset::Balanced, 20)?;
/// assert_eq!(s.precision_at(0), Ok(Precision::INT4));
/// assert_eq!(s.transitions, vec![(5, Precision::INT4, Precision::INT8), (10, Precision::INT8, Precision::FP16)]);
/// // 20 steps at FP32 time 20; here 5/4 + 5/2.5 + 10/2 = 8.25.
/// assert!((s.estimated_speedup - 20.0 / 8.25).abs() < 1e-5);
/// println!("{}", s.format_timeline());
/// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScheduleData")]
pub struct PrecisionSchedule {
    /// The configuration the schedule was generated from.
    pub config: ScheduleConfig,
    /// The name of the profile used.
    pub profile_name: String,
    /// One entry a step, `steps[i].step == i`.
    pub steps: Vec<StepPrecision>,
    /// Every precision change: (the first step at the new precision, old, new).
    pub transitions: Vec<(u32, Precision, Precision)>,
    /// Mean weight memory resident relative to one FP32 copy (effective bits).
    pub avg_vram_ratio: f32,
    /// Largest weight memory resident at any step relative to one FP32 copy (effective bits).
    pub peak_vram_ratio: f32,
    /// Mean estimated quality relative to FP32.
    pub avg_quality_factor: f32,
    /// Total FP32 time over total scheduled time.
    pub estimated_speedup: f32,
    /// Where the estimates come from.
    #[serde(default)]
    pub estimate_source: EstimateSource,
    /// The measured errors and costs the estimates come from, when `estimate_source` is
    /// [`EstimateSource::Measured`]; one table row a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<ErrorTable>,
    /// With measurements: the predicted cost of the run, the sum of the steps' costs (blending
    /// steps count both precisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_cost: Option<f64>,
    /// With measurements: the predicted total error, the sum of the steps' measured errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_error: Option<f64>,
}

impl PrecisionSchedule {
    /// Generates the schedule `config` describes.
    ///
    /// With a fraction profile, step `i` of `n` asks for the profile's precision at fraction
    /// `i / n` (computed in `f32`, the type of the zone boundaries). With a noise-level profile
    /// ([`ScheduleConfig::active_noise_profile`]), step `i` asks for the profile's precision at
    /// `sigmas(n)[i]` of [`ScheduleConfig::effective_noise`] (the `NoiseAdaptive` preset without a
    /// noise schedule uses EDM's Karras default, which the schedule's `config.noise` then
    /// records). The asked precision becomes the cheapest supported precision at or above it.
    /// Each change of precision is then blended as `config.transition_strategy` says (see
    /// [`PrecisionSchedule::from_precisions`]). When a noise schedule is in force, every step
    /// records its sigma.
    ///
    /// # Errors
    ///
    /// * [`AdaptiveError::ScheduleError`] or [`AdaptiveError::ProfileError`] from
    ///   [`ScheduleConfig::validate`], or from the noise schedule's
    ///   [`sigmas`](crate::noise::NoiseSchedule::sigmas) (for example more than
    ///   [`crate::noise::MAX_STEPS`] steps, or a family that cannot give `n` distinct levels);
    /// * [`AdaptiveError::UnsupportedPrecision`] under `strict_capabilities` when a zone asks for a
    ///   precision with nothing supported at or above it;
    /// * [`AdaptiveError::QualityConstraint`] when the average quality is below `min_quality`.
    pub fn generate(mut config: ScheduleConfig) -> Result<Self> {
        config.validate()?;
        let noise = config.effective_noise();
        let sigmas = match &noise {
            Some(schedule) => Some(schedule.sigmas(config.total_steps as usize)?),
            None => None,
        };
        config.noise = noise;
        let resolve = |asked: Precision| {
            if config.strict_capabilities {
                config.capabilities.require_at_or_above(asked)
            } else {
                Ok(config.capabilities.best_supported(asked))
            }
        };
        let (name, precisions) = match (config.active_noise_profile(), &config.noise, &sigmas) {
            (Some(profile), Some(schedule), Some(levels)) => {
                let kind = schedule.kind();
                let mut precisions = Vec::with_capacity(config.total_steps as usize);
                for &level in &levels[..config.total_steps as usize] {
                    precisions.push(resolve(profile.precision_at_sigma(kind, level)?)?);
                }
                (profile.name, precisions)
            }
            _ => {
                let profile = config.profile();
                let precisions = fraction_precisions(&profile, config.total_steps, resolve)?;
                (profile.name, precisions)
            }
        };
        let mut schedule = PrecisionSchedule::from_precisions(config, name, &precisions)?;
        if let Some(levels) = sigmas {
            for (step, sigma) in schedule.steps.iter_mut().zip(levels) {
                step.sigma = Some(sigma);
            }
        }
        if schedule.avg_quality_factor < schedule.config.min_quality {
            return Err(AdaptiveError::QualityConstraint {
                actual: schedule.avg_quality_factor,
                threshold: schedule.config.min_quality,
            });
        }
        Ok(schedule)
    }

    /// Builds a schedule from one precision a step and the measured errors and costs `table`
    /// (one row a step), blending changes as `config.transition_strategy` says. The schedule's
    /// `estimate_source` is [`EstimateSource::Measured`]: `estimated_speedup` is `n c[FP32]`
    /// over the sum of the steps' measured costs, `predicted_cost` that sum, `predicted_error`
    /// the sum of the steps' measured errors (see [`StepPrecision::error`]). Steps carry the
    /// table's sigmas if it has them, else those of `config.noise` if set.
    /// `config.min_quality` and capabilities are not checked here.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if the table is invalid, has no FP32 column (the
    /// speedup's baseline) or a zero FP32 cost, has a different number of steps, lacks a
    /// precision the schedule uses, or gives a step zero cost; or as
    /// [`PrecisionSchedule::from_precisions`].
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision::{FP16, FP32, INT8};
    /// use haagenti_adaptive_schedule::{EstimateSource, PrecisionSchedule, ScheduleConfig};
    /// use haagenti_adaptive_schedule::solver::ErrorTable;
    ///
    /// // Seconds a step: INT8 0.5, FP16 1, FP32 2.
    /// let table = ErrorTable::new(
    ///     vec![INT8, FP16, FP32],
    ///     None,
    ///     vec![vec![0.1, 0.01, 0.0], vec![0.3, 0.02, 0.0]],
    ///     vec![0.5, 1.0, 2.0],
    /// )?;
    /// let s = PrecisionSchedule::from_measurements(ScheduleConfig::default(), "mine", &[INT8, FP16], table)?;
    /// assert_eq!(s.estimate_source, EstimateSource::Measured);
    /// assert_eq!(s.predicted_cost, Some(1.5));
    /// assert_eq!(s.predicted_error, Some(0.1 + 0.02));
    /// assert!((s.estimated_speedup - 4.0 / 1.5).abs() < 1e-6);
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn from_measurements(
        config: ScheduleConfig,
        profile_name: impl Into<String>,
        precisions: &[Precision],
        table: ErrorTable,
    ) -> Result<Self> {
        table.validate()?;
        if table.steps() != precisions.len() {
            return Err(AdaptiveError::ScheduleError(format!(
                "the error table has {} steps for a schedule of {}",
                table.steps(),
                precisions.len()
            )));
        }
        let mut schedule = PrecisionSchedule::from_precisions(config, profile_name, precisions)?;
        let sigmas = match (&table.sigmas, &schedule.config.noise) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(noise)) => Some(noise.sigmas(precisions.len())?),
            (None, None) => None,
        };
        if let Some(levels) = sigmas {
            for (step, sigma) in schedule.steps.iter_mut().zip(levels) {
                step.sigma = Some(sigma);
            }
        }
        schedule.measurements = Some(table);
        schedule.recompute()?;
        Ok(schedule)
    }

    /// Runs the error-budget solver ([`solver::solve`]) on `table` and builds the schedule of
    /// its cheapest assignment with [`PrecisionSchedule::from_measurements`]. The profile name
    /// says which bound was met (`solved: total error <= B` or `solved: step error <= tau`).
    ///
    /// `options` decides the candidate precisions (pass
    /// [`SolveOptions::for_capabilities`]`(&config.capabilities)` to honour the device), the
    /// minimum gap between transitions and the most resident precisions.
    ///
    /// # Errors
    ///
    /// As [`solver::solve`] (including no assignment meeting the bound) and
    /// [`PrecisionSchedule::from_measurements`].
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision::{FP32, INT8};
    /// use haagenti_adaptive_schedule::{PrecisionSchedule, ScheduleConfig};
    /// use haagenti_adaptive_schedule::solver::{ErrorBound, ErrorTable, SolveOptions};
    ///
    /// let table = ErrorTable::new(
    ///     vec![INT8, FP32],
    ///     None,
    ///     vec![vec![0.1, 0.0], vec![0.1, 0.0], vec![0.5, 0.0]],
    ///     vec![1.0, 4.0],
    /// )?;
    /// let s = PrecisionSchedule::solve(
    ///     ScheduleConfig::default(),
    ///     table,
    ///     &SolveOptions::default(),
    ///     &ErrorBound::Total(0.25),
    /// )?;
    /// assert_eq!(s.steps.iter().map(|st| st.precision).collect::<Vec<_>>(), vec![INT8, INT8, FP32]);
    /// assert_eq!(s.predicted_cost, Some(6.0));
    /// assert!((s.estimated_speedup - 2.0).abs() < 1e-6);
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn solve(
        config: ScheduleConfig,
        table: ErrorTable,
        options: &SolveOptions,
        bound: &ErrorBound,
    ) -> Result<Self> {
        let assignment = solver::solve(&table, options, bound)?;
        let name = match bound {
            ErrorBound::Total(b) => format!("solved: total error <= {b}"),
            ErrorBound::MaxPerStep(t) => format!("solved: step error <= {t}"),
            ErrorBound::PerStep(_) => "solved: per-step bounds".to_owned(),
        };
        PrecisionSchedule::from_measurements(config, name, &assignment.precisions, table)
    }

    /// Builds a schedule from one precision a step, blending each change as
    /// `config.transition_strategy` says; `config.total_steps` is set to `precisions.len()`.
    ///
    /// A change at step `t` starts a blend over the first `w` steps of the new run, where `w` is
    /// the strategy's window for the run's length ([`TransitionStrategy::window_for`]) cut to the
    /// run's length, with factors [`TransitionStrategy::blend_factor`]`(k, w)` rising towards 1.
    /// `Immediate` blends nothing. Capabilities and `min_quality` are not checked here.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] when `precisions` is empty or the configuration (with
    /// `total_steps` replaced) does not validate.
    pub fn from_precisions(
        mut config: ScheduleConfig,
        profile_name: impl Into<String>,
        precisions: &[Precision],
    ) -> Result<Self> {
        let n = u32::try_from(precisions.len()).map_err(|_| {
            AdaptiveError::ScheduleError(format!("{} steps is too many", precisions.len()))
        })?;
        config.total_steps = n;
        config.validate()?;
        let strategy = config.transition_strategy;
        let window = strategy.window_for(n);
        let mut blends = vec![None; precisions.len()];
        if strategy != TransitionStrategy::Immediate {
            let mut t = 1;
            while t < precisions.len() {
                if precisions[t] != precisions[t - 1] {
                    let run = precisions[t..]
                        .iter()
                        .take_while(|&&p| p == precisions[t])
                        .count();
                    let w = window.min(run as u32);
                    for k in 0..w {
                        blends[t + k as usize] = Some(strategy.blend_factor(k, w));
                    }
                    t += run;
                } else {
                    t += 1;
                }
            }
        }
        let steps = precisions
            .iter()
            .zip(blends)
            .enumerate()
            .map(|(i, (&precision, blend_factor))| StepPrecision {
                step: i as u32,
                precision,
                is_transition: false,
                blend_factor,
                vram_ratio: 0.0,
                quality_factor: 0.0,
                speedup_factor: 0.0,
                sigma: None,
                error: None,
            })
            .collect();
        let mut schedule = PrecisionSchedule {
            config,
            profile_name: profile_name.into(),
            steps,
            transitions: Vec::new(),
            avg_vram_ratio: 0.0,
            peak_vram_ratio: 0.0,
            avg_quality_factor: 0.0,
            estimated_speedup: 0.0,
            estimate_source: EstimateSource::SeedConstants,
            measurements: None,
            predicted_cost: None,
            predicted_error: None,
        };
        schedule.recompute()?;
        Ok(schedule)
    }

    /// Recomputes everything derived from each step's `precision` and `blend_factor`: the
    /// `step` indices, `is_transition` marks, the `transitions` list, the per-step estimates and
    /// the averages, and with measurements each step's error, the predicted cost and error and
    /// `estimate_source` ([`EstimateSource::Measured`] exactly when `measurements` is set). Call
    /// it after changing steps by hand (the transition planner does).
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] when there are no steps, a blend factor is not a
    /// number in `[0, 1]` or sits in the first run (which has no previous precision to blend
    /// from), a sigma is NaN, infinite or negative, or the measurements do not fit (see
    /// [`PrecisionSchedule::from_measurements`]).
    pub fn recompute(&mut self) -> Result<()> {
        if self.steps.is_empty() {
            return Err(AdaptiveError::ScheduleError(
                "a schedule needs at least 1 step".into(),
            ));
        }
        if let Some((i, s)) = self.steps.iter().enumerate().find_map(|(i, st)| {
            st.sigma
                .filter(|s| !(s.is_finite() && *s >= 0.0))
                .map(|s| (i, s))
        }) {
            return Err(AdaptiveError::ScheduleError(format!(
                "step {i} has sigma {s}, not a finite non-negative noise level"
            )));
        }
        let measured = match &self.measurements {
            Some(table) => Some(Measured::new(table, self.steps.len())?),
            None => None,
        };
        self.config.total_steps = self.steps.len() as u32;
        self.transitions.clear();
        let mut previous: Option<Precision> = None; // the precision of the run before this one
        let mut vram_sum = 0.0f64;
        let mut quality_sum = 0.0f64;
        let mut time_sum = 0.0f64;
        let mut error_sum = 0.0f64;
        let mut peak = 0.0f32;
        for i in 0..self.steps.len() {
            let before = if i == 0 {
                None
            } else {
                Some(self.steps[i - 1].precision)
            };
            let step = &mut self.steps[i];
            step.step = i as u32;
            let p = step.precision;
            step.is_transition = before.is_some_and(|b| b != p);
            if step.is_transition {
                previous = before;
                self.transitions.push((i as u32, previous.unwrap_or(p), p));
            }
            let time_of = |q: Precision| -> Result<f64> {
                match &measured {
                    Some(m) => m.cost(q, i),
                    None => Ok(f64::from(1.0 / q.speedup_factor())),
                }
            };
            let error_of = |q: Precision| -> Result<Option<f64>> {
                match &measured {
                    Some(m) => m.error(q, i).map(Some),
                    None => Ok(None),
                }
            };
            let (vram, quality, time, error) = match step.blend_factor {
                None => (
                    p.effective_vram_ratio(),
                    p.quality_factor(),
                    time_of(p)?,
                    error_of(p)?,
                ),
                Some(f) => {
                    if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                        return Err(AdaptiveError::ScheduleError(format!(
                            "step {i} has blend factor {f}, not a number in [0, 1]"
                        )));
                    }
                    let Some(from) = previous else {
                        return Err(AdaptiveError::ScheduleError(format!(
                            "step {i} blends but no earlier precision precedes it"
                        )));
                    };
                    let f64f = f64::from(f);
                    let error = match (error_of(from)?, error_of(p)?) {
                        (Some(a), Some(b)) => Some((1.0 - f64f) * a + f64f * b),
                        _ => None,
                    };
                    (
                        from.effective_vram_ratio() + p.effective_vram_ratio(),
                        (1.0 - f) * from.quality_factor() + f * p.quality_factor(),
                        time_of(from)? + time_of(p)?,
                        error,
                    )
                }
            };
            let baseline = measured.as_ref().map_or(1.0, |m| m.fp32_cost);
            step.vram_ratio = vram;
            step.quality_factor = quality;
            step.speedup_factor = (baseline / time) as f32;
            step.error = error;
            peak = peak.max(vram);
            vram_sum += f64::from(vram);
            quality_sum += f64::from(quality);
            time_sum += time;
            error_sum += error.unwrap_or(0.0);
        }
        let n = self.steps.len() as f64;
        self.avg_vram_ratio = (vram_sum / n) as f32;
        self.peak_vram_ratio = peak;
        self.avg_quality_factor = (quality_sum / n) as f32;
        match &measured {
            Some(m) => {
                self.estimated_speedup = (n * m.fp32_cost / time_sum) as f32;
                self.predicted_cost = Some(time_sum);
                self.predicted_error = Some(error_sum);
                self.estimate_source = EstimateSource::Measured;
            }
            None => {
                self.estimated_speedup = (n / time_sum) as f32;
                self.predicted_cost = None;
                self.predicted_error = None;
                self.estimate_source = EstimateSource::SeedConstants;
            }
        }
        Ok(())
    }

    /// The number of steps.
    pub fn total_steps(&self) -> u32 {
        self.steps.len() as u32
    }

    /// The precision of `step`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::InvalidStep`] past the end ([`PrecisionSchedule::get`] gives an `Option`).
    pub fn precision_at(&self, step: u32) -> Result<Precision> {
        self.step_info(step).map(|s| s.precision)
    }

    /// Everything about `step`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::InvalidStep`] past the end ([`PrecisionSchedule::get`] gives an `Option`).
    pub fn step_info(&self, step: u32) -> Result<&StepPrecision> {
        self.get(step).ok_or(AdaptiveError::InvalidStep {
            step,
            total_steps: self.total_steps(),
        })
    }

    /// Everything about `step`, or `None` past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision;
    /// use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset};
    ///
    /// let s = quick_schedule(ProfilePreset::Balanced, 20)?;
    /// assert_eq!(s.get(5).map(|st| st.precision), Some(Precision::INT8));
    /// assert!(s.get(20).is_none());
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn get(&self, step: u32) -> Option<&StepPrecision> {
        self.steps.get(step as usize)
    }

    /// Everything about `step`: the same as [`PrecisionSchedule::step_info`].
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::InvalidStep`] past the end.
    pub fn require_step(&self, step: u32) -> Result<&StepPrecision> {
        self.step_info(step)
    }

    /// The first transition strictly after step `after_step`.
    pub fn next_transition(&self, after_step: u32) -> Option<(u32, Precision, Precision)> {
        let i = self.transitions.partition_point(|t| t.0 <= after_step);
        self.transitions.get(i).copied()
    }

    /// The steps that run at `precision`, in order (inline for up to 32 steps, as in the seed
    /// crate).
    pub fn steps_at_precision(&self, precision: Precision) -> SmallVec<[u32; 32]> {
        self.steps
            .iter()
            .filter(|s| s.precision == precision)
            .map(|s| s.step)
            .collect()
    }

    /// Each precision used, in fidelity order, with its number of steps and share of the run.
    pub fn precision_distribution(&self) -> Vec<(Precision, usize, f32)> {
        let n = self.steps.len().max(1) as f32;
        Precision::ALL
            .iter()
            .filter_map(|&p| {
                let count = self.steps.iter().filter(|s| s.precision == p).count();
                (count > 0).then(|| (p, count, count as f32 / n))
            })
            .collect()
    }

    /// The seed crate's two-line timeline: `Step: ` and the number of every fifth step (`{:2} `
    /// each), then `Prec: ` and one character a step (`4` INT4, `8` INT8, `B` BF16, `H` FP16,
    /// `F` FP32), each line ending in a newline. [`PrecisionSchedule::format_runs`] gives a
    /// compact summary of the runs instead.
    ///
    /// ```
    /// # use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset};
    /// let s = quick_schedule(ProfilePreset::Balanced, 12)?;
    /// assert_eq!(s.format_timeline(), "Step:  0  5 10 \nPrec: 444888HHHHHH\n");
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn format_timeline(&self) -> String {
        let mut out = String::from("Step: ");
        for step in self.steps.iter().filter(|s| s.step % 5 == 0) {
            let _ = write!(out, "{:2} ", step.step);
        }
        out.push_str("\nPrec: ");
        out.extend(self.steps.iter().map(|s| match s.precision {
            Precision::INT4 => '4',
            Precision::INT8 => '8',
            Precision::BF16 => 'B',
            Precision::FP16 => 'H',
            Precision::FP32 => 'F',
        }));
        out.push('\n');
        out
    }

    /// A one-line summary of the run: a bar with one character a step (sampled to 60 columns for
    /// longer runs; `4` INT4, `8` INT8, `b` BF16, `h` FP16, `F` FP32), then each run of one
    /// precision as `PRECISION first-last`.
    ///
    /// When the steps carry sigmas a second line follows, `sigma: ` and the sigma (4 significant
    /// digits) at the first step of each run and at the last step, as `value@step`.
    ///
    /// ```
    /// # use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset, PrecisionSchedule, ScheduleConfig};
    /// let s = quick_schedule(ProfilePreset::Balanced, 8)?;
    /// assert_eq!(s.format_runs(), "[4488hhhh] INT4 0-1 | INT8 2-3 | FP16 4-7");
    ///
    /// let noisy = PrecisionSchedule::generate(
    ///     ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive).steps(8).min_quality(0.0),
    /// )?;
    /// // Karras sigmas 80, 35.0, 13.7, 4.64, 1.29, 0.267, 0.0352, 0.002: INT4 above 10, INT8 above 1.
    /// assert_eq!(
    ///     noisy.format_runs(),
    ///     "[44488hhh] INT4 0-2 | INT8 3-4 | FP16 5-7\nsigma: 80@0 | 4.637@3 | 0.2675@5 | 0.002@7"
    /// );
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn format_runs(&self) -> String {
        const WIDTH: usize = 60;
        let symbol = |p: Precision| match p {
            Precision::INT4 => '4',
            Precision::INT8 => '8',
            Precision::BF16 => 'b',
            Precision::FP16 => 'h',
            Precision::FP32 => 'F',
        };
        let n = self.steps.len();
        let columns = n.min(WIDTH);
        let mut out = String::from("[");
        for c in 0..columns {
            let step = c * n / columns.max(1);
            out.push(symbol(self.steps[step].precision));
        }
        out.push(']');
        let mut start = 0;
        let mut first = true;
        for i in 1..=n {
            if i == n || self.steps[i].precision != self.steps[start].precision {
                let sep = if first { " " } else { " | " };
                first = false;
                let _ = write!(
                    out,
                    "{sep}{} {}-{}",
                    self.steps[start].precision,
                    start,
                    i - 1
                );
                start = i;
            }
        }
        if self.steps.iter().any(|st| st.sigma.is_some()) {
            out.push_str("\nsigma:");
            let mut points: Vec<usize> = std::iter::once(0)
                .chain(self.transitions.iter().map(|t| t.0 as usize))
                .collect();
            if points.last() != Some(&(n - 1)) {
                points.push(n - 1);
            }
            for (k, &i) in points.iter().enumerate() {
                let sep = if k == 0 { " " } else { " | " };
                let value = self.steps[i]
                    .sigma
                    .map_or_else(|| "-".to_owned(), significant);
                let _ = write!(out, "{sep}{value}@{i}");
            }
        }
        out
    }
}

/// `x` with 4 significant digits, without trailing zeros (`80`, `7.519`, `0.002`).
fn significant(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A schedule's measurements, checked against its steps.
struct Measured<'a> {
    table: &'a ErrorTable,
    fp32_cost: f64,
}

impl<'a> Measured<'a> {
    fn new(table: &'a ErrorTable, steps: usize) -> Result<Self> {
        table.validate()?;
        if table.steps() != steps {
            return Err(AdaptiveError::ScheduleError(format!(
                "the error table has {} steps for a schedule of {steps}",
                table.steps()
            )));
        }
        let Some(j) = table.precisions.iter().position(|&p| p == Precision::FP32) else {
            return Err(AdaptiveError::ScheduleError(
                "the error table has no FP32 column: the speedup over FP32 needs its cost".into(),
            ));
        };
        let fp32_cost = table.costs[j];
        if fp32_cost <= 0.0 {
            return Err(AdaptiveError::ScheduleError(
                "the error table's FP32 cost is 0: the speedup over FP32 needs a positive cost"
                    .into(),
            ));
        }
        Ok(Measured { table, fp32_cost })
    }

    fn column(&self, p: Precision, step: usize) -> Result<usize> {
        self.table
            .precisions
            .iter()
            .position(|&q| q == p)
            .ok_or_else(|| {
                AdaptiveError::ScheduleError(format!(
                    "step {step} runs {p}, which the error table does not measure"
                ))
            })
    }

    fn cost(&self, p: Precision, step: usize) -> Result<f64> {
        let c = self.table.costs[self.column(p, step)?];
        if c <= 0.0 {
            return Err(AdaptiveError::ScheduleError(format!(
                "step {step} runs {p}, whose measured cost is 0"
            )));
        }
        Ok(c)
    }

    fn error(&self, p: Precision, step: usize) -> Result<f64> {
        Ok(self.table.errors[step][self.column(p, step)?])
    }
}

/// Step `i` of `n` asks for `profile`'s precision at fraction `i / n` (in `f32`), resolved
/// against the device by `resolve`.
fn fraction_precisions(
    profile: &crate::PrecisionProfile,
    n: u32,
    resolve: impl Fn(Precision) -> Result<Precision>,
) -> Result<Vec<Precision>> {
    let mut resolved = Vec::with_capacity(profile.zones.len());
    for zone in &profile.zones {
        resolved.push(resolve(zone.precision)?);
    }
    let mut precisions = Vec::with_capacity(n as usize);
    let mut zone = 0;
    for i in 0..n {
        let fraction = i as f32 / n as f32;
        // Fractions rise with i, so the zone index only moves forward.
        while zone < profile.zones.len() && !profile.zones[zone].contains(fraction) {
            zone += 1;
        }
        let Some(&p) = resolved.get(zone) else {
            return Err(AdaptiveError::ProfileError(format!(
                "no zone of profile {:?} holds fraction {fraction}",
                profile.name
            )));
        };
        precisions.push(p);
    }
    Ok(precisions)
}

/// The serialised form of a schedule, checked before it becomes a [`PrecisionSchedule`].
#[derive(Deserialize)]
struct ScheduleData {
    config: ScheduleConfig,
    profile_name: String,
    steps: Vec<StepPrecision>,
    transitions: Vec<(u32, Precision, Precision)>,
    #[serde(default)]
    estimate_source: EstimateSource,
    #[serde(default)]
    measurements: Option<ErrorTable>,
}

impl TryFrom<ScheduleData> for PrecisionSchedule {
    type Error = AdaptiveError;

    /// Checks the step indices and the transitions list against the steps, and recomputes the
    /// estimates from the steps rather than trusting the stored figures.
    fn try_from(d: ScheduleData) -> Result<Self> {
        if d.steps.len() != d.config.total_steps as usize {
            return Err(AdaptiveError::ScheduleError(format!(
                "{} steps listed for a schedule of {}",
                d.steps.len(),
                d.config.total_steps
            )));
        }
        if let Some((i, s)) = d
            .steps
            .iter()
            .enumerate()
            .find(|(i, s)| s.step as usize != *i)
        {
            return Err(AdaptiveError::ScheduleError(format!(
                "entry {i} is labelled step {}",
                s.step
            )));
        }
        if (d.estimate_source == EstimateSource::Measured) != d.measurements.is_some() {
            return Err(AdaptiveError::ScheduleError(format!(
                "estimate_source is {:?} but the schedule {} measurements",
                d.estimate_source,
                if d.measurements.is_some() {
                    "carries"
                } else {
                    "carries no"
                }
            )));
        }
        let mut schedule = PrecisionSchedule {
            config: d.config,
            profile_name: d.profile_name,
            steps: d.steps,
            transitions: Vec::new(),
            avg_vram_ratio: 0.0,
            peak_vram_ratio: 0.0,
            avg_quality_factor: 0.0,
            estimated_speedup: 0.0,
            estimate_source: d.estimate_source,
            measurements: d.measurements,
            predicted_cost: None,
            predicted_error: None,
        };
        schedule.recompute()?;
        if schedule.transitions != d.transitions {
            return Err(AdaptiveError::ScheduleError(
                "the transitions list does not match the steps' precisions".into(),
            ));
        }
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProfilePreset, quick_schedule};
    use haagenti_adaptive_core::PrecisionCapabilities;

    #[test]
    fn balanced_20_steps_speedup_is_the_harmonic_figure() {
        let s = quick_schedule(ProfilePreset::Balanced, 20).unwrap();
        // 5 INT4, 5 INT8, 10 FP16: FP32 time 20 over 5/4 + 5/2.5 + 10/2 = 8.25.
        assert_eq!(format!("{:.2}", s.estimated_speedup), "2.42");
        assert!((s.estimated_speedup - 2.424_242_4).abs() < 1e-5);
        // The seed's arithmetic mean would be (5*4 + 5*2.5 + 10*2) / 20 = 2.625.
        let arithmetic: f32 = s
            .steps
            .iter()
            .map(|st| st.precision.speedup_factor())
            .sum::<f32>()
            / 20.0;
        assert!((arithmetic - 2.625).abs() < 1e-6);
        let vram = (5.0 * 0.140625 + 5.0 * 0.265625 + 10.0 * 0.5) / 20.0;
        assert!((s.avg_vram_ratio - vram).abs() < 1e-6);
        assert_eq!(s.peak_vram_ratio, 0.5);
        let quality = (5.0 * 0.92 + 5.0 * 0.97 + 10.0 * 0.998) / 20.0;
        assert!((s.avg_quality_factor - quality).abs() < 1e-6);
        assert_eq!(s.estimate_source, EstimateSource::SeedConstants);
    }

    #[test]
    fn queries_follow_the_steps() {
        let s = quick_schedule(ProfilePreset::Balanced, 20).unwrap();
        assert_eq!(s.precision_at(4), Ok(Precision::INT4));
        assert_eq!(s.precision_at(5), Ok(Precision::INT8));
        assert_eq!(
            s.precision_at(20),
            Err(AdaptiveError::InvalidStep {
                step: 20,
                total_steps: 20
            })
        );
        assert!(s.get(20).is_none());
        assert_eq!(s.get(19).map(|st| st.step), Some(19));
        assert!(s.step_info(5).unwrap().is_transition);
        assert!(!s.step_info(6).unwrap().is_transition);
        assert_eq!(
            s.require_step(20),
            Err(AdaptiveError::InvalidStep {
                step: 20,
                total_steps: 20
            })
        );
        assert_eq!(
            s.next_transition(0),
            Some((5, Precision::INT4, Precision::INT8))
        );
        assert_eq!(
            s.next_transition(5),
            Some((10, Precision::INT8, Precision::FP16))
        );
        assert_eq!(s.next_transition(10), None);
        assert_eq!(
            s.steps_at_precision(Precision::INT8).as_slice(),
            &[5, 6, 7, 8, 9]
        );
        assert!(!s.steps_at_precision(Precision::FP16).spilled());
        assert!(s.steps_at_precision(Precision::FP32).is_empty());
        assert_eq!(
            s.precision_distribution(),
            vec![
                (Precision::INT4, 5, 0.25),
                (Precision::INT8, 5, 0.25),
                (Precision::FP16, 10, 0.5)
            ]
        );
    }

    #[test]
    fn gradual_blends_count_both_copies() {
        let config = ScheduleConfig::with_preset(ProfilePreset::Balanced)
            .steps(20)
            .strategy(TransitionStrategy::Gradual { steps: 2 });
        let s = PrecisionSchedule::generate(config).unwrap();
        let blends: Vec<_> = s.steps.iter().map(|st| st.blend_factor).collect();
        let third = 1.0 / 3.0;
        assert_eq!(blends[4], None);
        assert!((blends[5].unwrap() - third).abs() < 1e-6);
        assert!((blends[6].unwrap() - 2.0 * third).abs() < 1e-6);
        assert_eq!(blends[7], None);
        assert!((blends[10].unwrap() - third).abs() < 1e-6);
        assert_eq!(s.steps[5].vram_ratio, 0.140625 + 0.265625);
        assert_eq!(s.peak_vram_ratio, 0.265625 + 0.5);
        // Step 5 runs INT4 and INT8: time 1/4 + 1/2.5.
        assert!((s.steps[5].speedup_factor - 1.0 / 0.65).abs() < 1e-5);
        let immediate = quick_schedule(ProfilePreset::Balanced, 20).unwrap();
        assert!(s.estimated_speedup < immediate.estimated_speedup);
    }

    #[test]
    fn capabilities_raise_precisions_or_fail_when_strict() {
        let legacy = ScheduleConfig::with_preset(ProfilePreset::Balanced)
            .steps(8)
            .capabilities(PrecisionCapabilities::legacy_gpu(4096));
        let s = PrecisionSchedule::generate(legacy.clone()).unwrap();
        assert!(s.steps.iter().all(|st| st.precision == Precision::FP16));
        assert!(s.transitions.is_empty());
        let strict = PrecisionSchedule::generate(legacy.strict(true)).unwrap();
        assert_eq!(strict.steps, s.steps);
        let int8_only = PrecisionCapabilities {
            supported: vec![Precision::INT8],
            ..PrecisionCapabilities::default()
        };
        let config = ScheduleConfig::default()
            .capabilities(int8_only)
            .min_quality(0.0)
            .strict(false);
        let lenient = PrecisionSchedule::generate(config.clone()).unwrap();
        assert!(
            lenient
                .steps
                .iter()
                .all(|st| st.precision == Precision::INT8)
        );
        assert_eq!(
            PrecisionSchedule::generate(config.strict(true)),
            Err(AdaptiveError::UnsupportedPrecision(Precision::FP16))
        );
    }

    #[test]
    fn quality_below_the_minimum_is_an_error() {
        let config = ScheduleConfig::with_preset(ProfilePreset::LowVram)
            .steps(10)
            .min_quality(0.96);
        match PrecisionSchedule::generate(config) {
            Err(AdaptiveError::QualityConstraint { actual, threshold }) => {
                assert!((actual - (4.0 * 0.92 + 6.0 * 0.97) / 10.0).abs() < 1e-6);
                assert_eq!(threshold, 0.96);
            }
            other => panic!("expected a quality error, got {other:?}"),
        }
        // One step of Balanced is INT4 alone: 0.92 passes the default 0.9, not 0.93.
        assert!(quick_schedule(ProfilePreset::Balanced, 1).is_ok());
        assert!(matches!(
            PrecisionSchedule::generate(
                ScheduleConfig::with_preset(ProfilePreset::Balanced)
                    .steps(1)
                    .min_quality(0.93)
            ),
            Err(AdaptiveError::QualityConstraint { .. })
        ));
    }

    #[test]
    fn timeline_is_the_seed_format() {
        let s = quick_schedule(ProfilePreset::Quality, 11).unwrap();
        let timeline = s.format_timeline();
        let [steps, precs, rest] = timeline.split('\n').collect::<Vec<_>>()[..] else {
            panic!("expected two lines ending in a newline")
        };
        assert_eq!(steps, "Step:  0  5 10 ");
        assert_eq!(precs.len(), "Prec: ".len() + 11);
        assert!(
            precs.starts_with("Prec: 8") && precs.ends_with('F'),
            "{precs}"
        );
        assert_eq!(rest, "");
    }

    #[test]
    fn runs_summary_is_one_line_and_samples_long_runs() {
        let s = quick_schedule(ProfilePreset::Balanced, 1000).unwrap();
        let line = s.format_runs();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(&format!(
            "[{}{}{}]",
            "4".repeat(15),
            "8".repeat(15),
            "h".repeat(30)
        )));
        assert!(
            line.ends_with("INT4 0-249 | INT8 250-499 | FP16 500-999"),
            "{line}"
        );
    }

    #[test]
    fn json_round_trips_and_rejects_inconsistent_schedules() {
        let config = ScheduleConfig::with_preset(ProfilePreset::Quality)
            .steps(40)
            .strategy(TransitionStrategy::StepAware);
        let s = PrecisionSchedule::generate(config).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"estimated_speedup\""));
        assert!(json.contains("\"precision\":\"INT8\""));
        assert!(json.contains("\"estimate_source\":\"seed-constants\""));
        assert!(!json.contains("sigma"));
        assert_eq!(serde_json::from_str::<PrecisionSchedule>(&json).unwrap(), s);

        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["steps"][0]["precision"] = "FP32".into();
        let err = serde_json::from_str::<PrecisionSchedule>(&v.to_string()).unwrap_err();
        assert!(err.to_string().contains("transitions"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["steps"][3]["step"] = 7.into();
        assert!(serde_json::from_str::<PrecisionSchedule>(&v.to_string()).is_err());
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["steps"].as_array_mut().unwrap().pop();
        assert!(serde_json::from_str::<PrecisionSchedule>(&v.to_string()).is_err());
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["steps"][4]["blend_factor"] = 1.5.into();
        assert!(serde_json::from_str::<PrecisionSchedule>(&v.to_string()).is_err());

        let step = StepPrecision {
            sigma: Some(14.6),
            ..s.steps[0].clone()
        };
        let json = serde_json::to_string(&step).unwrap();
        assert!(json.contains("\"sigma\":14.6"));
        assert_eq!(serde_json::from_str::<StepPrecision>(&json).unwrap(), step);
    }
}
