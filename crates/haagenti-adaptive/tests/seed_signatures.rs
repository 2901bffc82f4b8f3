//! Every name and exact signature of the seed crate's API (`shared/seed/API.md`, from the public
//! source of `haagenti-adaptive` 0.1.0) holds on the facade, each binding's type spelled out, so
//! code written against 0.1.0 compiles here; and each call does what the seed documents, apart
//! from the deliberate differences in values listed in `docs/MIGRATING.md`.

use haagenti_adaptive::prelude::*;
use haagenti_adaptive::schedule::smallvec::SmallVec;
use haagenti_adaptive::{
    AdaptiveError, PrecisionCapabilities, PrecisionTransition, PrecisionZone, ScheduleConfig,
    StepPrecision, TransitionPlanner, TransitionStrategy, quick_schedule,
};

fn balanced(steps: u32) -> PrecisionSchedule {
    quick_schedule(ProfilePreset::Balanced, steps).expect("Balanced generates")
}

#[test]
fn profile_precision_at_returns_a_precision_with_fp16_outside_every_zone() {
    let profile: PrecisionProfile = ProfilePreset::Balanced.build();
    let p: Precision = profile.precision_at(0.25);
    assert_eq!(p, Precision::INT8);
    let early: Precision = profile.precision_at(0.1);
    assert_eq!(early, Precision::INT4);
    let past_the_end: Precision = profile.precision_at(1.0);
    assert_eq!(past_the_end, Precision::FP16);
    let gap = PrecisionProfile::new("gap", "").add_zone(0.0, 0.3, Precision::INT4, "");
    let in_gap: Precision = gap.precision_at(0.5);
    assert_eq!(in_gap, Precision::FP16);
    // The Option form is the new method beside it.
    let zone: Option<&PrecisionZone> = gap.zone_at(0.5);
    assert!(zone.is_none());
    let zone: Option<&PrecisionZone> = gap.zone_at(0.1);
    assert_eq!(zone.map(|z| z.precision), Some(Precision::INT4));
}

#[test]
fn schedule_precision_at_and_step_info_return_results() {
    let schedule = balanced(20);
    let p: Result<Precision> = schedule.precision_at(5);
    assert_eq!(p, Ok(Precision::INT8));
    let out: Result<Precision> = schedule.precision_at(20);
    assert_eq!(
        out,
        Err(AdaptiveError::InvalidStep {
            step: 20,
            total_steps: 20
        })
    );
    let info: Result<&StepPrecision> = schedule.step_info(10);
    assert_eq!(
        info.map(|s| (s.step, s.precision)),
        Ok((10, Precision::FP16))
    );
    let out: Result<&StepPrecision> = schedule.step_info(100);
    assert!(matches!(
        out,
        Err(AdaptiveError::InvalidStep {
            step: 100,
            total_steps: 20
        })
    ));
    let got: Option<&StepPrecision> = schedule.get(19);
    assert_eq!(got.map(|s| s.step), Some(19));
    assert!(schedule.get(20).is_none());
}

#[test]
fn next_transition_is_the_first_strictly_after() {
    let schedule = balanced(20);
    let next: Option<(u32, Precision, Precision)> = schedule.next_transition(0);
    assert_eq!(next, Some((5, Precision::INT4, Precision::INT8)));
    let next: Option<(u32, Precision, Precision)> = schedule.next_transition(5);
    assert_eq!(next, Some((10, Precision::INT8, Precision::FP16)));
    assert_eq!(schedule.next_transition(10), None);
}

#[test]
fn steps_at_precision_is_a_smallvec_and_distribution_counts_usize() {
    let schedule = balanced(20);
    let int8: SmallVec<[u32; 32]> = schedule.steps_at_precision(Precision::INT8);
    assert_eq!(int8.as_slice(), &[5, 6, 7, 8, 9]);
    // A Vec<u32> is what most callers collect into; it keeps compiling.
    let fp16: Vec<u32> = schedule.steps_at_precision(Precision::FP16).to_vec();
    assert_eq!(fp16, (10..20).collect::<Vec<u32>>());
    let dist: Vec<(Precision, usize, f32)> = schedule.precision_distribution();
    assert_eq!(
        dist,
        vec![
            (Precision::INT4, 5, 0.25),
            (Precision::INT8, 5, 0.25),
            (Precision::FP16, 10, 0.5)
        ]
    );
    let total: usize = dist.iter().map(|&(_, n, _)| n).sum();
    assert_eq!(total, schedule.steps.len());
}

