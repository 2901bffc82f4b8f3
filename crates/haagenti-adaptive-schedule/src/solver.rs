//! The error-budget solver: the cheapest per-step precision assignment whose measured error stays
//! within a bound.
//!
//! Inputs are an [`ErrorTable`] (for each step `i` and candidate precision `p`, a measured error
//! `e[i][p] >= 0`, and for each precision a measured cost `c[p] >= 0`, such as seconds a step),
//! [`SolveOptions`] (the supported precisions, a minimum gap between transitions, at most `R`
//! resident precisions) and an [`ErrorBound`] (per step `e[i][p_i] <= tau_i`, or in total
//! `sum_i e[i][p_i] <= B`; errors are assumed additive, which a full run of the chosen schedule
//! verifies). [`solve`] returns the cheapest [`Assignment`] meeting every constraint, or an error
//! saying why none does.
//!
//! # Constraints, precisely
//!
//! - Every step's precision is one of the table's precisions that `supported` lists.
//! - **Gap**: a transition happens at step `i > 0` when `p_i != p_{i-1}`. Any two transitions are
//!   at least `min_gap` steps apart. Equivalently, every maximal run of one precision is at least
//!   `min_gap` steps long, except the first run and the last (the start of the run and its end
//!   are not transitions). `min_gap` 0 or 1 means no constraint.
//! - **Residency**: at most `max_resident` distinct precisions appear in the whole assignment
//!   (each resident precision is a copy of the weights).
//! - **Bound**: [`ErrorBound::MaxPerStep`], [`ErrorBound::PerStep`] or [`ErrorBound::Total`].
//!
//! # Optimality and ties
//!
//! The result minimises total cost; among equal costs it has the lower total error; among equal
//! costs and errors, the higher precision at the first step where candidates differ
//! (lexicographically greatest sequence in fidelity order). Totals are summed in step order.
//!
//! # Algorithm
//!
//! Residency: any assignment with at most `R` precisions uses a subset of exactly
//! `k = min(R, candidates)` of them, so the solver runs once per `k`-subset (at most 10 of 5
//! precisions) and keeps the best. Within a subset, dynamic programming over steps with state
//! `(precision, run length capped at min_gap)`; the first run starts "free" since it needs no
//! minimum length.
//!
//! - Per-step bound: steps' infeasible precisions are removed and each state keeps its single
//!   best partial assignment: `O(steps * k^2 * min_gap)` per subset. Exact.
//! - Memory: [`MAX_STATE_STEPS`] bounds the states and [`MAX_PARETO_LABELS`] the partial
//!   assignments a total-bound solve keeps, so memory is linear in the steps (at most a few
//!   hundred MiB) and a solve past the first limit is an error before it allocates.
//! - Total bound: each state keeps the Pareto front of (cost, error) over partial assignments,
//!   pruning dominated ones, those that cannot finish within the budget (their error plus the
//!   least error each later step could add) and those that cannot finish at or below the cost of
//!   the best assignment known (first the least-error one). Costs and errors are sums along
//!   the path and the cost-error order is preserved by adding the same suffix, so no pruned
//!   partial assignment can complete to a better one: the result is exact without discretising
//!   errors. The front is at most the number of distinct partial costs (with `k` precisions and
//!   `n` steps, the number of ways to split `n` steps among `k` costs); in practice it is far
//!   smaller, since costly low-error precisions dominate.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::Precision;
//! use haagenti_adaptive_schedule::solver::{solve, ErrorBound, ErrorTable, SolveOptions};
//!
//! // Four steps; INT4 is cheap but its error is large at the clean end.
//! let table = ErrorTable::new(
//!     vec![Precision::INT4, Precision::FP16],
//!     None,
//!     vec![vec![0.01, 0.0], vec![0.02, 0.0], vec![0.2, 0.001], vec![0.5, 0.001]],
//!     vec![1.0, 3.0],
//! )?;
//! let options = SolveOptions::default();
//! let a = solve(&table, &options, &ErrorBound::MaxPerStep(0.1))?;
//! use Precision::{FP16, INT4};
//! assert_eq!(a.precisions, vec![INT4, INT4, FP16, FP16]);
//! assert_eq!(a.total_cost, 8.0);
//!
//! // A total budget of 0.25 lets one more INT4 step in.
//! let a = solve(&table, &options, &ErrorBound::Total(0.25))?;
//! assert_eq!(a.precisions, vec![INT4, INT4, INT4, FP16]);
//!
//! // Nothing meets a budget below FP16's own error.
//! assert!(solve(&table, &options, &ErrorBound::Total(0.001)).is_err());
//! # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
//! ```

use std::cmp::Ordering;

use haagenti_adaptive_core::{AdaptiveError, Precision, PrecisionCapabilities, Result};
use serde::{Deserialize, Serialize};

use crate::noise::{NoiseKind, NoiseProfile, NoiseZone};

/// The most (step, precision, run length) states one solve may visit: `steps x
/// min(max_resident, candidates) x min(min_gap, steps)`. A 1 000-step table of five precisions
/// with a minimum gap of 100 uses 500 000; past the limit [`solve`] is an error before it
/// allocates (every state keeps at least one label of 32 bytes a step).
pub const MAX_STATE_STEPS: usize = 1 << 24;

