//! What a step costs at each precision, measured from real executor steps, and round-robin timing
//! of whole runs: the one cost model the prediction and the solver share.

use std::time::Instant;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::{Denoiser, Executor, Result, RunPlan, RunRecord, RuntimeError};

/// Measured seconds of each step of a run at each precision, and the extra seconds a step pays
/// when the step before it ran another precision.
///
/// A step's cost is one whole sampler step (every denoiser evaluation it makes and the sampler's
/// arithmetic), so a sampler whose steps make different numbers of evaluations is modelled
/// exactly. The switch cost is what a switch adds to the steps after it (freshly loaded, cold
/// weights): the first step at a precision after another precision's step, and a run's first
/// step, pay it.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision::{FP32, INT8};
/// use haagenti_adaptive_runtime::{RunPlan, StepCosts};
///
/// let costs = StepCosts {
///     precisions: vec![INT8, FP32],
///     seconds: vec![vec![1.0, 4.0]; 3],
///     switch_seconds: vec![0.5, 0.25],
///     batch: 1,
/// };
/// // INT8, INT8, FP32: two switches (the first step and the change to FP32).
/// let plan = RunPlan::from_precisions("p", &[INT8, INT8, FP32]);
/// assert_eq!(costs.predict(&plan)?, 0.5 + 1.0 + 1.0 + 0.25 + 4.0);
/// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCosts {
    /// The precisions measured (columns).
    pub precisions: Vec<Precision>,
    /// `seconds[step][column]`: a step after a step at the same precision.
    pub seconds: Vec<Vec<f64>>,
    /// `switch_seconds[column]`: the extra seconds of a step after one at another precision.
    pub switch_seconds: Vec<f64>,
    /// The batch the steps ran on.
    pub batch: usize,
}

impl StepCosts {
    /// The column of `p`, if measured.
    pub fn column(&self, p: Precision) -> Option<usize> {
        self.precisions.iter().position(|&q| q == p)
    }

    /// Seconds of step `step` at `p`, if measured.
    pub fn step(&self, step: usize, p: Precision) -> Option<f64> {
        let j = self.column(p)?;
        self.seconds.get(step).map(|row| row[j])
    }

    /// The extra seconds of a step at `p` after a step at another precision, if measured.
    pub fn switch(&self, p: Precision) -> Option<f64> {
        self.column(p).map(|j| self.switch_seconds[j])
    }

    /// The mean over steps of a step's seconds at `p`, if measured.
    pub fn mean_step(&self, p: Precision) -> Option<f64> {
        let j = self.column(p)?;
        let n = self.seconds.len().max(1) as f64;
        Some(self.seconds.iter().map(|row| row[j]).sum::<f64>() / n)
    }

    /// Predicted seconds of `plan`: every precision a step evaluates (a blended step evaluates
    /// two) pays its step cost, and its switch cost when the step before did not evaluate it (or
    /// at the first step).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidPlan`] for a plan of another length, [`RuntimeError::Calibration`]
    /// for a precision these costs did not measure.
    pub fn predict(&self, plan: &RunPlan) -> Result<f64> {
        plan.validate(self.seconds.len())?;
        let mut total = 0.0;
        for (i, mix) in plan.steps.iter().enumerate() {
            for p in mix.precisions() {
                let missing =
                    || RuntimeError::Calibration(format!("no measured cost for {p} at step {i}"));
                total += self.step(i, p).ok_or_else(missing)?;
                let switched = i == 0 || !plan.steps[i - 1].precisions().any(|q| q == p);
                if switched {
                    total += self.switch(p).ok_or_else(missing)?;
                }
            }
        }
        Ok(total)
    }