#[test]
fn format_timeline_is_the_seed_two_line_format() {
    let schedule = balanced(12);
    let text: String = schedule.format_timeline();
    assert_eq!(text, "Step:  0  5 10 \nPrec: 444888HHHHHH\n");
    let runs: String = schedule.format_runs();
    assert_eq!(runs, "[444888hhhhhh] INT4 0-2 | INT8 3-5 | FP16 6-11");
}

#[test]
fn preset_all_is_a_static_slice_and_descriptions_are_static() {
    let all: &'static [ProfilePreset] = ProfilePreset::all();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0], ProfilePreset::Performance);
    assert_eq!(all[5], ProfilePreset::NoiseAdaptive);
    for preset in all {
        let text: &'static str = preset.description();
        assert!(!text.is_empty());
        preset.build().validate().expect("every preset is valid");
    }
    // Balanced is the seed's profile: INT4 to 25 %, INT8 to 50 %, FP16 after.
    let zones: Vec<(f32, f32, Precision)> = ProfilePreset::Balanced
        .build()
        .zones
        .iter()
        .map(|z| (z.start_step, z.end_step, z.precision))
        .collect();
    assert_eq!(
        zones,
        vec![
            (0.0, 0.25, Precision::INT4),
            (0.25, 0.5, Precision::INT8),
            (0.5, 1.0, Precision::FP16)
        ]
    );
}

#[test]
fn gradual_blends_from_zero_at_start_to_one_at_start_plus_duration() {
    let t: PrecisionTransition =
        PrecisionTransition::gradual(Precision::INT8, Precision::FP16, 10, 4);
    assert_eq!((t.start_step, t.end_step), (10, 14));
    assert_eq!(t.strategy, TransitionStrategy::Gradual { steps: 4 });
    assert_eq!(t.blend_factors.len(), 5, "duration + 1 factors");
    let blends: Vec<Option<f32>> = (9..=15).map(|s| t.blend_at(s)).collect();
    assert_eq!(
        blends,
        vec![
            None,
            Some(0.0),
            Some(0.25),
            Some(0.5),
            Some(0.75),
            Some(1.0),
            None
        ]
    );
    let effective: Precision = t.effective_precision(11);
    assert_eq!(effective, Precision::INT8);
    assert_eq!(t.effective_precision(12), Precision::FP16);
    let checked: Result<()> = t.validate();
    assert!(checked.is_ok());
    let peak: f32 = t.peak_vram_ratio();
    assert!(peak > Precision::FP16.vram_ratio());
}

#[test]
fn immediate_switches_at_its_step() {
    let t: PrecisionTransition =
        PrecisionTransition::immediate(Precision::INT4, Precision::FP16, 10);
    assert_eq!((t.start_step, t.end_step), (10, 10));
    assert_eq!(t.blend_at(10), Some(1.0));
    assert_eq!(t.blend_at(11), None);
    assert!(t.contains_step(10) && !t.contains_step(9));
    assert_eq!(t.effective_precision(10), Precision::FP16);
}

#[test]
fn planner_signatures_and_minimum_gap() {
    let planner: TransitionPlanner =
        TransitionPlanner::new(8192).with_strategy(TransitionStrategy::Immediate);
    let vram: u64 = planner.vram_mb();
    assert_eq!(vram, 8192);
    let zones: [(u32, u32, Precision); 3] = [
        (0, 10, Precision::INT4),
        (10, 20, Precision::INT8),
        (20, 30, Precision::FP16),
    ];
    let mut transitions: Vec<PrecisionTransition> = planner.plan_transitions(&zones);
    let pairs: Vec<(Precision, Precision, u32)> = transitions
        .iter()
        .map(|t| (t.from, t.to, t.start_step))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (Precision::INT4, Precision::INT8, 10),
            (Precision::INT8, Precision::FP16, 20)
        ]
    );
    // The seed keeps 3 steps between changes: a 2-step zone does not stand alone.
    let short = planner.plan_transitions(&[
        (0, 10, Precision::INT4),
        (10, 12, Precision::INT8),
        (12, 30, Precision::FP16),
    ]);
    assert_eq!(short.len(), 1);
    let unit: () = planner.optimize_for_vram(&mut transitions);
    assert_eq!(unit, ());
    assert_eq!(transitions.len(), 2);
}

