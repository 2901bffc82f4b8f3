//! Calibration: measured per-step sensitivity to precision, measured costs, and the cheapest
//! schedule within an error budget.

use std::time::Instant;

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

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

/// Times `repeats` evaluations of `den` at each precision on `x` (`batch` samples) at noise
/// `sigma`, after one warm-up call, and keeps the median. Precisions it loads are released again.
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
    let mut out = vec![0f32; x.len()];
    let mut seconds = Vec::with_capacity(precisions.len());
    for &p in precisions {
        let before = den.resident_bytes();
        den.load(p)?;
        let loaded = den.resident_bytes() != before;
        den.denoise(x, batch, sigma, p, &mut out)?;
        let mut t: Vec<f64> = (0..repeats)
            .map(|_| {
                let t0 = Instant::now();
                den.denoise(x, batch, sigma, p, &mut out)
                    .map(|()| t0.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        t.sort_by(f64::total_cmp);
        seconds.push(t[t.len() / 2]);
        if loaded {
            den.release(p);
        }
    }
    Ok(CostTable {
        precisions: precisions.to_vec(),
        seconds,
        batch,
    })
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

/// The cheapest schedule whose predicted error (sum of per-step errors) stays within `budget`.
///
/// `evals[i]` is the number of denoiser evaluations of step `i` (2 for Heun steps, else 1); the
/// cost of step `i` at `p` is `evals[i] * costs[p]`. Exact dynamic programming over steps and a
/// discretised budget: each error is rounded *up* to a multiple of `budget / 4000`, so the
/// returned schedule always meets the budget, and no schedule that meets it with a margin of
/// `steps * budget / 4000` is cheaper. Ties go to the lower error.
///
/// # Errors
///
/// [`RuntimeError::Calibration`] for a budget that is negative or not finite, tables that
/// disagree, or no schedule within the budget.
pub fn solve_budget(
    table: &SensitivityTable,
    costs: &CostTable,
    evals: &[usize],
    budget: f64,
) -> Result<Vec<Precision>> {
    if evals.len() != table.errors.len() {
        return Err(RuntimeError::Calibration(format!(
            "{} evaluation counts for {} steps",
            evals.len(),
            table.errors.len()
        )));
    }
    let step_costs: Vec<Vec<f64>> = evals
        .iter()
        .map(|&e| costs.seconds.iter().map(|c| c * e as f64).collect())
        .collect();
    solve_budget_steps(table, &costs.precisions, &step_costs, budget)
}

/// [`solve_budget`] with a cost per step and precision: `step_costs[i][j]` is the cost of step `i`
/// at `precisions[j]` (evaluations included), for costs that depend on the noise level.
///
/// # Errors
///
/// As [`solve_budget`].
pub fn solve_budget_steps(
    table: &SensitivityTable,
    precisions: &[Precision],
    step_costs: &[Vec<f64>],
    budget: f64,
) -> Result<Vec<Precision>> {
    const UNITS: usize = 4000;
    if !(budget.is_finite() && budget >= 0.0) {
        return Err(RuntimeError::Calibration(format!(
            "budget {budget} is not finite and non-negative"
        )));
    }
    let n = table.errors.len();
    if step_costs.len() != n || step_costs.iter().any(|r| r.len() != precisions.len()) {
        return Err(RuntimeError::Calibration(format!(
            "cost table of {} steps does not match {n} steps and {} precisions",
            step_costs.len(),
            precisions.len()
        )));
    }
    let choices: Vec<(usize, Precision)> = precisions
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, p)| n == 0 || table.error(0, p).is_some())
        .collect();
    if choices.is_empty() {
        return Err(RuntimeError::Calibration(
            "no precision has both a cost and an error".into(),
        ));
    }
    let unit = budget / UNITS as f64;
    let weight = |e: f64| -> Option<usize> {
        if e <= 0.0 {
            Some(0)
        } else if unit == 0.0 {
            None
        } else {
            let w = (e / unit).ceil();
            (w <= UNITS as f64).then_some(w as usize)
        }
    };
    // best[c] = (cost, error) of the cheapest prefix using exactly c units; parents to rebuild.
    let inf = (f64::INFINITY, f64::INFINITY);
    let mut best = vec![inf; UNITS + 1];
    best[0] = (0.0, 0.0);
    let mut parent: Vec<Vec<(usize, usize)>> = Vec::with_capacity(n);
    for (i, costs_i) in step_costs.iter().enumerate() {
        let mut next = vec![inf; UNITS + 1];
        let mut par = vec![(usize::MAX, usize::MAX); UNITS + 1];
        for (ci, &(j, p)) in choices.iter().enumerate() {
            let e = table.error(i, p).unwrap_or(f64::INFINITY);
            let Some(w) = weight(e) else { continue };
            let step_cost = costs_i[j];
            for used in 0..=UNITS - w {
                let (bc, be) = best[used];
                if !bc.is_finite() {
                    continue;
                }
                let cand = (bc + step_cost, be + e);
                let slot = &mut next[used + w];
                if cand.0 < slot.0 || (cand.0 == slot.0 && cand.1 < slot.1) {
                    *slot = cand;
                    par[used + w] = (used, ci);
                }
            }
        }
        best = next;
        parent.push(par);
    }
    let end = (0..=UNITS)
        .filter(|&c| best[c].0.is_finite())
        .min_by(|&a, &b| {
            best[a]
                .0
                .total_cmp(&best[b].0)
                .then(best[a].1.total_cmp(&best[b].1))
        })
        .ok_or_else(|| {
            RuntimeError::Calibration(format!("no schedule meets the budget {budget:e}"))
        })?;
    let mut out = vec![Precision::FP32; n];
    let mut c = end;
    for i in (0..n).rev() {
        let (prev, ci) = parent[i][c];
        out[i] = choices[ci].1;
        c = prev;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::*;

    fn table(errors: Vec<Vec<f64>>, precisions: Vec<Precision>) -> SensitivityTable {
        SensitivityTable {
            sigmas: vec![1.0; errors.len()],
            precisions,
            errors,
            reference: vec![],
        }
    }

    #[test]
    fn solver_matches_brute_force() {
        let ps = vec![INT4, INT8, FP32];
        let costs = CostTable {
            precisions: ps.clone(),
            seconds: vec![1.0, 1.7, 3.0],
            batch: 1,
        };
        let errs: Vec<Vec<f64>> = (0..6)
            .map(|i| vec![0.9 / (i as f64 + 1.0), 0.2 / (i as f64 + 1.0).sqrt(), 0.0])
            .collect();
        let t = table(errs.clone(), ps.clone());
        let evals = vec![1, 2, 1, 2, 1, 1];
        for budget in [0.0, 0.1, 0.3, 0.7, 1.2, 3.0] {
            let got = solve_budget(&t, &costs, &evals, budget).unwrap();
            let cost = |s: &[Precision]| -> f64 {
                s.iter()
                    .zip(&evals)
                    .map(|(&p, &e)| costs.get(p).unwrap() * e as f64)
                    .sum()
            };
            assert!(t.predict(&got).unwrap() <= budget + 1e-12);
            // Brute force over 3^6 schedules.
            let mut best = f64::INFINITY;
            for code in 0..3usize.pow(6) {
                let s: Vec<Precision> = (0..6).map(|i| ps[(code / 3usize.pow(i)) % 3]).collect();
                if t.predict(&s).unwrap() <= budget * (1.0 - 6.0 / 4000.0) {
                    best = best.min(cost(&s));
                }
            }
            assert!(
                cost(&got) <= best + 1e-9,
                "budget {budget}: {} vs {best}",
                cost(&got)
            );
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
        assert!(solve_budget(&t, &costs, &[1], f64::NAN).is_err());
        assert!(solve_budget(&t, &costs, &[1], 0.1).is_err()); // only INT4, over budget
        assert!(solve_budget(&t, &costs, &[1, 1], 1.0).is_err());
        assert_eq!(solve_budget(&t, &costs, &[1], 1.0).unwrap(), vec![INT4]);
    }
}
