//! Size limits as a user hits them: every oversized value is a one-line error naming the limit,
//! given before any work, never a panic or an allocation abort.

use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"))
}

fn run(args: &[&str]) -> Output {
    bin().arg("run").args(args).output().unwrap()
}

/// Asserts a clean failure (exit status 1, no panic, no signal) whose message has every word of
/// `want`, and returns the message.
fn refused(out: &Output, want: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "status {:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in want {
        assert!(stderr.contains(w), "{w:?} missing from {stderr:?}");
    }
    stderr
}

#[test]
fn a_batch_of_u64_max_is_refused_not_a_capacity_overflow() {
    let out = run(&[
        "--batch",
        "18446744073709551615",
        "--model",
        "gmm:k=16,d=64",
    ]);
    refused(&out, &["batch 18446744073709551615", "exceeds the limit"]);
}

#[test]
fn a_batch_of_a_trillion_is_refused_before_allocating() {
    let out = run(&["--batch", "1000000000000"]);
    refused(
        &out,
        &["batch 1000000000000", "exceeds the limit of 16384", "2^26"],
    );
}

#[test]
fn the_calibration_batch_has_the_same_limit() {
    let out = run(&["--calibration-batch", "1000000000000"]);
    refused(&out, &["batch 1000000000000", "exceeds the limit"]);
}

#[test]
fn a_model_of_2_to_the_48_means_is_refused() {
    let out = run(&["--model", "gmm:k=16777216,d=16777216"]);
    refused(
        &out,
        &["model size k x d 281474976710656", "limit of 67108864"],
    );
}

#[test]
fn a_billion_repeats_are_refused() {
    let out = run(&["--repeats", "1000000000", "--model", "gmm:k=16,d=64"]);
    refused(&out, &["repeats 1000000000", "limit of 10000"]);
}

#[test]
fn steps_past_ten_thousand_are_refused() {
    let out = run(&["--steps", "10001", "--model", "gmm:k=16,d=64"]);
    refused(&out, &["steps 10001", "limit of 10000"]);
}

#[test]
fn run_help_states_the_limits() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for limit in ["at most 10 000", "2^26 values"] {
        assert!(help.contains(limit), "{limit:?} missing from --help");
    }
}

/// An error table of `steps` rows over INT4, INT8, FP16 and FP32 whose errors grow towards the
/// clean end, as measured tables do.
fn error_table(steps: usize) -> String {
    let rows: Vec<String> = (0..steps)
        .map(|i| {
            let t = (i + 1) as f64 / steps as f64;
            format!("[{}, {}, {}, 0.0]", 0.01 * t, 0.002 * t, 0.0001 * t)
        })
        .collect();
    format!(
        "{{\"precisions\": [\"INT4\", \"INT8\", \"FP16\", \"FP32\"], \"costs\": [0.25, 0.5, 1.0, \
         2.0], \"errors\": [{}]}}",
        rows.join(", ")
    )
}

fn plan_table(table: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.json");
    std::fs::write(&path, table).unwrap();
    bin()
        .args(["plan", "--json", "--error-table"])
        .arg(&path)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_min_gap_of_u32_max_solves_as_at_most_one_transition() {
    let out = plan_table(
        &error_table(10),
        &["--budget", "0.02", "--min-gap", "4294967295"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10);
    let changes = steps
        .windows(2)
        .filter(|w| w[0]["precision"] != w[1]["precision"])
        .count();
    assert!(changes <= 1, "{changes} transitions under an unbounded gap");
}

#[test]
fn a_5000_step_total_budget_solve_finishes() {
    // A budget between all-INT8 and all-INT4 so the Pareto fronts grow with the steps.
    let steps = 5000;
    let out = plan_table(&error_table(steps), &["--budget", "20", "--steps", "5000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), steps);
}

#[test]
fn plan_steps_past_the_schedule_limit_are_refused() {
    let out = bin().args(["plan", "--steps", "100001"]).output().unwrap();
    refused(&out, &["total_steps 100001", "maximum of 100000"]);
    let help = bin().args(["plan", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("at most 100 000"));
}

#[test]
fn quantize_help_names_every_limit() {
    use haagenti_adaptive::kernels::checkpoint::{
        MAX_CHECKPOINT_BYTES, MAX_HEADER_BYTES, MAX_TENSOR_VALUES,
    };
    let out = bin().args(["quantize", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for limit in [
        format!("at most {} GiB", MAX_CHECKPOINT_BYTES >> 30),
        format!("header of at most {} MB", MAX_HEADER_BYTES / 1_000_000),
        format!("at most {MAX_TENSOR_VALUES} values"),
        "regular file".to_owned(),
    ] {
        assert!(help.contains(&limit), "{limit:?} missing from {help}");
    }
}

/// `plan` under a 1 GB address-space limit, so that an allocation sized by the minimum gap (the
/// 412 GB one this once made) aborts the process and fails the test.
#[cfg(unix)]
fn plan_in_1gb(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1000000 && exec \"$0\" plan \"$@\"")
        .arg(env!("CARGO_BIN_EXE_haagenti-adaptive"))
        .args(args)
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn a_min_gap_of_u32_max_without_an_error_table_plans_in_bounded_memory() {
    for steps in ["3", "100000"] {
        let out = plan_in_1gb(&["--json", "--steps", steps, "--min-gap", "4294967295"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{steps} steps: {:?} {stderr}",
            out.status
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = v["steps"].as_array().unwrap();
        assert_eq!(got.len().to_string(), steps);
        let changes = got
            .windows(2)
            .filter(|w| w[0]["precision"] != w[1]["precision"])
            .count();
        assert!(changes <= 1, "{changes} changes under an unbounded gap");
        assert!(v["plan"].is_object(), "no transition plan in {v}");
    }
}
