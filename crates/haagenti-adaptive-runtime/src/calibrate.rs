//! Calibration: measured per-step sensitivity to precision, measured costs, and the cheapest
//! schedule within an error budget, for any [`Denoiser`].

use std::time::Instant;

use haagenti_adaptive_core::{Precision, TransitionStrategy};
use serde::{Deserialize, Serialize};

use haagenti_adaptive_schedule::solver::{Assignment, ErrorBound, ErrorTable, SolveOptions, solve};

use crate::metrics::mse;
use crate::timing::{check_samples, fp32_trajectory, load_missing, release};
use crate::{
    CostSampling, Denoiser, Executor, Quality, Result, RunPlan, RuntimeError, StepCosts,
    measure_step_costs, time_plans,
};

/// Per-step sensitivity: `errors[i][j]` is the MSE of the final samples against the FP32 run when
/// step `i` alone runs at `precisions[j]` and every other step at FP32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityTable {
    /// Noise level at the start of each step.
    pub sigmas: Vec<f64>,
    /// The precisions measured (columns).
    pub precisions: Vec<Precision>,
    /// One row a step, one column a precision.
    pub errors: Vec<Vec<f64>>,
    /// The FP32 run's final samples.
    pub reference: Vec<f32>,
}

impl SensitivityTable {
    /// The error of step `i` at `p` (0 for FP32), if measured.
    pub fn error(&self, i: usize, p: Precision) -> Option<f64> {
        if p == Precision::FP32 {
            return Some(0.0);
        }
        let j = self.precisions.iter().position(|&q| q == p)?;
        self.errors.get(i).map(|row| row[j])
    }

    /// The predicted error of a schedule: the sum of its steps' errors (errors assumed additive).
    pub fn predict(&self, schedule: &[Precision]) -> Option<f64> {
        schedule
            .iter()
            .enumerate()
            .map(|(i, &p)| self.error(i, p))
            .sum()
    }
}

/// Measures the [`SensitivityTable`] on the calibration samples `x0` (`batch x dim`).
///
/// The FP32 trajectory is run once and its state before each step kept; each entry then reruns
/// only from step `i` (step `i` at `p`, the rest at FP32), so the cost is about
/// `precisions x steps² / 2` steps. `on_progress(done, total)` is called after each entry.
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] for `x0` of the wrong length, and the denoiser's errors.
pub fn sensitivity<D, F>(
    exec: &Executor,
    den: &mut D,
    x0: &[f32],
    batch: usize,
    precisions: &[Precision],
    on_progress: F,
) -> Result<SensitivityTable>
where
    D: Denoiser + ?Sized,
    F: FnMut(usize, usize),
{
    check_samples(den, x0, batch, "calibration samples")?;
    let states = fp32_trajectory(exec, den, x0, batch)?;
    sensitivity_from(exec, den, &states, batch, precisions, on_progress)
}

/// [`sensitivity`] from the FP32 trajectory `states` (`steps + 1` states, checked by the caller).
fn sensitivity_from<D, F>(
    exec: &Executor,
    den: &mut D,
    states: &[Vec<f32>],
    batch: usize,
    precisions: &[Precision],
    mut on_progress: F,
) -> Result<SensitivityTable>
where
    D: Denoiser + ?Sized,
    F: FnMut(usize, usize),
{
    let n = exec.steps();
    let fp32 = vec![Precision::FP32; n];
    let reference = states[n].clone();
    let others: Vec<Precision> = precisions
        .iter()
        .copied()
        .filter(|&p| p != Precision::FP32)
        .collect();
    let total = n * others.len();
    let mut errors = vec![vec![0.0; precisions.len()]; n];
    let mut done = 0;
    let fp32_loaded = load_missing(den, &[Precision::FP32])?;
    for (j, &p) in precisions.iter().enumerate() {
        if p == Precision::FP32 {
            continue;
        }
        let loaded = load_missing(den, &[p])?;
        let mut sched = fp32.clone();
        for i in 0..n {
            sched[i] = p;
            let mut x = states[i].clone();
            exec.advance(den, &mut x, batch, i, n, &sched)?;
            sched[i] = Precision::FP32;
            errors[i][j] = mse(&reference, &x)?;
            done += 1;
            on_progress(done, total);
        }
        release(den, &loaded);
    }
    release(den, &fp32_loaded);
    Ok(SensitivityTable {
        sigmas: exec.sigmas()[..n].to_vec(),
        precisions: precisions.to_vec(),
        errors,
        reference,
    })
}

