//! Noise schedules against independently computed values, their edge cases, spec parsing, log-SNR
//! and noise-based profiles.
//!
//! Reference values come from `tests/reference/noise_reference.py` (float64 numpy restating
//! k-diffusion's `get_sigmas_karras`, diffusers' `EulerDiscreteScheduler`, the Flux shift and
//! Align Your Steps' `loglinear_interp`); its output is pasted below, so the tests need no Python.

use haagenti_adaptive_core::{AdaptiveError, Precision};
use haagenti_adaptive_schedule::noise::{
    BetaSchedule, MAX_STEPS, NoiseKind, NoiseProfile, NoiseSchedule, NoiseZone, TimestepSpacing,
};
use proptest::prelude::*;

const KARRAS_10: [f64; 11] = [
    80.0,
    42.41518931851267,
    21.10867673619376,
    9.723201355260132,
    4.066123602953759,
    1.501741979068008,
    0.46997905799774714,
    0.11663856352517864,
    0.020435334553438746,
    0.002000000000000003,
    0.0,
];
const KARRAS_2: [f64; 3] = [80.0, 0.002000000000000003, 0.0];
const KARRAS_5_CUSTOM: [f64; 6] = [
    14.600000000000003,
    5.496687078959072,
    1.6305211800258415,
    0.3263045384302457,
    0.030000000000000002,
    0.0,
];
const SD_LEADING_10: [f64; 11] = [
    8.390684770218579,
    5.134431117517536,
    3.3477635806615926,
    2.292853821788702,
    1.623692081515863,
    1.1682159550479787,
    0.8356528080331495,
    0.5740502594628525,
    0.34618670638077037,
    0.04131441199678309,
    0.0,
];
const SD_TRAILING_10: [f64; 11] = [
    14.614641229333639,
    8.302803191053336,
    5.087763182678662,
    3.321083129846573,
    2.2764630657646574,
    1.612886194303876,
    1.1605783219528756,
    0.8298595281753968,
    0.5692848883499537,
    0.3416738322812819,
    0.0,
];
const SD_TRAILING_48: [f64; 49] = [
    14.614641229333639,
    12.890118940013473,
    11.411392431907123,
    10.138952206465186,
    9.089005460297853,
    8.130531027250013,
    7.297352030365751,
    6.570649591890106,
    5.9347019405508075,
    5.376334745319635,
    4.906532960867092,
    4.469315159649606,
    4.081729363724308,
    3.737035485609786,
    3.4295052828198815,
    3.1542574284940166,
    2.9183071154268285,
    2.6946151519815125,
    2.4925305844832626,
    2.309393562434304,
    2.1429088436576187,
    1.9910909619199983,
    1.858560545870638,
    1.7306221351173297,
    1.612886194303876,
    1.5042060247383322,
    1.4035773208427007,
    1.3101180666724461,
    1.227062888254611,
    1.145444862443278,
    1.0689513810760045,
    0.9970372137534983,
    0.9292144332132185,
    0.8650437025192561,
    0.8069589062937079,
    0.7487998379614402,
    0.6932048996386885,
    0.6398523234193252,
    0.588430780412967,
    0.5386292756110105,
    0.49240921469040966,
    0.44480706721581204,
    0.3977456271926898,
    0.35069233183928955,
    0.3028928973130087,
    0.2531313198198135,
    0.2017931904778229,
    0.137990721558356,
    0.0,
];
const SD_LINSPACE_10: [f64; 11] = [
    14.614641229333639,
    7.839882872819808,
    4.609174133893039,
    2.9183071154268285,
    1.9501614706273922,
    1.3449277833514826,
    0.9323579668348474,
    0.6249769180115957,
    0.36865774541485086,
    0.029167158151720367,
    0.0,
];
const LINEAR_DDPM_5: [f64; 6] = [
    25.945422436256163,
    6.212092437933329,
    2.051379818470281,
    0.727916698746775,
    0.014830923708982587,
    0.0,
];
const COSINE_8: [f64; 9] = [
    5.152712599262663,
    2.4572056196127994,
    1.5219783958282338,
    1.0187215579225373,
    0.6839068153595279,
    0.42868115958579106,
    0.21315316779210638,
    0.009350492835615357,
    0.0,
];
const FLOW_SHIFT3_10: [f64; 11] = [
    1.0,
    0.9642857142857144,
    0.9230769230769231,
    0.8749999999999999,
    0.818181818181818,
    0.75,
    0.6666666666666666,
    0.5624999999999999,
    0.4285714285714285,
    0.25000000000000006,
    0.0,
];
// (mu for 1024 tokens: 0.63)
const FLUX_4096_8: [f64; 9] = [
    1.0,
    0.9567237271222464,
    0.9045307667386396,
    0.8403488020923521,
    0.7595109169491111,
    0.6545668033876179,
    0.5128441015091338,
    0.3109010566906254,
    0.0,
];
const FLUX_1024_6: [f64; 7] = [
    1.0,
    0.9037355691215158,
    0.7897048388156547,
    0.6524894621927445,
    0.4842184486768554,
    0.27300332835436286,
    0.0,
];
const AYS_SD15_20: [f64; 21] = [
    14.614999999999997,
    9.727904450599835,
    6.475,
    4.999997499999377,
    3.8609999999999998,
    3.2269361629880438,
    2.697,
    2.25533633855352,
    1.886,
    1.622607777622183,
    1.396,
    1.1594602192399703,
    0.963,
    0.7923862694418676,
    0.652,
    0.510047056652619,
    0.399,
    0.24626814653949874,
    0.15200000000000002,
    0.06639277069079133,
    0.0,
];
const AYS_SD15_5: [f64; 6] = [
    14.614999999999997,
    3.8609999999999998,
    1.886,
    0.963,
    0.399,
    0.0,
];
const SD_LINSPACE_1: [f64; 2] = [0.029167158151720367, 0.0];
const SD_LEADING_2: [f64; 3] = [1.623692081515863, 0.04131441199678309, 0.0];

