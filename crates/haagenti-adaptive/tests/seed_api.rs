//! Every name of the seed crate's API (`shared/seed/API.md`) is reachable from the facade with the
//! same spelling and meaning: code written for `haagenti-adaptive` 0.1.0 compiles against this crate.

use haagenti_adaptive::prelude::*;
use haagenti_adaptive::{
    AdaptiveError, PrecisionCapabilities, PrecisionTransition, PrecisionZone, ScheduleConfig,
    StepPrecision, TransitionPlanner, TransitionStrategy, quick_schedule,
};

#[test]
fn precision_keeps_the_seed_surface() {
    assert_eq!(Precision::default(), Precision::FP16);
    assert!(Precision::INT4 < Precision::INT8 && Precision::BF16 < Precision::FP16);
    assert_eq!(Precision::INT8.bits(), 8);
    assert_eq!(Precision::FP16.bytes(), 2.0);
    assert_eq!(Precision::FP16.vram_ratio(), 0.5);
    assert!(Precision::FP32.is_lossless() && !Precision::FP16.is_lossless());
    assert!(Precision::INT4.speedup_factor() > Precision::FP32.speedup_factor());
    assert!(Precision::INT4.quality_factor() < Precision::FP32.quality_factor());
    assert_eq!(Precision::parse("4bit"), Some(Precision::INT4));
    assert_eq!("Float32".parse::<Precision>().ok(), Some(Precision::FP32));
    assert_eq!(Precision::BF16.to_string(), "BF16");
}

#[test]
fn capabilities_keep_the_seed_surface() {
    let caps = PrecisionCapabilities::default();
    assert_eq!(caps, PrecisionCapabilities::modern_gpu(8192));
    assert!(caps.supports(Precision::INT4) && caps.int4_tensor_cores && caps.int8_tensor_cores);
    assert_eq!(caps.native, Precision::FP16);
    assert!(caps.compute_capability.is_some());
    let legacy = PrecisionCapabilities::legacy_gpu(2048);
    assert_eq!(legacy.best_supported(Precision::INT4), Precision::FP16);
    let cpu = PrecisionCapabilities::cpu(16384);
    assert_eq!(cpu.vram_mb, 16384);
    assert!(cpu.estimate_vram(1_000_000, Precision::FP32) >= 3);
    assert!(cpu.fits_model(1_000_000, Precision::FP32));
}

#[test]
fn profiles_presets_and_schedules_keep_the_seed_surface() {
    let profile = PrecisionProfile::new("mine", "INT8 then FP16")
        .add_zone(0.4, 1.0, Precision::FP16, "detail")
        .add_zone(0.0, 0.4, Precision::INT8, "structure");
    profile.validate().unwrap();
    assert_eq!(profile.zones.len(), 2);
    let first: &PrecisionZone = &profile.zones[0];
    assert_eq!((first.start_step, first.precision), (0.0, Precision::INT8));
    assert_eq!(profile.precision_at(0.5), Some(Precision::FP16));
    assert_eq!(profile.transition_count(), 1);
    assert!(profile.estimated_vram_ratio() > 0.0 && profile.estimated_quality() <= 1.0);

    assert_eq!(ProfilePreset::all().len(), 6);
    assert_eq!(ProfilePreset::default(), ProfilePreset::Balanced);
    assert!(!ProfilePreset::NoiseAdaptive.description().is_empty());
    let _ = ProfilePreset::Performance.build();

    let config = ScheduleConfig::with_preset(ProfilePreset::Balanced)
        .steps(20)
        .capabilities(PrecisionCapabilities::modern_gpu(8192))
        .min_quality(0.5);
    assert_eq!(ScheduleConfig::default().total_steps, 30);
    assert_eq!(ScheduleConfig::default().min_quality, 0.90);
    assert_eq!(config.transition_strategy, TransitionStrategy::Immediate);
    let schedule: PrecisionSchedule = PrecisionSchedule::generate(config).unwrap();
    assert!(
        schedule.profile_name.to_lowercase().contains("balanced"),
        "{}",
        schedule.profile_name
    );
    assert_eq!(schedule.steps.len(), 20);
    let step: &StepPrecision = schedule.step_info(0).unwrap();
    assert_eq!(step.precision, Precision::INT4);
    assert_eq!(schedule.precision_at(10), Some(Precision::FP16));
    assert_eq!(
        schedule.transitions,
        vec![
            (5, Precision::INT4, Precision::INT8),
            (10, Precision::INT8, Precision::FP16)
        ]
    );
    assert_eq!(
        schedule.next_transition(5),
        Some((10, Precision::INT8, Precision::FP16))
    );
    assert_eq!(
        schedule.steps_at_precision(Precision::INT8),
        vec![5, 6, 7, 8, 9]
    );
    let counts: u32 = schedule
        .precision_distribution()
        .iter()
        .map(|&(_, n, _)| n)
        .sum();
    assert_eq!(counts, 20);
    assert!(schedule.format_timeline().contains("INT4"));
    assert!(schedule.avg_vram_ratio > 0.0 && schedule.avg_quality_factor > 0.0);
    // Time adds up: 20 / (5/4 + 5/2.5 + 10/2) = 2.42, not the seed's arithmetic 2.63.
    assert!((schedule.estimated_speedup - 20.0 / 8.25).abs() < 1e-4);
    assert_eq!(
        quick_schedule(ProfilePreset::Quality, 30)
            .unwrap()
            .steps
            .len(),
        30
    );
}

#[test]
fn transitions_keep_the_seed_surface() {
    let t = PrecisionTransition::gradual(Precision::INT8, Precision::FP16, 10, 4);
    assert_eq!(
        (t.from, t.to, t.start_step),
        (Precision::INT8, Precision::FP16, 10)
    );
    assert!(t.contains_step(11) && !t.contains_step(9));
    assert_eq!(t.blend_factors.len(), 4);
    let blends: Vec<f32> = (10..14).map(|s| t.blend_at(s).unwrap()).collect();
    assert!(blends.windows(2).all(|w| w[0] < w[1]), "{blends:?}");
    t.validate().unwrap();
    assert!(t.peak_vram_ratio() > Precision::FP16.vram_ratio());
    let i = PrecisionTransition::immediate(Precision::INT4, Precision::INT8, 3);
    assert_eq!(i.effective_precision(3), Precision::INT8);
    assert_eq!(i.strategy, TransitionStrategy::Immediate);

    let planner = TransitionPlanner::new(4096).with_strategy(TransitionStrategy::StepAware);
    assert_eq!(planner.vram_mb(), 4096);
    let plan = planner.plan_transitions(&[(0, 10, Precision::INT4), (10, 30, Precision::FP16)]);
    assert_eq!(plan.len(), 1);
    assert_eq!(
        plan[0].end_step,
        plan[0].start_step + plan[0].blend_factors.len() as u32
    );
}

#[test]
fn every_error_variant_is_nameable() {
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
    for e in errors {
        let message = e.to_string();
        assert!(
            !message.ends_with('.') && message.chars().next().unwrap().is_lowercase(),
            "{message}"
        );
    }
    let r: Result<()> = Err(AdaptiveError::ScheduleError("x".into()));
    assert!(r.is_err());
}
