//! The report checked against the machine the tests run on.
//!
//! Adapter tests skip, printing why, when no adapter is found, unless `HAAGENTI_EXPECT_ADAPTER=1`
//! is set: then they fail. CI sets it after installing Mesa's lavapipe.

use std::sync::OnceLock;

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_probe::{
    AdapterReport, CapabilityReport, DeviceChoice, DeviceType, ProbeError, probe,
};

/// One full probe shared by the tests: enumerating adapters is the slow part.
fn report() -> &'static CapabilityReport {
    static REPORT: OnceLock<CapabilityReport> = OnceLock::new();
    REPORT.get_or_init(probe)
}

fn expect_adapter() -> bool {
    std::env::var("HAAGENTI_EXPECT_ADAPTER").is_ok_and(|v| v == "1")
}

/// The adapters, or `None` (after printing why) when there are none and none are expected.
fn adapters_or_skip(test: &str) -> Option<&'static [AdapterReport]> {
    let r = report();
    if !cfg!(feature = "wgpu") {
        // A CPU-only build never lists adapters, whatever the environment expects.
        eprintln!("{test}: skipped, built without the wgpu feature");
        return None;
    }
    if r.adapters.is_empty() {
        assert!(
            !expect_adapter(),
            "HAAGENTI_EXPECT_ADAPTER=1 but no adapter was found: {:?}",
            r.gpu_note
        );
        eprintln!(
            "{test}: skipped, no adapter ({:?}); set HAAGENTI_EXPECT_ADAPTER=1 to fail instead",
            r.gpu_note
        );
        return None;
    }
    Some(&r.adapters)
}