const AYS_SD15: [f64; 11] = [
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
];

fn assert_close(actual: &[f64], expected: &[f64], rel: f64) {
    assert_eq!(actual.len(), expected.len(), "length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let tol = rel * e.abs().max(1e-300);
        assert!((a - e).abs() <= tol, "index {i}: {a} vs {e}");
    }
}

fn sigmas(spec: &str, n: usize) -> Vec<f64> {
    spec.parse::<NoiseSchedule>()
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .sigmas(n)
        .unwrap_or_else(|e| panic!("{spec} at {n}: {e}"))
}

fn message(r: Result<impl std::fmt::Debug, AdaptiveError>) -> String {
    r.expect_err("expected an error").to_string()
}

fn strictly_decreasing_to_zero(v: &[f64]) -> bool {
    v.last() == Some(&0.0) && v.windows(2).all(|w| w[0] > w[1]) && v.iter().all(|x| x.is_finite())
}

#[test]
fn karras_matches_reference() {
    assert_close(&sigmas("karras", 10), &KARRAS_10, 1e-12);
    assert_close(
        &sigmas("karras:sigma_min=0.002,sigma_max=80,rho=7", 2),
        &KARRAS_2,
        1e-12,
    );
    assert_close(
        &sigmas("karras:sigma_min=0.03,sigma_max=14.6,rho=5", 5),
        &KARRAS_5_CUSTOM,
        1e-12,
    );
    // One step: sigma_max then 0 (k-diffusion's linspace(0, 1, 1) is [0]).
    assert_eq!(sigmas("karras", 1), vec![80.0, 0.0]);
}

#[test]
fn ddpm_family_matches_diffusers_euler() {
    assert_close(&sigmas("scaled-linear", 10), &SD_LEADING_10, 1e-12);
    assert_close(
        &sigmas("scaled-linear:spacing=leading", 10),
        &SD_LEADING_10,
        1e-12,
    );
    assert_close(
        &sigmas("scaled-linear:spacing=trailing", 10),
        &SD_TRAILING_10,
        1e-12,
    );
    // 48 steps: numpy's arange gives 937.4999.. (not 937.5) and rounds it down; we must too.
    assert_close(
        &sigmas("scaled-linear:spacing=trailing", 48),
        &SD_TRAILING_48,
        1e-12,
    );
    assert_close(
        &sigmas("scaled-linear:spacing=linspace", 10),
        &SD_LINSPACE_10,
        1e-12,
    );
    assert_close(
        &sigmas("scaled-linear:spacing=linspace", 1),
        &SD_LINSPACE_1,
        1e-12,
    );
    assert_close(&sigmas("scaled-linear", 2), &SD_LEADING_2, 1e-12);
    assert_close(&sigmas("linear", 5), &LINEAR_DDPM_5, 1e-12);
    assert_close(
        &sigmas("linear:beta_start=0.0001,beta_end=0.02,train_steps=1000", 5),
        &LINEAR_DDPM_5,
        1e-12,
    );
    assert_close(&sigmas("cosine", 8), &COSINE_8, 1e-12);
    assert_eq!(
        NoiseSchedule::stable_diffusion().sigmas(10).unwrap(),
        sigmas("scaled-linear", 10)
    );
}

