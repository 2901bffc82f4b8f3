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

/// The terrain model's file, or `None` with the reason printed (a failure instead under
/// `HAAGENTI_EXPECT_MODELS=1`, which CI sets after `cargo xtask fetch-model terrain`).
fn terrain_model() -> Option<std::path::PathBuf> {
    let path = haagenti_adaptive::nn::terrain_model_path().filter(|p| p.exists());
    if path.is_none() {
        let expect = std::env::var("HAAGENTI_EXPECT_MODELS").is_ok_and(|v| v == "1");
        assert!(
            !expect,
            "HAAGENTI_EXPECT_MODELS=1 but the terrain model is missing: run `cargo xtask fetch-model terrain`"
        );
        eprintln!("skipped: no terrain model (run `cargo xtask fetch-model terrain`)");
    }
    path
}

#[test]
fn run_terrain_at_tiny_settings() {
    if terrain_model().is_none() {
        return;
    }
    // Batch 1, 2 steps, 1 repeat: about 90 network evaluations of ~0.3 s. On the forced scalar
    // path each is ~7x slower, so only FP32 and INT8 run there (no calibration).
    let scalar = std::env::var("HAAGENTI_FORCE_SCALAR").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.args([
        "run",
        "--model",
        "terrain:difficulty=0.5",
        "--batch",
        "1",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--min-psnr",
        "35",
        "--json",
        "--report",
    ])
    .arg(dir.path());
    if scalar {
        eprintln!("HAAGENTI_FORCE_SCALAR=1: fp32 and int8 only");
        cmd.args(["--schedules", "int8"]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"]["name"], "terrain");
    assert_eq!(v["model"]["difficulty"], 0.5);
    assert_eq!(v["sampler"], "consistency");
    let sigmas = v["sigmas"].as_array().unwrap();
    assert_eq!(sigmas.len(), 3);
    assert_eq!(sigmas[0], 80.0);
    assert_eq!(sigmas[2], 0.0);
    let params = v["model"]["params"].as_u64().unwrap();
    assert!(params > 10_000_000, "{params}");
    let runs = v["runs"].as_array().unwrap();
    let fp32 = &runs[0];
    assert_eq!(fp32["name"], "fp32");
    assert!(fp32["psnr_db"].is_null(), "fp32 against itself is exact");
    assert_eq!(fp32["ssim"], 1.0);
    // The resident bytes are this network's: 4 bytes a parameter at FP32 (biases and norms are
    // not counted as weights), less at INT8.
    assert_eq!(fp32["peak_weight_bytes"].as_u64().unwrap(), 4 * params);
    let int8 = runs.iter().find(|r| r["name"] == "int8").unwrap();
    assert!(int8["peak_weight_bytes"].as_u64().unwrap() < 2 * params);
    for r in runs {
        // SSIM is in [-1, 1]: INT4's maps can be anti-correlated with FP32's.
        let ssim = r["ssim"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&ssim), "{r}");
        assert_eq!(r["schedule"].as_array().unwrap().len(), 2);
    }
    assert!(int8["psnr_db"].as_f64().unwrap() > 10.0);
    if !scalar {
        let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
        for want in ["fp16", "bf16", "int4", "noise-adaptive", "calibrated"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // --min-psnr 35 is the MSE budget 4 / 10^3.5.
        let budget = v["calibration"]["budget"].as_f64().unwrap();
        assert!((budget - 4.0 / 10f64.powf(3.5)).abs() < 1e-12, "{budget}");
        assert!(v["calibration"]["calibration_mse"].as_f64().unwrap() <= budget);
        let held_out = v["calibration"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["batch"] == "held-out" && c["name"] == "calibrated")
            .unwrap();
        assert!(held_out["quality"]["ssim"].as_f64().is_some());
        assert!(v["claim"].as_str().unwrap().contains("INT8 at one step"));
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("![fp32](fp32.png)"), "{md}");
    for f in ["fp32.png", "int8.png", "int8_diff.png"] {
        let png = std::fs::read(dir.path().join(f)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{f}");
        assert!(md.contains(f), "{f} not in report.md");
    }
}

#[test]
fn a_missing_terrain_model_names_the_fetch_command() {
    let empty = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "--model", "terrain"])
        .env("HAAGENTI_MODELS", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cargo xtask fetch-model terrain"), "{err}");
    let out = bin()
        .args(["run", "--model", "terrain:difficulty=3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("difficulty"), "{err}");
}