/// The cheapest schedule whose predicted final error stays within `budget` (an MSE against the
/// FP32 run), under the solver's `options` (most resident precisions, each a copy of the
/// weights; fewest steps between transitions; supported precisions).
///
/// Errors of different steps add as vectors, so their RMS amplitudes add at most (triangle
/// inequality): the schedule crate's exact solver
/// ([`solve`](haagenti_adaptive_schedule::solver::solve)) runs on `sqrt(MSE)` per step against
/// [`ErrorBound::Total`]`(sqrt(budget))`. The candidates are the table's precisions and FP32 (zero
/// error), each if `costs` measured it; step `i` at `p` costs `costs.step(i, p)` and a change of
/// precision (and the first step) adds `costs.switch(p)`, so the solver's total cost is
/// [`StepCosts::predict`] of the plain schedule. The returned [`Assignment`]'s `total_error` is
/// the predicted RMS error bound, so its square is the predicted MSE.
///
/// # Errors
///
/// [`RuntimeError::Calibration`] for a budget that is negative or not finite, costs for another
/// step count, or no measured cost for any table precision; [`RuntimeError::Schedule`] when the
/// solver finds no schedule within the budget and residency limit (its message says why).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision::{FP32, INT4, INT8};
/// use haagenti_adaptive_runtime::{SensitivityTable, StepCosts, solve_budget};
/// use haagenti_adaptive_schedule::solver::SolveOptions;
///
/// let table = SensitivityTable {
///     sigmas: vec![10.0, 1.0, 0.1],
///     precisions: vec![INT4, INT8],
///     errors: vec![vec![0.01, 0.0001], vec![0.04, 0.0004], vec![1.0, 0.0001]],
///     reference: vec![],
/// };
/// let costs = StepCosts {
///     precisions: vec![INT4, INT8, FP32],
///     seconds: vec![vec![1.0, 2.0, 4.0]; 3],
///     switch_seconds: vec![0.0; 3],
///     batch: 1,
/// };
/// // RMS errors 0.1 + 0.2 + 0.01 fit in sqrt(0.1) = 0.316; INT4 at the last step would not.
/// let two = SolveOptions::default().max_resident(2);
/// let a = solve_budget(&table, &costs, 0.1, &two)?;
/// assert_eq!(a.precisions, vec![INT4, INT4, INT8]);
/// // With one resident precision, INT8 everywhere is the cheapest that fits.
/// let one = SolveOptions::default().max_resident(1);
/// assert_eq!(solve_budget(&table, &costs, 0.1, &one)?.precisions, vec![INT8; 3]);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn solve_budget(
    table: &SensitivityTable,
    costs: &StepCosts,
    budget: f64,
    options: &SolveOptions,
) -> Result<Assignment> {
    if !(budget.is_finite() && budget >= 0.0) {
        return Err(RuntimeError::Calibration(format!(
            "budget {budget} is not finite and non-negative"
        )));
    }
    let steps = table.errors.len();
    if costs.seconds.len() != steps {
        return Err(RuntimeError::Calibration(format!(
            "costs of {} steps for a sensitivity table of {steps}",
            costs.seconds.len()
        )));
    }
    let mut precisions: Vec<Precision> = table.precisions.clone();
    if !precisions.contains(&Precision::FP32) {
        precisions.push(Precision::FP32);
    }
    precisions.retain(|&p| costs.column(p).is_some());
    if precisions.is_empty() {
        return Err(RuntimeError::Calibration(
            "no precision has both a cost and an error".into(),
        ));
    }
    let cols: Vec<usize> = precisions.iter().filter_map(|&p| costs.column(p)).collect();
    let errors: Vec<Vec<f64>> = (0..steps)
        .map(|i| {
            precisions
                .iter()
                .map(|&p| table.error(i, p).map_or(f64::NAN, f64::sqrt))
                .collect()
        })
        .collect();
    let step_costs = costs
        .seconds
        .iter()
        .map(|row| cols.iter().map(|&j| row[j]).collect())
        .collect();
    let mean = |j: usize| costs.seconds.iter().map(|r| r[j]).sum::<f64>() / steps as f64;
    let errors_table = ErrorTable::new(
        precisions,
        None,
        errors,
        cols.iter().map(|&j| mean(j)).collect(),
    )?
    .with_step_costs(step_costs)?
    .with_switch_costs(cols.iter().map(|&j| costs.switch_seconds[j]).collect())?;
    Ok(solve(
        &errors_table,
        options,
        &ErrorBound::Total(budget.sqrt()),
    )?)
}

