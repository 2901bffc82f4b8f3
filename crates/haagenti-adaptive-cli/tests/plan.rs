//! `haagenti-adaptive plan`, run as a user would run it.

use std::process::{Command, Output};

#[path = "support/timed.rs"]
mod timed;
use timed::output_within_30s;

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

const TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/error-table.json");

#[test]
fn noise_specs_give_each_step_its_sigma() {
    // Karras(0.002, 80, 7) at 8 steps, computed in Python:
    // [(80**(1/7) + i/7 * (0.002**(1/7) - 80**(1/7)))**7 for i in range(8)]
    let karras = [
        80.0,
        34.992_189_004_746_5,
        13.698_574_682_939_958,
        4.637_074_968_687_62,
        1.286_614_269_578_920_9,
        0.267_475_361_379_461_5,
        0.035_186_650_990_820_92,
        0.002,
    ];
    let text = stdout(&plan(&[
        "--preset",
        "noise-adaptive",
        "--steps",
        "8",
        "--noise",
        "karras:sigma_min=0.002,sigma_max=80,rho=7",
        "--min-gap",
        "1",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let steps = v["steps"].as_array().unwrap();
    for (i, want) in karras.iter().enumerate() {
        let got = steps[i]["sigma"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "step {i}: {got} vs {want}"
        );
    }
    // INT4 while sigma > 10, INT8 while sigma > 1, FP16 below.
    let p: Vec<&str> = steps
        .iter()
        .map(|s| s["precision"].as_str().unwrap())
        .collect();
    assert_eq!(
        p,
        [
            "INT4", "INT4", "INT4", "INT8", "INT8", "FP16", "FP16", "FP16"
        ]
    );
    assert_eq!(v["config"]["noise"]["family"], "karras");

    // Without --noise, noise-adaptive records the Karras default it used.
    let text = stdout(&plan(&["--preset", "noise-adaptive", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["config"]["noise"],
        serde_json::json!({"family": "karras", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0})
    );
    assert_eq!(v["steps"][0]["sigma"], 80.0);

    // Flow matching: the first step is pure noise, t = 1; the table shows a sigma column and
    // the timeline a sigma line.
    let text = stdout(&plan(&["--noise", "flow:shift=3", "--steps", "10"]));
    assert!(text.contains("noise schedule flow:shift=3"), "{text}");
    let header = text.lines().nth(2).unwrap();
    assert!(header.trim_end().ends_with("sigma"), "{header}");
    let row0 = text.lines().nth(3).unwrap();
    assert!(row0.trim_end().ends_with("1.00000"), "{row0}");
    assert!(text.contains("\nsigma: 1@0 | "), "{text}");

    // Without a noise schedule there is no sigma anywhere.
    let text = stdout(&plan(&["--steps", "10", "--json"]));
    assert!(!text.contains("sigma"));
}

#[test]
fn malformed_noise_specs_are_one_line_errors() {
    fails_with(&plan(&["--noise", "karras:rho=nan"]), "rho");
    fails_with(&plan(&["--noise", "bogus"]), "unknown noise schedule");
    fails_with(&plan(&["--noise", "sigmas:3,1,2"]), "sigma 2");
    fails_with(&plan(&["--noise", "sigmas:3,x"]), "value 1");
    fails_with(&plan(&["--noise", "flux:mu=1,tokens=3"]), "exactly one");
    fails_with(
        &plan(&["--noise", "scaled-linear:spacing=sideways"]),
        "sideways",
    );
    fails_with(&plan(&["--noise", "karras:sigma_min=-1"]), "sigma_min");
    // A family that cannot give the steps asked for.
    fails_with(
        &plan(&["--noise", "karras:sigma_min=1,sigma_max=1", "--steps", "5"]),
        "strictly decreasing",
    );
}

#[test]
fn noise_profiles_are_read_and_need_a_noise_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.json");
    // INT8 while log-SNR < 0 (sigma > 1), FP32 after.
    std::fs::write(
        &path,
        r#"{"name": "two-zone", "zones": [
            {"end_log_snr": 0.0, "precision": "INT8"},
            {"start_log_snr": 0.0, "precision": "FP32"}]}"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    fails_with(&plan(&["--noise-profile", p]), "needs a noise schedule");
    let text = stdout(&plan(&[
        "--noise-profile",
        p,
        "--noise",
        "karras",
        "--steps",
        "8",
    ]));
    assert!(text.contains("profile two-zone"), "{text}");
    assert!(text.contains("INT8 0-4 | FP32 5-7"), "{text}");
    std::fs::write(
        &path,
        r#"{"name": "gap", "zones": [
            {"end_log_snr": 0.0, "precision": "INT8"},
            {"start_log_snr": 1.0, "precision": "FP32"}]}"#,
    )
    .unwrap();
    fails_with(&plan(&["--noise-profile", p, "--noise", "karras"]), "gap");
}

#[test]
fn error_tables_are_solved_within_the_budget() {
    // Total bound 0.1, min gap 2: INT4 0-4, INT8 5-6, FP16 7-9. Errors
    // 0.001 + 0.002 + 0.004 + 0.01 + 0.03 + 0.01 + 0.02 + 0.001 + 0.002 + 0.004 = 0.084,
    // cost 5 * 0.25 + 2 * 0.5 + 3 * 1 = 5.25, FP32 10 * 2 = 20: speedup 3.81.
    let text = stdout(&plan(&[
        "--error-table",
        TABLE,
        "--budget",
        "0.1",
        "--min-gap",
        "2",
    ]));
    assert!(text.contains("INT4 0-4 | INT8 5-6 | FP16 7-9"), "{text}");
    assert!(text.contains("predicted cost 5.250000"), "{text}");
    assert!(text.contains("predicted error 0.084000"), "{text}");
    assert!(text.contains("total error <= 0.1"), "{text}");
    assert!(text.contains("3.81x over FP32 (measured costs)"), "{text}");
    assert!(
        text.contains("\nsigma: 80@0 | 2@5 | 0.5@7 | 0.02@9"),
        "{text}"
    );

    let json = stdout(&plan(&[
        "--error-table",
        TABLE,
        "--budget",
        "0.1",
        "--min-gap",
        "2",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["estimate_source"], "measured");
    assert_eq!(v["predicted_cost"], 5.25);
    assert!((v["predicted_error"].as_f64().unwrap() - 0.084).abs() < 1e-12);
    assert_eq!(v["steps"].as_array().unwrap().len(), 10);
    assert_eq!(v["steps"][5]["sigma"], 2.0);
    assert_eq!(v["steps"][5]["error"], 0.01);
    assert_eq!(v["plan"]["error_bound"], serde_json::json!({"total": 0.1}));
    assert_eq!(
        v["measurements"]["costs"],
        serde_json::json!([0.25, 0.5, 1.0, 2.0])
    );

    // Per step, every error <= 0.02 with no gap: step 4 (INT4 0.03) moves to INT8.
    let text = stdout(&plan(&[
        "--error-table",
        TABLE,
        "--budget",
        "0.02",
        "--per-step",
        "--min-gap",
        "1",
    ]));
    assert!(text.contains("INT4 0-3 | INT8 4-6 | FP16 7-9"), "{text}");
    assert!(text.contains("every step's error <= 0.02"), "{text}");

    // One resident precision: the cheapest single one within 0.1 in total is FP16 (0.0085).
    let text = stdout(&plan(&[
        "--error-table",
        TABLE,
        "--budget",
        "0.1",
        "--max-resident",
        "1",
    ]));
    assert!(text.contains("timeline: [hhhhhhhhhh] FP16 0-9"), "{text}");
    assert!(text.contains("predicted cost 10.000000"), "{text}");

    // A larger minimum gap is kept by the solver itself: no run merged by the planner.
    let json = stdout(&plan(&[
        "--error-table",
        TABLE,
        "--budget",
        "0.1",
        "--min-gap",
        "4",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["plan"]["merged_zones"], 0);
    assert!(v["predicted_error"].as_f64().unwrap() <= 0.1);
    let p: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["precision"].as_str().unwrap())
        .collect();
    let mut runs = vec![1usize];
    for w in p.windows(2) {
        if w[0] == w[1] {
            *runs.last_mut().unwrap() += 1;
        } else {
            runs.push(1);
        }
    }
    if runs.len() > 2 {
        assert!(runs[1..runs.len() - 1].iter().all(|&r| r >= 4), "{p:?}");
    }

    // Legacy GPUs (no INT4/INT8) leave FP16 and FP32.
    let text = stdout(&plan(&[
        "--error-table",
        TABLE,
        "--budget",
        "1",
        "--capabilities",
        "legacy-gpu",
    ]));
    assert!(text.contains("timeline: [hhhhhhhhhh] FP16 0-9"), "{text}");
}

#[test]
fn malformed_tables_and_budgets_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let nan = write(
        "nan.json",
        r#"{"precisions": ["INT4", "FP32"], "costs": [1, 2], "errors": [[0.1, NaN]]}"#,
    );
    fails_with(
        &plan(&["--error-table", &nan, "--budget", "1"]),
        "JSON has no NaN",
    );
    let negative = write(
        "neg.json",
        r#"{"precisions": ["INT4", "FP32"], "costs": [1, 2], "errors": [[0.1, 0], [-0.5, 0]]}"#,
    );
    fails_with(
        &plan(&["--error-table", &negative, "--budget", "1"]),
        "errors[1][0] (step 1, INT4) is negative",
    );
    let cost = write(
        "cost.json",
        r#"{"precisions": ["INT4", "FP32"], "costs": [1, -2], "errors": [[0.1, 0]]}"#,
    );
    fails_with(
        &plan(&["--error-table", &cost, "--budget", "1"]),
        "costs[1] (FP32) is negative",
    );
    let ragged = write(
        "ragged.json",
        r#"{"precisions": ["INT4", "FP32"], "costs": [1, 2], "errors": [[0.1, 0], [0.2]]}"#,
    );
    fails_with(
        &plan(&["--error-table", &ragged, "--budget", "1"]),
        "errors row 1 has 1 entries for 2 precisions",
    );
    let sigmas = write(
        "sigmas.json",
        r#"{"precisions": ["INT4", "FP32"], "costs": [1, 2], "errors": [[0.1, 0], [0.2, 0]],
            "sigmas": [1]}"#,
    );
    fails_with(
        &plan(&["--error-table", &sigmas, "--budget", "1"]),
        "sigmas has 1 entries for 2 steps",
    );
    let no_fp32 = write(
        "nofp32.json",
        r#"{"precisions": ["INT4", "FP16"], "costs": [1, 2], "errors": [[0.1, 0]]}"#,
    );
    fails_with(
        &plan(&["--error-table", &no_fp32, "--budget", "1"]),
        "no FP32 column",
    );
    let noisy_fp32 = write(
        "noisy.json",
        r#"{"precisions": ["INT8", "FP32"], "costs": [1, 2], "errors": [[0.1, 0.05], [0.2, 0.05]]}"#,
    );
    fails_with(
        &plan(&["--error-table", &noisy_fp32, "--budget", "0.05"]),
        "smallest total error reachable",
    );
    fails_with(
        &plan(&[
            "--error-table",
            &noisy_fp32,
            "--budget",
            "0.01",
            "--per-step",
        ]),
        "step 0: no supported precision",
    );
    fails_with(
        &plan(&["--error-table", TABLE, "--budget", "-1"]),
        "--budget",
    );
    fails_with(
        &plan(&["--error-table", TABLE, "--budget", "NaN"]),
        "--budget",
    );
    fails_with(
        &plan(&["--error-table", TABLE, "--budget", "lots"]),
        "--budget",
    );
    fails_with(&plan(&["--error-table", TABLE]), "needs --budget");
    fails_with(&plan(&["--budget", "1"]), "needs --error-table");
    fails_with(&plan(&["--per-step"]), "needs --error-table");
    fails_with(
        &plan(&["--error-table", TABLE, "--budget", "1", "--steps", "12"]),
        "has 10 steps",
    );
    fails_with(
        &plan(&[
            "--error-table",
            TABLE,
            "--budget",
            "1",
            "--max-resident",
            "0",
        ]),
        "--max-resident",
    );
    fails_with(
        &plan(&["--error-table", "/nonexistent/table.json", "--budget", "1"]),
        "reading error table",
    );
}

#[test]
fn help_documents_the_error_table_shape_and_noise_specs() {
    let out = plan(&["--help"]);
    let text = stdout(&out);
    for needle in [
        "\"precisions\"",
        "errors[i][p]",
        "costs[p]",
        "sigmas",
        "karras:sigma_min=A,sigma_max=B,rho=R",
        "flux:tokens=T",
        "sigmas:s0,s1,...",
        "--per-step",
        "--max-resident",
    ] {
        assert!(text.contains(needle), "{needle:?} not in --help");
    }
}

#[test]
fn probed_capabilities_schedule_for_this_machine() {
    let text = stdout(&plan(&[
        "--preset",
        "balanced",
        "--steps",
        "20",
        "--capabilities",
        "probe",
        "--json",
    ]));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    // This project's kernels run every precision on any CPU, so the probed CPU keeps INT4.
    assert_eq!(json["steps"][0]["precision"], "INT4");
    let caps = &json["config"]["capabilities"];
    assert_eq!(caps["native"], "FP32");
    assert!(caps["vram_mb"].as_u64().unwrap() > 0, "{caps}");
    fails_with(&plan(&["--capabilities", "tpu"]), "--capabilities");
}

/// `plan ARGS` killed after 30 s, so an input that blocks or reads forever fails the test
/// instead of hanging it.
fn plan_within_30s(args: &[&str]) -> Output {
    output_within_30s(
        Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"))
            .arg("plan")
            .args(args),
    )
}

#[cfg(unix)]
#[test]
fn devices_fifos_directories_and_oversized_files_as_inputs_fail_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("profile.json");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let fifo = fifo.to_str().unwrap();
    let folder = dir.path().to_str().unwrap();
    // 16 MiB + 1 byte, sparse: one byte past the cap of every JSON input.
    let big = dir.path().join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((16 << 20) + 1)
        .unwrap();
    let big = big.to_str().unwrap();
    for flag in ["--profile", "--noise-profile", "--error-table"] {
        // An error table needs a budget to be read at all.
        let with = |path: &str| -> Vec<String> {
            let mut args = vec![flag.to_owned(), path.to_owned()];
            if flag == "--error-table" {
                args.extend(["--budget".to_owned(), "1".to_owned()]);
            }
            args
        };
        let cases = [
            // `/dev/zero` reads without end, a FIFO blocks until a writer comes.
            ("/dev/zero", "/dev/zero is a device, not a regular file"),
            (fifo, "is a FIFO, not a regular file"),
            (folder, "is a directory, not a regular file"),
            (
                big,
                "is 16777217 bytes, more than the limit of 16777216 bytes",
            ),
        ];
        for (path, expect) in cases {
            let args = with(path);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fails_with(&plan_within_30s(&args), expect);
        }
    }
}

#[test]
fn params_sizes_a_plan_for_a_network_on_the_probed_machine() {
    // The terrain UNet's 10.4M Conv/Gemm parameters, on this machine's CPU and memory.
    let text = stdout(&plan(&[
        "--capabilities",
        "probe",
        "--params",
        "10.4M",
        "--steps",
        "3",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["plan"]["model_params"], 10_400_000);
    // FP32 weights of 10.4M parameters are 40 MB: any machine that runs the tests holds them.
    let peak = v["plan"]["peak_vram_mb"].as_u64().unwrap();
    assert!((1..=80).contains(&peak), "{peak}");
    // --params is --model-params.
    let long = stdout(&plan(&[
        "--capabilities",
        "probe",
        "--model-params",
        "10.4M",
        "--steps",
        "3",
        "--json",
    ]));
    assert_eq!(text, long);
}
