//! Invariants of schedule generation, checked for every preset and step count 1..=1000.

use haagenti_adaptive_core::{AdaptiveError, Precision, PrecisionCapabilities, TransitionStrategy};
use haagenti_adaptive_schedule::{
    PrecisionProfile, PrecisionSchedule, ProfilePreset, ScheduleConfig,
};
use proptest::prelude::*;

fn preset() -> impl Strategy<Value = ProfilePreset> {
    prop::sample::select(ProfilePreset::all().to_vec())
}

fn capabilities() -> impl Strategy<Value = PrecisionCapabilities> {
    prop_oneof![
        Just(PrecisionCapabilities::modern_gpu(8192)),
        Just(PrecisionCapabilities::legacy_gpu(8192)),
        Just(PrecisionCapabilities::cpu(8192)),
    ]
}

fn strategy() -> impl Strategy<Value = TransitionStrategy> {
    prop_oneof![
        Just(TransitionStrategy::Immediate),
        (1u32..8).prop_map(|steps| TransitionStrategy::Gradual { steps }),
        Just(TransitionStrategy::StepAware),
    ]
}

fn precision() -> impl Strategy<Value = Precision> {
    prop::sample::select(Precision::ALL.to_vec())
}

/// A valid profile: sorted distinct cut points in (0, 1) and one precision a zone.
fn profile() -> impl Strategy<Value = PrecisionProfile> {
    (
        prop::collection::btree_set(1u32..1000, 0..6),
        prop::collection::vec(precision(), 7),
    )
        .prop_map(|(cuts, precisions)| {
            let mut bounds = vec![0.0f32];
            bounds.extend(cuts.iter().map(|&c| c as f32 / 1000.0));
            bounds.push(1.0);
            let mut p = PrecisionProfile::new("random", "");
            for (i, w) in bounds.windows(2).enumerate() {
                p = p.add_zone(w[0], w[1], precisions[i], "");
            }
            p
        })
}

/// What each step of an `n`-step schedule of `config` asks for before capabilities: the noise
/// profile's precision at the step's sigma when one is in force, else the fraction profile's.
fn asked(config: &ScheduleConfig, n: u32) -> Vec<Precision> {
    match (config.active_noise_profile(), config.effective_noise()) {
        (Some(profile), Some(noise)) => profile.precisions_for(&noise, n as usize).unwrap(),
        _ => {
            let profile = config.profile();
            (0..n)
                .map(|i| {
                    profile
                        .zone_at(i as f32 / n as f32)
                        .expect("a valid profile covers [0, 1)")
                        .precision
                })
                .collect()
        }
    }
}