/// A plain schedule as the executor runs it: every change immediate, each precision resident
/// from its first step to its last in each run of steps, as the transition planner says.
fn immediate_plan(name: &str, precisions: &[Precision]) -> Result<RunPlan> {
    let config = haagenti_adaptive_schedule::ScheduleConfig::default()
        .strategy(TransitionStrategy::Immediate);
    let schedule =
        haagenti_adaptive_schedule::PrecisionSchedule::from_precisions(config, name, precisions)?;
    RunPlan::from_schedule(&schedule)
}

/// What [`calibrate`] does besides the model and the batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationOptions {
    /// The error budget: MSE against FP32 of the final samples on the calibration batch. `None`:
    /// the MSE the best of `baselines` measures there.
    pub budget: Option<f64>,
    /// Schedules to compare against (the seed presets, say): the best on the calibration batch
    /// sets the default budget, and it is checked beside the calibrated schedule.
    pub baselines: Vec<RunPlan>,
    /// Lower precisions the calibrated schedule may use besides FP32; one whose measured step
    /// costs FP32's or more is dropped (FP32 has no error).
    pub candidates: Vec<Precision>,
    /// Most distinct precisions the calibrated schedule may use (each a resident weight copy).
    pub max_resident: usize,
    /// Times each check runs, round-robin (see [`time_plans`]).
    pub repeats: usize,
    /// How step costs are sampled.
    pub cost_sampling: CostSampling,
    /// The solver's bound is tried at `budget * 2^j` for each `j` here; the cheapest predicted
    /// schedule whose measured MSE meets the budget wins (the bound adds per-step errors as if
    /// they never cancelled, so a schedule at the budget's bound measures far below it).
    pub bound_octaves: Vec<i32>,
    /// The share of the budget a schedule may measure on the calibration batch, in `(0, 1]`.
    /// Picking the cheapest of many schedules by their error on one small batch favours those
    /// that happened to do well on it: on the mixture (batch 4, 30 steps) the pick measured 3.5e-9
    /// there and 1.9e-8 on the held-out batch, where the best preset measured 8.5e-9 and 6.7e-9.
    pub headroom: f64,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            budget: None,
            baselines: Vec::new(),
            candidates: vec![
                Precision::INT4,
                Precision::INT8,
                Precision::BF16,
                Precision::FP16,
            ],
            max_resident: 2,
            repeats: 5,
            cost_sampling: CostSampling::default(),
            bound_octaves: (-6..=8).collect(),
            headroom: 0.5,
        }
    }
}

/// Which part of [`calibrate`] a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CalibrationPhase {
    /// Timing steps at each precision.
    Costs,
    /// Per-step sensitivity to each precision.
    Sensitivity,
    /// Running the baselines and the solver's candidates on the calibration batch.
    Search,
    /// Timed full runs on the calibration and held-out batches.
    Check,
}

/// A progress report of [`calibrate`]: `done` of `total` units of `phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibrationProgress {
    /// The phase.
    pub phase: CalibrationPhase,
    /// Units done.
    pub done: usize,
    /// Units in the phase.
    pub total: usize,
}

