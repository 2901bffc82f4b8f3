//! Schedules driven by noise levels and by measurements: `ScheduleConfig::noise`, noise-based
//! profiles, the `NoiseAdaptive` preset's default, and `EstimateSource::Measured`.

use haagenti_adaptive_core::Precision::{FP16, FP32, INT4, INT8};
use haagenti_adaptive_core::{AdaptiveError, PrecisionCapabilities, TransitionStrategy};
use haagenti_adaptive_schedule::noise::{NoiseKind, NoiseProfile, NoiseSchedule};
use haagenti_adaptive_schedule::solver::{ErrorBound, ErrorTable, SolveOptions};
use haagenti_adaptive_schedule::{
    EstimateSource, PrecisionSchedule, ProfilePreset, ScheduleConfig, quick_schedule,
};

fn precisions(s: &PrecisionSchedule) -> Vec<haagenti_adaptive_core::Precision> {
    s.steps.iter().map(|st| st.precision).collect()
}

#[test]
fn noise_adaptive_uses_noise_levels_and_records_the_default_schedule() {
    let s = quick_schedule(ProfilePreset::NoiseAdaptive, 30).unwrap();
    assert_eq!(s.config.noise, Some(NoiseSchedule::default()));
    assert_eq!(
        s.config.noise,
        Some(NoiseSchedule::karras(0.002, 80.0, 7.0).unwrap())
    );
    let sigmas = NoiseSchedule::default().sigmas(30).unwrap();
    for (i, st) in s.steps.iter().enumerate() {
        assert_eq!(st.sigma, Some(sigmas[i]), "step {i}");
        // INT4 while sigma > 10, INT8 while sigma > 1, FP16 below.
        let want = if sigmas[i] > 10.0 {
            INT4
        } else if sigmas[i] > 1.0 {
            INT8
        } else {
            FP16
        };
        assert_eq!(st.precision, want, "step {i} at sigma {}", sigmas[i]);
    }
    // Karras(0.002, 80, 7) at 30 steps: sigma_9 = 11.50 > 10 >= sigma_10 = 8.928 and
    // sigma_17 = 1.111 > 1 >= sigma_18 = 0.7782 (Python: ((80**(1/7) + i/29 * (0.002**(1/7) -
    // 80**(1/7)))**7)).
    assert_eq!(s.transitions, vec![(10, INT4, INT8), (18, INT8, FP16)]);
    // Not the old fraction approximation (INT4 to 30 %: steps 0-8).
    assert_ne!(s.transitions[0].0, 9);
}

#[test]
fn a_given_noise_schedule_drives_the_preset_and_any_profile_records_sigmas() {
    let flow = NoiseSchedule::flow(3.0).unwrap();
    let config = ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive)
        .steps(10)
        .noise(flow.clone())
        .min_quality(0.0);
    let s = PrecisionSchedule::generate(config).unwrap();
    assert_eq!(s.config.noise, Some(flow.clone()));
    let expected = NoiseProfile::noise_adaptive()
        .precisions_for(&flow, 10)
        .unwrap();
    assert_eq!(precisions(&s), expected);
    assert_eq!(s.steps[0].sigma, Some(1.0)); // t = 1: pure noise
    assert_eq!(s.steps[0].precision, INT4);

    // A fraction preset with a noise schedule keeps its fraction zones but records sigmas.
    let karras = NoiseSchedule::default();
    let config = ScheduleConfig::with_preset(ProfilePreset::Balanced)
        .steps(20)
        .noise(karras.clone());
    let s = PrecisionSchedule::generate(config).unwrap();
    assert_eq!(
        precisions(&s),
        precisions(&quick_schedule(ProfilePreset::Balanced, 20).unwrap())
    );
    let sigmas = karras.sigmas(20).unwrap();
    assert!(
        s.steps
            .iter()
            .all(|st| st.sigma == Some(sigmas[st.step as usize]))
    );
    assert!(s.format_runs().contains("\nsigma: 80@0 | "));

    // Without a noise schedule a fraction preset has no sigmas.
    let plain = quick_schedule(ProfilePreset::Balanced, 20).unwrap();
    assert!(plain.steps.iter().all(|st| st.sigma.is_none()));
    assert!(!plain.format_runs().contains('\n'));
}