#[test]
fn flow_and_flux_match_reference() {
    assert_close(&sigmas("flow:shift=3", 10), &FLOW_SHIFT3_10, 1e-12);
    assert_close(&sigmas("flux:tokens=4096", 8), &FLUX_4096_8, 1e-12);
    assert_close(&sigmas("flux:mu=1.15", 8), &FLUX_4096_8, 1e-12);
    assert_close(&sigmas("flux:tokens=1024", 6), &FLUX_1024_6, 1e-12);
    assert!((NoiseSchedule::flux_mu(1024.0) - 0.63).abs() < 1e-15);
    // Shift 1 is plain equal steps.
    assert_close(&sigmas("flow", 4), &[1.0, 0.75, 0.5, 0.25, 0.0], 1e-15);
}

#[test]
fn custom_lists_resample_log_linearly() {
    let ays = NoiseSchedule::custom(AYS_SD15.to_vec()).unwrap();
    assert_close(&ays.sigmas(20).unwrap(), &AYS_SD15_20, 1e-12);
    assert_close(&ays.sigmas(5).unwrap(), &AYS_SD15_5, 1e-12);
    // At its own length the list comes back with its last value replaced by 0.
    let mut at10 = AYS_SD15.to_vec();
    at10[10] = 0.0;
    assert_eq!(ays.sigmas(10).unwrap(), at10);
    assert_eq!(ays.sigmas(1).unwrap(), vec![14.615, 0.0]);
    // A list ending in 0 is n + 1 values of which the positive n are the steps' levels.
    let explicit = NoiseSchedule::custom(vec![10.0, 5.0, 1.0, 0.0]).unwrap();
    assert_eq!(explicit.sigmas(3).unwrap(), vec![10.0, 5.0, 1.0, 0.0]);
    let five = explicit.sigmas(5).unwrap();
    // log-linear: halfway between 10 and 5 is sqrt(50).
    assert_close(&five[..3], &[10.0, 50f64.sqrt(), 5.0], 1e-12);
    assert!(strictly_decreasing_to_zero(&five));
    // The spec form parses to the same schedule.
    assert_eq!(
        "sigmas:10,5,1,0".parse::<NoiseSchedule>().unwrap(),
        explicit
    );
    // One positive level cannot make two steps.
    let single = NoiseSchedule::custom(vec![3.0, 0.0]).unwrap();
    assert_eq!(single.sigmas(1).unwrap(), vec![3.0, 0.0]);
    assert!(message(single.sigmas(2)).contains("one positive level"));
}

#[test]
fn every_family_is_strictly_decreasing() {
    let specs = [
        "karras",
        "karras:sigma_min=0.1,sigma_max=0.2,rho=1",
        "scaled-linear:spacing=linspace",
        "scaled-linear:spacing=leading",
        "scaled-linear:spacing=trailing",
        "linear",
        "cosine:spacing=trailing",
        "flow:shift=3",
        "flow:shift=0.5",
        "flux:tokens=256",
        "sigmas:14.615,6.475,3.861,2.697,1.886,1.396,0.963,0.652,0.399,0.152,0.029",
    ];
    for spec in specs {
        for n in [1, 2, 3, 7, 10, 20, 30, 50, 100, 500, 999] {
            let v = sigmas(spec, n);
            assert_eq!(v.len(), n + 1, "{spec} {n}");
            assert!(strictly_decreasing_to_zero(&v), "{spec} at {n}: {v:?}");
        }
    }
}

