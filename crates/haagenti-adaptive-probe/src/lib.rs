//! Hardware probing for `haagenti-adaptive`: what this machine can run, and the
//! [`PrecisionCapabilities`] the scheduler plans for.
//!
//! [`probe`] reports the CPU (architecture, SIMD features detected at run time, logical cores,
//! memory, the kernel path `haagenti-adaptive-kernels` picks) and every GPU adapter wgpu enumerates
//! on every backend (name, ids, device type, backend, driver, the features and limits that bear on
//! precision, VRAM where the OS tells). [`CapabilityReport::capabilities`] turns the report into
//! [`PrecisionCapabilities`].
//!
//! # Which device executes
//!
//! This project's kernels run on the CPU: every precision (INT4 as GGUF `Q4_0`, INT8 as `Q8_0`,
//! BF16, FP16, FP32) on any CPU, with SIMD where the CPU has it and portable code where not. There
//! are no GPU kernels yet, so GPU adapters are reported but never offered as an execution device:
//! [`DeviceChoice::Adapter`] gives [`ProbeError::NoGpuKernels`], and
//! [`AdapterReport::shader_precisions`] says what an adapter's shaders could do natively, for
//! information only. The CPU's capabilities are all five precisions, FP32 native, no matrix
//! units, and a memory budget of the memory available now (`MemAvailable`), the user's figure
//! when given.
//!
//! # No GPU is not an error
//!
//! Without a Vulkan loader, a driver or an adapter, on a headless machine, or in a build without
//! the `wgpu` feature, the report lists the CPU and no adapter, and [`CapabilityReport::gpu_note`]
//! says why. Nothing panics: a panic inside wgpu or a driver while enumerating is caught and
//! becomes the note. No device is created.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::Precision;
//! use haagenti_adaptive_probe::{CapabilityReport, DeviceChoice};
//!
//! let report = CapabilityReport::probe();
//! assert_eq!(report.cpu.arch, std::env::consts::ARCH);
//! for adapter in &report.adapters {
//!     println!("{} on {} ({:?})", adapter.name, adapter.backend, adapter.device_type);
//! }
//! if report.adapters.is_empty() {
//!     // The reason is always given.
//!     assert!(report.gpu_note.is_some());
//! }
//!
//! // The CPU runs every precision; plan for 4 GiB whatever the machine has.
//! let caps = report.capabilities(DeviceChoice::Cpu, Some(4096))?;
//! assert!(caps.supports(Precision::INT4));
//! assert_eq!(caps.vram_mb, 4096);
//! # Ok::<(), haagenti_adaptive_probe::ProbeError>(())
//! ```
//!
//! # Features
//!
//! - `wgpu` (default): enumerate GPU adapters through wgpu 30 (Vulkan, GL, Metal, DX12). Without
//!   it the crate has no GPU dependency and reports the CPU only.
//!
//! # Hardware support
//!
//! | platform | CPU features | memory | model name | adapters | VRAM |
//! | --- | --- | --- | --- | --- | --- |
//! | Linux x86_64 / aarch64 | yes | `/proc/meminfo` | `/proc/cpuinfo` (x86) | Vulkan, GL | amdgpu via DRM sysfs |
//! | macOS aarch64 | yes | unknown | unknown | Metal | unknown |
//! | Windows x86_64 | yes | unknown | unknown | Vulkan, DX12, GL | unknown |
//!
//! Where memory is unknown, [`CapabilityReport::capabilities`] needs the user's figure.

mod cpu;
mod gpu;
#[cfg(feature = "wgpu")]
mod vram;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use haagenti_adaptive_core::PrecisionCapabilities;

pub use cpu::CpuReport;
pub use gpu::{AdapterLimits, AdapterReport, DeviceType, VramSource};

/// Errors of turning a report into capabilities.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// An adapter index past the end of the report's adapter list.
    #[error("no adapter {index}: the report lists {count}")]
    NoSuchAdapter {
        /// The index asked for.
        index: usize,
        /// How many adapters the report lists.
        count: usize,
    },

    /// A GPU adapter asked to execute: this project has no GPU kernels yet.
    #[error("adapter {index} ({name}) cannot execute: this project's kernels run on the cpu only")]
    NoGpuKernels {
        /// The adapter's index in the report.
        index: usize,
        /// The adapter's name.
        name: String,
    },

    /// The OS did not say how much memory there is, and no figure was given.
    #[error("memory size unknown on this system: give it explicitly")]
    UnknownMemory,

    /// A memory figure of zero.
    #[error("memory size must be at least 1 MiB")]
    ZeroMemory,
}

