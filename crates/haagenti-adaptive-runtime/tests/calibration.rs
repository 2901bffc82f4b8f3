//! Calibration on a synthetic denoiser whose per-step error and work are known exactly.

use Precision::{FP32, INT4, INT8};
use haagenti_adaptive_core::Precision;
use haagenti_adaptive_runtime::{
    CalibrationOptions, CalibrationPhase, CheckBatch, Denoiser, Executor, Quality, Result, RunPlan,
    Sampler, StepCosts, calibrate, karras_sigmas, sensitivity, solve_budget,
};
use haagenti_adaptive_schedule::solver::SolveOptions;

/// The denoiser of a point mass at 0 (`D(x) = 0`), plus a known error: INT4 adds `int4_bias` and
/// INT8 `int8_bias` to every output. It counts the evaluations each precision makes and, when
/// `spin` is set, burns that many loop iterations an evaluation per unit of work, INT4 one unit,
/// INT8 two, FP32 four.
struct Fake {
    dim: usize,
    int4_bias: f32,
    int8_bias: f32,
    spin: u64,
    resident: Vec<Precision>,
    evals: [usize; 5],
}

impl Fake {
    fn new(spin: u64) -> Self {
        Self {
            dim: 4,
            int4_bias: 0.05,
            int8_bias: 0.001,
            spin,
            resident: Vec::new(),
            evals: [0; 5],
        }
    }

    fn work(p: Precision) -> u64 {
        match p {
            INT4 => 1,
            INT8 => 2,
            _ => 4,
        }
    }
}

fn col(p: Precision) -> usize {
    Precision::ALL.iter().position(|&q| q == p).unwrap()
}

impl Denoiser for Fake {
    fn dim(&self) -> usize {
        self.dim
    }
    fn load(&mut self, p: Precision) -> Result<()> {
        if !self.resident.contains(&p) {
            self.resident.push(p);
        }
        Ok(())
    }
    fn release(&mut self, p: Precision) {
        self.resident.retain(|&q| q != p);
    }
    fn resident_bytes(&self) -> usize {
        self.resident.len() * 100
    }
    fn denoise(
        &mut self,
        _x: &[f32],
        _batch: usize,
        _sigma: f64,
        p: Precision,
        out: &mut [f32],
    ) -> Result<()> {
        assert!(self.resident.contains(&p), "{p} used while not resident");
        self.evals[col(p)] += 1;
        let mut acc = 0u64;
        for i in 0..self.spin * Self::work(p) {
            acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i));
        }
        let bias = match p {
            INT4 => self.int4_bias,
            INT8 => self.int8_bias,
            _ => 0.0,
        };
        out.fill(bias + 0.0 * acc as f32);
        Ok(())
    }
}

fn exec(steps: usize) -> Executor {
    Executor::new(
        Sampler::Euler,
        karras_sigmas(steps, 0.002, 80.0, 7.0).unwrap(),
    )
    .unwrap()
}

/// With `D = bias`, an Euler step from sigma to sigma' moves x by `(1 - sigma'/sigma)(bias - x)`
/// relative to the exact step, so one biased step's final error is known in closed form: the
/// bias times the step's weight, carried through the later (exact, contracting) steps.
fn one_step_error(sigmas: &[f64], i: usize, bias: f64) -> f64 {
    let n = sigmas.len() - 1;
    // Euler with D = c: x' = x + (s' - s) (x - c) / s = (s'/s) x + (1 - s'/s) c.
    let mut shift = (1.0 - sigmas[i + 1] / sigmas[i]) * bias;
    for k in i + 1..n {
        shift *= sigmas[k + 1] / sigmas[k];
    }
    shift * shift
}

#[test]
fn sensitivity_matches_the_known_error() {
    let e = exec(6);
    let mut fake = Fake::new(0);
    let x0: Vec<f32> = (0..8).map(|i| i as f32 * 10.0).collect();
    let table = sensitivity(&e, &mut fake, &x0, 2, &[INT4, INT8], |_, _| {}).unwrap();
    for i in 0..6 {
        for (j, bias) in [(0, 0.05f64), (1, 0.001)] {
            let want = one_step_error(e.sigmas(), i, f64::from(bias as f32));
            let got = table.errors[i][j];
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-12) + 1e-12,
                "step {i} col {j}: {got} vs {want}"
            );
        }
    }
    assert!(fake.resident.is_empty());
}

#[test]
fn prediction_counts_the_work_the_executor_does() {
    // Costs in units of work: the prediction must equal the work the fake counts in a run.
    let steps = 5;
    let e = exec(steps);
    let costs = StepCosts {
        precisions: vec![INT4, INT8, FP32],
        seconds: vec![vec![1.0, 2.0, 4.0]; steps],
        switch_seconds: vec![0.0; 3],
        batch: 1,
    };
    for precisions in [
        vec![INT4; 5],
        vec![INT4, INT4, INT8, FP32, FP32],
        vec![FP32, INT8, INT8, INT4, FP32],
    ] {
        let mut fake = Fake::new(0);
        let plan = RunPlan::from_precisions("p", &precisions);
        e.run(&mut fake, &plan, &[0.5; 4], 1, |_| {}).unwrap();
        let work: usize = Precision::ALL
            .iter()
            .map(|&p| fake.evals[col(p)] * Fake::work(p) as usize)
            .sum();
        assert_eq!(costs.predict(&plan).unwrap(), work as f64, "{precisions:?}");
    }
    // A blended step evaluates both precisions, and pays for both.
    let blended = RunPlan::with_blends(
        "b",
        &[INT8, FP32, FP32, FP32, FP32],
        &[None, Some((INT8, 0.5)), None, None, None],
    );
    assert_eq!(costs.predict(&blended).unwrap(), 2.0 + 6.0 + 4.0 * 3.0);
    assert!(costs.predict(&RunPlan::uniform("x", FP32, 4)).is_err());
    assert!(
        costs
            .predict(&RunPlan::uniform("x", Precision::BF16, 5))
            .is_err()
    );
}

