//! `haagenti-adaptive plan`, run as a user would run it.

use std::process::{Command, Output};

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"))
        .arg("plan")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A failure: non-zero exit and exactly one line on stderr, containing `needle`.
fn fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn table_shows_every_step_the_changes_and_a_timeline() {
    let text = stdout(&plan(&["--preset", "balanced", "--steps", "50"]));
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 50, "{text}");
    // Balanced over 50 steps: INT4 0-12, INT8 13-24, FP16 25-49.
    assert!(rows[0].contains("INT4"));
    assert!(rows[13].contains("INT4 -> INT8"), "{}", rows[13]);
    assert!(rows[25].contains("INT8 -> FP16"), "{}", rows[25]);
    let timeline: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("timeline: "))
        .collect();
    assert_eq!(timeline.len(), 1);
    assert!(
        timeline[0].ends_with("INT4 0-12 | INT8 13-24 | FP16 25-49"),
        "{}",
        timeline[0]
    );
    // 13/4 + 12/2.5 + 25/2 = 20.55; 50 / 20.55 = 2.43.
    assert!(text.contains("estimated speedup 2.43x"), "{text}");
}

#[test]
fn json_has_the_schedule_at_top_level_and_the_plan() {
    let text = stdout(&plan(&[
        "--preset",
        "quality",
        "--steps",
        "20",
        "--strategy",
        "gradual:2",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 20);
    assert_eq!(steps[0]["step"], 0);
    assert_eq!(steps[0]["precision"], "INT8");
    assert_eq!(steps[19]["precision"], "FP32");
    // Quality over 20 steps: INT8 0-1, FP16 2-17, FP32 18-19.
    assert_eq!(
        v["transitions"],
        serde_json::json!([[2, "INT8", "FP16"], [18, "FP16", "FP32"]])
    );
    assert!(v["estimated_speedup"].as_f64().unwrap() > 1.0);
    assert_eq!(v["estimate_source"], "seed-constants");
    let ts = v["plan"]["transitions"].as_array().unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(ts[0]["start_step"], 2);
    assert_eq!(ts[0]["end_step"], 4);
    assert!((steps[3]["blend_factor"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6);
    assert!(steps[4]["blend_factor"].is_null());
}

#[test]
fn capabilities_strategy_and_memory_flags_take_effect() {
    let text = stdout(&plan(&[
        "--preset",
        "balanced",
        "--steps",
        "10",
        "--capabilities",
        "legacy-gpu",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["precision"] == "FP16")
    );

    // 2.6e9 parameters: INT8 2634 MiB + FP16 4959 MiB do not fit 6 GiB together.
    let text = stdout(&plan(&[
        "--steps",
        "30",
        "--strategy",
        "step-aware",
        "--vram-mb",
        "6144",
        "--model-params",
        "2.6B",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["plan"]["vram_fallbacks"], 1);
    assert!(v["plan"]["peak_vram_mb"].as_u64().unwrap() <= 6144);
    let ts = v["plan"]["transitions"].as_array().unwrap();
    assert_eq!(ts[1]["strategy"], "Immediate");

    fails_with(&plan(&["--model-params", "7e9"]), "needs 13352 MB");
}

#[test]
fn custom_profiles_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"name": "mine", "zones": [
            {"start_step": 0.0, "end_step": 0.5, "precision": "int8", "rationale": "early"},
            {"start_step": 0.5, "end_step": 1.0, "precision": "fp32", "rationale": "late"}]}"#,
    )
    .unwrap();
    let text = stdout(&plan(&[
        "--profile",
        good.to_str().unwrap(),
        "--steps",
        "4",
    ]));
    assert!(text.contains("profile mine"), "{text}");
    assert!(text.contains("INT8 0-1 | FP32 2-3"), "{text}");

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "gap", "zones": [
            {"start_step": 0.0, "end_step": 0.4, "precision": "INT8", "rationale": ""},
            {"start_step": 0.5, "end_step": 1.0, "precision": "FP16", "rationale": ""}]}"#,
    )
    .unwrap();
    fails_with(
        &plan(&["--profile", bad.to_str().unwrap()]),
        "gap between zone 0",
    );
    fails_with(
        &plan(&["--profile", "/nonexistent/profile.json"]),
        "reading profile",
    );
}

#[test]
fn bad_values_are_one_line_errors() {
    fails_with(&plan(&["--preset", "turbo"]), "unknown preset");
    fails_with(&plan(&["--steps", "0"]), "at least 1");
    fails_with(&plan(&["--steps", "many"]), "--steps");
    fails_with(&plan(&["--strategy", "gradual:0"]), "transition strategy");
    fails_with(&plan(&["--capabilities", "tpu"]), "--capabilities");
    fails_with(&plan(&["--min-quality", "1.5"]), "min_quality");
    fails_with(&plan(&["--min-quality", "0.99"]), "below the minimum");
    fails_with(&plan(&["--model-params", "lots"]), "--model-params");
}
