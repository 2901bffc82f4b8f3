//! Run-time choice of the SIMD path, made once and cached.
//!
//! The path is the best level the CPU supports, capped by two environment variables read once:
//!
//! - `HAAGENTI_FORCE_SCALAR=1` (or `true`) forces the portable scalar kernels everywhere (CI
//!   runs the whole suite that way too);
//! - `HAAGENTI_MAX_ISA=<level>` caps the level, so that one machine can test every lower path:
//!   on x86_64 `scalar`, `avx2`, `avx-vnni`, `avx512` or `avx512-vnni` (in that order); on
//!   aarch64 `scalar`, `neon` or `neon-dotprod`. A level the CPU lacks caps nothing above what
//!   it has; an unknown value is ignored (with the uncapped path).
//!
//! Detection uses `is_x86_feature_detected!` / `is_aarch64_feature_detected!`; no
//! `target-cpu=native` is needed or assumed.

use std::fmt;
use std::sync::OnceLock;

/// The family of kernels the crate runs on this machine.
///
/// The x86_64 levels are ordered: each includes the ones below it (every level from
/// [`KernelPath::Avx2`] on has AVX2, FMA and F16C), except that the AVX-512 levels need not
/// have AVX-VNNI ([`KernelPath::supported`] checks it).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{KernelPath, kernel_path};
///
/// let path = kernel_path();
/// println!("kernels: {path}");
/// assert_eq!(KernelPath::Scalar.to_string(), "scalar");
/// assert_eq!("avx512-vnni".parse(), Ok(KernelPath::Avx512Vnni));
/// assert!(KernelPath::Avx512 > KernelPath::AvxVnni);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KernelPath {
    /// Portable scalar code: other CPUs, or forced by `HAAGENTI_FORCE_SCALAR=1`.
    Scalar,
    /// aarch64 NEON without the dot-product extension.
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDotprod,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 AVX2 plus AVX-VNNI (`vpdpbusd` on 256-bit vectors).
    AvxVnni,
    /// x86_64 AVX-512 F, BW and VL (plus AVX2, FMA, F16C).
    Avx512,
    /// x86_64 AVX-512 F/BW/VL with AVX512-VNNI (`vpdpbusd` on 512-bit vectors).
    Avx512Vnni,
}

impl KernelPath {
    /// Every path, lowest first.
    pub const ALL: [KernelPath; 7] = [
        KernelPath::Scalar,
        KernelPath::Neon,
        KernelPath::NeonDotprod,
        KernelPath::Avx2,
        KernelPath::AvxVnni,
        KernelPath::Avx512,
        KernelPath::Avx512Vnni,
    ];

    /// The path's name: `"avx512-vnni"`, `"avx512"`, `"avx-vnni"`, `"avx2+fma+f16c"`,
    /// `"neon+dotprod"`, `"neon"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Avx512Vnni => "avx512-vnni",
            KernelPath::Avx512 => "avx512",
            KernelPath::AvxVnni => "avx-vnni",
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

    /// Whether this is one of the x86_64 SIMD paths (all of them have AVX2, FMA and F16C).
    pub fn is_x86_simd(self) -> bool {
        self >= KernelPath::Avx2
    }

    /// Whether this path has AVX-512 F/BW/VL.
    pub fn is_avx512(self) -> bool {
        self >= KernelPath::Avx512
    }

    /// Whether the CPU running this process supports the path (ignoring the environment).
    ///
    /// AVX-VNNI is checked on its own: the AVX-512 levels above it do not imply it (Skylake-X
    /// and Zen 4 lack it).
    pub fn supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            KernelPath::AvxVnni => has_avx_vnni(),
            _ => self <= detect() && self.same_arch(detect()),
        }
    }

    /// Whether both paths belong to one architecture (scalar belongs to all).
    fn same_arch(self, other: KernelPath) -> bool {
        self == KernelPath::Scalar
            || other == KernelPath::Scalar
            || self.is_neon() == other.is_neon()
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no [`KernelPath`] (what `HAAGENTI_MAX_ISA` accepts).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown ISA level {0:?}: expected scalar, avx2, avx-vnni, avx512, avx512-vnni, neon or neon-dotprod"
)]
pub struct ParseKernelPathError(pub String);

impl std::str::FromStr for KernelPath {
    type Err = ParseKernelPathError;

    /// Parses a level as `HAAGENTI_MAX_ISA` takes it (or a [`KernelPath::name`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => KernelPath::Scalar,
            "avx2" | "avx2+fma+f16c" => KernelPath::Avx2,
            "avx-vnni" | "avxvnni" => KernelPath::AvxVnni,
            "avx512" => KernelPath::Avx512,
            "avx512-vnni" | "avx512vnni" => KernelPath::Avx512Vnni,
            "neon" => KernelPath::Neon,
            "neon-dotprod" | "neon+dotprod" => KernelPath::NeonDotprod,
            _ => return Err(ParseKernelPathError(s.to_string())),
        })
    }
}

