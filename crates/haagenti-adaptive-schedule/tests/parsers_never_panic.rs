//! Every parser of user input in this crate, given any string or byte string, yields a value or
//! an error, never a panic (the fuzz targets `noise_spec` and `schedule_json` do the same for
//! longer; this runs in every `cargo test`).

use haagenti_adaptive_schedule::noise::{NoiseProfile, NoiseSchedule, TimestepSpacing};
use haagenti_adaptive_schedule::solver::{ErrorBound, ErrorTable, SolveOptions, solve};
use haagenti_adaptive_schedule::{
    PrecisionProfile, PrecisionSchedule, ProfilePreset, ScheduleConfig,
};
use proptest::prelude::*;

/// Strings shaped like noise specs (a known family, then keys and numbers), so the cases reach
/// past the family name; arbitrary strings cover the rest.
fn noise_spec() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(karras|flow|flux|sigmas|linear|cosine|scaled-linear)(:([a-z_]{1,10}=)?-?[0-9.e+-]{0,12}(,([a-z_]{1,10}=)?-?[0-9.e+-]{0,12}){0,4})?",
    ]
}

/// Bytes shaped like the JSON these files hold, by splicing fragments; arbitrary bytes cover the
/// rest.
fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        "\"(name|zones|precisions|errors|costs|sigmas|total_steps|noise|start|end|precision|start_log_snr|end_log_snr|INT4|FP16|FP32)\"",
        "-?[0-9]{1,4}(\\.[0-9]{1,3})?(e[+-]?[0-9]{1,3})?",
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(fragment, 0..40).prop_map(|v| v.concat().into_bytes()),
    ]
}

proptest! {
    #[test]
    fn noise_specs_parse_or_fail(spec in noise_spec()) {
        if let Ok(schedule) = spec.parse::<NoiseSchedule>() {
            // A parsed schedule has passed validation; its sigmas exist or fail cleanly.
            prop_assert!(schedule.validate().is_ok(), "{spec:?} parsed to an invalid schedule");
            if let Ok(sigmas) = schedule.sigmas(8) {
                // One level a step, then the final one.
                prop_assert_eq!(sigmas.len(), 9);
            }
        }
        let _ = spec.parse::<TimestepSpacing>();
        let _ = spec.parse::<ProfilePreset>();
    }

    #[test]
    fn profile_and_config_json_parse_or_fail(bytes in json_bytes()) {
        if let Ok(profile) = serde_json::from_slice::<PrecisionProfile>(&bytes) {
            let _ = profile.validate();
        }
        if let Ok(profile) = serde_json::from_slice::<NoiseProfile>(&bytes) {
            let _ = profile.validate();
        }
        if let Ok(config) = serde_json::from_slice::<ScheduleConfig>(&bytes)
            && config.total_steps <= 256
        {
            let _ = PrecisionSchedule::generate(config);
        }
    }

    #[test]
    fn error_tables_parse_and_solve_or_fail(bytes in json_bytes()) {
        if let Ok(table) = serde_json::from_slice::<ErrorTable>(&bytes) {
            // Deserialising validates, so a table that parsed has steps and solves or says why.
            prop_assert!(table.validate().is_ok());
            if let Ok(a) = solve(&table, &SolveOptions::default(), &ErrorBound::Total(1.0)) {
                prop_assert_eq!(a.precisions.len(), table.steps());
            }
        }
    }
}
