//! GPU adapters as wgpu enumerates them.
//!
//! The types here are plain data and exist with or without the `wgpu` feature, so a report
//! written on one machine reads on any build.

use serde::{Deserialize, Serialize};

use haagenti_adaptive_core::Precision;

/// The kind of device behind an adapter (wgpu's `DeviceType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceType {
    /// Other or unknown.
    Other,
    /// A GPU sharing memory with the CPU.
    IntegratedGpu,
    /// A GPU with its own memory.
    DiscreteGpu,
    /// A virtual or hosted GPU.
    VirtualGpu,
    /// Software rendering on the CPU (Mesa's lavapipe and llvmpipe, WARP, SwiftShader).
    Cpu,
}

/// The limits of an adapter that bound tensor sizes and compute dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterLimits {
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding, in bytes: the biggest tensor one shader can see.
    pub max_storage_buffer_binding_size: u64,
    /// Largest workgroup-shared memory, in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Most invocations in one workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Largest workgroup size in x.
    pub max_compute_workgroup_size_x: u32,
    /// Largest workgroup size in y.
    pub max_compute_workgroup_size_y: u32,
    /// Largest workgroup size in z.
    pub max_compute_workgroup_size_z: u32,
    /// Most workgroups in one dimension of a dispatch.
    pub max_compute_workgroups_per_dimension: u32,
}

/// Where an adapter's VRAM figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VramSource {
    /// Linux DRM sysfs (`/sys/class/drm/card*/device/mem_info_vram_total`, amdgpu), matched to the
    /// adapter by PCI vendor and device ids.
    LinuxDrmSysfs,
    /// Given by the user ([`crate::CapabilityReport::set_adapter_vram`]).
    User,
}

/// One adapter wgpu enumerated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterReport {
    /// The adapter's name ("llvmpipe (LLVM 19.1.7, 256 bits)", "AMD Radeon RX 6800", ...).
    pub name: String,
    /// Vendor id: the PCI vendor id, or on Vulkan a Khronos id above 0xffff (Mesa is 0x10005).
    pub vendor_id: u32,
    /// Device id: the PCI device id where the backend has one.
    pub device_id: u32,
    /// What kind of device it is.
    pub device_type: DeviceType,
    /// The backend that found it: "vulkan", "gl", "metal", "dx12" or "webgpu".
    pub backend: String,
    /// The driver's name ("llvmpipe", "radv", ...), empty when the backend does not say.
    pub driver: String,
    /// The driver's description (version and build), empty when the backend does not say.
    pub driver_info: String,
    /// Features bearing on precision, as lowercase names: "shader-f16" (f16 arithmetic in
    /// shaders), "shader-int64", "subgroup", "timestamp-query", and
    /// "packed-4x8-integer-dot-product" where the WGSL compiler offers `dot4I8Packed` (an
    /// instance-wide language feature: naga emits the native instruction where the backend has
    /// one and a polyfill elsewhere).
    pub features: Vec<String>,
    /// Every wgpu feature the adapter has, as lowercase names ("shader-f16", "texture-compression-bc", ...).
    pub all_features: Vec<String>,
    /// Limits that bound tensor sizes.
    pub limits: AdapterLimits,
    /// Video memory in MiB, when the OS or the user says; wgpu itself never does.
    pub vram_mb: Option<u64>,
    /// Where [`AdapterReport::vram_mb`] comes from.
    pub vram_source: Option<VramSource>,
}

impl AdapterReport {
    /// Whether [`AdapterReport::features`] lists `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// The precisions whose arithmetic this adapter's shaders have without emulation: FP32
    /// always, FP16 with "shader-f16", INT8 with "packed-4x8-integer-dot-product".
    ///
    /// This is what a GPU kernel could use, not what this project runs: the runtime executes on
    /// the CPU, so [`crate::CapabilityReport::capabilities`] does not offer adapters.
    pub fn shader_precisions(&self) -> Vec<Precision> {
        let mut out = Vec::new();
        if self.has(PACKED_DOT) {
            out.push(Precision::INT8);
        }
        if self.has("shader-f16") {
            out.push(Precision::FP16);
        }
        out.push(Precision::FP32);
        out
    }
}