/// The kernel path chosen for this process: detected on first call, then cached.
pub fn kernel_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        if force_scalar() {
            return KernelPath::Scalar;
        }
        let cap = std::env::var("HAAGENTI_MAX_ISA")
            .ok()
            .and_then(|v| v.parse().ok());
        let path = capped(detect(), cap);
        // A cap at avx-vnni on an AVX-512 CPU without it lands on the next level down.
        KernelPath::ALL
            .into_iter()
            .rev()
            .find(|&p| p <= path && p.same_arch(path) && p.supported())
            .unwrap_or(KernelPath::Scalar)
    })
}

/// Whether the CPU has AVX-VNNI (and the AVX2 level under it).
fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        detect() >= KernelPath::Avx2 && std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `best` capped at `cap`: the highest path of `best`'s architecture at or below both.
pub fn capped(best: KernelPath, cap: Option<KernelPath>) -> KernelPath {
    let Some(cap) = cap else { return best };
    KernelPath::ALL
        .into_iter()
        .rev()
        .find(|&p| p <= best && p <= cap && p.same_arch(best))
        .unwrap_or(KernelPath::Scalar)
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

/// The best path the CPU supports, ignoring the environment (detected once, then cached).
pub fn detect() -> KernelPath {
    static BEST: OnceLock<KernelPath> = OnceLock::new();
    *BEST.get_or_init(detect_uncached)
}

/// [`detect`] without the cache.
fn detect_uncached() -> KernelPath {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            return KernelPath::Scalar;
        }
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        if avx512 && has!("avx512vnni") {
            KernelPath::Avx512Vnni
        } else if avx512 {
            KernelPath::Avx512
        } else if has!("avxvnni") {
            KernelPath::AvxVnni
        } else {
            KernelPath::Avx2
        }
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

/// The 16-bit float arithmetic extensions the CPU has beyond the [`KernelPath`] levels,
/// reported only where the chosen path is an AVX-512 one (the kernels do not use them yet).
///
/// # Examples
///
/// ```
/// let ext = haagenti_adaptive_kernels::dispatch::half_extensions();
/// println!("avx512bf16 {} avx512fp16 {}", ext.avx512bf16, ext.avx512fp16);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfExtensions {
    /// AVX512-BF16 (`vdpbf16ps`).
    pub avx512bf16: bool,
    /// AVX512-FP16 (f16 arithmetic).
    pub avx512fp16: bool,
}

/// The [`HalfExtensions`] of this machine under the chosen [`kernel_path`].
pub fn half_extensions() -> HalfExtensions {
    #[cfg(target_arch = "x86_64")]
    if kernel_path().is_avx512() {
        return HalfExtensions {
            avx512bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
            avx512fp16: std::arch::is_x86_feature_detected!("avx512fp16"),
        };
    }
    HalfExtensions::default()
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

/// The AVX2 token when [`kernel_path`] is an x86_64 SIMD path (every one has AVX2).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx2() -> Option<Avx2> {
    Avx2::for_path(kernel_path())
}

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The token for `path` when the CPU supports it and it is an x86_64 SIMD path, whatever
    /// the environment chose (tests run every supported level this way in one process).
    pub(crate) fn for_path(path: KernelPath) -> Option<Avx2> {
        (path.is_x86_simd() && path.supported()).then_some(Avx2 { _private: () })
    }
}

/// Proof that AVX-512 F/BW/VL (and AVX2, FMA, F16C) are available and selected, and whether
/// AVX512-VNNI is: only [`Avx512::for_path`] makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    /// Whether `vpdpbusd` (AVX512-VNNI) may be used.
    pub(crate) vnni: bool,
}

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The token for `path` when the CPU supports it and it is an AVX-512 path, whatever the
    /// environment chose (tests run every supported level this way in one process).
    pub(crate) fn for_path(path: KernelPath) -> Option<Avx512> {
        (path.is_avx512() && path.supported()).then_some(Avx512 {
            vnni: path == KernelPath::Avx512Vnni,
        })
    }
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
    Neon::for_path(kernel_path())
}

#[cfg(target_arch = "aarch64")]
impl Neon {
    /// The token for `path` when the CPU supports it and it is a NEON path.
    pub(crate) fn for_path(path: KernelPath) -> Option<Neon> {
        (path.is_neon() && path.supported()).then_some(Neon {
            dotprod: path == KernelPath::NeonDotprod,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever `HAAGENTI_MAX_ISA` says (CI runs this under several caps), the chosen path is
    /// one the CPU has: a cap at avx-vnni on an AVX-512 CPU without AVX-VNNI picks avx2.
    #[test]
    fn the_chosen_path_is_one_the_cpu_has() {
        assert!(kernel_path().supported(), "{}", kernel_path());
        assert!(kernel_path() <= detect());
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("avxvnni") {
            assert!(!KernelPath::AvxVnni.supported());
            assert_ne!(kernel_path(), KernelPath::AvxVnni);
        }
    }
}
