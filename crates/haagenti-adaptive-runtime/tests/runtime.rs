//! Public-API tests: executor residency and accounting, calibration on a tiny model.

use haagenti_adaptive_core::Precision::{self, FP16, FP32, INT4, INT8};
use haagenti_adaptive_runtime::{
    CostSampling, Denoiser, Executor, GmmConfig, GmmModel, RunPlan, Sampler, StepCosts,
    fp32_trajectory, gaussian_noise, karras_sigmas, measure_step_costs, mse, quality, sensitivity,
    solve_budget,
};
use haagenti_adaptive_schedule::solver::SolveOptions;

fn tiny() -> GmmModel {
    GmmModel::new(GmmConfig {
        k: 16,
        d: 64,
        s: 0.05,
        seed: 11,
    })
    .unwrap()
}

/// Bytes of one resident copy (both layouts) of a 32 x 64 matrix at `p` (k = 16 padded to 32).
fn copy_bytes(p: Precision) -> usize {
    let n = 32 * 64;
    2 * match p {
        FP32 => 4 * n,
        FP16 | Precision::BF16 => 2 * n,
        INT8 => n / 32 * 34,
        INT4 => n / 32 * 18,
    }
}

#[test]
fn executor_records_residency_per_step() {
    let mut m = tiny();
    let exec = Executor::new(Sampler::Euler, karras_sigmas(5, 0.002, 80.0, 7.0).unwrap()).unwrap();
    let plan = RunPlan::with_blends(
        "mixed",
        &[INT4, INT4, INT8, FP16, FP16],
        &[None, None, None, Some((INT8, 0.5)), None],
    );
    let x0 = gaussian_noise(2, 64, 80.0, 1).unwrap();
    let rec = exec.run(&mut m, &plan, &x0, 2, |_| {}).unwrap();
    let bytes: Vec<usize> = rec.steps.iter().map(|s| s.resident_bytes).collect();
    assert_eq!(
        bytes,
        vec![
            copy_bytes(INT4),
            copy_bytes(INT4),
            copy_bytes(INT8),
            copy_bytes(INT8) + copy_bytes(FP16),
            copy_bytes(FP16)
        ]
    );
    assert_eq!(rec.peak_resident_bytes, copy_bytes(INT8) + copy_bytes(FP16));
    assert_eq!(rec.steps[3].evals, 2);
    assert_eq!(m.resident_bytes(), 0);
    assert!(rec.steps.iter().all(|s| s.wall_s > 0.0));
    assert_eq!(rec.steps[0].sigma, 80.0);
}

#[test]
fn blend_factors_interpolate_between_precisions() {
    let mut m = tiny();
    let exec = Executor::new(Sampler::Ddim, karras_sigmas(4, 0.002, 80.0, 7.0).unwrap()).unwrap();
    let x0 = gaussian_noise(2, 64, 80.0, 2).unwrap();
    let run = |m: &mut GmmModel, f: f32| {
        let plan = RunPlan::with_blends("b", &[FP32; 4], &[None, Some((INT4, f)), None, None]);
        exec.run(m, &plan, &x0, 2, |_| {}).unwrap().samples
    };
    let at_fp32 = exec
        .run(&mut m, &RunPlan::uniform("f", FP32, 4), &x0, 2, |_| {})
        .unwrap()
        .samples;
    let mut p = vec![FP32; 4];
    p[1] = INT4;
    let at_int4 = exec
        .run(&mut m, &RunPlan::from_precisions("i", &p), &x0, 2, |_| {})
        .unwrap()
        .samples;
    assert!(mse(&at_fp32, &run(&mut m, 1.0)).unwrap() < 1e-12);
    assert!(mse(&at_int4, &run(&mut m, 0.0)).unwrap() < 1e-12);
    let half = run(&mut m, 0.5);
    let (a, b) = (mse(&at_fp32, &half).unwrap(), mse(&at_int4, &half).unwrap());
    assert!(a > 0.0 && b > 0.0, "{a} {b}");
}

#[test]
fn calibration_on_a_tiny_model() {
    let mut m = tiny();
    let steps = 6;
    let exec = Executor::new(
        Sampler::Euler,
        karras_sigmas(steps, 0.002, 80.0, 7.0).unwrap(),
    )
    .unwrap();
    let x0 = gaussian_noise(3, 64, 80.0, 5).unwrap();
    let table = sensitivity(&exec, &mut m, &x0, 3, &[INT4, INT8, FP16], |_, _| {}).unwrap();
    assert_eq!(table.errors.len(), steps);
    assert_eq!(m.resident_bytes(), 0);
    // Each entry is exactly a run with one step changed.
    for (i, j, p) in [(0, 0, INT4), (5, 1, INT8)] {
        let mut s = vec![FP32; steps];
        s[i] = p;
        let rec = exec
            .run(&mut m, &RunPlan::from_precisions("one", &s), &x0, 3, |_| {})
            .unwrap();
        let e = mse(&table.reference, &rec.samples).unwrap();
        assert!(
            (e - table.errors[i][j]).abs() <= 1e-9 * e.max(1e-30) + 1e-20,
            "{e} vs {}",
            table.errors[i][j]
        );
    }
    // INT4 hurts more than INT8 at the last, low-noise step.
    assert!(table.errors[steps - 1][0] > table.errors[steps - 1][1]);
    // Budget 0 gives FP32 (and zero-error precisions); a huge budget gives the cheapest everywhere.
    let costs = StepCosts {
        precisions: vec![INT4, INT8, FP16, FP32],
        seconds: vec![vec![1.0, 2.0, 3.0, 4.0]; steps],
        switch_seconds: vec![0.0; 4],
        batch: 3,
    };
    let two = SolveOptions::default().max_resident(2);
    let zero = solve_budget(&table, &costs, 0.0, &two).unwrap().precisions;
    assert!(zero.iter().all(|&p| table.error(0, p).is_some()));
    assert_eq!(table.predict(&zero).unwrap(), 0.0);
    // The RMS bound is the squared sum of per-step RMS errors.
    let rms: f64 = table.errors.iter().map(|r| r[0].sqrt()).sum();
    assert_eq!(
        solve_budget(&table, &costs, rms * rms * 2.0, &two)
            .unwrap()
            .precisions,
        vec![INT4; steps]
    );
    // Measured costs: one per precision, positive; what the call loaded is released.
    let states = fp32_trajectory(&exec, &mut m, &x0, 3).unwrap();
    let sampling = CostSampling {
        probes: 3,
        rounds: 3,
    };
    let c = measure_step_costs(
        &exec,
        &mut m,
        &states,
        3,
        &[INT4, FP32],
        sampling,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(c.seconds.len(), steps);
    assert!(c.seconds.iter().flatten().all(|&s| s > 0.0));
    assert_eq!(m.resident_bytes(), 0);
    let q = quality(&m, &table.reference, &table.reference, 3).unwrap();
    assert_eq!(q.mode_agreement, 1.0);
}
