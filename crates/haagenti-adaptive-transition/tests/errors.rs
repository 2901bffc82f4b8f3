//! Every `AdaptiveError` variant is produced by the public API of the scheduling crates.

use haagenti_adaptive_core::{AdaptiveError, Precision, PrecisionCapabilities};
use haagenti_adaptive_schedule::{
    PrecisionProfile, PrecisionSchedule, ProfilePreset, ScheduleConfig, quick_schedule,
};
use haagenti_adaptive_transition::{PrecisionTransition, TransitionPlanner};

#[test]
fn invalid_step() {
    let plan = TransitionPlanner::new(8192)
        .plan_schedule(&quick_schedule(ProfilePreset::Balanced, 30).unwrap())
        .unwrap();
    let err = plan.resident_at(30).unwrap_err();
    assert_eq!(
        err,
        AdaptiveError::InvalidStep {
            step: 30,
            total_steps: 30
        }
    );
    assert_eq!(err.to_string(), "step 30 is outside a schedule of 30 steps");
}

#[test]
fn invalid_transition() {
    let t = PrecisionTransition::gradual(Precision::FP16, Precision::FP16, 3, 2);
    assert!(matches!(
        t.validate(),
        Err(AdaptiveError::InvalidTransition {
            from: Precision::FP16,
            to: Precision::FP16,
            ..
        })
    ));
}

#[test]
fn unsupported_precision() {
    let caps = PrecisionCapabilities {
        supported: vec![Precision::INT4, Precision::INT8],
        ..PrecisionCapabilities::default()
    };
    let config = ScheduleConfig::default()
        .capabilities(caps)
        .strict(true)
        .min_quality(0.0);
    assert_eq!(
        PrecisionSchedule::generate(config),
        Err(AdaptiveError::UnsupportedPrecision(Precision::FP16))
    );
}

#[test]
fn profile_error() {
    let backwards = PrecisionProfile::new("b", "").add_zone(1.0, 0.0, Precision::INT8, "");
    let config = ScheduleConfig::default().custom_profile(backwards);
    assert!(matches!(
        PrecisionSchedule::generate(config),
        Err(AdaptiveError::ProfileError(_))
    ));
}

#[test]
fn schedule_error() {
    assert!(matches!(
        quick_schedule(ProfilePreset::Balanced, 0),
        Err(AdaptiveError::ScheduleError(_))
    ));
}

#[test]
fn vram_constraint() {
    let schedule = quick_schedule(ProfilePreset::Balanced, 30).unwrap();
    // 7e9 parameters at FP16 are 13 352 MiB; INT4 and INT8 fit 8 GiB, FP16 does not.
    let err = TransitionPlanner::new(8192)
        .with_model_params(7_000_000_000)
        .plan_schedule(&schedule)
        .unwrap_err();
    assert_eq!(
        err,
        AdaptiveError::VramConstraint {
            required_mb: 13_352,
            available_mb: 8192
        }
    );
}

#[test]
fn quality_constraint() {
    let config = ScheduleConfig::with_preset(ProfilePreset::Performance).min_quality(0.99);
    assert!(matches!(
        PrecisionSchedule::generate(config),
        Err(AdaptiveError::QualityConstraint { threshold, .. }) if threshold == 0.99
    ));
}
