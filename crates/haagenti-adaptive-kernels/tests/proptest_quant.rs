//! Every dispatched (SIMD where the CPU has it) quantize and dequantize kernel is bit-exact with
//! the scalar oracle, on random blocks that include rounding ties, signed zeros, subnormals and
//! values near f32's limits.

use haagenti_adaptive_kernels::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK, block_bytes};
use haagenti_adaptive_kernels::{
    KernelPath, bf16_to_f32, dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q8_0,
    f16_to_f32, f32_to_bf16, f32_to_f16, kernel_path, quantize_row_q4_0, quantize_row_q4_1,
    quantize_row_q8_0, scalar,
};
use half::{bf16, f16};
use proptest::prelude::*;

/// Any finite f32: normal, subnormal or zero, either sign, all magnitudes.
fn finite() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    NORMAL | SUBNORMAL | ZERO | POSITIVE | NEGATIVE
}

/// Values with many exact rounding ties: half-integer multiples of a power of two, with block
/// extremes at 127, 8 and 15 of those units so that `x * id` lands exactly on `k + 0.5`, some
/// nudged by one ulp either way.
fn tie_block() -> impl Strategy<Value = Vec<f32>> {
    (
        -20i32..20,
        prop::collection::vec(-255i32..=255, QK),
        0usize..QK,
        prop::sample::select(vec![254.0f32, -254.0, 16.0, -16.0, 30.0, -30.0]),
        any::<bool>(),
        prop::collection::vec(0u8..4, QK),
    )
        .prop_map(|(e, halves, at, extreme, shift, nudges)| {
            let unit = 2f32.powi(e);
            let mut v: Vec<f32> = halves
                .iter()
                .map(|&h| {
                    let h = (h as f32).clamp(-extreme.abs(), extreme.abs());
                    h * 0.5 * unit
                })
                .collect();
            v[at] = extreme * 0.5 * unit;
            if shift {
                // Q4_1 ties: a minimum of 0 and half-integer steps above it.
                for x in &mut v {
                    *x = x.abs();
                }
                v[(at + 1) % QK] = 0.0;
            }
            // One ulp toward or away from zero: 0.5 - 2^-25 (0.49999997) is where adding 0.5
            // and truncating goes wrong.
            for (i, (x, n)) in v.iter_mut().zip(nudges).enumerate() {
                if i != at && *x != 0.0 {
                    match n {
                        1 => *x = f32::from_bits(x.to_bits() - 1),
                        2 => *x = f32::from_bits(x.to_bits() + 1),
                        _ => {}
                    }
                }
            }
            v
        })
}

/// One block of values from a mixture of distributions.
fn block() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        3 => prop::collection::vec(-4.0f32..4.0, QK),
        2 => prop::collection::vec(finite(), QK),
        3 => tie_block(),
        1 => prop::collection::vec(
            prop::sample::select(vec![
                0.0f32, -0.0, 0.5, -0.5, 0.499_999_97, -0.499_999_97, 1.0e-40, -1.0e-45,
                f32::MIN_POSITIVE, 65504.0, -8.0, 8.0, 15.0, 127.0, -127.0, 1.0e30, -3.0e38,
                f32::MAX, f32::MIN,
            ]),
            QK,
        ),
        1 => (finite(), prop::collection::vec(-1.0f32..1.0, QK))
            .prop_map(|(s, v)| v.into_iter().map(|x| x * s).collect()),
    ]
}

/// Up to 7 blocks, concatenated.
fn row() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(block(), 0..8).prop_map(|bs| bs.concat())
}

