//! Calibration: measured per-step sensitivity to precision, measured costs, and the cheapest
//! schedule within an error budget.

use std::time::Instant;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use haagenti_adaptive_schedule::solver::{Assignment, ErrorBound, ErrorTable, SolveOptions, solve};

use crate::metrics::mse;
use crate::{Denoiser, Executor, Result, RuntimeError};

/// Measured seconds of one denoiser evaluation at each precision, for one batch size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostTable {
    /// The precisions measured.
    pub precisions: Vec<Precision>,
    /// Median seconds an evaluation, same order.
    pub seconds: Vec<f64>,
    /// The batch the evaluations ran on.
    pub batch: usize,
}

impl CostTable {
    /// Seconds an evaluation at `p`, if measured.
    pub fn get(&self, p: Precision) -> Option<f64> {
        self.precisions
            .iter()
            .position(|&q| q == p)
            .map(|i| self.seconds[i])
    }

    /// Predicted seconds of a run: the sum over steps of evaluations times the cost of each
    /// evaluated precision (a blended step pays for both). `None` if a precision is unmeasured.
    pub fn predict(&self, steps: &[(Vec<Precision>, usize)]) -> Option<f64> {
        let mut t = 0.0;
        for (ps, evals) in steps {
            for &p in ps {
                t += self.get(p)? * *evals as f64;
            }
        }
        Some(t)
    }
}

/// Times evaluations of `den` at each precision on `x` (`batch` samples) at noise `sigma` and
/// keeps, per precision, the median of `repeats` samples.
///
/// The precisions take turns (one sample of each per round), so that a burst of load from other
/// processes falls on every precision alike instead of on whichever was being timed. Each sample
/// is the second of two back-to-back calls: a step of a real run follows a step at the same
/// precision, with that precision's weights as warm in cache as the previous call left them, and
/// a call straight after another precision's would pay for cold weights instead. Every precision
/// is resident during the measurement; those it loaded are released again.
///
/// # Errors
///
/// [`RuntimeError::Calibration`] for no precisions or zero repeats, and the denoiser's errors.
pub fn measure_costs<D: Denoiser + ?Sized>(
    den: &mut D,
    x: &[f32],
    batch: usize,
    sigma: f64,
    precisions: &[Precision],
    repeats: usize,
) -> Result<CostTable> {
    if precisions.is_empty() || repeats == 0 {
        return Err(RuntimeError::Calibration(
            "need at least one precision and one repeat".into(),
        ));
    }
    let mut loaded_here = Vec::new();
    for &p in precisions {
        let before = den.resident_bytes();
        den.load(p)?;
        if den.resident_bytes() != before {
            loaded_here.push(p);
        }
    }
    let timed = time_round_robin(den, x, batch, sigma, precisions, repeats);
    for p in loaded_here {
        den.release(p);
    }
    let mut samples = timed?;
    let seconds = samples
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    Ok(CostTable {
        precisions: precisions.to_vec(),
        seconds,
        batch,
    })
}