/// The most partial assignments a total-budget solve keeps (32 bytes each, so 256 MiB): each
/// state's Pareto front is thinned to `MAX_PARETO_LABELS / (steps x states)` labels (at least
/// two: the cheapest and the least-error), which keeps the memory linear in the steps. Below the
/// limit the result is exact; above it, it still meets every constraint but may cost more than
/// the optimum. Past `MAX_PARETO_LABELS / 2` states a step the two-label floor takes over, so
/// the arena stays below `2 x MAX_STATE_STEPS` labels. A 5 000-step table of four precisions keeps up to 419 labels a state.
pub const MAX_PARETO_LABELS: usize = 1 << 23;

fn err(msg: impl Into<String>) -> AdaptiveError {
    AdaptiveError::ScheduleError(msg.into())
}

/// Measured errors and costs of a calibration run: the solver's input.
///
/// `errors[i][j]` is the error of step `i` run at `precisions[j]`; `costs[j]` is the cost of one
/// step at `precisions[j]`. `sigmas`, when present, holds the noise level each step evaluated at
/// (strictly decreasing), which [`Assignment::to_noise_profile`] needs to turn a solved
/// assignment into a noise-based profile.
///
/// A valid table has at least one precision, none twice; one cost per precision and one error
/// per step and precision, all finite and non-negative; at least one step; and, if present, one
/// positive, finite, strictly decreasing sigma per step. [`ErrorTable::validate`] checks this,
/// naming the bad entry by row and column; [`ErrorTable::new`], deserialising and [`solve`] run
/// it.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_schedule::solver::ErrorTable;
///
/// let json = r#"{"precisions": ["INT8", "FP16"], "errors": [[0.1, 0.0], [0.2, -1.0]],
///                "costs": [1.0, 2.0]}"#;
/// let e = serde_json::from_str::<ErrorTable>(json).unwrap_err();
/// assert!(e.to_string().contains("errors[1][1]"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ErrorTableData")]
pub struct ErrorTable {
    /// The candidate precisions, the table's columns.
    pub precisions: Vec<Precision>,
    /// The noise level of each step, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigmas: Option<Vec<f64>>,
    /// `errors[step][column]`.
    pub errors: Vec<Vec<f64>>,
    /// `costs[column]`: the cost of one step at that precision, where `step_costs` is absent.
    pub costs: Vec<f64>,
    /// `step_costs[step][column]`: the cost of that step at that precision, when steps differ
    /// (a sampler whose last step makes fewer evaluations, a model whose cost moves with the
    /// noise level). When present it replaces `costs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_costs: Option<Vec<Vec<f64>>>,
    /// `switch_costs[column]`: the extra cost of a step at that precision when the step before
    /// ran another precision, or when it is the first step (its weights start cold). Absent:
    /// switching is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_costs: Option<Vec<f64>>,
}

/// The serialised form of an [`ErrorTable`], validated before it becomes one.
#[derive(Deserialize)]
struct ErrorTableData {
    precisions: Vec<Precision>,
    #[serde(default)]
    sigmas: Option<Vec<f64>>,
    errors: Vec<Vec<f64>>,
    costs: Vec<f64>,
    #[serde(default)]
    step_costs: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    switch_costs: Option<Vec<f64>>,
}

impl TryFrom<ErrorTableData> for ErrorTable {
    type Error = AdaptiveError;

    fn try_from(d: ErrorTableData) -> Result<Self> {
        let t = ErrorTable {
            precisions: d.precisions,
            sigmas: d.sigmas,
            errors: d.errors,
            costs: d.costs,
            step_costs: d.step_costs,
            switch_costs: d.switch_costs,
        };
        t.validate()?;
        Ok(t)
    }
}

impl ErrorTable {
    /// A validated table.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] naming the bad entry (see [`ErrorTable::validate`]).
    pub fn new(
        precisions: Vec<Precision>,
        sigmas: Option<Vec<f64>>,
        errors: Vec<Vec<f64>>,
        costs: Vec<f64>,
    ) -> Result<Self> {
        let t = ErrorTable {
            precisions,
            sigmas,
            errors,
            costs,
            step_costs: None,
            switch_costs: None,
        };
        t.validate()?;
        Ok(t)
    }

    /// The table with a cost for every step and precision (`step_costs[step][column]`), which
    /// replaces the per-precision `costs`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] naming the bad entry: a row count other than the
    /// table's steps, a row of the wrong length, a negative or non-finite cost.
    pub fn with_step_costs(mut self, step_costs: Vec<Vec<f64>>) -> Result<Self> {
        self.step_costs = Some(step_costs);
        self.validate()?;
        Ok(self)
    }

    /// The table with the extra cost of a step at each precision after a step at another
    /// precision (and of the first step), `switch_costs[column]`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] for the wrong length or a negative or non-finite cost.
    pub fn with_switch_costs(mut self, switch_costs: Vec<f64>) -> Result<Self> {
        self.switch_costs = Some(switch_costs);
        self.validate()?;
        Ok(self)
    }

    /// The number of steps (rows).
    pub fn steps(&self) -> usize {
        self.errors.len()
    }

    /// The cost of step `step` at column `col`, switch cost excluded.
    pub fn step_cost(&self, step: usize, col: usize) -> f64 {
        match &self.step_costs {
            Some(rows) => rows[step][col],
            None => self.costs[col],
        }
    }

    /// The extra cost of a step at column `col` after a step at another column (or as the first
    /// step).
    pub fn switch_cost(&self, col: usize) -> f64 {
        self.switch_costs.as_ref().map_or(0.0, |s| s[col])
    }