fn finite_f16() -> impl Strategy<Value = f16> {
    any::<u16>()
        .prop_map(f16::from_bits)
        .prop_filter("finite", |h| h.is_finite())
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn q8_0_quantize_matches_oracle(x in row()) {
        let nb = x.len() / QK;
        let (mut fast, mut slow) = (vec![BlockQ8_0::default(); nb], vec![BlockQ8_0::default(); nb]);
        quantize_row_q8_0(&x, &mut fast);
        scalar::quantize_row_q8_0(&x, &mut slow);
        prop_assert_eq!(block_bytes(&fast), block_bytes(&slow));
    }

    #[test]
    fn q4_0_quantize_matches_oracle(x in row()) {
        let nb = x.len() / QK;
        let (mut fast, mut slow) = (vec![BlockQ4_0::default(); nb], vec![BlockQ4_0::default(); nb]);
        quantize_row_q4_0(&x, &mut fast);
        scalar::quantize_row_q4_0(&x, &mut slow);
        prop_assert_eq!(block_bytes(&fast), block_bytes(&slow));
    }

    #[test]
    fn q4_1_quantize_matches_oracle(x in row()) {
        let nb = x.len() / QK;
        let (mut fast, mut slow) = (vec![BlockQ4_1::default(); nb], vec![BlockQ4_1::default(); nb]);
        quantize_row_q4_1(&x, &mut fast);
        scalar::quantize_row_q4_1(&x, &mut slow);
        prop_assert_eq!(block_bytes(&fast), block_bytes(&slow));
    }

    #[test]
    fn q8_0_dequantize_matches_oracle(
        blocks in prop::collection::vec((finite_f16(), prop::array::uniform32(any::<i8>())), 0..8)
    ) {
        let b: Vec<BlockQ8_0> = blocks.into_iter().map(|(d, qs)| BlockQ8_0 { d, qs }).collect();
        let (mut fast, mut slow) = (vec![0.0; QK * b.len()], vec![0.0; QK * b.len()]);
        dequantize_row_q8_0(&b, &mut fast);
        scalar::dequantize_row_q8_0(&b, &mut slow);
        prop_assert!(same_bits(&fast, &slow));
    }

    #[test]
    fn q4_0_dequantize_matches_oracle(
        blocks in prop::collection::vec((finite_f16(), prop::array::uniform16(any::<u8>())), 0..8)
    ) {
        let b: Vec<BlockQ4_0> = blocks.into_iter().map(|(d, qs)| BlockQ4_0 { d, qs }).collect();
        let (mut fast, mut slow) = (vec![0.0; QK * b.len()], vec![0.0; QK * b.len()]);
        dequantize_row_q4_0(&b, &mut fast);
        scalar::dequantize_row_q4_0(&b, &mut slow);
        prop_assert!(same_bits(&fast, &slow));
    }

    #[test]
    fn q4_1_dequantize_matches_oracle(
        blocks in prop::collection::vec(
            (finite_f16(), finite_f16(), prop::array::uniform16(any::<u8>())), 0..8)
    ) {
        let b: Vec<BlockQ4_1> =
            blocks.into_iter().map(|(d, m, qs)| BlockQ4_1 { d, m, qs }).collect();
        let (mut fast, mut slow) = (vec![0.0; QK * b.len()], vec![0.0; QK * b.len()]);
        dequantize_row_q4_1(&b, &mut fast);
        scalar::dequantize_row_q4_1(&b, &mut slow);
        prop_assert!(same_bits(&fast, &slow));
    }

    #[test]
    fn quantize_then_requantize_is_stable(
        // Within Q8_0's range (an f16 scale times 127), so every block dequantizes finite.
        x in row().prop_map(|v| v.into_iter().map(|x| x.clamp(-8.0e6, 8.0e6)).collect::<Vec<_>>())
    ) {
        // Dequantized Q8_0 values quantize back to the same q (the scale may round differently,
        // so compare the values, which is what matters).
        let nb = x.len() / QK;
        let mut b = vec![BlockQ8_0::default(); nb];
        quantize_row_q8_0(&x, &mut b);
        let mut y = vec![0.0; x.len()];
        dequantize_row_q8_0(&b, &mut y);
        prop_assert!(y.iter().all(|v| v.is_finite()));
        let mut b2 = vec![BlockQ8_0::default(); nb];
        quantize_row_q8_0(&y, &mut b2);
        let mut y2 = vec![0.0; x.len()];
        dequantize_row_q8_0(&b2, &mut y2);
        for (a, c) in y.iter().zip(&y2) {
            prop_assert!((a - c).abs() <= a.abs() * 2f32.powi(-9) + f32::MIN_POSITIVE, "{} {}", a, c);
        }
    }

    #[test]
    fn half_slice_conversions_match_elementwise(x in prop::collection::vec(finite(), 0..100)) {
        let mut h = vec![f16::ZERO; x.len()];
        f32_to_f16(&x, &mut h);
        let mut b = vec![bf16::ZERO; x.len()];
        f32_to_bf16(&x, &mut b);
        for (i, &v) in x.iter().enumerate() {
            prop_assert_eq!(h[i].to_bits(), f16::from_f32(v).to_bits());
            prop_assert_eq!(b[i].to_bits(), bf16::from_f32(v).to_bits());
        }
        let (mut hf, mut bf) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        f16_to_f32(&h, &mut hf);
        bf16_to_f32(&b, &mut bf);
        for i in 0..x.len() {
            prop_assert_eq!(hf[i].to_bits(), h[i].to_f32().to_bits());
            prop_assert_eq!(bf[i].to_bits(), b[i].to_f32().to_bits());
        }
    }
}

/// The SIMD kernels above are really exercised where the CPU has them.
#[test]
fn kernel_path_follows_cpu_and_environment() {
    let forced = std::env::var("HAAGENTI_FORCE_SCALAR").is_ok_and(|v| v.trim() == "1");
    let path = kernel_path();
    if forced {
        assert_eq!(path, KernelPath::Scalar);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let capped = std::env::var("HAAGENTI_MAX_ISA").is_ok_and(|v| v.trim() == "scalar");
        assert_eq!(path.is_x86_simd(), avx2 && !capped, "{path}");
        assert_eq!(
            path >= KernelPath::Avx512Vnni,
            is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && std::env::var("HAAGENTI_MAX_ISA").is_err(),
            "{path}"
        );
    }
    #[cfg(target_arch = "aarch64")]
    assert!(path.is_neon(), "{path}");
}