#[test]
fn one_hundred_thousand_steps() {
    for spec in [
        "karras",
        "flow:shift=3",
        "flux:mu=0.8",
        "sigmas:14.6,1,0.03",
        "scaled-linear:spacing=linspace",
    ] {
        let v = sigmas(spec, 100_000);
        assert_eq!(v.len(), 100_001);
        assert!(strictly_decreasing_to_zero(&v), "{spec}");
    }
    // leading/trailing spacing picks integer timesteps: more steps than training steps repeat one.
    for spec in ["scaled-linear", "scaled-linear:spacing=trailing"] {
        let e = message(spec.parse::<NoiseSchedule>().unwrap().sigmas(100_000));
        assert!(e.contains("is not below sigma"), "{spec}: {e}");
    }
    // leading at n = T puts the first timestep at T (offset 1), clamped onto T - 1: a repeat.
    assert!(message(NoiseSchedule::stable_diffusion().sigmas(1000)).contains("sigma 1"));
    assert!(strictly_decreasing_to_zero(&sigmas(
        "scaled-linear:spacing=trailing",
        1000
    )));
}

#[test]
fn step_count_limits() {
    let k = NoiseSchedule::default();
    assert!(message(k.sigmas(0)).contains("at least 1 step"));
    assert!(message(k.sigmas(MAX_STEPS + 1)).contains("maximum"));
    assert_eq!(k.sigmas(MAX_STEPS).unwrap().len(), MAX_STEPS + 1);
}

#[test]
fn equal_sigma_min_and_max() {
    let s = NoiseSchedule::karras(3.0, 3.0, 7.0).unwrap();
    assert_eq!(s.sigmas(1).unwrap(), vec![3.0, 0.0]);
    let e = message(s.sigmas(2));
    assert!(e.contains("sigma_min equals sigma_max"), "{e}");
    assert!(
        message(NoiseSchedule::karras(4.0, 3.0, 7.0)).contains("sigma_min 4 is above sigma_max 3")
    );
}

#[test]
fn log_snr_axis() {
    assert_eq!(NoiseKind::Sigma.log_snr(1.0).unwrap(), 0.0);
    assert!((NoiseKind::Sigma.log_snr(std::f64::consts::E).unwrap() + 2.0).abs() < 1e-15);
    assert_eq!(NoiseKind::Sigma.log_snr(0.0).unwrap(), f64::INFINITY);
    assert_eq!(NoiseKind::FlowTime.log_snr(0.5).unwrap(), 0.0);
    let t = 1.0 / (1.0 + std::f64::consts::E);
    assert!((NoiseKind::FlowTime.log_snr(t).unwrap() - 2.0).abs() < 1e-14);
    assert_eq!(NoiseKind::FlowTime.log_snr(1.0).unwrap(), f64::NEG_INFINITY);
    assert_eq!(NoiseKind::FlowTime.log_snr(0.0).unwrap(), f64::INFINITY);
    assert!(message(NoiseKind::Sigma.log_snr(-1.0)).contains("negative"));
    assert!(message(NoiseKind::Sigma.log_snr(f64::NAN)).contains("NaN"));
    assert!(message(NoiseKind::FlowTime.log_snr(1.01)).contains("outside [0, 1]"));
    for kind in [NoiseKind::Sigma, NoiseKind::FlowTime] {
        for l in [-9.0, -1.5, 0.0, 0.25, 7.0] {
            let back = kind.log_snr(kind.level(l).unwrap()).unwrap();
            assert!((back - l).abs() < 1e-12, "{kind:?} {l} {back}");
        }
    }
}

#[test]
fn flow_starts_at_pure_noise() {
    let flow: NoiseSchedule = "flow:shift=3".parse().unwrap();
    assert_eq!(flow.kind(), NoiseKind::FlowTime);
    let logs = flow.log_snrs(10).unwrap();
    assert_eq!(logs[0], f64::NEG_INFINITY);
    assert_eq!(logs[10], f64::INFINITY);
    assert!(logs.windows(2).all(|w| w[0] < w[1]));
    assert!(logs[1..10].iter().all(|l| l.is_finite()));
    let profile = NoiseProfile::noise_adaptive();
    assert_eq!(
        profile.precision_at_log_snr(logs[0]).unwrap(),
        Precision::INT4
    );
    assert_eq!(
        profile.precision_at_log_snr(logs[10]).unwrap(),
        Precision::FP16
    );
    // One flow step is t = 1 then 0.
    assert_eq!(flow.sigmas(1).unwrap(), vec![1.0, 0.0]);
    // For a sigma schedule -2 ln sigma.
    let k = NoiseSchedule::default();
    let logs = k.log_snrs(3).unwrap();
    assert!((logs[0] + 2.0 * 80f64.ln()).abs() < 1e-12);
}

