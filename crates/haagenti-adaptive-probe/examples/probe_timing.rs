//! Times the probe: the CPU part (median of many runs) and adapter enumeration (each run creates
//! a fresh wgpu instance), then prints one report as JSON.
//!
//! `cargo run -p haagenti-adaptive-probe --example probe_timing`

use std::time::Instant;

use haagenti_adaptive_probe::{CapabilityReport, CpuReport};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // The first call pays for the feature-detection cache; time it alone, then the steady state.
    let start = Instant::now();
    let _ = CpuReport::probe();
    let first_us = start.elapsed().as_secs_f64() * 1e6;
    let cpu_us: Vec<f64> = (0..1000)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(CpuReport::probe());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let max_us = cpu_us.iter().copied().fold(0.0, f64::max);
    println!(
        "cpu probe: first {first_us:.1} us, median {:.1} us, max {max_us:.1} us over 1000 runs",
        median(cpu_us)
    );

    let mut report = None;
    for run in 1..=3 {
        let start = Instant::now();
        let r = CapabilityReport::probe();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "full probe {run}: {ms:.1} ms, {} adapter(s), note {:?}",
            r.adapters.len(),
            r.gpu_note
        );
        report = Some(r);
    }
    if let Some(r) = report {
        match serde_json::to_string_pretty(&r) {
            Ok(json) => println!("{json}"),
            Err(err) => eprintln!("cannot serialise the report: {err}"),
        }
    }
}