    /// The total cost of running column `cols[i]` at step `i`: step costs plus a switch cost at
    /// the first step and wherever the column changes, summed in step order as [`solve`] does.
    ///
    /// # Panics
    ///
    /// If `cols` has more entries than the table has steps or names a column it lacks.
    pub fn sequence_cost(&self, cols: &[usize]) -> f64 {
        let mut total = 0.0;
        for (i, &j) in cols.iter().enumerate() {
            let switched = i == 0 || cols[i - 1] != j;
            total += self.step_cost(i, j) + if switched { self.switch_cost(j) } else { 0.0 };
        }
        total
    }

    /// Checks dimensions and values.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] naming the first bad entry: `errors[i][j]` with its step
    /// and precision, `costs[j]`, `sigmas[i]`, a row of the wrong length, a precision listed
    /// twice.
    pub fn validate(&self) -> Result<()> {
        let cols = self.precisions.len();
        if cols == 0 {
            return Err(err("error table has no precisions"));
        }
        for (j, p) in self.precisions.iter().enumerate() {
            if let Some(k) = self.precisions[..j].iter().position(|q| q == p) {
                return Err(err(format!(
                    "precisions[{j}] ({p}) repeats precisions[{k}]"
                )));
            }
        }
        if self.costs.len() != cols {
            return Err(err(format!(
                "costs has {} entries for {cols} precisions",
                self.costs.len()
            )));
        }
        for (j, &c) in self.costs.iter().enumerate() {
            check_value(c)
                .map_err(|why| err(format!("costs[{j}] ({}) {why}", self.precisions[j])))?;
        }
        if self.errors.is_empty() {
            return Err(err("error table has no steps"));
        }
        for (i, row) in self.errors.iter().enumerate() {
            if row.len() != cols {
                return Err(err(format!(
                    "errors row {i} has {} entries for {cols} precisions",
                    row.len()
                )));
            }
            for (j, &e) in row.iter().enumerate() {
                check_value(e).map_err(|why| {
                    err(format!(
                        "errors[{i}][{j}] (step {i}, {}) {why}",
                        self.precisions[j]
                    ))
                })?;
            }
        }
        if let Some(rows) = &self.step_costs {
            if rows.len() != self.errors.len() {
                return Err(err(format!(
                    "step_costs has {} rows for {} steps",
                    rows.len(),
                    self.errors.len()
                )));
            }
            for (i, row) in rows.iter().enumerate() {
                if row.len() != cols {
                    return Err(err(format!(
                        "step_costs row {i} has {} entries for {cols} precisions",
                        row.len()
                    )));
                }
                for (j, &c) in row.iter().enumerate() {
                    check_value(c).map_err(|why| {
                        err(format!(
                            "step_costs[{i}][{j}] (step {i}, {}) {why}",
                            self.precisions[j]
                        ))
                    })?;
                }
            }
        }
        if let Some(switch) = &self.switch_costs {
            if switch.len() != cols {
                return Err(err(format!(
                    "switch_costs has {} entries for {cols} precisions",
                    switch.len()
                )));
            }
            for (j, &c) in switch.iter().enumerate() {
                check_value(c).map_err(|why| {
                    err(format!("switch_costs[{j}] ({}) {why}", self.precisions[j]))
                })?;
            }
        }
        if let Some(sigmas) = &self.sigmas {
            if sigmas.len() != self.errors.len() {
                return Err(err(format!(
                    "sigmas has {} entries for {} steps",
                    sigmas.len(),
                    self.errors.len()
                )));
            }
            check_step_levels(sigmas)?;
        }
        Ok(())
    }
}

/// Why a measured value is unusable, if it is.
fn check_value(v: f64) -> std::result::Result<(), &'static str> {
    if v.is_nan() {
        Err("is NaN")
    } else if v.is_infinite() {
        Err("is infinite")
    } else if v < 0.0 {
        Err("is negative")
    } else {
        Ok(())
    }
}

/// Step noise levels: positive, finite, strictly decreasing.
fn check_step_levels(sigmas: &[f64]) -> Result<()> {
    for (i, &s) in sigmas.iter().enumerate() {
        if !(s.is_finite() && s > 0.0) {
            return Err(err(format!(
                "sigmas[{i}] ({s}) is not a positive finite noise level"
            )));
        }
        if i > 0 && s >= sigmas[i - 1] {
            return Err(err(format!(
                "sigmas[{i}] ({s}) is not below sigmas[{}] ({})",
                i - 1,
                sigmas[i - 1]
            )));
        }
    }
    Ok(())
}

/// Constraints of a solve besides the error bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SolveOptions {
    /// The precisions the device can run; `None` means every precision of the table. Table
    /// precisions not listed here are never chosen.
    pub supported: Option<Vec<Precision>>,
    /// The minimum number of steps between two transitions (0 and 1: no constraint; any value
    /// of at least the table's steps allows one transition at most, and costs no more).
    pub min_gap: usize,
    /// The most distinct precisions the assignment may use (at least 1).
    pub max_resident: usize,
}

impl Default for SolveOptions {
    /// Every table precision, no gap constraint, no residency limit.
    fn default() -> Self {
        SolveOptions {
            supported: None,
            min_gap: 1,
            max_resident: Precision::ALL.len(),
        }
    }
}

impl SolveOptions {
    /// The default options restricted to what `caps` supports.
    pub fn for_capabilities(caps: &PrecisionCapabilities) -> Self {
        SolveOptions {
            supported: Some(caps.supported.clone()),
            ..SolveOptions::default()
        }
    }

    /// Sets the minimum gap between transitions.
    pub fn min_gap(mut self, steps: usize) -> Self {
        self.min_gap = steps;
        self
    }

    /// Sets the most distinct precisions the assignment may use.
    pub fn max_resident(mut self, count: usize) -> Self {
        self.max_resident = count;
        self
    }
}