#[test]
fn spec_errors_name_the_bad_part() {
    let cases = [
        ("", "empty"),
        ("euler", "unknown noise schedule \"euler\""),
        ("karras:sigma_max=eighty", "sigma_max=\"eighty\""),
        ("karras:sigma=3", "unknown key \"sigma\""),
        ("karras:rho=7,rho=8", "\"rho\" given twice"),
        ("karras:rho", "\"rho\" is not key=value"),
        ("karras:rho=", "\"rho\" has no value"),
        ("karras:sigma_min=nan", "sigma_min NaN"),
        ("karras:sigma_min=-1", "sigma_min -1"),
        ("karras:rho=inf", "rho inf"),
        ("scaled-linear:spacing=middle", "unknown spacing \"middle\""),
        ("linear:beta_end=1.5", "beta_end 1.5"),
        ("linear:train_steps=0", "train_steps 0"),
        ("linear:train_steps=-3", "train_steps=\"-3\""),
        ("cosine:beta_start=0.1", "unknown key \"beta_start\""),
        ("flow:shift=0", "flow shift 0"),
        ("flux", "exactly one of mu=M or tokens=T"),
        ("flux:mu=1,tokens=4096", "exactly one"),
        ("flux:tokens=0", "tokens must be at least 1"),
        ("flux:tokens=1.5", "tokens=\"1.5\""),
        ("sigmas:", "no values"),
        ("sigmas:3,x,1", "value 1 (\"x\")"),
        ("sigmas:3,NaN,0", "sigma 1 is NaN"),
        ("sigmas:3,4,0", "sigma 1 (4) is not below sigma 0 (3)"),
        ("sigmas:3,-1", "sigma 1 (-1) is negative"),
        ("sigmas:3", "at least 2 values"),
        ("sigmas:inf,1", "sigma 0 is infinite"),
    ];
    for (spec, want) in cases {
        let e = message(spec.parse::<NoiseSchedule>());
        assert!(e.contains(want), "{spec:?}: {e:?} lacks {want:?}");
        assert!(!e.contains('\n'), "{spec:?}: multi-line error");
    }
}

#[test]
fn spec_display_round_trips() {
    let specs = [
        "karras",
        "karras:sigma_min=0.0291675,sigma_max=14.614642,rho=7",
        "scaled-linear:spacing=trailing",
        "scaled-linear:spacing=linspace",
        "linear:beta_start=0.0001,beta_end=0.02,train_steps=2000",
        "cosine:steps_offset=0",
        "flow:shift=3",
        "flux:tokens=1024",
        "flux:mu=-0.25",
        "sigmas:14.615,6.475,0.029",
    ];
    for spec in specs {
        let s: NoiseSchedule = spec.parse().unwrap();
        let again: NoiseSchedule = s.to_string().parse().unwrap();
        assert_eq!(again, s, "{spec} -> {s}");
    }
    assert_eq!(
        "flow:shift=3".parse::<NoiseSchedule>().unwrap().to_string(),
        "flow:shift=3"
    );
    assert_eq!(
        NoiseSchedule::stable_diffusion().to_string(),
        "scaled-linear:beta_start=0.00085,beta_end=0.012,train_steps=1000,spacing=leading,steps_offset=1"
    );
}