#[test]
fn search_takes_the_cheapest_schedule_within_the_budget() {
    // Known errors (from the closed form) and known costs: the solver's choice is the brute-force
    // optimum over every 3^n schedule of at most two precisions.
    let steps = 6;
    let e = exec(steps);
    let mut fake = Fake::new(0);
    let x0 = vec![1.0f32; 4];
    let table = sensitivity(&e, &mut fake, &x0, 1, &[INT4, INT8], |_, _| {}).unwrap();
    let costs = StepCosts {
        precisions: vec![INT4, INT8, FP32],
        seconds: vec![vec![1.0, 2.0, 4.0]; steps],
        switch_seconds: vec![0.5, 0.5, 0.5],
        batch: 1,
    };
    let options = SolveOptions::default().max_resident(2);
    let all = [INT4, INT8, FP32];
    let rms = |s: &[Precision]| -> f64 {
        s.iter()
            .enumerate()
            .map(|(i, &p)| table.error(i, p).unwrap().sqrt())
            .sum()
    };
    for budget in [0.0, 1e-8, 1e-6, 1e-4, 1e-2] {
        let got = solve_budget(&table, &costs, budget, &options).unwrap();
        let mut best = f64::INFINITY;
        for code in 0..3usize.pow(steps as u32) {
            let s: Vec<Precision> = (0..steps)
                .map(|i| all[(code / 3usize.pow(i as u32)) % 3])
                .collect();
            let mut used = s.clone();
            used.sort();
            used.dedup();
            if used.len() <= 2 && rms(&s) <= budget.sqrt() {
                let cost = costs.predict(&RunPlan::from_precisions("s", &s)).unwrap();
                best = best.min(cost);
            }
        }
        let cost = costs
            .predict(&RunPlan::from_precisions("g", &got.precisions))
            .unwrap();
        assert!(
            (cost - best).abs() < 1e-9,
            "budget {budget}: {cost} vs {best}"
        );
        assert!((got.total_cost - cost).abs() < 1e-9);
    }
}

#[test]
fn calibrate_meets_the_budget_and_reports_every_phase() {
    let steps = 6;
    let e = exec(steps);
    // Enough work a call that INT4 and INT8 measure cheaper than FP32 despite timer noise.
    let mut fake = Fake::new(20_000);
    let x_cal: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let x_held: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
    let budget = 1e-5;
    let options = CalibrationOptions {
        budget: Some(budget),
        baselines: vec![RunPlan::uniform("all-int8", INT8, steps)],
        candidates: vec![INT4, INT8],
        repeats: 3,
        ..CalibrationOptions::default()
    };
    let mut phases = Vec::new();
    let report = calibrate(
        &e,
        &mut fake,
        &x_cal,
        &x_held,
        &options,
        Quality::from_mse,
        |p| {
            assert!(p.done <= p.total, "{p:?}");
            if phases.last() != Some(&p.phase) {
                phases.push(p.phase);
            }
        },
    )
    .unwrap();
    assert_eq!(
        phases,
        [
            CalibrationPhase::Costs,
            CalibrationPhase::Sensitivity,
            CalibrationPhase::Search,
            CalibrationPhase::Check
        ]
    );
    // The default headroom leaves half the budget for what the held-out batch may add.
    assert!(report.calibration_mse <= budget * options.headroom);
    assert_eq!(report.best_preset.as_deref(), Some("all-int8"));
    // The errors are data-independent, so the held-out batch measures the same MSE.
    let held = report
        .checks
        .iter()
        .find(|c| c.name == "calibrated" && c.batch == CheckBatch::HeldOut)
        .unwrap();
    assert!((held.quality.mse - report.calibration_mse).abs() <= 1e-9);
    assert_eq!(report.checks.len(), 6);
    for c in &report.checks {
        assert!(c.seconds > 0.0 && c.seconds_spread >= 0.0, "{c:?}");
    }
    // Some step runs below FP32 (a late step at INT8 costs far less than the budget).
    assert!(report.plan.precisions().iter().any(|&p| p != FP32));
    assert!(fake.resident.is_empty());
    // Bad inputs are errors, not panics.
    let no_budget = CalibrationOptions {
        baselines: Vec::new(),
        ..options.clone()
    };
    let q = Quality::from_mse;
    assert!(
        calibrate(
            &e,
            &mut fake,
            &x_cal,
            &x_held,
            &CalibrationOptions {
                budget: None,
                ..no_budget
            },
            q,
            |_| {}
        )
        .is_err()
    );
    assert!(calibrate(&e, &mut fake, &x_cal, &x_held[..4], &options, q, |_| {}).is_err());
    for headroom in [0.0, 1.5, f64::NAN] {
        let bad = CalibrationOptions {
            headroom,
            ..options.clone()
        };
        let err = calibrate(&e, &mut fake, &x_cal, &x_held, &bad, q, |_| {}).unwrap_err();
        assert!(err.to_string().contains("headroom"), "{err}");
    }
}