/// The `flags` (x86) or `Features` (aarch64) of the first processor in `/proc/cpuinfo`.
#[cfg(target_os = "linux")]
fn cpuinfo_flags() -> Vec<String> {
    let text =
        std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo is readable on linux");
    let line = text
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .expect("/proc/cpuinfo has a flags line");
    let (_, flags) = line.split_once(':').expect("a flags line has a colon");
    flags.split_whitespace().map(str::to_owned).collect()
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn x86_features_agree_with_proc_cpuinfo() {
    let flags = cpuinfo_flags();
    let cpu = &report().cpu;
    // Our name, the kernel's flag name.
    let pairs = [
        ("sse4.1", "sse4_1"),
        ("avx", "avx"),
        ("avx2", "avx2"),
        ("fma", "fma"),
        ("f16c", "f16c"),
        ("avx512f", "avx512f"),
        ("avx512bw", "avx512bw"),
        ("avx512vl", "avx512vl"),
        ("avx512vnni", "avx512_vnni"),
        ("avx512bf16", "avx512_bf16"),
        ("avx512fp16", "avx512_fp16"),
        ("avx-vnni", "avx_vnni"),
    ];
    for (ours, kernel) in pairs {
        assert_eq!(
            cpu.has(ours),
            flags.iter().any(|f| f == kernel),
            "{ours}: probe says {}, /proc/cpuinfo flag {kernel} says otherwise",
            cpu.has(ours)
        );
    }
    // Every listed feature is one of the table's.
    for f in &cpu.features {
        assert!(
            pairs.iter().any(|(ours, _)| ours == f),
            "unexpected feature {f}"
        );
    }
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
#[test]
fn aarch64_features_agree_with_proc_cpuinfo() {
    let flags = cpuinfo_flags();
    let cpu = &report().cpu;
    let pairs = [
        ("neon", "asimd"),
        ("fp16", "asimdhp"),
        ("dotprod", "asimddp"),
        ("i8mm", "i8mm"),
        ("bf16", "bf16"),
        ("sve", "sve"),
    ];
    for (ours, kernel) in pairs {
        assert_eq!(
            cpu.has(ours),
            flags.iter().any(|f| f == kernel),
            "{ours} vs {kernel}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn linux_reports_memory_and_cores() {
    let cpu = &report().cpu;
    let total = cpu.memory_total_mb.expect("linux reports MemTotal");
    let available = cpu
        .memory_available_mb
        .expect("linux 3.14+ reports MemAvailable");
    assert!(
        total > 0 && available <= total,
        "{available} of {total} MiB"
    );
    assert!(cpu.cores >= 1);
    assert_eq!(
        cpu.cores,
        std::thread::available_parallelism().unwrap().get()
    );
    // Memory moves between two reads, so only its bounds are checked here; the rule that picks
    // the figure is tested on fixed reports in the crate's unit tests.
    let caps = haagenti_adaptive_probe::probe_capabilities().expect("linux reports memory");
    assert!(
        caps.vram_mb > 0 && caps.vram_mb <= total,
        "{} of {total} MiB",
        caps.vram_mb
    );
}

#[test]
fn derived_capabilities_only_hold_what_the_report_supports() {
    let r = report();
    let caps = r.capabilities(DeviceChoice::Cpu, Some(2048)).unwrap();
    // The CPU path of the kernels runs every precision (portable code where no SIMD).
    assert_eq!(caps.supported, Precision::ALL.to_vec());
    assert_eq!(caps.native, Precision::FP32);
    assert!(caps.supports(caps.native));
    assert_eq!(caps.vram_mb, 2048);
    assert!(!caps.int4_tensor_cores && !caps.int8_tensor_cores);
    assert_eq!(caps.compute_capability, None);
    assert_eq!(
        r.capabilities(DeviceChoice::Cpu, Some(0)),
        Err(ProbeError::ZeroMemory)
    );

    // No adapter executes: every listed one is refused, one past the end is out of range.
    let n = r.adapters.len();
    for (index, a) in r.adapters.iter().enumerate() {
        assert_eq!(
            r.capabilities(DeviceChoice::Adapter(index), None),
            Err(ProbeError::NoGpuKernels {
                index,
                name: a.name.clone()
            })
        );
        // What the shaders could do natively stays within what the adapter's features say.
        let sp = a.shader_precisions();
        assert!(sp.contains(&Precision::FP32));
        assert_eq!(sp.contains(&Precision::FP16), a.has("shader-f16"));
        assert!(!sp.contains(&Precision::INT4) && !sp.contains(&Precision::BF16));
    }
    assert_eq!(
        r.capabilities(DeviceChoice::Adapter(n), None),
        Err(ProbeError::NoSuchAdapter { index: n, count: n })
    );
}

#[test]
fn an_empty_adapter_list_is_explained() {
    let r = report();
    assert_eq!(
        r.adapters.is_empty(),
        r.gpu_note.is_some(),
        "{:?}",
        r.gpu_note
    );
    if !cfg!(feature = "wgpu") {
        assert_eq!(
            r.gpu_note.as_deref(),
            Some("built without the wgpu feature")
        );
        assert!(r.timings.adapters_ms.is_some());
    }
    let cpu_only = CapabilityReport::probe_cpu();
    assert!(cpu_only.adapters.is_empty());
    assert!(cpu_only.gpu_note.is_some());
    assert_eq!(cpu_only.timings.adapters_ms, None);
}

#[test]
fn adapters_are_described() {
    let Some(adapters) = adapters_or_skip("adapters_are_described") else {
        return;
    };
    for a in adapters {
        assert!(!a.name.is_empty());
        assert!(
            ["vulkan", "gl", "metal", "dx12", "webgpu"].contains(&a.backend.as_str()),
            "{}",
            a.backend
        );
        // WebGPU's guaranteed minimums: every real adapter meets them.
        assert!(a.limits.max_buffer_size >= 256 << 20, "{:?}", a.limits);
        assert!(
            a.limits.max_storage_buffer_binding_size >= 128 << 20,
            "{:?}",
            a.limits
        );
        assert!(a.limits.max_compute_invocations_per_workgroup >= 256);
        assert!(a.limits.max_compute_workgroup_size_x >= 256);
        // The precision features are a subset of all the features, bar the WGSL one.
        for f in &a.features {
            assert!(
                a.all_features.contains(f) || f == "packed-4x8-integer-dot-product",
                "{f} not in {:?}",
                a.all_features
            );
        }
        // wgpu never tells VRAM; only the OS (DRM sysfs, by PCI id) may.
        if a.vram_mb.is_some() {
            assert!(a.vendor_id <= 0xffff);
        }
    }
}

#[test]
fn lavapipe_is_a_cpu_device_with_its_features() {
    let Some(adapters) = adapters_or_skip("lavapipe_is_a_cpu_device_with_its_features") else {
        return;
    };
    let lavapipe: Vec<&AdapterReport> = adapters
        .iter()
        .filter(|a| a.name.starts_with("llvmpipe") && a.backend == "vulkan")
        .collect();
    if lavapipe.is_empty() {
        assert!(
            !expect_adapter() || adapters.iter().any(|a| a.device_type != DeviceType::Cpu),
            "HAAGENTI_EXPECT_ADAPTER=1 and only software adapters, but none is lavapipe: {adapters:?}"
        );
        eprintln!(
            "lavapipe_is_a_cpu_device_with_its_features: skipped, lavapipe not among {} adapters",
            adapters.len()
        );
        return;
    }
    for a in lavapipe {
        assert_eq!(a.device_type, DeviceType::Cpu);
        assert_eq!(a.driver, "llvmpipe");
        assert_eq!(a.vendor_id, 0x10005, "Mesa's Khronos vendor id");
        // lavapipe has f16 and 64-bit integers in shaders, subgroups and timestamps.
        for f in ["shader-f16", "shader-int64", "subgroup", "timestamp-query"] {
            assert!(a.has(f), "lavapipe lacks {f}: {:?}", a.features);
        }
        // No OS figure for a software device's memory.
        assert_eq!(a.vram_mb, None);
    }
}

#[test]
fn the_report_round_trips_through_json() {
    let r = report();
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["cpu"]["arch"], std::env::consts::ARCH);
    assert!(json["cpu"]["features"].is_array());
    assert!(json["cpu"]["cores"].as_u64().unwrap() >= 1);
    for a in json["adapters"].as_array().unwrap() {
        for key in ["name", "backend", "device_type", "features"] {
            assert!(!a[key].is_null(), "adapter lacks {key}");
        }
    }
    let back: CapabilityReport = serde_json::from_value(json).unwrap();
    // Timings are floats, whose JSON round trip may move the last bit; the rest is exact.
    assert_eq!(back.cpu, r.cpu);
    assert_eq!(back.adapters, r.adapters);
    assert_eq!(back.gpu_note, r.gpu_note);
    assert_eq!(back.wgsl_language_features, r.wgsl_language_features);
}

#[test]
fn user_vram_replaces_the_os_figure() {
    let mut r = report().clone();
    let n = r.adapters.len();
    assert_eq!(
        r.set_adapter_vram(n, 1024),
        Err(ProbeError::NoSuchAdapter { index: n, count: n })
    );
    if n > 0 {
        assert_eq!(r.set_adapter_vram(0, 0), Err(ProbeError::ZeroMemory));
        r.set_adapter_vram(0, 24_576).unwrap();
        assert_eq!(r.adapters[0].vram_mb, Some(24_576));
        assert_eq!(
            r.adapters[0].vram_source,
            Some(haagenti_adaptive_probe::VramSource::User)
        );
    }
}
