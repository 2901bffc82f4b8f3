//! The JSON files `plan` reads: a fraction profile (`--profile`), a noise profile
//! (`--noise-profile`), a schedule configuration and an error table (`--error-table`). Any byte
//! string deserialises to a valid value or gives an error; a valid configuration generates a
//! schedule or an error, and a small valid error table solves or gives an error.
#![no_main]

use haagenti_adaptive_schedule::noise::NoiseProfile;
use haagenti_adaptive_schedule::solver::{ErrorBound, ErrorTable, SolveOptions, solve};
use haagenti_adaptive_schedule::{PrecisionProfile, PrecisionSchedule, ScheduleConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = serde_json::from_slice::<PrecisionProfile>(data) {
        let _ = profile.validate();
    }
    if let Ok(profile) = serde_json::from_slice::<NoiseProfile>(data) {
        let _ = profile.validate();
    }
    if let Ok(config) = serde_json::from_slice::<ScheduleConfig>(data)
        && config.total_steps <= 256
    {
        let _ = PrecisionSchedule::generate(config);
    }
    if let Ok(table) = serde_json::from_slice::<ErrorTable>(data)
        && table.steps() <= 64
    {
        for gap in [1, 3] {
            let options = SolveOptions::default().min_gap(gap);
            for bound in [ErrorBound::MaxPerStep(0.1), ErrorBound::Total(1.0)] {
                if let Ok(a) = solve(&table, &options, &bound) {
                    assert_eq!(a.precisions.len(), table.steps());
                }
            }
        }
    }
});
