//! The GMM model spec (`run --model gmm:k=..,d=..,s=..,seed=..`): any string parses to a valid
//! configuration or gives an error, and a parsed configuration passes its own validation.
#![no_main]

use haagenti_adaptive_runtime::GmmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = spec.parse::<GmmConfig>() {
        assert!(
            config.validate().is_ok(),
            "{spec:?} parsed to an invalid {config:?}"
        );
    }
});