/// The device whose capabilities to derive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceChoice {
    /// The CPU, where this project's kernels run.
    #[default]
    Cpu,
    /// The adapter at this index of [`CapabilityReport::adapters`]. Always an error today:
    /// [`ProbeError::NoGpuKernels`].
    Adapter(usize),
}

/// How long each part of the probe took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeTimings {
    /// Microseconds spent probing the CPU.
    pub cpu_us: f64,
    /// Milliseconds spent enumerating adapters (creating the wgpu instance included); `None`
    /// when adapters were not enumerated.
    pub adapters_ms: Option<f64>,
}

/// What this machine offers: its CPU and every GPU adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// The CPU.
    pub cpu: CpuReport,
    /// Every adapter wgpu enumerated, on every backend, in wgpu's order.
    pub adapters: Vec<AdapterReport>,
    /// Why [`CapabilityReport::adapters`] is empty ("built without the wgpu feature", "wgpu found
    /// no adapter on backends vulkan, gl", ...); `None` when adapters were found.
    pub gpu_note: Option<String>,
    /// WGSL language features the wgpu instance offers, as lowercase names
    /// ("packed-4x8-integer-dot-product", ...); empty without wgpu.
    pub wgsl_language_features: Vec<String>,
    /// How long the probe took.
    pub timings: ProbeTimings,
}

impl CapabilityReport {
    /// Probes the CPU and enumerates every adapter on every backend (see [`probe`]).
    pub fn probe() -> Self {
        let mut report = CapabilityReport::probe_cpu();
        let start = Instant::now();
        let gpu = gpu::enumerate();
        report.timings.adapters_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        report.adapters = gpu.adapters;
        report.gpu_note = gpu.note;
        report.wgsl_language_features = gpu.wgsl_language_features;
        report
    }

    /// Probes the CPU only, leaving the adapter list empty (well under a millisecond).
    pub fn probe_cpu() -> Self {
        let start = Instant::now();
        let cpu = CpuReport::probe();
        let cpu_us = start.elapsed().as_secs_f64() * 1e6;
        CapabilityReport {
            cpu,
            adapters: Vec::new(),
            gpu_note: Some("adapters not enumerated".to_owned()),
            wgsl_language_features: Vec::new(),
            timings: ProbeTimings {
                cpu_us,
                adapters_ms: None,
            },
        }
    }

    /// The capabilities of `device` for the scheduler.
    ///
    /// For [`DeviceChoice::Cpu`]: every precision, FP32 native, no matrix units, no compute
    /// capability, and a memory budget of `memory_override_mb` when given, else the memory
    /// available now, else the total memory.
    ///
    /// # Errors
    ///
    /// - [`ProbeError::ZeroMemory`] when `memory_override_mb` is `Some(0)`.
    /// - [`ProbeError::UnknownMemory`] for the CPU when the OS did not report memory and no
    ///   override is given.
    /// - [`ProbeError::NoSuchAdapter`] for an index past the adapter list, and
    ///   [`ProbeError::NoGpuKernels`] for any listed adapter: this project has no GPU kernels.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_core::Precision;
    /// use haagenti_adaptive_probe::{CapabilityReport, DeviceChoice, ProbeError};
    ///
    /// let report = CapabilityReport::probe_cpu();
    /// let caps = report.capabilities(DeviceChoice::Cpu, Some(16_384))?;
    /// assert_eq!(caps.native, Precision::FP32);
    /// assert_eq!(caps.supported.len(), 5);
    /// assert_eq!(
    ///     report.capabilities(DeviceChoice::Adapter(0), None),
    ///     Err(ProbeError::NoSuchAdapter { index: 0, count: 0 })
    /// );
    /// # Ok::<(), ProbeError>(())
    /// ```
    pub fn capabilities(
        &self,
        device: DeviceChoice,
        memory_override_mb: Option<u64>,
    ) -> Result<PrecisionCapabilities, ProbeError> {
        if memory_override_mb == Some(0) {
            return Err(ProbeError::ZeroMemory);
        }
        match device {
            DeviceChoice::Cpu => {
                let memory = memory_override_mb
                    .or(self.cpu.memory_available_mb)
                    .or(self.cpu.memory_total_mb)
                    .filter(|&mb| mb > 0)
                    .ok_or(ProbeError::UnknownMemory)?;
                Ok(PrecisionCapabilities::cpu_with_kernels(memory))
            }
            DeviceChoice::Adapter(index) => {
                let adapter = self.adapters.get(index).ok_or(ProbeError::NoSuchAdapter {
                    index,
                    count: self.adapters.len(),
                })?;
                Err(ProbeError::NoGpuKernels {
                    index,
                    name: adapter.name.clone(),
                })
            }
        }
    }