    /// How the machine's pace moved between measuring these costs and a later timing of `plan`:
    /// `measured_seconds` over the seconds [`predict`](Self::predict) gives `plan`.
    ///
    /// Near 1 when both ran on a machine of the same speed. A predicted speedup is a ratio of
    /// two predictions, so it holds only as far as every plan's pace moved alike; a pace outside
    /// `1 ± PACE_TOLERANCE` (another process started, the clock changed between the phases)
    /// says the costs and the runs saw different machines, and the slowdown of a shared machine
    /// is rarely uniform: a product spread over every core loses more than one that barely
    /// uses them.
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision::FP32;
    /// use haagenti_adaptive_runtime::{PACE_TOLERANCE, RunPlan, StepCosts};
    ///
    /// let costs = StepCosts {
    ///     precisions: vec![FP32],
    ///     seconds: vec![vec![1.0]; 4],
    ///     switch_seconds: vec![0.0],
    ///     batch: 1,
    /// };
    /// let fp32 = RunPlan::uniform("fp32", FP32, 4);
    /// let pace = costs.pace(&fp32, 2.4)?;
    /// assert!((pace - 0.6).abs() < 1e-12 && (pace - 1.0).abs() > PACE_TOLERANCE);
    /// # Ok::<(), haagenti_adaptive_runtime::RuntimeError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`predict`](Self::predict)'s errors, and [`RuntimeError::Calibration`] for a measured
    /// time that is not positive and finite.
    pub fn pace(&self, plan: &RunPlan, measured_seconds: f64) -> Result<f64> {
        if !(measured_seconds.is_finite() && measured_seconds > 0.0) {
            return Err(RuntimeError::Calibration(format!(
                "a measured time of {measured_seconds} s"
            )));
        }
        let predicted = self.predict(plan)?;
        if predicted <= 0.0 {
            return Err(RuntimeError::Calibration(format!(
                "plan {} predicted at {predicted} s",
                plan.name
            )));
        }
        Ok(measured_seconds / predicted)
    }
}

/// How far [`StepCosts::pace`] may move from 1 before predictions built on the costs are in
/// doubt: the precision the issue asks of predicted speedups (15 %).
pub const PACE_TOLERANCE: f64 = 0.15;

/// The model's FP32 trajectory from `x0` (`batch x dim`): the state before each step and the
/// final samples, `steps + 1` states. FP32 is loaded for the run if it was not resident, and
/// released again.
///
/// # Errors
///
/// [`RuntimeError::ShapeMismatch`] for `x0` of the wrong length, and the denoiser's errors.
pub fn fp32_trajectory<D: Denoiser + ?Sized>(
    exec: &Executor,
    den: &mut D,
    x0: &[f32],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    check_samples(den, x0, batch, "initial samples")?;
    let n = exec.steps();
    let fp32 = vec![Precision::FP32; n];
    let loaded = load_missing(den, &[Precision::FP32])?;
    let mut states = Vec::with_capacity(n + 1);
    let mut x = x0.to_vec();
    states.push(x.clone());
    let mut result = Ok(());
    for i in 0..n {
        result = exec.advance(den, &mut x, batch, i, i + 1, &fp32);
        if result.is_err() {
            break;
        }
        states.push(x.clone());
    }
    release(den, &loaded);
    result.map(|()| states)
}

pub(crate) fn check_samples<D: Denoiser + ?Sized>(
    den: &D,
    x: &[f32],
    batch: usize,
    what: &'static str,
) -> Result<()> {
    if batch == 0 || batch.checked_mul(den.dim()) != Some(x.len()) {
        return Err(RuntimeError::ShapeMismatch {
            what,
            expected: batch.max(1).saturating_mul(den.dim()),
            actual: x.len(),
        });
    }
    Ok(())
}

/// Loads each of `precisions` not yet resident; returns those it loaded.
pub(crate) fn load_missing<D: Denoiser + ?Sized>(
    den: &mut D,
    precisions: &[Precision],
) -> Result<Vec<Precision>> {
    let mut loaded = Vec::new();
    for &p in precisions {
        let before = den.resident_bytes();
        if let Err(e) = den.load(p) {
            release(den, &loaded);
            return Err(e);
        }
        if den.resident_bytes() != before {
            loaded.push(p);
        }
    }
    Ok(loaded)
}

