//! The error-budget solver against brute force, and its validation, errors, serde and export.

use Precision::{BF16, FP16, FP32, INT4, INT8};
use haagenti_adaptive_core::{AdaptiveError, Precision};
use haagenti_adaptive_schedule::noise::{NoiseKind, NoiseProfile, NoiseSchedule};
use haagenti_adaptive_schedule::solver::{Assignment, ErrorBound, ErrorTable, SolveOptions, solve};
use proptest::prelude::*;

fn message(r: Result<impl std::fmt::Debug, AdaptiveError>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Whether `seq` (column indices) meets every constraint, checked from the definitions.
fn feasible(t: &ErrorTable, o: &SolveOptions, b: &ErrorBound, seq: &[usize]) -> bool {
    let supported = |j: usize| {
        o.supported
            .as_ref()
            .is_none_or(|s| s.contains(&t.precisions[j]))
    };
    if !seq.iter().all(|&j| supported(j)) {
        return false;
    }
    let mut distinct: Vec<usize> = seq.to_vec();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > o.max_resident {
        return false;
    }
    let transitions: Vec<usize> = (1..seq.len()).filter(|&i| seq[i] != seq[i - 1]).collect();
    if transitions.windows(2).any(|w| w[1] - w[0] < o.min_gap) {
        return false;
    }
    match b {
        ErrorBound::MaxPerStep(tau) => seq.iter().enumerate().all(|(i, &j)| t.errors[i][j] <= *tau),
        ErrorBound::PerStep(taus) => seq
            .iter()
            .enumerate()
            .all(|(i, &j)| t.errors[i][j] <= taus[i]),
        ErrorBound::Total(budget) => totals(t, seq).1 <= *budget,
    }
}

/// Cost and error summed in step order, as the solver documents: a step's cost (per step when
/// the table has per-step costs) plus its precision's switch cost at the first step and wherever
/// the precision changes.
fn totals(t: &ErrorTable, seq: &[usize]) -> (f64, f64) {
    let mut cost = 0.0;
    let mut error = 0.0;
    for (i, &j) in seq.iter().enumerate() {
        let step = t.step_costs.as_ref().map_or(t.costs[j], |rows| rows[i][j]);
        let switch = match &t.switch_costs {
            Some(sw) if i == 0 || seq[i - 1] != j => sw[j],
            _ => 0.0,
        };
        cost += step + switch;
        error += t.errors[i][j];
    }
    (cost, error)
}

/// The best feasible assignment over all `columns^steps` sequences: least cost, then least
/// error, then the lexicographically greatest precision sequence.
fn brute_force(t: &ErrorTable, o: &SolveOptions, b: &ErrorBound) -> Option<Assignment> {
    let n = t.errors.len();
    let m = t.precisions.len();
    let mut best: Option<Assignment> = None;
    let mut seq = vec![0usize; n];
    loop {
        if feasible(t, o, b, &seq) {
            let (cost, error) = totals(t, &seq);
            let a = Assignment {
                precisions: seq.iter().map(|&j| t.precisions[j]).collect(),
                total_cost: cost,
                total_error: error,
            };
            let better = match &best {
                None => true,
                Some(cur) => {
                    (a.total_cost, a.total_error) < (cur.total_cost, cur.total_error)
                        || ((a.total_cost, a.total_error) == (cur.total_cost, cur.total_error)
                            && a.precisions > cur.precisions)
                }
            };
            if better {
                best = Some(a);
            }
        }
        // Next sequence in base m.
        let mut i = 0;
        loop {
            if i == n {
                return best;
            }
            seq[i] += 1;
            if seq[i] < m {
                break;
            }
            seq[i] = 0;
            i += 1;
        }
    }
}

fn instance(
    values: impl Strategy<Value = f64> + Clone,
) -> impl Strategy<Value = (ErrorTable, SolveOptions, ErrorBound)> {
    (
        1usize..=7,
        1usize..=3,
        proptest::sample::subsequence(Precision::ALL.to_vec(), 3),
    )
        .prop_flat_map(move |(steps, cols, pool)| {
            let cols = cols.min(pool.len());
            let precisions: Vec<Precision> = pool[..cols].to_vec();
            (
                Just(precisions),
                proptest::collection::vec(proptest::collection::vec(values.clone(), cols), steps),
                proptest::collection::vec(values.clone(), cols),
                proptest::collection::vec(any::<bool>(), cols),
                0usize..=4,
                1usize..=3,
                0usize..3,
                values.clone(),
                proptest::collection::vec(values.clone(), steps),
                any::<bool>(),
                proptest::option::of(proptest::collection::vec(
                    proptest::collection::vec(values.clone(), cols),
                    steps,
                )),
                proptest::option::of(proptest::collection::vec(values.clone(), cols)),
            )
        })
        .prop_map(
            |(
                precisions,
                errors,
                costs,
                mask,
                min_gap,
                max_resident,
                bound_kind,
                x,
                taus,
                all,
                step_costs,
                switch_costs,
            )| {
                let supported = if all {
                    None
                } else {
                    Some(
                        precisions
                            .iter()
                            .zip(&mask)
                            .filter(|(_, m)| **m)
                            .map(|(p, _)| *p)
                            .collect(),
                    )
                };
                let bound = match bound_kind {
                    0 => ErrorBound::MaxPerStep(x),
                    1 => ErrorBound::PerStep(taus),
                    // Total budgets scaled so that some are feasible and some not.
                    _ => ErrorBound::Total(x * errors.len() as f64 / 2.0),
                };
                let mut table = ErrorTable::new(precisions, None, errors, costs).unwrap();
                if let Some(rows) = step_costs {
                    table = table.with_step_costs(rows).unwrap();
                }
                if let Some(sw) = switch_costs {
                    table = table.with_switch_costs(sw).unwrap();
                }
                (
                    table,
                    SolveOptions {
                        supported,
                        min_gap,
                        max_resident,
                    },
                    bound,
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Values on a grid of eighths add exactly, so ties are real ties and the tie-break is
    /// checked too: the assignment must be identical.
    #[test]
    fn matches_brute_force_exactly((table, options, bound) in instance((0u32..24).prop_map(|k| f64::from(k) / 8.0))) {
        let got = solve(&table, &options, &bound);
        let want = brute_force(&table, &options, &bound);
        match (got, want) {
            (Ok(a), Some(b)) => prop_assert_eq!(a, b),
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "solver {:?}, brute force {:?}", got, want),
        }
    }

    /// Arbitrary reals: same feasibility, same optimal cost, and the answer is feasible with the
    /// totals it reports.
    #[test]
    fn matches_brute_force_on_reals((table, options, bound) in instance(0.0f64..10.0)) {
        let got = solve(&table, &options, &bound);
        let want = brute_force(&table, &options, &bound);
        match (got, want) {
            (Ok(a), Some(b)) => {
                prop_assert!((a.total_cost - b.total_cost).abs() <= 1e-9 * b.total_cost.max(1.0));
                let seq: Vec<usize> = a.precisions.iter()
                    .map(|p| table.precisions.iter().position(|q| q == p).unwrap())
                    .collect();
                prop_assert!(feasible(&table, &options, &bound, &seq));
                prop_assert_eq!(totals(&table, &seq), (a.total_cost, a.total_error));
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "solver {:?}, brute force {:?}", got, want),
        }
    }
}

fn table(precisions: Vec<Precision>, errors: Vec<Vec<f64>>, costs: Vec<f64>) -> ErrorTable {
    ErrorTable::new(precisions, None, errors, costs).unwrap()
}

#[test]
fn min_gap_counts_steps_between_transitions() {
    // Cheapest is INT4 except at step 2, where only FP16 meets the bound.
    let t = table(
        vec![INT4, FP16],
        vec![
            vec![0.0, 0.0],
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 0.0],
            vec![0.0, 0.0],
        ],
        vec![1.0, 2.0],
    );
    let b = ErrorBound::MaxPerStep(0.5);
    let free = solve(&t, &SolveOptions::default(), &b).unwrap();
    assert_eq!(free.precisions, vec![INT4, INT4, FP16, INT4, INT4]);
    assert_eq!(free.transition_count(), 2);
    // Transitions at 2 and 3 are one step apart; with min_gap 2 the FP16 run stretches to
    // step 3 (transitions at 2 and 4) — or starts at 1: the tie on cost and error goes to the
    // higher precision at the first step where they differ.
    let gap2 = solve(&t, &SolveOptions::default().min_gap(2), &b).unwrap();
    assert_eq!(gap2.precisions, vec![INT4, FP16, FP16, INT4, INT4]);
    assert_eq!(gap2.total_cost, 7.0);
    // The first and last runs may be short: with gap 3, INT4 | FP16 x3 | INT4 (transitions at 1
    // and 4) and FP16 x3 | INT4 x2 (one transition) both cost 8 with no error; the higher
    // precision at step 0 wins.
    let gap3 = solve(&t, &SolveOptions::default().min_gap(3), &b).unwrap();
    assert_eq!(gap3.precisions, vec![FP16, FP16, FP16, INT4, INT4]);
    assert_eq!((gap3.total_cost, gap3.total_error), (8.0, 0.0));
    // Gap 4 forbids INT4 | FP16 x3 | INT4; one transition remains possible.
    let gap4 = solve(&t, &SolveOptions::default().min_gap(4), &b).unwrap();
    assert_eq!(gap4.precisions, vec![FP16, FP16, FP16, INT4, INT4]);
    assert_eq!(gap4.transition_count(), 1);
}

#[test]
fn residency_limits_distinct_precisions() {
    let t = table(
        vec![INT4, INT8, FP16],
        vec![
            vec![0.0, 0.0, 0.0],
            vec![0.5, 0.1, 0.0],
            vec![0.9, 0.5, 0.0],
        ],
        vec![1.0, 2.0, 4.0],
    );
    let b = ErrorBound::MaxPerStep(0.2);
    let three = solve(&t, &SolveOptions::default(), &b).unwrap();
    assert_eq!(three.precisions, vec![INT4, INT8, FP16]);
    assert_eq!(three.resident(), vec![INT4, INT8, FP16]);
    // With two: {INT8, FP16} costs 2 + 2 + 4 = 8, {INT4, FP16} 1 + 4 + 4 = 9, {INT4, INT8}
    // cannot meet step 2.
    let two = solve(&t, &SolveOptions::default().max_resident(2), &b).unwrap();
    assert_eq!(two.precisions, vec![INT8, INT8, FP16]);
    assert_eq!(two.total_cost, 8.0);
    let one = solve(&t, &SolveOptions::default().max_resident(1), &b).unwrap();
    assert_eq!(one.precisions, vec![FP16; 3]);
    assert_eq!((one.total_cost, one.total_error), (12.0, 0.0));
}

#[test]
fn total_budget_trades_error_for_cost() {
    let t = table(
        vec![INT4, INT8, FP16],
        vec![
            vec![0.1, 0.01, 0.0],
            vec![0.3, 0.03, 0.0],
            vec![0.8, 0.1, 0.001],
        ],
        vec![1.0, 2.0, 4.0],
    );
    let o = SolveOptions::default();
    let cheap = solve(&t, &o, &ErrorBound::Total(10.0)).unwrap();
    assert_eq!(cheap.precisions, vec![INT4; 3]);
    let mid = solve(&t, &o, &ErrorBound::Total(0.5)).unwrap();
    assert_eq!(mid.precisions, vec![INT4, INT4, INT8]);
    assert!((mid.total_error - 0.5).abs() < 1e-12);
    let tight = solve(&t, &o, &ErrorBound::Total(0.05)).unwrap();
    assert_eq!(tight.precisions, vec![INT8, INT8, FP16]);
    let e = message(solve(&t, &o, &ErrorBound::Total(0.0005)));
    assert!(
        e.contains("smallest total error reachable")
            && e.contains("0.001")
            && e.contains("budget 0.0005"),
        "{e}"
    );
}

#[test]
fn infeasibility_says_why() {
    let t = table(
        vec![INT4, INT8, FP16],
        vec![
            vec![0.0, 0.5, 1.0],
            vec![1.0, 0.0, 1.0],
            vec![1.0, 1.0, 0.0],
            vec![0.0, 0.5, 1.0],
        ],
        vec![1.0, 2.0, 3.0],
    );
    let b = ErrorBound::MaxPerStep(0.1);
    assert_eq!(
        solve(&t, &SolveOptions::default(), &b).unwrap().precisions,
        vec![INT4, INT8, FP16, INT4]
    );
    let e = message(solve(&t, &SolveOptions::default().max_resident(2), &b));
    assert!(
        e.contains("at most 2 resident precisions") && e.contains("more resident precisions"),
        "{e}"
    );
    let e = message(solve(&t, &SolveOptions::default().min_gap(2), &b));
    assert!(
        e.contains("at least 2 steps apart") && e.contains("smaller min_gap"),
        "{e}"
    );
    let e = message(solve(
        &t,
        &SolveOptions::default(),
        &ErrorBound::PerStep(vec![0.1, 0.1, -0.1, 0.1]),
    ));
    assert!(e.contains("bound of step 2 (-0.1) is negative"), "{e}");
    let e = message(solve(
        &t,
        &SolveOptions::default(),
        &ErrorBound::PerStep(vec![0.1, 0.1, 0.0]),
    ));
    assert!(e.contains("3 per-step bounds for 4 steps"), "{e}");
    let e = message(solve(
        &t,
        &SolveOptions {
            supported: Some(vec![INT4, INT8]),
            ..SolveOptions::default()
        },
        &b,
    ));
    assert!(
        e.contains("step 2: no supported precision has error <= 0.1 (the smallest is 1 at INT4)"),
        "{e}"
    );
    let e = message(solve(
        &t,
        &SolveOptions {
            supported: Some(vec![BF16, FP32]),
            ..SolveOptions::default()
        },
        &b,
    ));
    assert!(
        e.contains("none of the table's precisions (INT4, INT8, FP16) is supported"),
        "{e}"
    );
    let e = message(solve(&t, &SolveOptions::default().max_resident(0), &b));
    assert!(e.contains("max_resident must be at least 1"), "{e}");
    assert!(
        message(solve(
            &t,
            &SolveOptions::default(),
            &ErrorBound::Total(f64::NAN)
        ))
        .contains("error budget is NaN")
    );
}

/// Precisions, sigmas, errors, costs, and what the error must say.
type Case = (
    Vec<Precision>,
    Option<Vec<f64>>,
    Vec<Vec<f64>>,
    Vec<f64>,
    &'static str,
);

#[test]
fn table_validation_names_the_bad_entry() {
    let ok_errors = || vec![vec![0.1, 0.0], vec![0.2, 0.0]];
    let cases: Vec<Case> = vec![
        (vec![], None, vec![], vec![], "no precisions"),
        (
            vec![INT8, INT8],
            None,
            ok_errors(),
            vec![1.0, 1.0],
            "precisions[1] (INT8) repeats precisions[0]",
        ),
        (
            vec![INT8, FP16],
            None,
            ok_errors(),
            vec![1.0],
            "costs has 1 entries for 2 precisions",
        ),
        (
            vec![INT8, FP16],
            None,
            ok_errors(),
            vec![1.0, f64::NAN],
            "costs[1] (FP16) is NaN",
        ),
        (
            vec![INT8, FP16],
            None,
            ok_errors(),
            vec![-1.0, 1.0],
            "costs[0] (INT8) is negative",
        ),
        (vec![INT8, FP16], None, vec![], vec![1.0, 2.0], "no steps"),
        (
            vec![INT8, FP16],
            None,
            vec![vec![0.1, 0.0], vec![0.2]],
            vec![1.0, 2.0],
            "errors row 1 has 1 entries for 2 precisions",
        ),
        (
            vec![INT8, FP16],
            None,
            vec![vec![0.1, 0.0], vec![0.2, f64::NAN]],
            vec![1.0, 2.0],
            "errors[1][1] (step 1, FP16) is NaN",
        ),
        (
            vec![INT8, FP16],
            None,
            vec![vec![-0.1, 0.0], vec![0.2, 0.0]],
            vec![1.0, 2.0],
            "errors[0][0] (step 0, INT8) is negative",
        ),
        (
            vec![INT8, FP16],
            None,
            vec![vec![0.1, f64::INFINITY], vec![0.2, 0.0]],
            vec![1.0, 2.0],
            "errors[0][1] (step 0, FP16) is infinite",
        ),
        (
            vec![INT8, FP16],
            Some(vec![1.0]),
            ok_errors(),
            vec![1.0, 2.0],
            "sigmas has 1 entries for 2 steps",
        ),
        (
            vec![INT8, FP16],
            Some(vec![1.0, 2.0]),
            ok_errors(),
            vec![1.0, 2.0],
            "sigmas[1] (2) is not below sigmas[0] (1)",
        ),
        (
            vec![INT8, FP16],
            Some(vec![1.0, 0.0]),
            ok_errors(),
            vec![1.0, 2.0],
            "sigmas[1] (0) is not a positive",
        ),
    ];
    for (p, s, e, c, want) in cases {
        let got = message(ErrorTable::new(p, s, e, c));
        assert!(got.contains(want), "{got:?} lacks {want:?}");
    }
    // Deserialising validates too.
    let json = r#"{"precisions":["INT4","FP16"],"errors":[[0.1,0.0],[0.2,0.0,0.3]],"costs":[1,2]}"#;
    let e = serde_json::from_str::<ErrorTable>(json)
        .unwrap_err()
        .to_string();
    assert!(e.contains("errors row 1 has 3 entries"), "{e}");
    // A table edited into an invalid state after construction is caught by solve.
    let mut t = table(vec![INT8, FP16], ok_errors(), vec![1.0, 2.0]);
    t.errors[1][0] = -3.0;
    assert!(
        message(solve(&t, &SolveOptions::default(), &ErrorBound::Total(1.0)))
            .contains("errors[1][0]")
    );
}

#[test]
fn serde_round_trips() {
    let t = ErrorTable::new(
        vec![INT4, INT8, FP16],
        Some(vec![14.6, 3.0, 0.5]),
        vec![
            vec![0.1, 0.01, 0.0],
            vec![0.3, 0.03, 0.0],
            vec![0.8, 0.1, 0.001],
        ],
        vec![1.0, 2.0, 4.0],
    )
    .unwrap();
    let back: ErrorTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
    let o = SolveOptions {
        supported: Some(vec![INT8, FP16]),
        min_gap: 3,
        max_resident: 2,
    };
    assert_eq!(
        serde_json::from_str::<SolveOptions>(&serde_json::to_string(&o).unwrap()).unwrap(),
        o
    );
    assert_eq!(
        serde_json::from_str::<SolveOptions>("{}").unwrap(),
        SolveOptions::default()
    );
    for b in [
        ErrorBound::MaxPerStep(0.5),
        ErrorBound::PerStep(vec![0.1, 0.2]),
        ErrorBound::Total(2.5),
    ] {
        assert_eq!(
            serde_json::from_str::<ErrorBound>(&serde_json::to_string(&b).unwrap()).unwrap(),
            b
        );
    }
    assert_eq!(
        serde_json::to_string(&ErrorBound::Total(2.5)).unwrap(),
        r#"{"total":2.5}"#
    );
    let a = solve(&t, &o, &ErrorBound::Total(0.2)).unwrap();
    assert_eq!(
        serde_json::from_str::<Assignment>(&serde_json::to_string(&a).unwrap()).unwrap(),
        a
    );
}

#[test]
fn calibrated_assignment_transfers_to_other_step_counts() {
    // A synthetic calibration at 30 Karras steps: INT4's error grows as noise falls.
    let schedule = NoiseSchedule::default();
    let sigmas = schedule.sigmas(30).unwrap();
    let errors: Vec<Vec<f64>> = sigmas[..30]
        .iter()
        .map(|&s| {
            let e = 0.05 / (1.0 + s);
            vec![16.0 * e, e, e / 16.0]
        })
        .collect();
    let t = ErrorTable::new(
        vec![INT4, INT8, FP16],
        Some(sigmas[..30].to_vec()),
        errors,
        vec![1.0, 1.6, 2.5],
    )
    .unwrap();
    let a = solve(
        &t,
        &SolveOptions::default().min_gap(3),
        &ErrorBound::MaxPerStep(0.02),
    )
    .unwrap();
    assert_eq!(a.resident(), vec![INT4, INT8, FP16]);
    let profile = a
        .to_noise_profile(
            t.sigmas.as_deref().unwrap(),
            NoiseKind::Sigma,
            "calibrated",
            "test",
        )
        .unwrap();
    assert_eq!(profile.zones.len(), 3);
    // It gives back the calibrated assignment at the calibration levels...
    assert_eq!(profile.precisions_for(&schedule, 30).unwrap(), a.precisions);
    // ...and at 50 steps, each step at a level between two calibrated steps of one precision gets
    // that precision.
    let at50 = profile.precisions_for(&schedule, 50).unwrap();
    let s50 = schedule.sigmas(50).unwrap();
    for (i, &s) in s50[..50].iter().enumerate() {
        if let Some(k) = (1..30).find(|&k| sigmas[k] <= s && s <= sigmas[k - 1])
            && a.precisions[k] == a.precisions[k - 1]
        {
            assert_eq!(at50[i], a.precisions[k], "step {i} sigma {s}");
        }
    }
    // The JSON export reads back as the same profile.
    let json = serde_json::to_string_pretty(&profile).unwrap();
    assert_eq!(
        serde_json::from_str::<NoiseProfile>(&json).unwrap(),
        profile
    );
    // Levels of the wrong count, or not decreasing, are refused.
    assert!(
        message(a.to_noise_profile(&sigmas[..10], NoiseKind::Sigma, "x", ""))
            .contains("10 noise levels for an assignment of 30 steps")
    );
    // The full n + 1 list from sigmas() is accepted too.
    assert_eq!(
        a.to_noise_profile(&sigmas, NoiseKind::Sigma, "calibrated", "test")
            .unwrap(),
        profile
    );
}

#[test]
fn export_handles_a_flow_run_starting_at_pure_noise() {
    let flow = NoiseSchedule::flow(3.0).unwrap();
    let levels = flow.sigmas(4).unwrap();
    let a = Assignment {
        precisions: vec![INT4, INT8, INT8, FP16],
        total_cost: 0.0,
        total_error: 0.0,
    };
    let p = a
        .to_noise_profile(&levels, NoiseKind::FlowTime, "flow", "")
        .unwrap();
    assert_eq!(p.precisions_for(&flow, 4).unwrap(), a.precisions);
    // Step 0 sits at log-SNR -inf, so the boundary is step 1's own log-SNR.
    assert_eq!(
        p.zones[0].end_log_snr,
        NoiseKind::FlowTime.log_snr(levels[1]).unwrap()
    );
    // A flow level above 1 is refused.
    assert!(
        message(a.to_noise_profile(&[1.5, 0.7, 0.4, 0.2], NoiseKind::FlowTime, "f", ""))
            .contains("outside [0, 1]")
    );
    // One run: one zone over the whole axis.
    let one = Assignment {
        precisions: vec![FP16; 4],
        total_cost: 0.0,
        total_error: 0.0,
    };
    assert_eq!(
        one.to_noise_profile(&levels, NoiseKind::FlowTime, "f", "")
            .unwrap()
            .zones
            .len(),
        1
    );
}

#[test]
fn realistic_instance_solves_exactly_at_scale() {
    // 100 steps, all five precisions, errors falling with noise level, per-step and total bounds.
    let schedule = NoiseSchedule::default();
    let sigmas = schedule.sigmas(100).unwrap();
    let scale = [16.0, 1.0, 0.25, 1.0 / 16.0, 0.0];
    let errors: Vec<Vec<f64>> = sigmas[..100]
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            scale
                .iter()
                .map(|k| k * (0.01 + 0.001 * (i % 7) as f64) / (1.0 + s))
                .collect()
        })
        .collect();
    let t = ErrorTable::new(
        Precision::ALL.to_vec(),
        Some(sigmas[..100].to_vec()),
        errors,
        vec![1.0, 1.6, 2.2, 2.4, 4.0],
    )
    .unwrap();
    let options = SolveOptions::default().min_gap(4).max_resident(3);
    let per_step = solve(&t, &options, &ErrorBound::MaxPerStep(0.01)).unwrap();
    assert!(per_step.resident().len() <= 3);
    let start = std::time::Instant::now();
    let total = solve(&t, &options, &ErrorBound::Total(per_step.total_error)).unwrap();
    eprintln!(
        "100 steps x 5 precisions, total bound: {:?}",
        start.elapsed()
    );
    // The total bound is looser than the per-step one with the same total, so never costlier.
    assert!(total.total_cost <= per_step.total_cost);
    assert!(total.total_error <= per_step.total_error);
    assert!(total.resident().len() <= 3);
}