#[test]
fn schedules_round_trip_through_serde() {
    let all = [
        NoiseSchedule::default(),
        NoiseSchedule::stable_diffusion(),
        NoiseSchedule::ddpm(BetaSchedule::DDPM).unwrap(),
        NoiseSchedule::ddpm(BetaSchedule::Cosine).unwrap(),
        NoiseSchedule::flow(3.0).unwrap(),
        NoiseSchedule::flux_for_tokens(4096).unwrap(),
        NoiseSchedule::custom(AYS_SD15.to_vec()).unwrap(),
        NoiseSchedule::Custom {
            sigmas: vec![1.0, 0.5, 0.0],
            kind: NoiseKind::FlowTime,
        },
    ];
    for s in all {
        let json = serde_json::to_string(&s).unwrap();
        let back: NoiseSchedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s, "{json}");
    }
    for spacing in [
        TimestepSpacing::Linspace,
        TimestepSpacing::Leading,
        TimestepSpacing::Trailing,
    ] {
        let json = serde_json::to_string(&spacing).unwrap();
        assert_eq!(json, format!("\"{spacing}\""));
        assert_eq!(
            serde_json::from_str::<TimestepSpacing>(&json).unwrap(),
            spacing
        );
        assert_eq!(
            spacing.to_string().parse::<TimestepSpacing>().unwrap(),
            spacing
        );
    }
    for kind in [NoiseKind::Sigma, NoiseKind::FlowTime] {
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(serde_json::from_str::<NoiseKind>(&json).unwrap(), kind);
    }
    let b = BetaSchedule::STABLE_DIFFUSION;
    assert_eq!(
        serde_json::from_str::<BetaSchedule>(&serde_json::to_string(&b).unwrap()).unwrap(),
        b
    );
    // Deserialising validates, and a DDPM entry may leave spacing and offset to their defaults.
    let bad = r#"{"family":"karras","sigma_min":-1.0,"sigma_max":80.0,"rho":7.0}"#;
    assert!(
        serde_json::from_str::<NoiseSchedule>(bad)
            .unwrap_err()
            .to_string()
            .contains("sigma_min -1")
    );
    let bad = r#"{"family":"custom","sigmas":[1.0,2.0]}"#;
    assert!(serde_json::from_str::<NoiseSchedule>(bad).is_err());
    let ok = r#"{"family":"ddpm","betas":{"kind":"cosine"},"train_steps":1000}"#;
    assert_eq!(
        serde_json::from_str::<NoiseSchedule>(ok).unwrap(),
        NoiseSchedule::ddpm(BetaSchedule::Cosine).unwrap()
    );
}

fn zone(a: f64, b: f64, p: Precision) -> NoiseZone {
    NoiseZone::new(a, b, p, "test")
}

#[test]
fn noise_profile_validation_is_strict() {
    use Precision::{FP16, INT4, INT8};
    let inf = f64::INFINITY;
    let ok = NoiseProfile::new(
        "ok",
        "",
        vec![
            zone(-inf, -1.0, INT4),
            zone(-1.0, 2.0, INT8),
            zone(2.0, inf, FP16),
        ],
    );
    assert!(ok.is_ok());
    assert!(NoiseProfile::new("one", "", vec![zone(-inf, inf, FP16)]).is_ok());
    let cases: Vec<(Vec<NoiseZone>, &str)> = vec![
        (vec![], "no zones"),
        (
            vec![zone(-5.0, inf, FP16)],
            "zone 0 starts at log-SNR -5, not -inf",
        ),
        (vec![zone(-inf, 5.0, FP16)], "ends at log-SNR 5, not +inf"),
        (
            vec![zone(-inf, f64::NAN, INT4), zone(f64::NAN, inf, FP16)],
            "zone 0 end is NaN",
        ),
        (
            vec![
                zone(-inf, 1.0, INT4),
                zone(1.0, 0.5, INT8),
                zone(0.5, inf, FP16),
            ],
            "zone 1 is empty or backwards",
        ),
        (
            vec![
                zone(-inf, 1.0, INT4),
                zone(1.0, 1.0, INT8),
                zone(1.0, inf, FP16),
            ],
            "zone 1 is empty or backwards",
        ),
        (
            vec![zone(-inf, 1.0, INT4), zone(2.0, inf, FP16)],
            "gap between zone 0",
        ),
        (
            vec![zone(-inf, 2.0, INT4), zone(1.0, inf, FP16)],
            "zone 1 (starts 1) overlaps zone 0",
        ),
        (
            vec![zone(-inf, inf, INT4), zone(-inf, inf, FP16)],
            "only the last zone may end at +inf",
        ),
        (
            vec![zone(-inf, -inf, INT4), zone(-inf, inf, FP16)],
            "only the last zone may end at +inf",
        ),
        (
            vec![
                zone(-inf, 1.0, INT4),
                zone(1.0, inf, INT8),
                zone(inf, inf, FP16),
            ],
            "only the last zone",
        ),
    ];
    for (zones, want) in cases {
        let e = message(NoiseProfile::new("bad", "", zones.clone()));
        assert!(e.contains(want), "{zones:?}: {e:?} lacks {want:?}");
    }
}