#[test]
fn custom_noise_profiles_need_a_noise_schedule_and_exclude_fraction_profiles() {
    let profile = NoiseProfile::from_sigma_thresholds(
        "two-phase",
        "",
        NoiseKind::Sigma,
        &[2.0],
        &[(INT8, "noisy"), (FP32, "clean")],
    )
    .unwrap();
    let config = ScheduleConfig::default()
        .custom_noise_profile(profile.clone())
        .steps(12);
    match PrecisionSchedule::generate(config.clone()) {
        Err(AdaptiveError::ScheduleError(m)) => {
            assert!(m.contains("needs a noise schedule"), "{m}");
            assert!(m.contains("two-phase"), "{m}");
        }
        other => panic!("expected a schedule error, got {other:?}"),
    }
    let karras = NoiseSchedule::default();
    let s = PrecisionSchedule::generate(config.clone().noise(karras.clone())).unwrap();
    assert_eq!(s.profile_name, "two-phase");
    let sigmas = karras.sigmas(12).unwrap();
    for st in &s.steps {
        let sigma = sigmas[st.step as usize];
        assert_eq!(st.precision, if sigma > 2.0 { INT8 } else { FP32 });
    }
    // The preset is ignored while a custom noise profile is set.
    let with_preset = config
        .clone()
        .noise(karras.clone())
        .custom_noise_profile(profile.clone());
    let mut with_preset = with_preset;
    with_preset.preset = ProfilePreset::LowVram;
    assert_eq!(
        PrecisionSchedule::generate(with_preset).unwrap().steps,
        s.steps
    );

    let both = config
        .noise(karras)
        .custom_profile(ProfilePreset::Quality.build());
    match both.validate() {
        Err(AdaptiveError::ScheduleError(m)) => assert!(m.contains("give one"), "{m}"),
        other => panic!("expected a schedule error, got {other:?}"),
    }

    // Capabilities raise noise-profile precisions, or fail when strict.
    let legacy = ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive)
        .steps(10)
        .capabilities(PrecisionCapabilities::legacy_gpu(4096));
    let s = PrecisionSchedule::generate(legacy.clone()).unwrap();
    assert!(s.steps.iter().all(|st| st.precision == FP16));
    let only_int8 = PrecisionCapabilities {
        supported: vec![INT8],
        ..PrecisionCapabilities::default()
    };
    let strict = legacy.capabilities(only_int8).strict(true);
    assert_eq!(
        PrecisionSchedule::generate(strict),
        Err(AdaptiveError::UnsupportedPrecision(FP16))
    );
}

#[test]
fn noise_schedules_that_cannot_serve_the_steps_are_errors() {
    // sigma_min == sigma_max gives one level only.
    let flat = NoiseSchedule::karras(1.0, 1.0, 7.0).unwrap();
    let config = ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive)
        .steps(5)
        .noise(flat.clone())
        .min_quality(0.0);
    assert!(matches!(
        PrecisionSchedule::generate(config),
        Err(AdaptiveError::ScheduleError(_))
    ));
    let one = ScheduleConfig::with_preset(ProfilePreset::NoiseAdaptive)
        .steps(1)
        .noise(flat)
        .min_quality(0.0);
    let s = PrecisionSchedule::generate(one).unwrap();
    assert_eq!(s.steps[0].sigma, Some(1.0));
    assert_eq!(s.steps[0].precision, FP16); // sigma 1 is in the clean zone
    // An invalid noise schedule in a config is caught by validation.
    let mut bad = ScheduleConfig::default().noise(NoiseSchedule::default());
    bad.noise = Some(NoiseSchedule::Flow { shift: -1.0 });
    assert!(bad.validate().is_err());
}

#[test]
fn configs_and_schedules_with_noise_round_trip_through_json() {
    let profile = NoiseProfile::noise_adaptive();
    let config = ScheduleConfig::default()
        .custom_noise_profile(profile)
        .noise("scaled-linear:spacing=trailing".parse().unwrap())
        .strategy(TransitionStrategy::Gradual { steps: 2 })
        .steps(25)
        .min_quality(0.0);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(
        serde_json::from_str::<ScheduleConfig>(&json).unwrap(),
        config
    );
    let s = PrecisionSchedule::generate(config).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"sigma\":"));
    assert_eq!(serde_json::from_str::<PrecisionSchedule>(&json).unwrap(), s);

    // A custom noise profile without a schedule is rejected when read back.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["config"]["noise"] = serde_json::Value::Null;
    let e = serde_json::from_str::<PrecisionSchedule>(&v.to_string()).unwrap_err();
    assert!(e.to_string().contains("needs a noise schedule"), "{e}");
    // A negative sigma is rejected.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["steps"][3]["sigma"] = (-1.0).into();
    let e = serde_json::from_str::<PrecisionSchedule>(&v.to_string()).unwrap_err();
    assert!(e.to_string().contains("step 3 has sigma -1"), "{e}");
}

/// Seconds a step INT4 0.25, INT8 0.5, FP16 1, FP32 2; four steps whose INT errors grow.
fn table() -> ErrorTable {
    ErrorTable::new(
        vec![INT4, INT8, FP16, FP32],
        Some(vec![14.0, 3.0, 0.5, 0.05]),
        vec![
            vec![0.02, 0.01, 0.001, 0.0],
            vec![0.05, 0.02, 0.001, 0.0],
            vec![0.3, 0.04, 0.002, 0.0],
            vec![0.9, 0.2, 0.003, 0.0],
        ],
        vec![0.25, 0.5, 1.0, 2.0],
    )
    .unwrap()
}