#[test]
fn switch_costs_make_short_excursions_unprofitable() {
    // INT4 saves 1 a step over FP16 everywhere except step 2, where only FP16 meets the bound.
    let t = table(
        vec![INT4, FP16],
        vec![
            vec![0.0, 0.0],
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 0.0],
        ],
        vec![1.0, 2.0],
    );
    let b = ErrorBound::MaxPerStep(0.5);
    let free = solve(&t, &SolveOptions::default(), &b).unwrap();
    assert_eq!(free.precisions, vec![INT4, INT4, FP16, INT4]);
    assert_eq!(free.total_cost, 5.0);
    // Switching into INT4 costs 1.5: returning to INT4 for the last step no longer pays, and
    // the first step pays its precision's switch cost too.
    let t = t.with_switch_costs(vec![1.5, 0.25]).unwrap();
    let a = solve(&t, &SolveOptions::default(), &b).unwrap();
    assert_eq!(a.precisions, vec![INT4, INT4, FP16, FP16]);
    assert_eq!(a.total_cost, 1.5 + 1.0 + 1.0 + 0.25 + 2.0 + 2.0);
    assert_eq!(t.sequence_cost(&[0, 0, 1, 1]), a.total_cost);
}

#[test]
fn per_step_costs_replace_per_precision_costs() {
    // INT4 is cheaper at the first two steps only (a sampler's steps need not cost the same).
    let t = table(vec![INT4, FP16], vec![vec![0.0, 0.0]; 4], vec![1.0, 2.0])
        .with_step_costs(vec![
            vec![1.0, 2.0],
            vec![1.0, 2.0],
            vec![3.0, 2.0],
            vec![3.0, 2.0],
        ])
        .unwrap();
    let a = solve(&t, &SolveOptions::default(), &ErrorBound::Total(0.0)).unwrap();
    assert_eq!(a.precisions, vec![INT4, INT4, FP16, FP16]);
    assert_eq!(a.total_cost, 6.0);
    let bad = table(vec![INT4, FP16], vec![vec![0.0, 0.0]; 2], vec![1.0, 2.0]);
    assert!(
        message(bad.clone().with_step_costs(vec![vec![1.0, 2.0]])).contains("1 rows for 2 steps")
    );
    assert!(
        message(
            bad.clone()
                .with_step_costs(vec![vec![1.0, 2.0], vec![1.0, -2.0]])
        )
        .contains("step_costs[1][1]")
    );
    assert!(
        message(bad.with_switch_costs(vec![f64::NAN, 0.0]))
            .contains("switch_costs[0] (INT4) is NaN")
    );
}

#[test]
fn oversized_problems_are_refused_before_allocating() {
    // 2^20 steps x 2 precisions x gap 16 is 32 Mi states, above `MAX_STATE_STEPS`: an error,
    // not an allocation of gigabytes.
    let steps = 1 << 20;
    let t = table(
        vec![INT4, FP16],
        vec![vec![0.0, 0.0]; steps],
        vec![1.0, 2.0],
    );
    let m = message(solve(
        &t,
        &SolveOptions::default().min_gap(16),
        &ErrorBound::MaxPerStep(1.0),
    ));
    assert!(m.contains("MAX_STATE_STEPS"), "{m}");
}