#[test]
fn noise_profile_lookup_and_thresholds() {
    use Precision::{FP16, INT4, INT8};
    let p = NoiseProfile::from_log_snr_thresholds(
        "t",
        "",
        &[-2.0, 3.0],
        &[(INT4, "a"), (INT8, "b"), (FP16, "c")],
    )
    .unwrap();
    assert_eq!(p.precision_at_log_snr(f64::NEG_INFINITY).unwrap(), INT4);
    assert_eq!(p.precision_at_log_snr(-2.0 - 1e-12).unwrap(), INT4);
    assert_eq!(p.precision_at_log_snr(-2.0).unwrap(), INT8);
    assert_eq!(p.precision_at_log_snr(2.999).unwrap(), INT8);
    assert_eq!(p.precision_at_log_snr(3.0).unwrap(), FP16);
    assert_eq!(p.precision_at_log_snr(f64::INFINITY).unwrap(), FP16);
    assert!(message(p.precision_at_log_snr(f64::NAN)).contains("NaN"));
    assert_eq!(p.transition_count(), 2);
    assert!(
        message(NoiseProfile::from_log_snr_thresholds(
            "t",
            "",
            &[1.0, 1.0],
            &[(INT4, ""), (INT8, ""), (FP16, "")]
        ))
        .contains("zone 1 is empty")
    );
    assert!(
        message(NoiseProfile::from_log_snr_thresholds(
            "t",
            "",
            &[1.0],
            &[(INT4, "")]
        ))
        .contains("1 thresholds need 2 zones")
    );
    assert!(
        message(NoiseProfile::from_log_snr_thresholds(
            "t",
            "",
            &[f64::NAN],
            &[(INT4, ""), (INT8, "")]
        ))
        .contains("threshold 0 (NaN)")
    );
    // Sigma thresholds run noisy to clean; a flow threshold must lie strictly inside (0, 1).
    let f = NoiseProfile::from_sigma_thresholds(
        "f",
        "",
        NoiseKind::FlowTime,
        &[0.8, 0.3],
        &[(INT4, ""), (INT8, ""), (FP16, "")],
    )
    .unwrap();
    assert_eq!(
        f.precision_at_sigma(NoiseKind::FlowTime, 0.9).unwrap(),
        INT4
    );
    assert_eq!(
        f.precision_at_sigma(NoiseKind::FlowTime, 0.8).unwrap(),
        INT8
    );
    assert_eq!(
        f.precision_at_sigma(NoiseKind::FlowTime, 0.3).unwrap(),
        FP16
    );
    assert!(
        message(NoiseProfile::from_sigma_thresholds(
            "f",
            "",
            NoiseKind::FlowTime,
            &[1.0],
            &[(INT4, ""), (INT8, "")]
        ))
        .contains("extreme")
    );
    assert!(
        message(NoiseProfile::from_sigma_thresholds(
            "f",
            "",
            NoiseKind::Sigma,
            &[1.0, 2.0],
            &[(INT4, ""), (INT8, ""), (FP16, "")]
        ))
        .contains("zone 1 is empty or backwards")
    );
}

#[test]
fn noise_adaptive_thresholds() {
    use Precision::{FP16, INT4, INT8};
    let p = NoiseProfile::noise_adaptive();
    p.validate().unwrap();
    let s = NoiseKind::Sigma;
    assert_eq!(p.precision_at_sigma(s, 10.000001).unwrap(), INT4);
    assert_eq!(p.precision_at_sigma(s, 10.0).unwrap(), INT8);
    assert_eq!(p.precision_at_sigma(s, 1.000001).unwrap(), INT8);
    assert_eq!(p.precision_at_sigma(s, 1.0).unwrap(), FP16);
    assert_eq!(p.precision_at_sigma(s, 0.0).unwrap(), FP16);
    let f = NoiseKind::FlowTime;
    assert_eq!(p.precision_at_sigma(f, 0.95).unwrap(), INT4);
    assert_eq!(p.precision_at_sigma(f, 0.9).unwrap(), INT8);
    assert_eq!(p.precision_at_sigma(f, 0.5).unwrap(), FP16);
    // Karras at 30 steps: sigmas above 10 are INT4, as the table of values says.
    let k = NoiseSchedule::default();
    let levels = k.sigmas(30).unwrap();
    let ps = p.precisions_for(&k, 30).unwrap();
    for (sigma, prec) in levels.iter().zip(&ps) {
        let want = if *sigma > 10.0 {
            INT4
        } else if *sigma > 1.0 {
            INT8
        } else {
            FP16
        };
        assert_eq!(*prec, want, "sigma {sigma}");
    }
    assert!(ps.contains(&INT4) && ps.contains(&INT8) && ps.contains(&FP16));
}