/// The error bound an assignment must meet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBound {
    /// Every step: `e[i][p_i] <= tau`.
    MaxPerStep(f64),
    /// Step `i`: `e[i][p_i] <= tau[i]`, one bound per step.
    PerStep(Vec<f64>),
    /// In total: `sum_i e[i][p_i] <= B`.
    Total(f64),
}

impl ErrorBound {
    fn validate(&self, steps: usize) -> Result<()> {
        let check = |what: String, v: f64| {
            if v.is_nan() {
                Err(err(format!("{what} is NaN")))
            } else if v < 0.0 {
                Err(err(format!("{what} ({v}) is negative")))
            } else {
                Ok(())
            }
        };
        match self {
            ErrorBound::MaxPerStep(tau) => check("per-step bound".into(), *tau),
            ErrorBound::Total(b) => check("error budget".into(), *b),
            ErrorBound::PerStep(taus) => {
                if taus.len() != steps {
                    return Err(err(format!(
                        "{} per-step bounds for {steps} steps",
                        taus.len()
                    )));
                }
                taus.iter()
                    .enumerate()
                    .try_for_each(|(i, &t)| check(format!("bound of step {i}"), t))
            }
        }
    }

    fn step_bound(&self, step: usize) -> f64 {
        match self {
            ErrorBound::MaxPerStep(tau) => *tau,
            ErrorBound::PerStep(taus) => taus[step],
            ErrorBound::Total(_) => f64::INFINITY,
        }
    }
}

/// A solved assignment: one precision per step, with its predicted totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The precision of each step.
    pub precisions: Vec<Precision>,
    /// `sum_i c[p_i]`, summed in step order.
    pub total_cost: f64,
    /// `sum_i e[i][p_i]`, summed in step order.
    pub total_error: f64,
}

impl Assignment {
    /// How many steps change precision from the previous step.
    pub fn transition_count(&self) -> usize {
        self.precisions.windows(2).filter(|w| w[0] != w[1]).count()
    }

    /// The distinct precisions used, in fidelity order.
    pub fn resident(&self) -> Vec<Precision> {
        let mut v = self.precisions.clone();
        v.sort();
        v.dedup();
        v
    }

    /// Turns the assignment into a noise-based profile, so a schedule calibrated at one step
    /// count (or sampler) transfers to another of the same model.
    ///
    /// `levels` holds the noise level of kind `kind` at which each step ran: one per step, or
    /// the `n + 1` values of [`crate::noise::NoiseSchedule::sigmas`] (the final 0 is ignored).
    /// Each run of one precision becomes a zone; where the precision changes between steps
    /// `i - 1` and `i`, the zone boundary is the midpoint of their log-SNRs (or step `i`'s
    /// log-SNR when step `i - 1` is pure noise, `-inf`). The first zone starts at `-inf`, the last
    /// ends at `+inf`, and the profile gives back this assignment at these levels.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::ScheduleError`] if the levels do not match the steps, are not valid levels
    /// of `kind`, or are not strictly decreasing.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision::{FP16, INT8};
    /// use haagenti_adaptive_schedule::noise::{NoiseKind, NoiseSchedule};
    /// use haagenti_adaptive_schedule::solver::Assignment;
    ///
    /// let at30 = NoiseSchedule::default();
    /// let a = Assignment {
    ///     precisions: [vec![INT8; 12], vec![FP16; 18]].concat(),
    ///     total_cost: 0.0,
    ///     total_error: 0.0,
    /// };
    /// let profile = a.to_noise_profile(&at30.sigmas(30)?, NoiseKind::Sigma, "calibrated", "")?;
    /// assert_eq!(profile.precisions_for(&at30, 30)?, a.precisions);
    /// let at50 = profile.precisions_for(&at30, 50)?;
    /// assert_eq!(at50.iter().filter(|&&p| p == INT8).count(), 20);
    /// # Ok::<(), haagenti_adaptive_core::AdaptiveError>(())
    /// ```
    pub fn to_noise_profile(
        &self,
        levels: &[f64],
        kind: NoiseKind,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Result<NoiseProfile> {
        let n = self.precisions.len();
        if n == 0 {
            return Err(err("the assignment has no steps"));
        }
        let levels = if levels.len() == n + 1 && levels[n] == 0.0 {
            &levels[..n]
        } else {
            levels
        };
        if levels.len() != n {
            return Err(err(format!(
                "{} noise levels for an assignment of {n} steps",
                levels.len()
            )));
        }
        check_step_levels(levels)?;
        let logs = levels
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                kind.log_snr(s)
                    .map_err(|e| err(format!("sigmas[{i}]: {e}")))
            })
            .collect::<Result<Vec<f64>>>()?;
        let mut zones = Vec::new();
        let mut start = f64::NEG_INFINITY;
        let mut run_start = 0;
        for i in 1..=n {
            if i < n && self.precisions[i] == self.precisions[i - 1] {
                continue;
            }
            let end = if i == n {
                f64::INFINITY
            } else {
                let (a, b) = (logs[i - 1], logs[i]);
                let mid = a + (b - a) / 2.0;
                if a == f64::NEG_INFINITY || mid <= a || !mid.is_finite() {
                    b
                } else {
                    mid
                }
            };
            zones.push(NoiseZone::new(
                start,
                end,
                self.precisions[run_start],
                format!(
                    "calibrated: steps {run_start}..{i} of {n} (noise {} to {})",
                    levels[run_start],
                    levels[i - 1]
                ),
            ));
            start = end;
            run_start = i;
        }
        NoiseProfile::new(name, description, zones)
    }
}