/// The feature name of WGSL's packed 4x8 integer dot product.
pub(crate) const PACKED_DOT: &str = "packed-4x8-integer-dot-product";

/// What enumerating adapters found.
#[derive(Debug, Default)]
pub(crate) struct GpuProbe {
    pub(crate) adapters: Vec<AdapterReport>,
    /// Why `adapters` is empty, when it is.
    pub(crate) note: Option<String>,
    /// WGSL language features of the instance, as lowercase names.
    pub(crate) wgsl_language_features: Vec<String>,
}

#[cfg(feature = "wgpu")]
pub(crate) use with_wgpu::enumerate;

#[cfg(not(feature = "wgpu"))]
pub(crate) fn enumerate() -> GpuProbe {
    GpuProbe {
        note: Some("built without the wgpu feature".to_owned()),
        ..GpuProbe::default()
    }
}

#[cfg(feature = "wgpu")]
mod with_wgpu {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::Path;

    use super::{AdapterLimits, AdapterReport, DeviceType, GpuProbe, PACKED_DOT, VramSource};
    use crate::vram::{drm_vram, match_vram};

    /// Every adapter of every backend this build enables (narrowed by `WGPU_BACKEND` when set).
    /// Creates no device. A panic inside wgpu or a driver becomes a note, not a crash.
    pub(crate) fn enumerate() -> GpuProbe {
        let enabled = wgpu::Instance::enabled_backend_features();
        let requested = wgpu::Backends::all().with_env();
        let backends = requested & enabled;
        if backends.is_empty() {
            let note = if requested == wgpu::Backends::all() {
                "this build enables no wgpu backend for this platform".to_owned()
            } else {
                format!(
                    "WGPU_BACKEND asks for {}, none of which this build enables here ({})",
                    names(requested),
                    names(enabled)
                )
            };
            return GpuProbe {
                note: Some(note),
                ..GpuProbe::default()
            };
        }
        match catch_unwind(AssertUnwindSafe(|| enumerate_on(backends))) {
            Ok(probe) => probe,
            Err(payload) => {
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                GpuProbe {
                    note: Some(format!("wgpu panicked while enumerating adapters: {why}")),
                    ..GpuProbe::default()
                }
            }
        }
    }

    fn enumerate_on(backends: wgpu::Backends) -> GpuProbe {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        // No validation layers or debug labels, whatever the build profile: a probe only reads.
        desc.flags = wgpu::InstanceFlags::empty();
        let instance = wgpu::Instance::new(desc);

        let language = instance.wgsl_language_features();
        let packed_dot = language.contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        let wgsl_language_features = language
            .iter_names()
            .map(|(name, _)| wgsl_name(name))
            .collect();

        let cards = drm_vram(Path::new("/sys/class/drm"));
        let adapters: Vec<AdapterReport> =
            pollster::block_on(instance.enumerate_adapters(backends))
                .iter()
                .map(|adapter| describe(adapter, packed_dot, &cards))
                .collect();
        let note = adapters
            .is_empty()
            .then(|| format!("wgpu found no adapter on backends {}", names(backends)));
        GpuProbe {
            adapters,
            note,
            wgsl_language_features,
        }
    }