pub(crate) fn release<D: Denoiser + ?Sized>(den: &mut D, precisions: &[Precision]) {
    for &p in precisions {
        den.release(p);
    }
}

/// How [`measure_step_costs`] samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostSampling {
    /// Steps at which the switch cost is timed, spread over the run.
    pub probes: usize,
    /// Timed rounds of the whole uniform runs and of the switch probes; medians are kept.
    pub rounds: usize,
}

impl Default for CostSampling {
    /// Six probes, five rounds.
    fn default() -> Self {
        Self {
            probes: 6,
            rounds: 5,
        }
    }
}

/// Measures [`StepCosts`] at `precisions` from real executor steps (`trajectory` is what
/// [`fp32_trajectory`] returns: the model's own states).
///
/// A step's cost is timed as [`time_plans`] times a run: whole uniform runs at each precision
/// from the trajectory's first state, the precisions taking turns for `rounds` rounds after one
/// untimed warm-up round, and each step's median over the rounds. Timing steps in isolation
/// instead (a step, then the next from a stored state) measured a different regime: at steps of
/// well under a millisecond its figures moved by 60 % from one process to the next, while whole
/// runs moved by a few per cent, so predictions built on them missed the runs they predicted.
///
/// The switch cost is the median extra time of the two steps after a switch: at `probes` steps
/// spread over the run, `p` is loaded afresh (as a run loads it right before its first step),
/// step `i - 1` runs at `p` from the trajectory's state after the previous precision's step, then
/// step `i`; their excess over the same two steps of the uniform runs is the cost. A run's first
/// step pays the switch cost in [`StepCosts::predict`], so `seconds[0]` is the measured first
/// step less it.
///
/// `on_progress(done, total)` is called after each probe round and each run. Precisions not
/// resident are loaded for the measurement and released after; those resident before are
/// resident after.
///
/// # Errors
///
/// [`RuntimeError::Calibration`] for no precisions, zero probes or rounds, or a trajectory that
/// is not `steps + 1` states of `batch` samples; and the denoiser's errors.
pub fn measure_step_costs<D, F>(
    exec: &Executor,
    den: &mut D,
    trajectory: &[Vec<f32>],
    batch: usize,
    precisions: &[Precision],
    sampling: CostSampling,
    mut on_progress: F,
) -> Result<StepCosts>
where
    D: Denoiser + ?Sized,
    F: FnMut(usize, usize),
{
    let steps = exec.steps();
    if precisions.is_empty() || sampling.probes == 0 || sampling.rounds == 0 {
        return Err(RuntimeError::Calibration(
            "cost measurement needs a precision, a probe and a round".into(),
        ));
    }
    if trajectory.len() != steps + 1 {
        return Err(RuntimeError::Calibration(format!(
            "a trajectory of {} states for {steps} steps",
            trajectory.len()
        )));
    }
    for state in trajectory {
        check_samples(den, state, batch, "trajectory state")?;
    }
    let probes = probe_steps(steps, sampling.probes);
    let total = sampling.rounds * (probes.len() + precisions.len()) + precisions.len();
    let mut done = 0;
    let mut progress = |_: usize, _: usize| {
        done += 1;
        on_progress(done, total);
    };
    let loaded = load_missing(den, precisions)?;
    let timed = time_probes(
        exec,
        den,
        trajectory,
        batch,
        precisions,
        &probes,
        sampling,
        &mut progress,
    );
    release(den, &loaded);
    let (after_switch, next) = timed?;

    // Whole runs load what they use and release it at their end: restore what was resident.
    let uniform: Vec<RunPlan> = precisions
        .iter()
        .map(|&p| RunPlan::uniform(p.to_string(), p, steps))
        .collect();
    let refs: Vec<&RunPlan> = uniform.iter().collect();
    let runs =
        time_plans(exec, den, &refs, &trajectory[0], batch, 1, &mut progress).and_then(|_| {
            time_plans(
                exec,
                den,
                &refs,
                &trajectory[0],
                batch,
                sampling.rounds,
                &mut progress,
            )
        });
    let was_resident: Vec<Precision> = precisions
        .iter()
        .copied()
        .filter(|p| !loaded.contains(p))
        .collect();
    for &p in &was_resident {
        den.load(p)?;
    }
    let runs = runs?;
    let mut seconds: Vec<Vec<f64>> = (0..steps)
        .map(|i| runs.iter().map(|r| r.step_seconds[i]).collect())
        .collect();
    // A switch slows the step after it and, less, the next one (measured on the mixture: +1.5,
    // +0.6 and +0.2 ms over steps of 1.4 ms after a switch to INT8), so its cost is the excess of
    // both probe steps over the uniform runs' same steps.
    let switch_seconds: Vec<f64> = (0..precisions.len())
        .map(|j| {
            let extra: Vec<f64> = probes
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let before = i.saturating_sub(1);
                    let timed = after_switch[k][j] + if i == before { 0.0 } else { next[k][j] };
                    let steady = seconds[before][j] + if i == before { 0.0 } else { seconds[i][j] };
                    timed - steady
                })
                .collect();
            median(extra).max(0.0)
        })
        .collect();
    for (first, switch) in seconds[0].iter_mut().zip(&switch_seconds) {
        *first = (*first - switch).max(0.0);
    }
    Ok(StepCosts {
        precisions: precisions.to_vec(),
        seconds,
        switch_seconds,
        batch,
    })
}