/// The cheapest assignment meeting `bound` under `options`.
///
/// See the [module documentation](self) for the exact constraints and tie-breaking.
///
/// # Errors
///
/// [`AdaptiveError::ScheduleError`] if the table, options or bound are invalid, or if no
/// assignment meets them; the message says why: no supported precision in the table, a step
/// that no precision can meet, the gap or residency constraint, or the smallest reachable total
/// error against the budget.
pub fn solve(table: &ErrorTable, options: &SolveOptions, bound: &ErrorBound) -> Result<Assignment> {
    solve_limited(table, options, bound, MAX_PARETO_LABELS).map(|(a, _)| a)
}

/// What a solve kept, for the tests of the memory bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SolveStats {
    /// The most labels one subset's arena held.
    max_arena: usize,
    /// Pareto fronts thinned because they held more than the cap a state.
    thinned: usize,
}

/// [`solve`] with `label_limit` in place of [`MAX_PARETO_LABELS`] (tests force thinning with a
/// small one), returning what the arena held.
fn solve_limited(
    table: &ErrorTable,
    options: &SolveOptions,
    bound: &ErrorBound,
    label_limit: usize,
) -> Result<(Assignment, SolveStats)> {
    table.validate()?;
    if options.max_resident == 0 {
        return Err(err("max_resident must be at least 1"));
    }
    let steps = table.steps();
    bound.validate(steps)?;
    let candidates: Vec<usize> = (0..table.precisions.len())
        .filter(|&j| {
            options
                .supported
                .as_ref()
                .is_none_or(|s| s.contains(&table.precisions[j]))
        })
        .collect();
    if candidates.is_empty() {
        return Err(err(format!(
            "none of the table's precisions ({}) is supported",
            list(&table.precisions)
        )));
    }
    // A gap of `steps` or more allows at most one transition, as `steps` does (two transitions
    // lie at most `steps - 2` apart), so the run-length state never needs to count higher.
    let gap = options.min_gap.clamp(1, steps);
    let k = options.max_resident.min(candidates.len());
    let state_steps = steps.saturating_mul(k).saturating_mul(gap);
    if state_steps > MAX_STATE_STEPS {
        return Err(err(format!(
            "{steps} steps x {k} resident precisions x min_gap {gap} = {state_steps} solver \
             states, above the limit of {MAX_STATE_STEPS} (MAX_STATE_STEPS: it bounds the \
             solver's memory); use fewer steps or a smaller min_gap"
        )));
    }
    let problem = Problem {
        table,
        gap,
        label_limit,
        stats: std::cell::Cell::new(SolveStats::default()),
        allowed: (0..steps)
            .map(|i| {
                let tau = bound.step_bound(i);
                (0..table.precisions.len())
                    .map(|j| candidates.contains(&j) && table.errors[i][j] <= tau)
                    .collect()
            })
            .collect(),
    };
    for i in 0..steps {
        if !problem.allowed[i].iter().any(|&a| a) {
            let (j, e) = candidates
                .iter()
                .map(|&j| (j, table.errors[i][j]))
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap_or((candidates[0], f64::NAN));
            return Err(err(format!(
                "step {i}: no supported precision has error <= {} (the smallest is {e} at {})",
                bound.step_bound(i),
                table.precisions[j]
            )));
        }
    }
    let mode = match bound {
        ErrorBound::Total(b) => Mode::Pareto { budget: *b },
        _ => Mode::Lexicographic,
    };
    if let Some(best) = problem.best_over_subsets(&candidates, k, mode, Objective::Cost)? {
        return Ok((best, problem.stats.get()));
    }
    Err(err(infeasible_reason(
        &problem,
        &candidates,
        k,
        options,
        bound,
    )?))
}

fn list(ps: &[Precision]) -> String {
    ps.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
}

/// Explains why no assignment met the constraints.
fn infeasible_reason(
    problem: &Problem<'_>,
    candidates: &[usize],
    k: usize,
    options: &SolveOptions,
    bound: &ErrorBound,
) -> Result<String> {
    let constraints = format!(
        "at most {k} resident precision{} of {} and transitions at least {} steps apart",
        if k == 1 { "" } else { "s" },
        list(
            &candidates
                .iter()
                .map(|&j| problem.table.precisions[j])
                .collect::<Vec<_>>()
        ),
        problem.gap
    );
    match bound {
        ErrorBound::Total(b) => {
            // Without the budget the constraints are always satisfiable (one precision, no
            // transition), so the least-error assignment exists.
            let least =
                problem.best_over_subsets(candidates, k, Mode::Lexicographic, Objective::Error)?;
            Ok(match least {
                Some(a) => format!(
                    "the smallest total error reachable with {constraints} is {}, above the \
                     budget {b}",
                    a.total_error
                ),
                None => format!("no assignment satisfies {constraints}"),
            })
        }
        _ => {
            let mut hints = Vec::new();
            if k < candidates.len()
                && problem
                    .best_over_subsets(
                        candidates,
                        candidates.len(),
                        Mode::Lexicographic,
                        Objective::Cost,
                    )?
                    .is_some()
            {
                hints.push("allowing more resident precisions would make it feasible");
            }
            if problem.gap > 1 {
                let free = Problem {
                    gap: 1,
                    ..problem.clone()
                };
                if free
                    .best_over_subsets(candidates, k, Mode::Lexicographic, Objective::Cost)?
                    .is_some()
                {
                    hints.push("a smaller min_gap would make it feasible");
                }
            }
            let _ = options;
            let mut msg = format!("no assignment meets the per-step bounds with {constraints}");
            if !hints.is_empty() {
                msg.push_str(": ");
                msg.push_str(&hints.join("; "));
            }
            Ok(msg)
        }
    }
}