#[test]
fn measured_schedules_take_speed_and_error_from_the_table() {
    let s = PrecisionSchedule::solve(
        ScheduleConfig::default(),
        table(),
        &SolveOptions::default(),
        &ErrorBound::Total(0.1),
    )
    .unwrap();
    // Cheapest within 0.1: INT4, INT4, INT8, FP16 (cost 2.0, error 0.113 > 0.1 is out;
    // INT4 INT4 INT8 FP16 = 0.02 + 0.05 + 0.04 + 0.003 = 0.113 > 0.1, so INT4 INT8 INT8 FP16
    // = 0.02 + 0.02 + 0.04 + 0.003 = 0.083 at cost 0.25 + 0.5 + 0.5 + 1 = 2.25, against
    // INT4 INT4 FP16 FP16 = 0.074 at 2.5).
    assert_eq!(precisions(&s), vec![INT4, INT8, INT8, FP16]);
    assert_eq!(s.estimate_source, EstimateSource::Measured);
    assert_eq!(s.predicted_cost, Some(2.25));
    assert!((s.predicted_error.unwrap() - 0.083).abs() < 1e-12);
    // FP32 time 4 * 2 = 8 seconds over 2.25.
    assert!((s.estimated_speedup - 8.0 / 2.25).abs() < 1e-5);
    assert_eq!(s.steps[0].speedup_factor, 8.0);
    assert_eq!(s.steps[2].error, Some(0.04));
    assert_eq!(s.steps[3].sigma, Some(0.05));
    assert!(s.profile_name.contains("total error <= 0.1"));

    // Blends count both precisions' cost, and their error as the blend of both errors.
    let gradual = ScheduleConfig::default().strategy(TransitionStrategy::Gradual { steps: 1 });
    let b =
        PrecisionSchedule::from_measurements(gradual, "blend", &[INT4, INT8, INT8, FP16], table())
            .unwrap();
    assert_eq!(b.steps[1].blend_factor, Some(0.5));
    assert_eq!(b.steps[1].error, Some(0.5 * 0.05 + 0.5 * 0.02));
    assert_eq!(b.predicted_cost, Some(0.25 + 0.75 + 0.5 + 1.5));

    // Round trip, and the estimates are recomputed rather than read.
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"estimate_source\":\"measured\""));
    assert_eq!(serde_json::from_str::<PrecisionSchedule>(&json).unwrap(), s);
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["predicted_cost"] = 0.0.into();
    v["steps"][0]["error"] = 9.0.into();
    assert_eq!(
        serde_json::from_str::<PrecisionSchedule>(&v.to_string()).unwrap(),
        s
    );
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_object_mut().unwrap().remove("measurements");
    let e = serde_json::from_str::<PrecisionSchedule>(&v.to_string()).unwrap_err();
    assert!(e.to_string().contains("measurements"), "{e}");
}

#[test]
fn measurements_that_do_not_fit_are_errors() {
    let msg = |r: Result<PrecisionSchedule, AdaptiveError>| match r {
        Err(AdaptiveError::ScheduleError(m)) => m,
        other => panic!("expected a schedule error, got {other:?}"),
    };
    let c = ScheduleConfig::default;
    let m = msg(PrecisionSchedule::from_measurements(
        c(),
        "x",
        &[INT4, INT4],
        table(),
    ));
    assert!(m.contains("4 steps for a schedule of 2"), "{m}");
    let m = msg(PrecisionSchedule::from_measurements(
        c(),
        "x",
        &[INT4, INT4, INT4, FP32],
        ErrorTable::new(
            vec![INT4, FP32],
            None,
            vec![vec![0.0, 0.0]; 4],
            vec![1.0, 0.0],
        )
        .unwrap(),
    ));
    assert!(m.contains("FP32 cost is 0"), "{m}");
    let no_fp32 = ErrorTable::new(
        vec![INT4, FP16],
        None,
        vec![vec![0.0, 0.0]; 4],
        vec![1.0, 2.0],
    )
    .unwrap();
    let m = msg(PrecisionSchedule::from_measurements(
        c(),
        "x",
        &[INT4; 4],
        no_fp32,
    ));
    assert!(m.contains("no FP32 column"), "{m}");
    let m = msg(PrecisionSchedule::from_measurements(
        c(),
        "x",
        &[INT4, INT4, FP16, INT8],
        ErrorTable::new(
            vec![INT4, FP16, FP32],
            None,
            vec![vec![0.0; 3]; 4],
            vec![1.0, 2.0, 4.0],
        )
        .unwrap(),
    ));
    assert!(m.contains("step 3 runs INT8"), "{m}");
    // The solver's infeasibility passes through.
    let m = msg(PrecisionSchedule::solve(
        c(),
        table(),
        &SolveOptions {
            supported: Some(vec![INT4, INT8]),
            ..SolveOptions::default()
        },
        &ErrorBound::MaxPerStep(0.01),
    ));
    assert!(m.contains("step 1: no supported precision"), "{m}");
    // Sigmas come from the config's noise schedule when the table has none.
    let plain = ErrorTable {
        sigmas: None,
        ..table()
    };
    let s = PrecisionSchedule::from_measurements(
        c().noise(NoiseSchedule::default()),
        "x",
        &[FP32; 4],
        plain,
    )
    .unwrap();
    assert_eq!(s.steps[0].sigma, Some(80.0));
    assert_eq!(s.estimated_speedup, 1.0);
    assert_eq!(s.predicted_error, Some(0.0));
}