/// Steps to time: spread over the run, each after a step it can follow (step 0 only when it is
/// the only step).
fn probe_steps(steps: usize, probes: usize) -> Vec<usize> {
    if steps == 1 {
        vec![0]
    } else if steps - 1 <= probes {
        (1..steps).collect()
    } else if probes == 1 {
        vec![steps / 2]
    } else {
        (0..probes)
            .map(|j| 1 + j * (steps - 2) / (probes - 1))
            .collect()
    }
}

/// Median seconds, `[probe][precision]`.
type ProbeTimes = Vec<Vec<f64>>;

/// Medians of the probes' two steps: the step right after a fresh load, and the step after it.
#[allow(clippy::too_many_arguments)] // reason: one private helper of `measure_step_costs`
fn time_probes<D, F>(
    exec: &Executor,
    den: &mut D,
    trajectory: &[Vec<f32>],
    batch: usize,
    precisions: &[Precision],
    probes: &[usize],
    sampling: CostSampling,
    on_progress: &mut F,
) -> Result<(ProbeTimes, ProbeTimes)>
where
    D: Denoiser + ?Sized,
    F: FnMut(usize, usize),
{
    let steps = exec.steps();
    let uniform: Vec<Vec<Precision>> = precisions.iter().map(|&p| vec![p; steps]).collect();
    let mut next = vec![vec![Vec::with_capacity(sampling.rounds); precisions.len()]; probes.len()];
    let mut after_switch = next.clone();
    let total = sampling.rounds * probes.len();
    let mut done = 0;
    for _ in 0..sampling.rounds {
        for (k, &i) in probes.iter().enumerate() {
            let before = i.saturating_sub(1);
            for (j, ps) in uniform.iter().enumerate() {
                let mut x = trajectory[before].clone();
                // A run switches to a precision by loading it right before its first step:
                // the probe follows a fresh load, as that step does.
                den.release(precisions[j]);
                den.load(precisions[j])?;
                let t0 = Instant::now();
                exec.advance(den, &mut x, batch, before, before + 1, ps)?;
                after_switch[k][j].push(t0.elapsed().as_secs_f64());
                if i == 0 {
                    x.copy_from_slice(&trajectory[0]);
                }
                let t0 = Instant::now();
                exec.advance(den, &mut x, batch, i, i + 1, ps)?;
                next[k][j].push(t0.elapsed().as_secs_f64());
            }
            done += 1;
            on_progress(done, total);
        }
    }
    let medians = |t: Vec<Vec<Vec<f64>>>| -> ProbeTimes {
        t.into_iter()
            .map(|row| row.into_iter().map(median).collect())
            .collect()
    };
    Ok((medians(after_switch), medians(next)))
}