#[test]
fn profiles_and_zones_round_trip_through_serde() {
    let p = NoiseProfile::noise_adaptive();
    let json = serde_json::to_string(&p).unwrap();
    // Infinite ends are written as null.
    assert!(json.contains("\"start_log_snr\":null"), "{json}");
    assert!(json.contains("\"end_log_snr\":null"), "{json}");
    assert_eq!(serde_json::from_str::<NoiseProfile>(&json).unwrap(), p);
    for z in &p.zones {
        let zj = serde_json::to_string(z).unwrap();
        assert_eq!(&serde_json::from_str::<NoiseZone>(&zj).unwrap(), z);
    }
    // Absent bounds mean unbounded; a null in the middle is -inf there and rejected.
    let min = r#"{"name":"m","zones":[{"end_log_snr":0.5,"precision":"INT8"},{"start_log_snr":0.5,"precision":"FP16"}]}"#;
    let m: NoiseProfile = serde_json::from_str(min).unwrap();
    assert_eq!(m.precision_at_log_snr(0.4).unwrap(), Precision::INT8);
    let bad = r#"{"name":"m","zones":[{"end_log_snr":0.5,"precision":"INT8"},{"start_log_snr":null,"precision":"FP16"}]}"#;
    let e = serde_json::from_str::<NoiseProfile>(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("zone 1 starts at log-SNR -inf"), "{e}");
    let backwards = r#"{"name":"m","zones":[{"end_log_snr":0.5,"precision":"INT8"},{"start_log_snr":0.5,"end_log_snr":0.1,"precision":"FP16"},{"start_log_snr":0.1,"precision":"FP16"}]}"#;
    assert!(serde_json::from_str::<NoiseProfile>(backwards).is_err());
}

proptest! {
    #[test]
    fn karras_is_strictly_decreasing(
        lo in 1e-4f64..1.0,
        ratio in 1.01f64..1e5,
        rho in 0.5f64..12.0,
        n in 1usize..300,
    ) {
        let hi = lo * ratio;
        let s = NoiseSchedule::karras(lo, hi, rho).unwrap();
        let v = s.sigmas(n).unwrap();
        prop_assert_eq!(v.len(), n + 1);
        prop_assert_eq!(v[0], hi);
        prop_assert!(strictly_decreasing_to_zero(&v));
        if n > 1 {
            prop_assert!((v[n - 1] - lo).abs() <= 1e-9 * lo);
        }
    }

    #[test]
    fn flow_shifts_are_strictly_decreasing(shift in 0.05f64..20.0, mu in -3.0f64..3.0, n in 1usize..300) {
        for s in [NoiseSchedule::flow(shift).unwrap(), NoiseSchedule::flux(mu).unwrap()] {
            let v = s.sigmas(n).unwrap();
            prop_assert_eq!(v[0], 1.0);
            prop_assert!(strictly_decreasing_to_zero(&v));
            let logs = s.log_snrs(n).unwrap();
            prop_assert!(logs.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn ddpm_spacings_are_strictly_decreasing(n in 1usize..=999, which in 0usize..3) {
        let spacing = [TimestepSpacing::Linspace, TimestepSpacing::Leading, TimestepSpacing::Trailing][which];
        let s = NoiseSchedule::Ddpm { betas: BetaSchedule::STABLE_DIFFUSION, train_steps: 1000, spacing, steps_offset: 1 };
        let v = s.sigmas(n).unwrap();
        prop_assert!(strictly_decreasing_to_zero(&v));
    }
}