    /// Records the user's VRAM figure for adapter `index`, replacing what the OS said.
    ///
    /// # Errors
    ///
    /// [`ProbeError::NoSuchAdapter`] for an index past the adapter list, [`ProbeError::ZeroMemory`]
    /// for zero.
    pub fn set_adapter_vram(&mut self, index: usize, vram_mb: u64) -> Result<(), ProbeError> {
        let count = self.adapters.len();
        let adapter = self
            .adapters
            .get_mut(index)
            .ok_or(ProbeError::NoSuchAdapter { index, count })?;
        if vram_mb == 0 {
            return Err(ProbeError::ZeroMemory);
        }
        adapter.vram_mb = Some(vram_mb);
        adapter.vram_source = Some(VramSource::User);
        Ok(())
    }
}

/// Probes the CPU and enumerates every GPU adapter wgpu finds on every backend. Never fails and
/// never panics: what cannot be found out is absent, and [`CapabilityReport::gpu_note`] says
/// why there is no adapter.
///
/// The backends can be narrowed with wgpu's `WGPU_BACKEND` environment variable
/// (`WGPU_BACKEND=vulkan`). wgpu logs through the `log` crate and prints nothing unless the
/// program installs a logger; drivers may write to stderr, never to stdout.
///
/// # Examples
///
/// ```
/// let report = haagenti_adaptive_probe::probe();
/// assert!(report.adapters.len() > 0 || report.gpu_note.is_some());
/// ```
pub fn probe() -> CapabilityReport {
    CapabilityReport::probe()
}

/// The CPU's capabilities for the scheduler: what `plan --capabilities probe` plans for. Probes
/// the CPU only (adapters do not execute, see the crate docs).
///
/// # Errors
///
/// [`ProbeError::UnknownMemory`] where the OS does not report memory; use
/// [`CapabilityReport::capabilities`] with an override there.
///
/// # Examples
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let caps = haagenti_adaptive_probe::probe_capabilities()?;
/// assert!(caps.vram_mb > 0);
/// # }
/// # Ok::<(), haagenti_adaptive_probe::ProbeError>(())
/// ```
pub fn probe_capabilities() -> Result<PrecisionCapabilities, ProbeError> {
    CapabilityReport::probe_cpu().capabilities(DeviceChoice::Cpu, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with_memory(total: Option<u64>, available: Option<u64>) -> CapabilityReport {
        let mut r = CapabilityReport::probe_cpu();
        r.cpu.memory_total_mb = total;
        r.cpu.memory_available_mb = available;
        r
    }

    #[test]
    fn the_cpu_budget_is_the_override_then_available_then_total() {
        let budget = |total, available, over| {
            report_with_memory(total, available)
                .capabilities(DeviceChoice::Cpu, over)
                .map(|c| c.vram_mb)
        };
        assert_eq!(budget(Some(200), Some(100), Some(50)), Ok(50));
        assert_eq!(budget(Some(200), Some(100), None), Ok(100));
        assert_eq!(budget(Some(200), None, None), Ok(200));
        assert_eq!(budget(None, None, Some(7)), Ok(7));
        assert_eq!(budget(None, None, None), Err(ProbeError::UnknownMemory));
        // A zero from the OS is no figure, a zero from the user an error.
        assert_eq!(
            budget(Some(0), Some(0), None),
            Err(ProbeError::UnknownMemory)
        );
        assert_eq!(
            budget(Some(200), Some(100), Some(0)),
            Err(ProbeError::ZeroMemory)
        );
    }

    #[test]
    fn errors_read_as_one_lowercase_line() {
        let errs = [
            ProbeError::NoSuchAdapter { index: 2, count: 1 },
            ProbeError::NoGpuKernels {
                index: 0,
                name: "llvmpipe".into(),
            },
            ProbeError::UnknownMemory,
            ProbeError::ZeroMemory,
        ];
        for e in errs {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
            assert!(!msg.ends_with('.') && !msg.contains('\n'), "{msg}");
        }
    }
}