/// The batch a check ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckBatch {
    /// The batch the schedule was calibrated on.
    Calibration,
    /// A batch calibration never saw.
    HeldOut,
}

impl std::fmt::Display for CheckBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckBatch::Calibration => "calibration",
            CheckBatch::HeldOut => "held-out",
        })
    }
}

/// One schedule checked by timed full runs on one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRow {
    /// The schedule's name.
    pub name: String,
    /// The batch.
    pub batch: CheckBatch,
    /// Sum of per-step medians over the repeats (see [`TimedRun`](crate::TimedRun)).
    pub seconds: f64,
    /// Median absolute deviation of whole runs' times.
    pub seconds_spread: f64,
    /// Predicted speedup over FP32 from the calibration's step costs.
    pub predicted_speedup: f64,
    /// Quality against the FP32 run on the same batch.
    pub quality: Quality,
}

/// What [`calibrate`] measured and chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// The budget the schedule meets (MSE against FP32 on the calibration batch).
    pub budget: f64,
    /// The chosen schedule, as the executor runs it (named `calibrated`).
    pub plan: RunPlan,
    /// The solver's (additive, conservative) error bound for it, as an MSE.
    pub solver_bound_mse: f64,
    /// Its MSE measured on the calibration batch.
    pub calibration_mse: f64,
    /// Its predicted seconds on the calibration batch.
    pub predicted_seconds: f64,
    /// The best baseline on the calibration batch, by measured MSE, if any.
    pub best_preset: Option<String>,
    /// That baseline's MSE there.
    pub best_preset_calibration_mse: Option<f64>,
    /// Per-step errors on the calibration batch.
    pub sensitivity: SensitivityTable,
    /// Step costs on the calibration batch.
    pub costs: StepCosts,
    /// FP32, the calibrated schedule and the best baseline, timed on both batches.
    pub checks: Vec<CheckRow>,
    /// Seconds the calibration took.
    pub seconds: f64,
}