/// The invariants every generated schedule keeps.
fn check(schedule: &PrecisionSchedule, asked: &[Precision], caps: &PrecisionCapabilities) {
    let n = schedule.config.total_steps;
    assert_eq!(schedule.steps.len(), n as usize);
    let mut changes = Vec::new();
    for (i, s) in schedule.steps.iter().enumerate() {
        assert_eq!(s.step as usize, i);
        assert!(
            caps.supports(s.precision),
            "step {i}: {} unsupported",
            s.precision
        );
        let asked = asked[i];
        assert!(
            s.precision >= asked,
            "step {i}: {} below the asked {asked}",
            s.precision
        );
        if i > 0 && s.precision != schedule.steps[i - 1].precision {
            changes.push((i as u32, schedule.steps[i - 1].precision, s.precision));
        }
        assert_eq!(
            s.is_transition,
            changes.last().is_some_and(|c| c.0 as usize == i)
        );
        if let Some(f) = s.blend_factor {
            assert!(f > 0.0 && f < 1.0, "step {i}: factor {f}");
        }
    }
    assert_eq!(schedule.transitions, changes);
    let dist = schedule.precision_distribution();
    assert_eq!(dist.iter().map(|d| d.1).sum::<usize>(), n as usize);
    assert!((dist.iter().map(|d| d.2).sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(dist.windows(2).all(|w| w[0].0 < w[1].0));
    // Total FP32 time over total scheduled time.
    let time: f64 = schedule
        .steps
        .iter()
        .map(|s| 1.0 / f64::from(s.speedup_factor))
        .sum();
    let speedup = f64::from(n) / time;
    assert!((f64::from(schedule.estimated_speedup) - speedup).abs() < 1e-4 * speedup);
    assert!(schedule.estimated_speedup <= 4.0 + 1e-5);
    assert!(schedule.peak_vram_ratio >= schedule.avg_vram_ratio - 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn presets_keep_every_invariant(
        preset in preset(),
        steps in 1u32..=1000,
        caps in capabilities(),
        strategy in strategy(),
    ) {
        let config = ScheduleConfig::with_preset(preset)
            .steps(steps)
            .capabilities(caps.clone())
            .strategy(strategy)
            .min_quality(0.0);
        let schedule = PrecisionSchedule::generate(config.clone()).unwrap();
        check(&schedule, &asked(&config, steps), &caps);
        // A noise profile is in force exactly for NoiseAdaptive, and then every step has a sigma.
        prop_assert_eq!(
            schedule.steps.iter().all(|s| s.sigma.is_some()),
            preset == ProfilePreset::NoiseAdaptive
        );
        // The presets' capabilities all support FP32, so strict changes nothing.
        let strict = PrecisionSchedule::generate(config.clone().strict(true)).unwrap();
        prop_assert_eq!(&strict.steps, &schedule.steps);
        // With the default minimum the schedule is the same, or a quality error below it.
        match PrecisionSchedule::generate(config.min_quality(0.9)) {
            Ok(s) => {
                prop_assert!(s.avg_quality_factor >= 0.9);
                prop_assert_eq!(s.steps, schedule.steps.clone());
            }
            Err(AdaptiveError::QualityConstraint { actual, threshold }) => {
                prop_assert!(actual < threshold);
                prop_assert_eq!(actual, schedule.avg_quality_factor);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        let json = serde_json::to_string(&schedule).unwrap();
        prop_assert_eq!(serde_json::from_str::<PrecisionSchedule>(&json).unwrap(), schedule);
    }

    #[test]
    fn random_profiles_keep_every_invariant(
        profile in profile(),
        steps in 1u32..=1000,
        caps in capabilities(),
        strategy in strategy(),
    ) {
        profile.validate().unwrap();
        let json = serde_json::to_string(&profile).unwrap();
        prop_assert_eq!(&serde_json::from_str::<PrecisionProfile>(&json).unwrap(), &profile);
        let config = ScheduleConfig::default()
            .custom_profile(profile.clone())
            .steps(steps)
            .capabilities(caps.clone())
            .strategy(strategy)
            .min_quality(0.0);
        let schedule = PrecisionSchedule::generate(config.clone()).unwrap();
        check(&schedule, &asked(&config, steps), &caps);
    }

    #[test]
    fn broken_profiles_are_errors_not_panics(
        profile in profile(),
        zone in 0usize..7,
        start in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-0.5f32), 0.0f32..1.0, Just(2.0f32)],
    ) {
        let mut broken = profile.clone();
        let z = zone % broken.zones.len();
        broken.zones[z].start_step = start;
        if broken.zones[z].start_step != profile.zones[z].start_step {
            prop_assert!(matches!(broken.validate(), Err(AdaptiveError::ProfileError(_))));
            let config = ScheduleConfig::default().custom_profile(broken);
            prop_assert!(matches!(PrecisionSchedule::generate(config), Err(AdaptiveError::ProfileError(_))));
        }
    }

    #[test]
    fn arbitrary_json_never_panics(text in ".{0,200}") {
        let _ = serde_json::from_str::<PrecisionProfile>(&text);
        let _ = serde_json::from_str::<ScheduleConfig>(&text);
        let _ = serde_json::from_str::<PrecisionSchedule>(&text);
    }
}

/// Not a sample: every preset, every step count 1..=1000, every preset capability.
#[test]
fn every_preset_and_step_count_up_to_1000() {
    for &preset in ProfilePreset::all() {
        for caps in [
            PrecisionCapabilities::modern_gpu(8192),
            PrecisionCapabilities::legacy_gpu(8192),
            PrecisionCapabilities::cpu(8192),
        ] {
            for steps in 1..=1000 {
                let config = ScheduleConfig::with_preset(preset)
                    .steps(steps)
                    .capabilities(caps.clone())
                    .min_quality(0.0);
                check(
                    &PrecisionSchedule::generate(config.clone()).unwrap(),
                    &asked(&config, steps),
                    &caps,
                );
            }
        }
    }
}
