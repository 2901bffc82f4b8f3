//! `haagenti-adaptive run` end to end on a tiny model.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"))
}

#[test]
fn run_json_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "run",
            "--model",
            "gmm:k=16,d=64",
            "--steps",
            "6",
            "--batch",
            "2",
            "--json",
            "--report",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in [
        "fp32",
        "fp16",
        "int8",
        "int4",
        "performance",
        "balanced",
        "quality",
        "low-vram",
        "conservative",
        "noise-adaptive",
        "calibrated",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in runs {
        assert_eq!(r["schedule"].as_array().unwrap().len(), 6);
        assert!(r["speedup"].as_f64().unwrap() > 0.0);
        assert!(r["predicted_speedup"].as_f64().unwrap() > 0.0);
        assert!(r["peak_weight_bytes"].as_u64().unwrap() > 0);
        let agree = r["mode_agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agree));
    }
    let fp32 = &runs[0];
    assert_eq!(fp32["name"], "fp32");
    assert!(fp32["psnr_db"].is_null(), "fp32 against itself is exact");
    assert_eq!(fp32["schedule"][0], "FP32");
    let int4 = runs.iter().find(|r| r["name"] == "int4").unwrap();
    // Q4_0 both layouts of 32 x 64 (k padded to 32): 2 * 64 blocks * 18 bytes.
    assert_eq!(int4["peak_weight_bytes"].as_u64().unwrap(), 2 * 64 * 18);
    assert!(
        int4["psnr_db"].as_f64().unwrap()
            < runs.iter().find(|r| r["name"] == "fp16").unwrap()["psnr_db"]
                .as_f64()
                .unwrap()
    );
    // The calibrated schedule uses at most 2 precisions (the default --max-resident) and, its
    // residency following the transition plan, never holds more weight bytes than FP32 alone.
    let cal = runs.iter().find(|r| r["name"] == "calibrated").unwrap();
    let mut used: Vec<&str> = cal["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() <= 2, "{used:?}");
    assert!(cal["peak_weight_bytes"].as_u64() <= fp32["peak_weight_bytes"].as_u64());
    for f in [
        "report.md",
        "precision.svg",
        "speed_quality.svg",
        "sensitivity.svg",
    ] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(!text.is_empty(), "{f}");
    }
}

#[test]
fn bad_flags_fail_with_one_line() {
    for args in [
        vec!["run", "--model", "gmm:k=0"],
        vec!["run", "--sampler", "dpm"],
        vec!["run", "--schedules", "fp8", "--model", "gmm:k=16,d=64"],
        vec!["run", "--steps", "0"],
        vec!["run", "--max-resident", "0"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn max_resident_one_gives_a_uniform_calibrated_schedule() {
    let out = bin()
        .args([
            "run",
            "--model",
            "gmm:k=16,d=64",
            "--steps",
            "6",
            "--batch",
            "2",
            "--schedules",
            "calibrated",
            "--max-resident",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cal = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "calibrated")
        .unwrap();
    let sched = cal["schedule"].as_array().unwrap();
    assert_eq!(sched.len(), 6);
    assert!(sched.iter().all(|p| p == &sched[0]), "{sched:?}");
}

#[test]
fn an_unwritable_report_folder_fails_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // The default model would run for many seconds; the check must come first.
    for report in [file.clone(), file.join("below")] {
        let started = std::time::Instant::now();
        let out = bin()
            .arg("run")
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", report.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--report"), "{err}");
        assert!(
            out.stdout.is_empty(),
            "the run started: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            started.elapsed().as_secs() < 20,
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}