/// The median (upper median for an even count) of a non-empty list.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A plan's runs, timed by [`time_plans`].
#[derive(Clone, Debug, PartialEq)]
pub struct TimedRun {
    /// The first run (every run computes the same samples).
    pub record: RunRecord,
    /// Each step's median time over the repeats.
    pub step_seconds: Vec<f64>,
    /// Their sum: the time of a run with each step at its typical speed.
    pub seconds: f64,
    /// How much whole runs' times spread over the repeats: their median absolute deviation from
    /// their median (0 for one repeat).
    pub seconds_spread: f64,
    /// The median of the whole runs' times.
    pub run_median_seconds: f64,
}

/// Runs every plan `repeats` times from `x0`, the plans taking turns, and times them.
///
/// The figure is per step: each step's median over the repeats, summed. A machine's speed moves
/// in phases of tens of milliseconds (another process, the clock), which can slow one whole run;
/// a per-step median discards such a phase where a median of whole runs can keep it, and taking
/// turns spreads what remains over every plan alike. `on_run(done, total)` is called after each
/// run.
///
/// # Errors
///
/// [`RuntimeError::Calibration`] for no plans or zero repeats, and [`Executor::run`]'s errors.
pub fn time_plans<D, F>(
    exec: &Executor,
    den: &mut D,
    plans: &[&RunPlan],
    x0: &[f32],
    batch: usize,
    repeats: usize,
    mut on_run: F,
) -> Result<Vec<TimedRun>>
where
    D: Denoiser + ?Sized,
    F: FnMut(usize, usize),
{
    if plans.is_empty() || repeats == 0 {
        return Err(RuntimeError::Calibration(
            "timing needs a plan and a repeat".into(),
        ));
    }
    let mut runs: Vec<Vec<RunRecord>> = plans.iter().map(|_| Vec::with_capacity(repeats)).collect();
    let total = repeats * plans.len();
    let mut done = 0;
    for _ in 0..repeats {
        for (plan, plan_runs) in plans.iter().zip(&mut runs) {
            plan_runs.push(exec.run(den, plan, x0, batch, |_| {})?);
            done += 1;
            on_run(done, total);
        }
    }
    Ok(runs.into_iter().map(summarise).collect())
}

fn summarise(mut plan_runs: Vec<RunRecord>) -> TimedRun {
    let steps = plan_runs[0].steps.len();
    let step_seconds: Vec<f64> = (0..steps)
        .map(|i| median(plan_runs.iter().map(|r| r.steps[i].wall_s).collect()))
        .collect();
    let totals: Vec<f64> = plan_runs.iter().map(|r| r.compute_s).collect();
    let run_median_seconds = median(totals.clone());
    let seconds_spread = median(
        totals
            .iter()
            .map(|t| (t - run_median_seconds).abs())
            .collect(),
    );
    TimedRun {
        seconds: step_seconds.iter().sum(),
        step_seconds,
        seconds_spread,
        run_median_seconds,
        record: plan_runs.swap_remove(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_a_step_and_spread_over_the_run() {
        assert_eq!(probe_steps(1, 6), vec![0]);
        assert_eq!(probe_steps(4, 6), vec![1, 2, 3]);
        assert_eq!(probe_steps(30, 6), vec![1, 6, 12, 17, 23, 29]);
        assert_eq!(probe_steps(30, 1), vec![15]);
        assert_eq!(probe_steps(7, 6), vec![1, 2, 3, 4, 5, 6]);
    }
}
