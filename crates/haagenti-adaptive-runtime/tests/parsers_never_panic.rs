//! The runtime's parsers of user input (the `--model` and `--sampler` specs), given any string,
//! yield a value or an error, never a panic; a parsed model passes its own limits.

use haagenti_adaptive_runtime::{GmmConfig, MAX_MODEL_VALUES, Sampler};
use proptest::prelude::*;

fn model_spec() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "gmm(:((k|d|s|seed| k|d )=[-+]?[0-9.e]{0,22},?){0,5})?",
    ]
}

proptest! {
    #[test]
    fn model_specs_parse_or_fail(spec in model_spec()) {
        if let Ok(config) = spec.parse::<GmmConfig>() {
            prop_assert!(config.validate().is_ok());
            prop_assert!(config.k * config.d <= MAX_MODEL_VALUES);
        }
    }

    #[test]
    fn sampler_names_parse_or_fail(name in any::<String>()) {
        let _ = name.parse::<Sampler>();
    }
}

#[test]
fn a_model_past_the_value_limit_is_refused_by_name() {
    // 2^13 x 2^14 = 2^27 values: each size is allowed alone, their product is not.
    let err = "gmm:k=8192,d=16384".parse::<GmmConfig>().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("k x d 134217728") && msg.contains("limit of 67108864"),
        "{msg}"
    );
    assert!("gmm:k=4096,d=16384".parse::<GmmConfig>().is_ok());
}
