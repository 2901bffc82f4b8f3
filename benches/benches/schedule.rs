//! Schedule generation and transition planning for 30, 1 000 and 100 000 steps, and the
//! error-budget solver with per-step and switch costs for 30, 100 and 500 steps.
//!
//! `cargo bench -p haagenti-adaptive-benches --bench schedule`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use haagenti_adaptive_schedule::noise::NoiseSchedule;
use haagenti_adaptive_schedule::solver::{ErrorBound, ErrorTable, SolveOptions, solve};
use haagenti_adaptive_schedule::{Precision, PrecisionSchedule, ProfilePreset, ScheduleConfig};
use haagenti_adaptive_transition::TransitionPlanner;

const STEPS: [u32; 3] = [30, 1_000, 100_000];

fn config(steps: u32) -> ScheduleConfig {
    ScheduleConfig::with_preset(ProfilePreset::Balanced)
        .steps(steps)
        .strategy("step-aware".parse().expect("a valid strategy"))
}

fn generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("schedule/generate");
    for steps in STEPS {
        group.throughput(Throughput::Elements(u64::from(steps)));
        group.bench_with_input(BenchmarkId::from_parameter(steps), &steps, |b, &steps| {
            b.iter(|| PrecisionSchedule::generate(black_box(config(steps))).expect("valid"));
        });
    }
    group.finish();
}

fn plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("schedule/plan");
    // 2.6 billion parameters in 8 GiB: memory checks on, every blend fits.
    let planner = TransitionPlanner::new(8192).with_model_params(2_600_000_000);
    for steps in STEPS {
        let schedule = PrecisionSchedule::generate(config(steps)).expect("valid");
        assert_eq!(schedule.precision_at(steps - 1), Ok(Precision::FP16));
        group.throughput(Throughput::Elements(u64::from(steps)));
        group.bench_with_input(BenchmarkId::from_parameter(steps), &schedule, |b, s| {
            b.iter(|| planner.plan_schedule(black_box(s)).expect("fits"));
        });
    }
    group.finish();
}

/// A calibration-like table: errors falling with the noise level (INT4 worst, FP32 none), step
/// costs that move a little from step to step, and a switch cost of a fifth of a step.
fn calibration_table(steps: usize) -> ErrorTable {
    let sigmas = NoiseSchedule::default().sigmas(steps).expect("valid");
    let scale = [16.0, 1.0, 0.25, 1.0 / 16.0, 0.0];
    let base = [1.0, 1.6, 2.2, 2.4, 4.0];
    let errors = sigmas[..steps]
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let e = (0.01 + 0.001 * (i % 7) as f64) / (1.0 + s);
            scale.iter().map(|k| k * e).collect()
        })
        .collect();
    let step_costs = (0..steps)
        .map(|i| {
            base.iter()
                .map(|c| c * (1.0 + 0.01 * (i % 5) as f64))
                .collect()
        })
        .collect();
    ErrorTable::new(Precision::ALL.to_vec(), None, errors, base.to_vec())
        .and_then(|t| t.with_step_costs(step_costs))
        .and_then(|t| t.with_switch_costs(base.iter().map(|c| c / 5.0).collect()))
        .expect("valid")
}

fn solver(c: &mut Criterion) {
    let mut group = c.benchmark_group("schedule/solve");
    group.sample_size(10);
    let options = SolveOptions::default().max_resident(2);
    for steps in [30usize, 100, 500] {
        let table = calibration_table(steps);
        // A budget of a quarter of all-INT8's error: the mix must be found, not read off.
        let int8: f64 = table.errors.iter().map(|row| row[1]).sum();
        let bound = ErrorBound::Total(int8 / 4.0);
        group.throughput(Throughput::Elements(steps as u64));
        group.bench_with_input(BenchmarkId::from_parameter(steps), &table, |b, t| {
            b.iter(|| solve(black_box(t), &options, &bound).expect("feasible"));
        });
    }
    group.finish();
}

criterion_group!(benches, generate, plan, solver);
criterion_main!(benches);