/// `repeats` rounds of (warming call, timed call) at each precision in turn: seconds per precision.
fn time_round_robin<D: Denoiser + ?Sized>(
    den: &mut D,
    x: &[f32],
    batch: usize,
    sigma: f64,
    precisions: &[Precision],
    repeats: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut out = vec![0f32; x.len()];
    let mut samples = vec![Vec::with_capacity(repeats); precisions.len()];
    for _ in 0..repeats {
        for (&p, t) in precisions.iter().zip(&mut samples) {
            den.denoise(x, batch, sigma, p, &mut out)?;
            let t0 = Instant::now();
            den.denoise(x, batch, sigma, p, &mut out)?;
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(samples)
}

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
    mut on_progress: F,
) -> Result<SensitivityTable>
where
    D: Denoiser + ?Sized,
    F: FnMut(usize, usize),
{
    let n = exec.steps();
    let dim = den.dim();
    if x0.len() != batch * dim {
        return Err(RuntimeError::ShapeMismatch {
            what: "calibration samples",
            expected: batch * dim,
            actual: x0.len(),
        });
    }
    let fp32 = vec![Precision::FP32; n];
    den.load(Precision::FP32)?;
    let mut states = Vec::with_capacity(n + 1);
    let mut x = x0.to_vec();
    states.push(x.clone());
    for i in 0..n {
        exec.advance(den, &mut x, batch, i, i + 1, &fp32)?;
        states.push(x.clone());
    }
    let reference = x;
    let others: Vec<Precision> = precisions
        .iter()
        .copied()
        .filter(|&p| p != Precision::FP32)
        .collect();
    let total = n * others.len();
    let mut errors = vec![vec![0.0; precisions.len()]; n];
    let mut done = 0;
    for (j, &p) in precisions.iter().enumerate() {
        if p == Precision::FP32 {
            continue;
        }
        den.load(p)?;
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
        den.release(p);
    }
    den.release(Precision::FP32);
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
/// error), each if `costs` measured it; a step at `p` costs `costs[p]` (every step is assumed to
/// make the same number of evaluations). The returned [`Assignment`]'s `total_error` is the
/// predicted RMS error bound, so its square is the predicted MSE.
///
/// # Errors
///
/// [`RuntimeError::Calibration`] for a budget that is negative or not finite, or no measured
/// cost for any table precision; [`RuntimeError::Schedule`] when the solver finds no schedule
/// within the budget and residency limit (its message says why).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::Precision::{FP32, INT4, INT8};
/// use haagenti_adaptive_runtime::{CostTable, SensitivityTable, solve_budget};
/// use haagenti_adaptive_schedule::solver::SolveOptions;
///
/// let table = SensitivityTable {
///     sigmas: vec![10.0, 1.0, 0.1],
///     precisions: vec![INT4, INT8],
///     errors: vec![vec![0.01, 0.0001], vec![0.04, 0.0004], vec![1.0, 0.0001]],
///     reference: vec![],
/// };
/// let costs = CostTable { precisions: vec![INT4, INT8, FP32], seconds: vec![1.0, 2.0, 4.0], batch: 1 };
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
    costs: &CostTable,
    budget: f64,
    options: &SolveOptions,
) -> Result<Assignment> {
    if !(budget.is_finite() && budget >= 0.0) {
        return Err(RuntimeError::Calibration(format!(
            "budget {budget} is not finite and non-negative"
        )));
    }
    let mut precisions: Vec<Precision> = table.precisions.clone();
    if !precisions.contains(&Precision::FP32) {
        precisions.push(Precision::FP32);
    }
    precisions.retain(|&p| costs.get(p).is_some());
    if precisions.is_empty() {
        return Err(RuntimeError::Calibration(
            "no precision has both a cost and an error".into(),
        ));
    }
    let errors: Vec<Vec<f64>> = (0..table.errors.len())
        .map(|i| {
            precisions
                .iter()
                .map(|&p| table.error(i, p).map_or(f64::NAN, f64::sqrt))
                .collect()
        })
        .collect();
    let step_costs = precisions.iter().filter_map(|&p| costs.get(p)).collect();
    let errors_table = ErrorTable::new(precisions, None, errors, step_costs)?;
    Ok(solve(
        &errors_table,
        options,
        &ErrorBound::Total(budget.sqrt()),
    )?)
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
        let costs = CostTable {
            precisions: vec![INT4, INT8, FP16, FP32],
            seconds: vec![1.0, 1.7, 2.5, 3.0],
            batch: 1,
        };
        let errs: Vec<Vec<f64>> = (0..6)
            .map(|i| vec![0.09 * (i as f64 + 1.0), 0.001 * (i as f64 + 1.0)])
            .collect();
        let t = table(errs, ps.clone());
        let all = [INT4, INT8, FP32];
        let cost = |s: &[Precision]| -> f64 { s.iter().map(|&p| costs.get(p).unwrap()).sum() };
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
        let costs = CostTable {
            precisions: vec![INT4],
            seconds: vec![1.0],
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
        let none = CostTable {
            precisions: vec![],
            seconds: vec![],
            batch: 1,
        };
        assert!(solve_budget(&t, &none, 1.0, &resident(2)).is_err());
    }
}