#[derive(Clone)]
struct Problem<'a> {
    table: &'a ErrorTable,
    gap: usize,
    /// The most labels a total-bound solve keeps ([`MAX_PARETO_LABELS`] outside tests).
    label_limit: usize,
    /// What the arena held, over every subset solved.
    stats: std::cell::Cell<SolveStats>,
    /// `allowed[i][j]`: column `j` may run step `i` (supported and within the step's bound).
    allowed: Vec<Vec<bool>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One best partial assignment a state, by (primary, secondary, sequence).
    Lexicographic,
    /// The Pareto front of (cost, error) a state, errors within `budget`.
    Pareto { budget: f64 },
}

/// What the lexicographic mode minimises first.
#[derive(Clone, Copy, PartialEq)]
enum Objective {
    Cost,
    Error,
}

const ROOT: usize = usize::MAX;

/// A partial assignment: its totals, its last column, and the label it extends.
#[derive(Clone, Copy)]
struct Label {
    cost: f64,
    error: f64,
    col: usize,
    parent: usize,
}

impl Problem<'_> {
    fn best_over_subsets(
        &self,
        candidates: &[usize],
        k: usize,
        mode: Mode,
        objective: Objective,
    ) -> Result<Option<Assignment>> {
        let mut best: Option<Assignment> = None;
        if let Mode::Pareto { budget } = mode {
            // The least-error assignment is a cheap first incumbent: if even it misses the budget
            // nothing meets it, and otherwise its cost bounds the optimum's from above.
            let Some(least) =
                self.best_over_subsets(candidates, k, Mode::Lexicographic, Objective::Error)?
            else {
                return Ok(None);
            };
            if least.total_error > budget {
                return Ok(None);
            }
            best = Some(least);
        }
        for subset in subsets(candidates, k) {
            let upper = best.as_ref().map(|b| b.total_cost);
            if let Some(a) = self.solve_subset(&subset, mode, objective, upper)? {
                best = match best {
                    Some(b) if !assignment_better(&a, &b, objective) => Some(b),
                    _ => Some(a),
                };
            }
        }
        Ok(best)
    }

    fn solve_subset(
        &self,
        subset: &[usize],
        mode: Mode,
        objective: Objective,
        upper_cost: Option<f64>,
    ) -> Result<Option<Assignment>> {
        let table = self.table;
        let steps = table.steps();
        // A run never outgrows the table, so longer gaps behave as `steps`.
        let g = self.gap.min(steps);
        // Lower bounds on what steps after `i` add: the cheapest and the least-error allowed
        // precision of each later step, ignoring the gap constraint.
        let mut rest_cost = vec![0.0; steps];
        let mut rest_error = vec![0.0; steps];
        for i in (0..steps.saturating_sub(1)).rev() {
            let allowed = subset.iter().filter(|&&j| self.allowed[i + 1][j]);
            let c = allowed
                .clone()
                .map(|&j| table.step_cost(i + 1, j))
                .fold(f64::INFINITY, f64::min);
            let e = allowed
                .map(|&j| table.errors[i + 1][j])
                .fold(f64::INFINITY, f64::min);
            rest_cost[i] = rest_cost[i + 1] + c;
            rest_error[i] = rest_error[i + 1] + e;
        }
        // Whether a partial assignment ending at step `i` may still complete within the budget
        // and at no more than the incumbent's cost. The lookahead tests allow a relative slack of
        // 1e-9 for rounding, so only partial assignments certainly worse are dropped; the budget
        // itself is checked exactly.
        let viable = |l: &Label, i: usize| -> bool {
            let Mode::Pareto { budget } = mode else {
                return true;
            };
            let slack = |a: f64, b: f64| 1e-9 * (a.abs() + b.abs());
            if l.error > budget {
                return false;
            }
            let e = l.error + rest_error[i];
            if e > budget + slack(e, budget) {
                return false;
            }
            match upper_cost {
                Some(u) => {
                    let c = l.cost + rest_cost[i];
                    c <= u + slack(c, u)
                }
                None => true,
            }
        };
        let states = subset.len() * g;
        // Every step keeps at most `front_cap` labels a state, so the arena holds at most
        // `MAX_PARETO_LABELS` (plus one a state and step) whatever the number of steps.
        let front_cap = (self.label_limit / steps.saturating_mul(states).max(1)).max(2);
        let state = |s: usize, r: usize| s * g + (r - 1);
        let mut arena: Vec<Label> = Vec::new();
        let mut layer: Vec<Vec<usize>> = vec![Vec::new(); states];
        for (s, &j) in subset.iter().enumerate() {
            if !self.allowed[0][j] {
                continue;
            }
            let label = Label {
                cost: table.step_cost(0, j) + table.switch_cost(j),
                error: table.errors[0][j],
                col: j,
                parent: ROOT,
            };
            if !viable(&label, 0) {
                continue;
            }
            arena.push(label);
            // The first run needs no minimum length: it starts as if already `g` long.
            layer[state(s, g)].push(arena.len() - 1);
        }
        for i in 1..steps {
            let mut next: Vec<Vec<Label>> = vec![Vec::new(); states];
            for s in 0..subset.len() {
                for r in 1..=g {
                    for &li in &layer[state(s, r)] {
                        let l = arena[li];
                        for (t, &j) in subset.iter().enumerate() {
                            if !self.allowed[i][j] || (t != s && r < g) {
                                continue;
                            }
                            let label = Label {
                                // Summed as `sequence_cost` sums, so totals agree exactly.
                                cost: l.cost
                                    + (table.step_cost(i, j)
                                        + if t == s { 0.0 } else { table.switch_cost(j) }),
                                error: l.error + table.errors[i][j],
                                col: j,
                                parent: li,
                            };
                            if !viable(&label, i) {
                                continue;
                            }
                            let nr = if t == s { (r + 1).min(g) } else { 1 };
                            next[state(t, nr)].push(label);
                        }
                    }
                }
            }
            for (st, mut cands) in next.into_iter().enumerate() {
                layer[st].clear();
                if cands.is_empty() {
                    continue;
                }
                match mode {
                    Mode::Lexicographic => {
                        let mut best = cands[0];
                        for c in &cands[1..] {
                            if self.label_cmp(&arena, c, &best, objective) == Ordering::Less {
                                best = *c;
                            }
                        }
                        arena.push(best);
                        layer[st].push(arena.len() - 1);
                    }
                    Mode::Pareto { .. } => {
                        cands.sort_by(|a, b| self.label_cmp(&arena, a, b, Objective::Cost));
                        let mut min_error = f64::INFINITY;
                        cands.retain(|c| {
                            let keep = c.error < min_error;
                            if keep {
                                min_error = c.error;
                            }
                            keep
                        });
                        if cands.len() > front_cap {
                            let mut stats = self.stats.get();
                            stats.thinned += 1;
                            self.stats.set(stats);
                        }
                        for c in thin_front(cands, front_cap) {
                            arena.push(c);
                            layer[st].push(arena.len() - 1);
                        }
                    }
                }
            }
        }
        let mut stats = self.stats.get();
        stats.max_arena = stats.max_arena.max(arena.len());
        self.stats.set(stats);
        let mut best: Option<Label> = None;
        for &li in layer.iter().flatten() {
            let l = arena[li];
            best = match best {
                Some(b) if self.label_cmp(&arena, &l, &b, objective) != Ordering::Less => Some(b),
                _ => Some(l),
            };
        }
        let Some(best) = best else {
            return Ok(None);
        };
        let mut precisions = Vec::with_capacity(steps);
        precisions.push(table.precisions[best.col]);
        let mut p = best.parent;
        while p != ROOT {
            precisions.push(table.precisions[arena[p].col]);
            p = arena[p].parent;
        }
        precisions.reverse();
        Ok(Some(Assignment {
            precisions,
            total_cost: best.cost,
            total_error: best.error,
        }))
    }

    /// Orders two partial assignments of the same length: smaller primary total first, then
    /// smaller secondary total, then the higher precision at the first step where they differ.
    fn label_cmp(&self, arena: &[Label], a: &Label, b: &Label, objective: Objective) -> Ordering {
        let (ka, kb) = match objective {
            Objective::Cost => ((a.cost, a.error), (b.cost, b.error)),
            Objective::Error => ((a.error, a.cost), (b.error, b.cost)),
        };
        ka.0.total_cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then_with(|| self.sequence_cmp(arena, a, b).reverse())
    }

    /// Compares the precision sequences of two same-length partial assignments
    /// lexicographically from the first step.
    fn sequence_cmp(&self, arena: &[Label], a: &Label, b: &Label) -> Ordering {
        let precision = |l: &Label| self.table.precisions[l.col];
        let mut order = precision(a).cmp(&precision(b));
        let (mut pa, mut pb) = (a.parent, b.parent);
        while pa != pb && pa != ROOT && pb != ROOT {
            let (la, lb) = (&arena[pa], &arena[pb]);
            let o = precision(la).cmp(&precision(lb));
            if o != Ordering::Equal {
                order = o;
            }
            pa = la.parent;
            pb = lb.parent;
        }
        order
    }
}