    fn describe(
        adapter: &wgpu::Adapter,
        packed_dot: bool,
        cards: &[crate::vram::DrmVram],
    ) -> AdapterReport {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();

        let mut precision_features: Vec<String> = [
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SHADER_INT64, "shader-int64"),
            (wgpu::Features::SUBGROUP, "subgroup"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        ]
        .into_iter()
        .filter(|&(flag, _)| features.contains(flag))
        .map(|(_, name)| name.to_owned())
        .collect();
        if packed_dot {
            precision_features.push(PACKED_DOT.to_owned());
        }

        let vram_mb = match_vram(cards, info.vendor, info.device);
        AdapterReport {
            name: info.name,
            vendor_id: info.vendor,
            device_id: info.device,
            device_type: match info.device_type {
                wgpu::DeviceType::Other => DeviceType::Other,
                wgpu::DeviceType::IntegratedGpu => DeviceType::IntegratedGpu,
                wgpu::DeviceType::DiscreteGpu => DeviceType::DiscreteGpu,
                wgpu::DeviceType::VirtualGpu => DeviceType::VirtualGpu,
                wgpu::DeviceType::Cpu => DeviceType::Cpu,
            },
            backend: info.backend.to_str().to_owned(),
            driver: info.driver,
            driver_info: info.driver_info,
            features: precision_features,
            all_features: features.iter_names().map(|(name, _)| kebab(name)).collect(),
            limits: AdapterLimits {
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
                max_compute_workgroup_size_x: limits.max_compute_workgroup_size_x,
                max_compute_workgroup_size_y: limits.max_compute_workgroup_size_y,
                max_compute_workgroup_size_z: limits.max_compute_workgroup_size_z,
                max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            },
            vram_mb,
            vram_source: vram_mb.map(|_| VramSource::LinuxDrmSysfs),
        }
    }

    /// `SHADER_F16` -> `shader-f16`.
    fn kebab(flag_name: &str) -> String {
        flag_name.to_ascii_lowercase().replace('_', "-")
    }

    /// The names of a set of backends, comma-separated ("vulkan, gl").
    fn names(set: wgpu::Backends) -> String {
        let names: Vec<&str> = set.iter().filter_map(backend_name).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// A single backend's name; `None` for a set of several.
    fn backend_name(b: wgpu::Backends) -> Option<&'static str> {
        [
            (wgpu::Backends::VULKAN, "vulkan"),
            (wgpu::Backends::GL, "gl"),
            (wgpu::Backends::METAL, "metal"),
            (wgpu::Backends::DX12, "dx12"),
            (wgpu::Backends::BROWSER_WEBGPU, "webgpu"),
            (wgpu::Backends::NOOP, "noop"),
        ]
        .into_iter()
        .find(|&(flag, _)| flag == b)
        .map(|(_, name)| name)
    }

    /// `Packed4x8IntegerDotProduct` -> `packed-4x8-integer-dot-product`: a dash before each
    /// capital that follows a lowercase letter or digit, and before a digit run that follows a
    /// word (so "4x8" stays whole).
    fn wgsl_name(camel: &str) -> String {
        let chars: Vec<char> = camel.chars().collect();
        let mut out = String::new();
        for (i, &c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let prev2 = i.checked_sub(2).map(|j| chars[j]);
            let boundary = match prev {
                Some(p) if c.is_ascii_uppercase() => p.is_ascii_lowercase() || p.is_ascii_digit(),
                Some(p) if c.is_ascii_digit() => {
                    p.is_ascii_lowercase() && !prev2.is_some_and(|q| q.is_ascii_digit())
                }
                _ => false,
            };
            if boundary {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_are_kebab_case() {
            assert_eq!(wgsl_name("Packed4x8IntegerDotProduct"), super::PACKED_DOT);
            assert_eq!(
                wgsl_name("ReadOnlyAndReadWriteStorageTextures"),
                "read-only-and-read-write-storage-textures"
            );
            assert_eq!(kebab("SHADER_F16"), "shader-f16");
            assert_eq!(backend_name(wgpu::Backends::GL), Some("gl"));
            assert_eq!(
                backend_name(wgpu::Backends::GL | wgpu::Backends::VULKAN),
                None
            );
            assert_eq!(
                names(wgpu::Backends::VULKAN | wgpu::Backends::GL),
                "vulkan, gl"
            );
            assert_eq!(names(wgpu::Backends::empty()), "none");
        }
    }
}
