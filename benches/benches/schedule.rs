//! Schedule generation and transition planning for 30, 1 000 and 100 000 steps.
//!
//! `cargo bench -p haagenti-adaptive-benches --bench schedule`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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

criterion_group!(benches, generate, plan);
criterion_main!(benches);