/// Whether `a` beats `b`: smaller primary total, then secondary, then the higher sequence.
fn assignment_better(a: &Assignment, b: &Assignment, objective: Objective) -> bool {
    let (ka, kb) = match objective {
        Objective::Cost => ((a.total_cost, a.total_error), (b.total_cost, b.total_error)),
        Objective::Error => ((a.total_error, a.total_cost), (b.total_error, b.total_cost)),
    };
    ka.0.total_cmp(&kb.0)
        .then(ka.1.total_cmp(&kb.1))
        .then_with(|| b.precisions.cmp(&a.precisions))
        == Ordering::Less
}

/// At most `cap` (at least 2) labels of a Pareto front sorted by cost: the cheapest, the least
/// error and evenly spaced ones between. Dropping labels keeps the result feasible (every label
/// is a real partial assignment) but may miss the cheapest one: it happens only past
/// [`MAX_PARETO_LABELS`].
fn thin_front(front: Vec<Label>, cap: usize) -> Vec<Label> {
    let n = front.len();
    if n <= cap {
        return front;
    }
    (0..cap).map(|i| front[i * (n - 1) / (cap - 1)]).collect()
}

/// All `k`-element subsets of `items`, in lexicographic order of positions.
fn subsets(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    let n = items.len();
    let mut out = Vec::new();
    if k == 0 || k > n {
        return out;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        out.push(idx.iter().map(|&i| items[i]).collect());
        let Some(pos) = (0..k).rev().find(|&p| idx[p] != p + n - k) else {
            return out;
        };
        idx[pos] += 1;
        for q in pos + 1..k {
            idx[q] = idx[q - 1] + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_enumerates_combinations() {
        assert_eq!(
            subsets(&[7, 8, 9], 2),
            vec![vec![7, 8], vec![7, 9], vec![8, 9]]
        );
        assert_eq!(subsets(&[1, 2, 3, 4, 5], 3).len(), 10);
        assert_eq!(subsets(&[1], 1), vec![vec![1]]);
        assert!(subsets(&[1, 2], 3).is_empty());
    }

    /// A table of `steps` rows over INT4, INT8, FP16, FP32 with per-step costs that differ a
    /// little from step to step, so partial costs rarely tie and the Pareto fronts grow.
    fn wide_front_table(steps: usize) -> ErrorTable {
        use Precision::{FP16, FP32, INT4, INT8};
        let errors = (0..steps)
            .map(|i| {
                let t = (i + 1) as f64 / steps as f64;
                vec![0.01 * t, 0.002 * t, 0.0001 * t, 0.0]
            })
            .collect();
        let step_costs = (0..steps)
            .map(|i| {
                let wobble = 1.0 + 0.013 * ((i * 7919) % 97) as f64 / 97.0;
                vec![0.25 * wobble, 0.5 * wobble, 1.0, 2.0]
            })
            .collect();
        ErrorTable::new(
            vec![INT4, INT8, FP16, FP32],
            None,
            errors,
            vec![0.25, 0.5, 1.0, 2.0],
        )
        .unwrap()
        .with_step_costs(step_costs)
        .unwrap()
    }

    /// The assignment meets the budget, the gap and residency options, and its totals are its
    /// sequence's.
    fn assert_meets(table: &ErrorTable, options: &SolveOptions, budget: f64, a: &Assignment) {
        assert_eq!(a.precisions.len(), table.steps());
        assert!(a.total_error <= budget, "{} > {budget}", a.total_error);
        let cols: Vec<usize> = a
            .precisions
            .iter()
            .map(|p| table.precisions.iter().position(|q| q == p).unwrap())
            .collect();
        assert_eq!(a.total_cost, table.sequence_cost(&cols));
        let error: f64 = cols
            .iter()
            .enumerate()
            .map(|(i, &j)| table.errors[i][j])
            .sum();
        assert!((a.total_error - error).abs() <= 1e-12 * error.max(1.0));
        let changes: Vec<usize> = (1..cols.len())
            .filter(|&i| cols[i] != cols[i - 1])
            .collect();
        assert!(
            changes.windows(2).all(|w| w[1] - w[0] >= options.min_gap),
            "transitions at {changes:?} closer than {}",
            options.min_gap
        );
        assert!(a.resident().len() <= options.max_resident);
    }

    #[test]
    fn thin_front_keeps_both_ends_and_at_most_the_cap() {
        let front: Vec<Label> = (0..10)
            .map(|i| Label {
                cost: i as f64,
                error: 10.0 - i as f64,
                col: 0,
                parent: ROOT,
            })
            .collect();
        let kept = thin_front(front.clone(), 4);
        let costs: Vec<f64> = kept.iter().map(|l| l.cost).collect();
        assert_eq!(costs, vec![0.0, 3.0, 6.0, 9.0]);
        assert_eq!(thin_front(front.clone(), 10).len(), 10);
        assert_eq!(thin_front(front, 2).len(), 2);
    }

    #[test]
    fn thinned_fronts_still_meet_every_constraint_and_bound_the_arena() {
        let steps = 80;
        let table = wide_front_table(steps);
        let options = SolveOptions::default().min_gap(3).max_resident(3);
        // Between all-INT8 (0.081) and all-INT4 (0.405): the fronts hold many labels.
        let budget = 0.2;
        let bound = ErrorBound::Total(budget);
        let (exact, stats) = solve_limited(&table, &options, &bound, MAX_PARETO_LABELS).unwrap();
        assert_eq!(stats.thinned, 0, "the real limit thinned an 80-step solve");
        assert_meets(&table, &options, budget, &exact);
        // A limit that leaves two labels a state forces thinning.
        let states = 3 * 3;
        let limit = steps * states * 2;
        let (thinned, stats) = solve_limited(&table, &options, &bound, limit).unwrap();
        assert!(stats.thinned > 0, "{stats:?}");
        assert!(
            stats.max_arena > 0 && stats.max_arena <= limit + states,
            "{stats:?}"
        );
        assert_meets(&table, &options, budget, &thinned);
        assert!(thinned.total_cost >= exact.total_cost);
        assert!(
            stats.max_arena
                < solve_limited(&table, &options, &bound, usize::MAX)
                    .unwrap()
                    .1
                    .max_arena
        );
    }

    #[test]
    fn a_5000_step_total_budget_solve_keeps_the_documented_bound() {
        let steps = 5000;
        let table = wide_front_table(steps);
        let options = SolveOptions::default();
        let budget = 20.0 * 0.01 * 0.5;
        let bound = ErrorBound::Total(budget);
        let (a, stats) = solve_limited(&table, &options, &bound, MAX_PARETO_LABELS).unwrap();
        assert_meets(&table, &options, budget, &a);
        // Four precisions, gap 1: four states a step, each front capped at
        // MAX_PARETO_LABELS / (5000 x 4) = 419 labels, plus the first step's.
        assert_eq!(MAX_PARETO_LABELS / (steps * 4), 419);
        assert!(stats.max_arena <= MAX_PARETO_LABELS + 4, "{stats:?}");
        // Measured: 19 891 fronts thinned, 8 351 150 labels at most. Without the thinning the
        // fronts (and the memory) would grow with the square of the steps.
        assert!(stats.thinned > 0, "{stats:?}");
    }
}
