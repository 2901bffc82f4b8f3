//! Property tests: every matmul path against the scalar oracle, and the oracle against f64 math.

use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, matmul, matmul_scalar};
use proptest::prelude::*;

const ALL: [Format; 6] = [
    Format::F32,
    Format::F16,
    Format::BF16,
    Format::Q8_0,
    Format::Q4_0,
    Format::Q4_1,
];

/// A problem: format, shape (m 0..=14, k up to 256 and a multiple of 32 for block formats, any
/// length for float formats, n 0..=19) and values with a spread of magnitudes (blocks of very
/// different scales, zeros, exact ties).
fn problem() -> impl Strategy<Value = (Format, usize, usize, usize, Vec<f32>, Vec<f32>)> {
    (0usize..6, 0usize..=14, 0usize..=8, 0usize..32, 0usize..=19).prop_flat_map(
        |(f, m, kb, tail, n)| {
            let k = if ALL[f].is_block() {
                32 * kb
            } else {
                32 * kb + tail
            };
            let value = prop_oneof![
                8 => -1.0f32..1.0,
                1 => -100.0f32..100.0,
                1 => Just(0.0f32),
                1 => (-8i32..8).prop_map(|v| v as f32 * 0.25),
            ];
            (
                Just(ALL[f]),
                Just(m),
                Just(k),
                Just(n),
                prop::collection::vec(value.clone(), m * k),
                prop::collection::vec(value, n * k),
            )
        },
    )
}

/// Σ_l |x_l| (|ŵ_l| + max |ŵ| of the block): the magnitude f32 rounding is relative to (Q4_1's
/// minimum and scaled values enter the kernels' partial sums on their own, each at most that).
fn magnitude(x: &[f32], wf: &[f32], k: usize, i: usize, j: usize) -> f64 {
    (0..k)
        .map(|l| {
            let b = l / 32 * 32;
            let block = &wf[j * k + b..j * k + (b + 32).min(k)];
            let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            f64::from(x[i * k + l].abs()) * f64::from(wf[j * k + l].abs() + amax)
        })
        .sum()
}

/// The activations as matmul sees them: Q8_0 round trip for block formats, as given otherwise.
fn effective_x(format: Format, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    if format.is_block() && k > 0 {
        QuantizedTensor::quantize(Format::Q8_0, m, k, x)
            .unwrap()
            .to_f32()
    } else {
        x.to_vec()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_the_oracle((format, m, k, n, x, w) in problem()) {
        let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
        let wf = wq.to_f32();
        let xe = effective_x(format, &x, m, k);
        let mut oracle = vec![0.0; m * n];
        matmul_scalar(&x, m, &wq, &mut oracle).unwrap();
        for par in [Parallelism::Rayon, Parallelism::None] {
            let mut out = vec![f32::NAN; m * n];
            matmul(&x, m, &wq, &mut out, par).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (a, b) = (out[i * n + j], oracle[i * n + j]);
                    let tol = 1e-5 * magnitude(&xe, &wf, k, i, j) + 1e-30;
                    prop_assert!(
                        f64::from((a - b).abs()) <= tol,
                        "{} {}x{}x{} {:?} [{},{}]: {} vs oracle {} (tol {})",
                        format, m, k, n, par, i, j, a, b, tol
                    );
                }
            }
        }
    }

    #[test]
    fn oracle_matches_f64_math((format, m, k, n, x, w) in problem()) {
        let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
        let wf = wq.to_f32();
        let xe = effective_x(format, &x, m, k);
        let mut oracle = vec![0.0; m * n];
        matmul_scalar(&x, m, &wq, &mut oracle).unwrap();
        for i in 0..m {
            for j in 0..n {
                // Against the activations the kernels use: only f32 rounding separates them.
                let exact: f64 = (0..k).map(|l| f64::from(xe[i * k + l]) * f64::from(wf[j * k + l])).sum();
                let mag = magnitude(&xe, &wf, k, i, j);
                let got = f64::from(oracle[i * n + j]);
                prop_assert!((got - exact).abs() <= 1e-5 * mag + 1e-30,
                    "{} [{},{}]: {} vs {} (magnitude {})", format, i, j, got, exact, mag);
                // Against the exact activations: the Q8_0 rounding of x, at most 0.6 of a step.
                let true_exact: f64 = (0..k).map(|l| f64::from(x[i * k + l]) * f64::from(wf[j * k + l])).sum();
                let act: f64 = if format.is_block() {
                    (0..k / 32).map(|b| {
                        let xs = &x[i * k + 32 * b..i * k + 32 * b + 32];
                        let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                        let ws: f64 = wf[j * k + 32 * b..j * k + 32 * b + 32].iter().map(|v| f64::from(v.abs())).sum();
                        ws * 0.6 * f64::from(amax) / 127.0
                    }).sum()
                } else {
                    0.0
                };
                prop_assert!((got - true_exact).abs() <= act + 1e-5 * mag + 1e-30,
                    "{} [{},{}]: {} vs exact {} (bound {})", format, i, j, got, true_exact, act);
            }
        }
    }
}
