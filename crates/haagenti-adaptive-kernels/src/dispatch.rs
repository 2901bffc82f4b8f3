//! Run-time choice of the SIMD path, made once and cached.
//!
//! The path is the best the CPU supports, unless the environment variable
//! `HAAGENTI_FORCE_SCALAR` is set to `1` (or `true`) when it is first read, which forces the
//! portable scalar kernels everywhere (CI runs the whole suite that way too). When the crate is
//! compiled with the path's target features already enabled (`-C target-feature=+avx2,+fma,+f16c`),
//! detection is skipped; the environment variable still applies.

use std::fmt;
use std::sync::OnceLock;

/// The family of kernels the crate runs on this machine.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{KernelPath, kernel_path};
///
/// let path = kernel_path();
/// println!("kernels: {path}");
/// assert_eq!(KernelPath::Scalar.to_string(), "scalar");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KernelPath {
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDotprod,
    /// aarch64 NEON without the dot-product extension.
    Neon,
    /// Portable scalar code: other CPUs, or forced by `HAAGENTI_FORCE_SCALAR=1`.
    Scalar,
}

impl KernelPath {
    /// The path's name: `"avx2+fma+f16c"`, `"neon+dotprod"`, `"neon"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Avx2 => "avx2+fma+f16c",
            KernelPath::NeonDotprod => "neon+dotprod",
            KernelPath::Neon => "neon",
            KernelPath::Scalar => "scalar",
        }
    }

    /// Whether this is one of the NEON paths.
    pub fn is_neon(self) -> bool {
        matches!(self, KernelPath::Neon | KernelPath::NeonDotprod)
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel path chosen for this process: detected on first call, then cached.
pub fn kernel_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        if force_scalar() {
            KernelPath::Scalar
        } else {
            detect()
        }
    })
}

/// Whether `HAAGENTI_FORCE_SCALAR` asked for the scalar path (read once, then cached).
pub fn force_scalar() -> bool {
    static FORCE: OnceLock<bool> = OnceLock::new();
    *FORCE.get_or_init(|| {
        std::env::var("HAAGENTI_FORCE_SCALAR")
            .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
            .unwrap_or(false)
    })
}

/// The best path the CPU supports, ignoring `HAAGENTI_FORCE_SCALAR`.
pub fn detect() -> KernelPath {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )) || (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        {
            return KernelPath::Avx2;
        }
        KernelPath::Scalar
    }
    #[cfg(target_arch = "aarch64")]
    {
        if !std::arch::is_aarch64_feature_detected!("neon") {
            return KernelPath::Scalar;
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            KernelPath::NeonDotprod
        } else {
            KernelPath::Neon
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        KernelPath::Scalar
    }
}

/// Proof that AVX2, FMA and F16C are available and selected: only [`avx2`] makes one.
///
/// Safe wrappers around `#[target_feature(enable = "avx2,fma,f16c")]` functions take this token,
/// so holding one is what makes calling them sound.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    _private: (),
}

/// The AVX2 token when [`kernel_path`] is [`KernelPath::Avx2`].
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx2() -> Option<Avx2> {
    (kernel_path() == KernelPath::Avx2).then_some(Avx2 { _private: () })
}

/// Proof that NEON is available and selected: only [`neon`] makes one.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon {
    /// Whether the dot-product extension (`sdot`) is available too.
    pub(crate) dotprod: bool,
}

/// The NEON token when [`kernel_path`] is a NEON path.
#[cfg(target_arch = "aarch64")]
#[inline]
pub(crate) fn neon() -> Option<Neon> {
    let path = kernel_path();
    path.is_neon().then_some(Neon {
        dotprod: path == KernelPath::NeonDotprod,
    })
}
