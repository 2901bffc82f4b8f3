//! What a device can execute, and how much memory it has.

use serde::{Deserialize, Serialize};

use crate::{AdaptiveError, Precision, Result};

/// The precisions a device executes and the memory it offers.
///
/// The three constructors are the seed crate's hand-written presets; `haagenti-adaptive-probe`
/// builds this from the machine it runs on instead.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::{Precision, PrecisionCapabilities};
///
/// let legacy = PrecisionCapabilities::legacy_gpu(4096);
/// // An INT4 request on an FP16/FP32 device gets the cheapest precision above it: FP16.
/// assert_eq!(legacy.best_supported(Precision::INT4), Precision::FP16);
/// // 1 billion parameters at INT4 with block scales: 4.5 bits a weight, in bytes.
/// assert_eq!(legacy.estimate_vram(1_000_000_000, Precision::INT4), 562_500_000);
/// assert!(legacy.fits_model(1_000_000_000, Precision::FP16)); // 1908 MiB of 4096
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecisionCapabilities {
    /// Precisions the device executes, in any order.
    pub supported: Vec<Precision>,
    /// The precision the device runs best without conversion.
    pub native: Precision,
    /// Whether the device has INT4 matrix units.
    pub int4_tensor_cores: bool,
    /// Whether the device has INT8 matrix units.
    pub int8_tensor_cores: bool,
    /// Memory available for weights, in MiB (the seed crate calls them MB).
    pub vram_mb: u64,
    /// CUDA compute capability, where the device has one.
    pub compute_capability: Option<(u32, u32)>,
}

impl PrecisionCapabilities {
    /// A recent GPU (Ampere or later) with `vram_mb` of memory: every precision, FP16 native.
    pub fn modern_gpu(vram_mb: u64) -> Self {
        PrecisionCapabilities {
            supported: Precision::ALL.to_vec(),
            native: Precision::FP16,
            int4_tensor_cores: true,
            int8_tensor_cores: true,
            vram_mb,
            compute_capability: Some((8, 6)),
        }
    }

    /// An older GPU (Pascal) with `vram_mb` of memory: FP16 and FP32 only, FP32 native.
    pub fn legacy_gpu(vram_mb: u64) -> Self {
        PrecisionCapabilities {
            supported: vec![Precision::FP16, Precision::FP32],
            native: Precision::FP32,
            int4_tensor_cores: false,
            int8_tensor_cores: false,
            vram_mb,
            compute_capability: Some((6, 1)),
        }
    }

    /// A CPU with `memory_mb` of memory as the seed crate describes one: INT8 and FP32 only,
    /// FP32 native. This project's kernels run every precision on any CPU; for that, see
    /// [`PrecisionCapabilities::cpu_with_kernels`].
    pub fn cpu(memory_mb: u64) -> Self {
        PrecisionCapabilities {
            supported: vec![Precision::INT8, Precision::FP32],
            ..PrecisionCapabilities::cpu_with_kernels(memory_mb)
        }
    }

    /// A CPU with `memory_mb` of memory running this project's kernels: every precision
    /// (SIMD where the CPU has it, portable code where not), FP32 native.
    pub fn cpu_with_kernels(memory_mb: u64) -> Self {
        PrecisionCapabilities {
            supported: Precision::ALL.to_vec(),
            native: Precision::FP32,
            int4_tensor_cores: false,
            int8_tensor_cores: false,
            vram_mb: memory_mb,
            compute_capability: None,
        }
    }

    /// Whether `precision` is supported.
    pub fn supports(&self, precision: Precision) -> bool {
        self.supported.contains(&precision)
    }

    /// The cheapest supported precision at or above `precision`, if any.
    pub fn cheapest_at_or_above(&self, precision: Precision) -> Option<Precision> {
        self.supported
            .iter()
            .copied()
            .filter(|&p| p >= precision)
            .min()
    }

    /// The precision to run when `precision` is requested: the cheapest supported one at or
    /// above it, so quality never drops below the request.
    ///
    /// Where nothing at or above is supported, the most faithful supported precision, and the
    /// request itself when nothing is supported at all. Use
    /// [`PrecisionCapabilities::require_at_or_above`] to get an error instead.
    pub fn best_supported(&self, precision: Precision) -> Precision {
        self.cheapest_at_or_above(precision)
            .or_else(|| self.supported.iter().copied().max())
            .unwrap_or(precision)
    }

    /// The cheapest supported precision at or above `precision`.
    ///
    /// # Errors
    ///
    /// [`AdaptiveError::UnsupportedPrecision`] when no supported precision is at or above it.
    pub fn require_at_or_above(&self, precision: Precision) -> Result<Precision> {
        self.cheapest_at_or_above(precision)
            .ok_or(AdaptiveError::UnsupportedPrecision(precision))
    }

    /// Bytes that `params` weights take at `precision`, counting block scales (the seed crate's
    /// unit, bytes; [`weight_mb`] gives MiB), rounded up. Saturates at `u64::MAX`.
    pub fn estimate_vram(&self, params: u64, precision: Precision) -> u64 {
        weight_bytes(params, precision)
    }