#[test]
fn step_and_schedule_fields_have_the_seed_types() {
    let schedule = balanced(20);
    let config: &ScheduleConfig = &schedule.config;
    assert_eq!(config.total_steps, 20);
    let name: &String = &schedule.profile_name;
    assert!(name.to_lowercase().contains("balanced"), "{name}");
    let steps: &Vec<StepPrecision> = &schedule.steps;
    let transitions: &Vec<(u32, Precision, Precision)> = &schedule.transitions;
    assert_eq!(transitions.len(), 2);
    let (vram, quality, speedup): (f32, f32, f32) = (
        schedule.avg_vram_ratio,
        schedule.avg_quality_factor,
        schedule.estimated_speedup,
    );
    // Time adds up: 20 / (5/4 + 5/2.5 + 10/2) = 2.42, not the seed's arithmetic 2.63.
    assert!((speedup - 20.0 / 8.25).abs() < 1e-5);
    assert!((quality - (5.0 * 0.92 + 5.0 * 0.97 + 10.0 * 0.998) / 20.0).abs() < 1e-6);
    assert!(vram > 0.0 && vram < 1.0);
    let s: &StepPrecision = &steps[5];
    let (step, precision, is_transition): (u32, Precision, bool) =
        (s.step, s.precision, s.is_transition);
    assert_eq!((step, precision, is_transition), (5, Precision::INT8, true));
    let blend: Option<f32> = s.blend_factor;
    assert_eq!(blend, None, "immediate transitions do not blend");
    let (vram_ratio, quality_factor): (f32, f32) = (s.vram_ratio, s.quality_factor);
    assert_eq!(quality_factor, 0.97);
    assert!(vram_ratio >= Precision::INT8.vram_ratio());
}

#[test]
fn seed_constants_and_defaults() {
    assert_eq!(Precision::default(), Precision::FP16);
    assert_eq!(Precision::INT4.quality_factor(), 0.92);
    assert_eq!(Precision::FP16.quality_factor(), 0.998);
    assert_eq!(Precision::BF16.speedup_factor(), 1.8);
    assert!(Precision::BF16.is_lossless() && !Precision::INT8.is_lossless());
    assert_eq!(Precision::parse("half"), Some(Precision::FP16));
    let cpu = PrecisionCapabilities::cpu(4096);
    assert_eq!(cpu.supported, vec![Precision::INT8, Precision::FP32]);
    // estimate_vram is in bytes, as in the seed (block scales counted: 4.5 bits a weight).
    let bytes: u64 = cpu.estimate_vram(1_000_000, Precision::INT4);
    assert_eq!(bytes, 562_500);
    let config = ScheduleConfig::default();
    assert_eq!(
        (
            config.total_steps,
            config.min_quality,
            config.strict_capabilities
        ),
        (30, 0.90, true)
    );
    assert_eq!(config.transition_strategy, TransitionStrategy::Immediate);
    let profile = PrecisionProfile::new("n", "d");
    assert_eq!((profile.quality_target, profile.vram_target), (0.95, 0.8));
}

#[test]
fn every_error_variant_is_nameable_and_matched_exhaustively() {
    let errors = [
        AdaptiveError::InvalidStep {
            step: 3,
            total_steps: 2,
        },
        AdaptiveError::InvalidTransition {
            from: Precision::INT4,
            to: Precision::INT4,
            reason: "same precision".into(),
        },
        AdaptiveError::UnsupportedPrecision(Precision::INT4),
        AdaptiveError::ProfileError("p".into()),
        AdaptiveError::ScheduleError("s".into()),
        AdaptiveError::VramConstraint {
            required_mb: 2,
            available_mb: 1,
        },
        AdaptiveError::QualityConstraint {
            actual: 0.5,
            threshold: 0.9,
        },
    ];
    for e in &errors {
        // No wildcard arm: the enum is exhaustive, as the seed's is.
        let numbers: &str = match e {
            AdaptiveError::InvalidStep { .. } => "3",
            AdaptiveError::InvalidTransition { .. } => "INT4",
            AdaptiveError::UnsupportedPrecision(_) => "INT4",
            AdaptiveError::ProfileError(_) => "p",
            AdaptiveError::ScheduleError(_) => "s",
            AdaptiveError::VramConstraint { .. } => "2",
            AdaptiveError::QualityConstraint { .. } => "0.5",
        };
        assert!(e.to_string().contains(numbers), "{e}");
    }
    let r: Result<()> = Err(AdaptiveError::ScheduleError("x".into()));
    assert!(r.is_err());
}