/// Calibrates a schedule for `den`: the cheapest one whose measured error on `x_cal` meets the
/// budget, checked by timed full runs on `x_cal` and on `x_heldout`.
///
/// Both batches are `batch x dim` initial noise of the same batch (at the executor's first
/// sigma). In order: the FP32 trajectory on `x_cal`; [`StepCosts`] from real steps on its states
/// ([`measure_step_costs`]); per-step [`sensitivity`] of the candidate precisions that cost less
/// than FP32; the baselines' measured MSE (the default budget is the best one's); the solver
/// ([`solve_budget`], with step and switch costs) over a range of bounds, keeping the cheapest
/// predicted schedule whose measured MSE meets [`CalibrationOptions::headroom`] of the budget;
/// then FP32, that schedule and the best
/// baseline timed round-robin on both batches, with `quality(reference, samples)` judging each
/// against FP32 on the same batch (pass [`Quality::from_mse`] for a model with nothing better).
/// `on_progress` hears each unit of work. Every precision the calibration loads it releases.
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] for batches of different or wrong length,
/// [`RuntimeError::Calibration`] for options that cannot run (zero repeats or residency, no
/// budget and no baselines, a headroom outside `(0, 1]`, a baseline of the wrong length) or no schedule that meets the
/// budget, and the denoiser's and `quality`'s errors.
///
/// # Examples
///
/// A model that is not the mixture: a fake whose INT8 evaluation adds a known error.
///
/// ```
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_runtime::{
///     CalibrationOptions, Denoiser, Executor, Quality, Result, RunPlan, Sampler, calibrate,
///     karras_sigmas,
/// };
///
/// /// Shrinks towards 0; INT8 adds 1e-3 to every output.
/// struct Shrink { resident: Vec<Precision> }
/// impl Denoiser for Shrink {
///     fn dim(&self) -> usize { 8 }
///     fn load(&mut self, p: Precision) -> Result<()> {
///         if !self.resident.contains(&p) { self.resident.push(p) }
///         Ok(())
///     }
///     fn release(&mut self, p: Precision) { self.resident.retain(|&q| q != p) }
///     fn resident_bytes(&self) -> usize { self.resident.len() * 64 }
///     fn denoise(&mut self, x: &[f32], _: usize, sigma: f64, p: Precision, out: &mut [f32]) -> Result<()> {
///         let shift = if p == Precision::INT8 { 1e-3 } else { 0.0 };
///         for (o, v) in out.iter_mut().zip(x) {
///             *o = *v / (1.0 + sigma as f32 * sigma as f32) + shift;
///         }
///         Ok(())
///     }
/// }
///
/// let exec = Executor::new(Sampler::Euler, karras_sigmas(6, 0.002, 80.0, 7.0)?)?;
/// let mut model = Shrink { resident: Vec::new() };
/// let x_cal: Vec<f32> = (0..16).map(|i| i as f32).collect();
/// let x_heldout: Vec<f32> = (0..16).map(|i| -(i as f32)).collect();
/// let options = CalibrationOptions {
///     budget: Some(1e-4),
///     candidates: vec![Precision::INT8],
///     repeats: 1,
///     ..CalibrationOptions::default()
/// };
/// let report = calibrate(&exec, &mut model, &x_cal, &x_heldout, &options, Quality::from_mse, |_| {})?;
/// assert!(report.calibration_mse <= 1e-4);
/// assert_eq!(report.plan.steps.len(), 6);
/// assert_eq!(model.resident_bytes(), 0);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
pub fn calibrate<D, Q, P>(
    exec: &Executor,
    den: &mut D,
    x_cal: &[f32],
    x_heldout: &[f32],
    options: &CalibrationOptions,
    mut quality: Q,
    mut on_progress: P,
) -> Result<CalibrationReport>
where
    D: Denoiser + ?Sized,
    Q: FnMut(&[f32], &[f32]) -> Result<Quality>,
    P: FnMut(CalibrationProgress),
{
    let start = Instant::now();
    let steps = exec.steps();
    let dim = den.dim().max(1);
    let batch = x_cal.len() / dim;
    check_samples(den, x_cal, batch, "calibration batch")?;
    check_samples(den, x_heldout, batch, "held-out batch")?;
    if options.repeats == 0 || options.max_resident == 0 {
        return Err(RuntimeError::Calibration(
            "repeats and max_resident must be positive".into(),
        ));
    }
    if let Some(b) = options.budget
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(RuntimeError::Calibration(format!(
            "budget {b} is not finite and non-negative"
        )));
    }
    if !(options.headroom > 0.0 && options.headroom <= 1.0) {
        return Err(RuntimeError::Calibration(format!(
            "headroom {} is outside (0, 1]",
            options.headroom
        )));
    }
    if options.budget.is_none() && options.baselines.is_empty() {
        return Err(RuntimeError::Calibration(
            "no budget and no baseline to take it from".into(),
        ));
    }
    for plan in &options.baselines {
        plan.validate(steps)?;
    }
    let mut measured: Vec<Precision> = options.candidates.clone();
    measured.push(Precision::FP32);
    measured.sort();
    measured.dedup();
    let loaded = load_missing(den, &measured)?;
    let result = calibrate_loaded(
        exec,
        den,
        x_cal,
        x_heldout,
        batch,
        &measured,
        options,
        &mut quality,
        &mut on_progress,
    );
    release(den, &loaded);
    let mut report = result?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// [`calibrate`] with every precision of `measured` resident.
#[allow(clippy::too_many_arguments)] // reason: the private body of `calibrate`
fn calibrate_loaded<D, Q, P>(
    exec: &Executor,
    den: &mut D,
    x_cal: &[f32],
    x_heldout: &[f32],
    batch: usize,
    measured: &[Precision],
    options: &CalibrationOptions,
    quality: &mut Q,
    on_progress: &mut P,
) -> Result<CalibrationReport>
where
    D: Denoiser + ?Sized,
    Q: FnMut(&[f32], &[f32]) -> Result<Quality>,
    P: FnMut(CalibrationProgress),
{
    let steps = exec.steps();
    let mut report = |phase, done, total| {
        on_progress(CalibrationProgress { phase, done, total });
    };
    let states = fp32_trajectory(exec, den, x_cal, batch)?;
    let costs = measure_step_costs(
        exec,
        den,
        &states,
        batch,
        measured,
        options.cost_sampling,
        |d, t| report(CalibrationPhase::Costs, d, t),
    )?;
    let fp32_cost = costs.mean_step(Precision::FP32).unwrap_or(f64::INFINITY);
    let lower: Vec<Precision> = options
        .candidates
        .iter()
        .copied()
        .filter(|&p| p != Precision::FP32 && costs.mean_step(p).is_some_and(|c| c < fp32_cost))
        .collect();
    let table = sensitivity_from(exec, den, &states, batch, &lower, |d, t| {
        report(CalibrationPhase::Sensitivity, d, t)
    })?;
    let reference = &states[steps];

    let octaves = options.bound_octaves.len();
    let search_total = options.baselines.len() + octaves;
    let mut search_done = 0;
    let mut best_baseline: Option<(f64, &RunPlan)> = None;
    for plan in &options.baselines {
        let rec = exec.run(den, plan, x_cal, batch, |_| {})?;
        let e = mse(reference, &rec.samples)?;
        if best_baseline.is_none_or(|b| e < b.0) {
            best_baseline = Some((e, plan));
        }
        search_done += 1;
        report(CalibrationPhase::Search, search_done, search_total);
    }
    let budget = options
        .budget
        .or(best_baseline.map(|(e, _)| e))
        .ok_or_else(|| RuntimeError::Calibration("no budget and no baseline".into()))?;
    let solve_options = SolveOptions::default().max_resident(options.max_resident);
    let mut tried: Vec<Vec<Precision>> = Vec::new();
    // (predicted seconds, measured MSE, solver bound, plan)
    let mut chosen: Option<(f64, f64, f64, RunPlan)> = None;
    for &j in &options.bound_octaves {
        search_done += 1;
        let bound = budget * 2f64.powi(j);
        if let Ok(candidate) = solve_budget(&table, &costs, bound, &solve_options)
            && !tried.contains(&candidate.precisions)
        {
            tried.push(candidate.precisions.clone());
            let plan = immediate_plan("calibrated", &candidate.precisions)?;
            let rec = exec.run(den, &plan, x_cal, batch, |_| {})?;
            let e = mse(reference, &rec.samples)?;
            let predicted = costs.predict(&plan)?;
            if e <= budget * options.headroom && chosen.as_ref().is_none_or(|c| predicted < c.0) {
                let bound_mse = candidate.total_error * candidate.total_error;
                chosen = Some((predicted, e, bound_mse, plan));
            }
        }
        report(CalibrationPhase::Search, search_done, search_total);
    }
    let (predicted_seconds, calibration_mse, solver_bound_mse, plan) = match chosen {
        Some(c) => c,
        // All-FP32 has no error, so it meets every budget.
        None => {
            let plan = immediate_plan("calibrated", &vec![Precision::FP32; steps])?;
            (costs.predict(&plan)?, 0.0, 0.0, plan)
        }
    };

    let fp32 = RunPlan::uniform("fp32", Precision::FP32, steps);
    let fp32_predicted = costs.predict(&fp32)?;
    let mut check_plans = vec![&fp32, &plan];
    if let Some((_, b)) = best_baseline {
        check_plans.push(b);
    }
    let mut checks = Vec::new();
    let check_total = 2 * options.repeats * check_plans.len();
    for (k, (batch_kind, xs)) in [
        (CheckBatch::Calibration, x_cal),
        (CheckBatch::HeldOut, x_heldout),
    ]
    .into_iter()
    .enumerate()
    {
        let offset = k * check_total / 2;
        let timed = time_plans(
            exec,
            den,
            &check_plans,
            xs,
            batch,
            options.repeats,
            |d, _| report(CalibrationPhase::Check, offset + d, check_total),
        )?;
        let reference = &timed[0].record.samples;
        for (p, t) in check_plans.iter().zip(&timed) {
            checks.push(CheckRow {
                name: p.name.clone(),
                batch: batch_kind,
                seconds: t.seconds,
                seconds_spread: t.seconds_spread,
                predicted_speedup: fp32_predicted / costs.predict(p)?,
                quality: quality(reference, &t.record.samples)?,
            });
        }
    }
    Ok(CalibrationReport {
        budget,
        plan,
        solver_bound_mse,
        calibration_mse,
        predicted_seconds,
        best_preset: best_baseline.map(|(_, p)| p.name.clone()),
        best_preset_calibration_mse: best_baseline.map(|(e, _)| e),
        sensitivity: table,
        costs,
        checks,
        seconds: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::*;

    fn resident(r: usize) -> SolveOptions {
        SolveOptions::default().max_resident(r)
    }

    fn table(errors: Vec<Vec<f64>>, precisions: Vec<Precision>) -> SensitivityTable {
        SensitivityTable {
            sigmas: vec![1.0; errors.len()],
            precisions,
            errors,
            reference: vec![],
        }
    }

    #[test]
    fn solver_respects_residency_and_budget() {
        let ps = vec![INT4, INT8];
        let costs = StepCosts {
            precisions: vec![INT4, INT8, FP16, FP32],
            seconds: vec![vec![1.0, 1.7, 2.5, 3.0]; 6],
            switch_seconds: vec![0.0; 4],
            batch: 1,
        };
        let errs: Vec<Vec<f64>> = (0..6)
            .map(|i| vec![0.09 * (i as f64 + 1.0), 0.001 * (i as f64 + 1.0)])
            .collect();
        let t = table(errs, ps.clone());
        let all = [INT4, INT8, FP32];
        let cost = |s: &[Precision]| -> f64 { s.iter().map(|&p| costs.step(0, p).unwrap()).sum() };
        let rms = |s: &[Precision]| -> f64 {
            s.iter()
                .enumerate()
                .map(|(i, &p)| t.error(i, p).unwrap().sqrt())
                .sum()
        };
        for budget in [0.0, 0.01, 0.1, 0.5, 2.0, 10.0] {
            for r in [1, 2, 3] {
                let got = solve_budget(&t, &costs, budget, &resident(r)).unwrap();
                let mut used = got.precisions.clone();
                used.sort();
                used.dedup();
                assert!(used.len() <= r);
                assert!(rms(&got.precisions) <= budget.sqrt() + 1e-12);
                // Brute force over 3^6 schedules (FP16 has no measured error: never chosen).
                let mut best = f64::INFINITY;
                for code in 0..3usize.pow(6) {
                    let s: Vec<Precision> =
                        (0..6).map(|i| all[(code / 3usize.pow(i)) % 3]).collect();
                    let mut u = s.clone();
                    u.sort();
                    u.dedup();
                    if u.len() <= r && rms(&s) <= budget.sqrt() {
                        best = best.min(cost(&s));
                    }
                }
                assert!(
                    (cost(&got.precisions) - best).abs() < 1e-9,
                    "budget {budget}, r {r}: {} vs {best}",
                    cost(&got.precisions)
                );
            }
        }
    }

    #[test]
    fn solver_rejects_bad_inputs() {
        let t = table(vec![vec![0.5]], vec![INT4]);
        let costs = StepCosts {
            precisions: vec![INT4],
            seconds: vec![vec![1.0]],
            switch_seconds: vec![0.0],
            batch: 1,
        };
        assert!(solve_budget(&t, &costs, f64::NAN, &resident(2)).is_err());
        assert!(solve_budget(&t, &costs, 0.1, &resident(2)).is_err()); // only INT4, over budget
        assert!(solve_budget(&t, &costs, 1.0, &resident(0)).is_err());
        assert_eq!(
            solve_budget(&t, &costs, 1.0, &resident(2))
                .unwrap()
                .precisions,
            vec![INT4]
        );
        let none = StepCosts {
            precisions: vec![],
            seconds: vec![vec![]],
            switch_seconds: vec![],
            batch: 1,
        };
        assert!(solve_budget(&t, &none, 1.0, &resident(2)).is_err());
    }
}