    /// Whether `params` weights at `precision` fit in [`PrecisionCapabilities::vram_mb`]
    /// ([`weight_mb`] MiB, block scales counted).
    pub fn fits_model(&self, params: u64, precision: Precision) -> bool {
        weight_mb(params, precision) <= self.vram_mb
    }
}

impl Default for PrecisionCapabilities {
    /// A modern GPU with 8 GiB.
    fn default() -> Self {
        PrecisionCapabilities::modern_gpu(8192)
    }
}

/// MiB that `params` weights take at `precision`, counting block scales, rounded up.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::{weight_mb, Precision};
///
/// assert_eq!(weight_mb(1 << 20, Precision::FP32), 4);
/// assert_eq!(weight_mb(1 << 20, Precision::INT8), 2); // 8.5 bits: 1.0625 MiB, rounded up
/// ```
pub fn weight_mb(params: u64, precision: Precision) -> u64 {
    const MIB_BITS: u128 = 8 * 1024 * 1024;
    (params as u128 * half_bits(precision)).div_ceil(2 * MIB_BITS) as u64
}

/// Bytes that `params` weights take at `precision`, counting block scales, rounded up, saturating
/// at `u64::MAX`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_core::{weight_bytes, Precision};
///
/// assert_eq!(weight_bytes(32, Precision::INT4), 18); // one Q4_0 block
/// assert_eq!(weight_bytes(1000, Precision::FP16), 2000);
/// ```
pub fn weight_bytes(params: u64, precision: Precision) -> u64 {
    let bytes = (params as u128 * half_bits(precision)).div_ceil(16);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Twice the effective bits of `precision`: effective bits are multiples of 0.5, so this is exact
/// in integers.
fn half_bits(precision: Precision) -> u128 {
    (precision.effective_bits() * 2.0) as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_supported_never_lowers_the_request() {
        let legacy = PrecisionCapabilities::legacy_gpu(4096);
        assert_eq!(legacy.best_supported(Precision::INT4), Precision::FP16);
        assert_eq!(legacy.best_supported(Precision::BF16), Precision::FP16);
        assert_eq!(legacy.best_supported(Precision::FP32), Precision::FP32);
        let int8_only = PrecisionCapabilities {
            supported: vec![Precision::INT8],
            ..PrecisionCapabilities::default()
        };
        assert_eq!(int8_only.best_supported(Precision::FP16), Precision::INT8);
        assert_eq!(
            int8_only.require_at_or_above(Precision::FP16),
            Err(AdaptiveError::UnsupportedPrecision(Precision::FP16))
        );
        assert_eq!(
            int8_only.require_at_or_above(Precision::INT4),
            Ok(Precision::INT8)
        );
    }

    #[test]
    fn memory_estimates_count_block_scales() {
        let caps = PrecisionCapabilities::modern_gpu(1000);
        let params = 1_000_000_000;
        assert_eq!(caps.estimate_vram(params, Precision::FP16), 2_000_000_000);
        assert_eq!(caps.estimate_vram(params, Precision::INT4), 562_500_000);
        assert_eq!(caps.estimate_vram(u64::MAX, Precision::FP32), u64::MAX);
        assert_eq!(weight_mb(params, Precision::FP16), 1908); // 2e9 B / 2^20, rounded up
        assert_eq!(weight_mb(params, Precision::INT4), 537); // 0.5625e9 B
        assert!(caps.fits_model(params, Precision::INT4));
        assert!(!caps.fits_model(params, Precision::INT8));
        assert_eq!(weight_mb(0, Precision::FP32), 0);
        assert_eq!(
            weight_mb(u64::MAX, Precision::FP32),
            u64::MAX / (1 << 18) + 1
        );
    }

    #[test]
    fn cpu_is_the_seed_preset_and_cpu_with_kernels_runs_everything() {
        let seed = PrecisionCapabilities::cpu(1024);
        assert_eq!(seed.supported, vec![Precision::INT8, Precision::FP32]);
        assert_eq!(seed.best_supported(Precision::INT4), Precision::INT8);
        assert_eq!(seed.best_supported(Precision::FP16), Precision::FP32);
        let ours = PrecisionCapabilities::cpu_with_kernels(1024);
        assert!(Precision::ALL.iter().all(|&p| ours.supports(p)));
        assert_eq!((ours.native, ours.vram_mb), (seed.native, seed.vram_mb));
    }

    #[test]
    fn json_round_trip() {
        let caps = PrecisionCapabilities::cpu(16384);
        let json = serde_json::to_string(&caps).unwrap();
        assert_eq!(
            serde_json::from_str::<PrecisionCapabilities>(&json).unwrap(),
            caps
        );
        assert!(
            serde_json::from_str::<PrecisionCapabilities>("{\"supported\":[\"INT5\"]}").is_err()
        );
    }
}
