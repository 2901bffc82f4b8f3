//! The noise-schedule spec (`plan --noise SPEC`): any string parses or gives an error, and a
//! parsed schedule yields a few sigmas or an error, never a panic.
#![no_main]

use haagenti_adaptive_schedule::noise::NoiseSchedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(schedule) = spec.parse::<NoiseSchedule>() {
        // A few step counts, small enough to keep executions fast.
        for n in [1, 2, 7, 30] {
            if let Ok(sigmas) = schedule.sigmas(n) {
                // One level a step, then the final one (0 for most families).
                assert_eq!(
                    sigmas.len(),
                    n + 1,
                    "{spec:?}: {n} steps gave {} levels",
                    sigmas.len()
                );
                let _ = schedule.log_snrs(n);
            }
        }
    }
});
