//! The CPU: architecture, SIMD features detected at run time, cores and memory.

use std::fs::File;
use std::io::{BufRead, BufReader};

use serde::{Deserialize, Serialize};

/// What the CPU of this machine offers the kernels.
///
/// # Examples
///
/// ```
/// let cpu = haagenti_adaptive_probe::CpuReport::probe();
/// assert_eq!(cpu.arch, std::env::consts::ARCH);
/// assert!(cpu.cores >= 1);
/// // Feature names are lowercase, as `is_x86_feature_detected!` spells them.
/// assert!(cpu.features.iter().all(|f| f.chars().all(|c| !c.is_ascii_uppercase())));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuReport {
    /// The architecture this binary was built for (`std::env::consts::ARCH`: "x86_64", "aarch64", ...).
    pub arch: String,
    /// The CPU's model name (`model name` in `/proc/cpuinfo`), where the OS gives one.
    pub model_name: Option<String>,
    /// Features that bear on the kernels, detected at run time, as lowercase names (see
    /// [`CpuReport::probe`] for the list checked on each architecture).
    pub features: Vec<String>,
    /// Logical cores this process may use (`std::thread::available_parallelism`; 1 when unknown).
    pub cores: usize,
    /// Total memory in MiB (`MemTotal` of `/proc/meminfo`); `None` where the OS does not say.
    pub memory_total_mb: Option<u64>,
    /// Memory available to new allocations without swapping, in MiB (`MemAvailable` of
    /// `/proc/meminfo`); `None` where the OS does not say.
    pub memory_available_mb: Option<u64>,
    /// The kernel path `haagenti-adaptive-kernels` picks on this CPU: "avx2+fma+f16c",
    /// "neon+dotprod", "neon" or "scalar" (also when `HAAGENTI_FORCE_SCALAR=1`).
    pub kernel_path: String,
}

impl CpuReport {
    /// Probes the CPU this process runs on. Reads no more than two small files and never fails:
    /// what cannot be found out is `None`.
    ///
    /// Features checked, with the standard library's run-time detection macros:
    ///
    /// | arch | features |
    /// | --- | --- |
    /// | x86_64 | sse4.1, avx, avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16, avx512fp16, avx-vnni |
    /// | aarch64 | neon, fp16, dotprod, i8mm, bf16, sve |
    ///
    /// AMX (amx-int8, amx-bf16) is not in the list: Rust 1.95 cannot detect it on stable.
    pub fn probe() -> Self {
        let (memory_total_mb, memory_available_mb) = read_meminfo();
        CpuReport {
            arch: std::env::consts::ARCH.to_owned(),
            model_name: read_model_name(),
            features: detect_features().into_iter().map(str::to_owned).collect(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_mb,
            memory_available_mb,
            kernel_path: haagenti_adaptive_kernels::kernel_path().to_string(),
        }
    }

    /// Whether the report lists `feature` (a lowercase name such as "avx2").
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// The features of [`CpuReport::probe`]'s table that this CPU has, in table order.
#[cfg(target_arch = "x86_64")]
fn detect_features() -> Vec<&'static str> {
    use std::is_x86_feature_detected as has;
    let table = [
        ("sse4.1", has!("sse4.1")),
        ("avx", has!("avx")),
        ("avx2", has!("avx2")),
        ("fma", has!("fma")),
        ("f16c", has!("f16c")),
        ("avx512f", has!("avx512f")),
        ("avx512bw", has!("avx512bw")),
        ("avx512vl", has!("avx512vl")),
        ("avx512vnni", has!("avx512vnni")),
        ("avx512bf16", has!("avx512bf16")),
        ("avx512fp16", has!("avx512fp16")),
        ("avx-vnni", has!("avxvnni")),
    ];
    table
        .into_iter()
        .filter(|&(_, on)| on)
        .map(|(name, _)| name)
        .collect()
}

/// The features of [`CpuReport::probe`]'s table that this CPU has, in table order.
#[cfg(target_arch = "aarch64")]
fn detect_features() -> Vec<&'static str> {
    use std::arch::is_aarch64_feature_detected as has;
    let table = [
        ("neon", has!("neon")),
        ("fp16", has!("fp16")),
        ("dotprod", has!("dotprod")),
        ("i8mm", has!("i8mm")),
        ("bf16", has!("bf16")),
        ("sve", has!("sve")),
    ];
    table
        .into_iter()
        .filter(|&(_, on)| on)
        .map(|(name, _)| name)
        .collect()
}

/// No feature table for other architectures: the kernels run their portable code there.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_features() -> Vec<&'static str> {
    Vec::new()
}

/// `(MemTotal, MemAvailable)` in MiB from `/proc/meminfo`; `(None, None)` where it cannot be read.
fn read_meminfo() -> (Option<u64>, Option<u64>) {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => parse_meminfo(&text),
        Err(_) => (None, None),
    }
}

/// `(MemTotal, MemAvailable)` in MiB from the text of `/proc/meminfo`, whose values are in KiB.
pub(crate) fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib / 1024)
        })
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// The first `model name` of `/proc/cpuinfo`, read line by line so only its head is generated.
fn read_model_name() -> Option<String> {
    let file = File::open("/proc/cpuinfo").ok()?;
    BufReader::new(file)
        .lines()
        .map_while(|line| line.ok())
        .find_map(|line| parse_model_name_line(&line))
}

/// The value of a `model name : ...` line (x86) or, failing that, nothing.
pub(crate) fn parse_model_name_line(line: &str) -> Option<String> {
    let (key, value) = line.split_once(':')?;
    let value = value.trim();
    (key.trim() == "model name" && !value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed_in_mib() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1000000 kB\nMemAvailable:    8159206 kB\n";
        assert_eq!(parse_meminfo(text), (Some(15935), Some(7967)));
        // An old kernel without MemAvailable, and garbage.
        assert_eq!(parse_meminfo("MemTotal: 2048 kB\n"), (Some(2), None));
        assert_eq!(parse_meminfo("MemTotal: lots\n"), (None, None));
        // A field whose name only starts like MemTotal is not MemTotal.
        assert_eq!(parse_meminfo("MemTotalish: 4096 kB\n"), (None, None));
    }

    #[test]
    fn model_name_lines() {
        assert_eq!(
            parse_model_name_line("model name\t: AMD EPYC 7B13"),
            Some("AMD EPYC 7B13".to_owned())
        );
        assert_eq!(parse_model_name_line("model\t\t: 1"), None);
        assert_eq!(parse_model_name_line("model name\t:"), None);
        assert_eq!(parse_model_name_line("flags : avx2"), None);
    }

    #[test]
    fn features_are_lowercase_and_unique() {
        let cpu = CpuReport::probe();
        let mut seen = std::collections::HashSet::new();
        for f in &cpu.features {
            assert_eq!(f, &f.to_ascii_lowercase());
            assert!(seen.insert(f), "{f} listed twice");
        }
    }
}
