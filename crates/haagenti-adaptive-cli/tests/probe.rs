//! `haagenti-adaptive probe`, run as a user runs it.
//!
//! With `HAAGENTI_EXPECT_ADAPTER=1` (CI, with Mesa's lavapipe installed) the adapter checks fail
//! when no Vulkan adapter is found; without it they skip with a printed reason.

use std::process::{Command, Output};

use serde_json::Value;

fn probe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haagenti-adaptive"));
    cmd.arg("probe").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    assert!(
        out.status.success(),
        "probe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON report; stdout must hold nothing else, whatever drivers print.
fn probe_json(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = probe(&all, env);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn expect_adapter() -> bool {
    std::env::var("HAAGENTI_EXPECT_ADAPTER").is_ok_and(|v| v == "1")
}

#[test]
fn json_has_the_documented_fields() {
    let v = probe_json(&[], &[]);
    assert_eq!(v["cpu"]["arch"], std::env::consts::ARCH);
    assert!(v["cpu"]["cores"].as_u64().unwrap() >= 1);
    let features = v["cpu"]["features"]
        .as_array()
        .expect("cpu.features is a list");
    for f in features {
        let f = f.as_str().expect("feature names are strings");
        assert_eq!(f, f.to_ascii_lowercase());
    }
    let caps = &v["capabilities"];
    // The CPU runs every precision; only those.
    assert_eq!(
        caps["supported"],
        serde_json::json!(["INT4", "INT8", "BF16", "FP16", "FP32"])
    );
    assert_eq!(caps["native"], "FP32");
    assert!(caps["vram_mb"].as_u64().unwrap() > 0 || !cfg!(target_os = "linux"));
    let adapters = v["adapters"].as_array().expect("adapters is a list");
    assert_eq!(adapters.is_empty(), !v["gpu_note"].is_null());
    for a in adapters {
        assert!(a["name"].is_string() && a["backend"].is_string() && a["device_type"].is_string());
        assert!(a["features"].is_array());
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn json_cpu_features_agree_with_proc_cpuinfo() {
    let v = probe_json(&["--cpu-only"], &[]);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .expect("a flags line");
    let listed = |name: &str| {
        v["cpu"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == name)
    };
    for (ours, kernel) in [
        ("avx2", "avx2"),
        ("fma", "fma"),
        ("f16c", "f16c"),
        ("avx512f", "avx512f"),
    ] {
        assert_eq!(listed(ours), flags.contains(&kernel), "{ours}");
    }
    if listed("avx2") && listed("fma") && listed("f16c") {
        let forced = std::env::var("HAAGENTI_FORCE_SCALAR").is_ok_and(|v| v == "1");
        // The probe runs in this environment, so it picks this process's path.
        let path = haagenti_adaptive::kernels::kernel_path();
        assert!(!forced || path.name() == "scalar", "{path}");
        assert_eq!(v["cpu"]["kernel_path"], path.name());
    }
}

#[test]
fn cpu_only_and_memory_override() {
    let v = probe_json(&["--cpu-only", "--memory-mb", "1234"], &[]);
    assert_eq!(v["adapters"], serde_json::json!([]));
    assert_eq!(v["gpu_note"], "adapters not enumerated");
    assert_eq!(v["capabilities"]["vram_mb"], 1234);
    assert!(v["timings"]["adapters_ms"].is_null());
}

#[test]
fn no_vulkan_driver_gives_a_cpu_report_and_a_reason() {
    // A Vulkan loader that finds no driver, as on a headless machine without Mesa.
    let env = [
        ("WGPU_BACKEND", "vulkan"),
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
    ];
    let v = probe_json(&[], &env);
    assert_eq!(v["adapters"], serde_json::json!([]));
    let note = v["gpu_note"].as_str().expect("the empty list is explained");
    assert!(
        note == "wgpu found no adapter on backends vulkan"
            || note.contains("none of which this build enables"),
        "{note}"
    );
    assert_eq!(v["cpu"]["arch"], std::env::consts::ARCH);
}

#[test]
fn the_vulkan_adapter_is_listed() {
    let v = probe_json(&[], &[("WGPU_BACKEND", "vulkan")]);
    let adapters = v["adapters"].as_array().unwrap();
    if adapters.is_empty() {
        assert!(
            !expect_adapter(),
            "HAAGENTI_EXPECT_ADAPTER=1 but no Vulkan adapter: {}",
            v["gpu_note"]
        );
        eprintln!("the_vulkan_adapter_is_listed: skipped, {}", v["gpu_note"]);
        return;
    }
    for a in adapters {
        assert_eq!(a["backend"], "vulkan");
    }
    if let Some(lavapipe) = adapters.iter().find(|a| a["driver"] == "llvmpipe") {
        assert_eq!(lavapipe["device_type"], "Cpu");
        let features = lavapipe["features"].as_array().unwrap();
        assert!(features.iter().any(|f| f == "shader-f16"), "{features:?}");
    }
}

#[test]
fn the_summary_is_readable() {
    let out = probe(&["--memory-mb", "2048"], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("CPU\n"), "{text}");
    assert!(
        text.contains(&format!("  arch         {}\n", std::env::consts::ARCH)),
        "{text}"
    );
    assert!(text.contains("GPU adapters ("), "{text}");
    assert!(
        text.contains(
            "Capabilities (cpu): INT4 INT8 BF16 FP16 FP32 supported, FP32 native, 2048 MiB budget"
        ),
        "{text}"
    );
}
