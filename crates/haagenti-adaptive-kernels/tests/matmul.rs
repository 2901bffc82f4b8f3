//! Public-API tests of `matmul`, `matmul_acc` and the scalar oracle `matmul_scalar`.

use haagenti_adaptive_kernels::{
    Format, KernelError, Parallelism, QuantizedTensor, matmul, matmul_acc, matmul_scalar,
};

const ALL: [Format; 6] = [
    Format::F32,
    Format::F16,
    Format::BF16,
    Format::Q8_0,
    Format::Q4_0,
    Format::Q4_1,
];

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// f64 reference `x · ŵᵀ` with the weights as stored (dequantized) and exact activations.
fn reference(x: &[f32], m: usize, w: &QuantizedTensor) -> Vec<f64> {
    let (n, k) = (w.rows(), w.cols());
    let wf = w.to_f32();
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|l| f64::from(x[i * k + l]) * f64::from(wf[j * k + l]))
                .sum();
        }
    }
    out
}

/// Bound on the error that quantizing activations to Q8_0 adds: per block, each value moves by
/// at most `0.6 * max|x| / 127` (half a step plus the scale's f16 rounding).
fn activation_bound(x: &[f32], m: usize, w: &QuantizedTensor, i: usize, j: usize) -> f64 {
    let k = w.cols();
    let wf = w.to_f32();
    if !w.format().is_block() {
        return 0.0;
    }
    let _ = m;
    (0..k / 32)
        .map(|b| {
            let xs = &x[i * k + 32 * b..i * k + 32 * b + 32];
            let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let wsum: f64 = wf[j * k + 32 * b..j * k + 32 * b + 32]
                .iter()
                .map(|v| f64::from(v.abs()))
                .sum();
            wsum * 0.6 * f64::from(amax) / 127.0
        })
        .sum()
}

#[test]
fn every_format_matches_f64_math_within_quantization_bounds() {
    let (m, k, n) = (6, 256, 11);
    let x = values(m * k, 1);
    let w = values(n * k, 2);
    for format in ALL {
        let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
        let reference = reference(&x, m, &wq);
        let mut out = vec![0.0; m * n];
        matmul(&x, m, &wq, &mut out, Parallelism::Rayon).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (got, want) = (f64::from(out[i * n + j]), reference[i * n + j]);
                let bound = activation_bound(&x, m, &wq, i, j) + 1e-4;
                assert!(
                    (got - want).abs() <= bound,
                    "{format} [{i},{j}]: {got} vs {want} (bound {bound})"
                );
            }
        }
    }
}

/// Asserts `out` within `rel` of `Σ|x·w|` (plus 1e-3) of the oracle's result, entry by entry.
fn assert_near_oracle(
    out: &[f32],
    oracle: &[f32],
    (x, w): (&[f32], &[f32]),
    (m, k, n): (usize, usize, usize),
    rel: f32,
    what: &str,
) {
    for (idx, (a, b)) in out.iter().zip(oracle).enumerate() {
        let (i, j) = (idx / n, idx % n);
        let scale: f32 = (0..k)
            .map(|l| (x[i * k + l] * w[j * k + l]).abs())
            .sum::<f32>()
            + 1e-3;
        assert!(
            (a - b).abs() <= rel * scale,
            "{what} {m}x{k}x{n} [{i},{j}]: {a} vs {b}"
        );
    }
}

#[test]
fn simd_paths_match_the_scalar_oracle() {
    // Shapes with partial tiles on both sides, and one large enough for several tasks.
    for &(m, k, n) in &[
        (1, 32, 1),
        (5, 64, 7),
        (9, 128, 19),
        (17, 512, 70),
        (8, 96, 4),
    ] {
        let x = values(m * k, 3 + m as u64);
        let w = values(n * k, 4 + n as u64);
        for format in ALL {
            let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
            let mut oracle = vec![0.0; m * n];
            matmul_scalar(&x, m, &wq, &mut oracle).unwrap();
            for par in [Parallelism::Rayon, Parallelism::None] {
                let mut out = vec![f32::NAN; m * n];
                matmul(&x, m, &wq, &mut out, par).unwrap();
                assert_near_oracle(
                    &out,
                    &oracle,
                    (&x, &w),
                    (m, k, n),
                    4e-5,
                    &format!("{format} {par:?}"),
                );
            }
        }
    }
}

#[test]
fn float_paths_match_the_oracle_either_side_of_the_panel_crossover() {
    // F16/BF16 stream up to more activation rows the larger the weights (64 from 2^17 weights,
    // 128 from 2^20 on x86_64): rows on both sides of each step, odd sizes.
    for &(m, k, n) in &[
        (37, 1100, 130),
        (70, 1100, 130),
        (70, 1030, 1030),
        (130, 1030, 1030),
    ] {
        let x = values(m * k, 5 + m as u64);
        let w = values(n * k, 6 + n as u64);
        for format in [Format::F16, Format::BF16, Format::F32] {
            let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
            let wf = wq.to_f32();
            let mut oracle = vec![0.0; m * n];
            matmul_scalar(&x, m, &wq, &mut oracle).unwrap();
            let mut out = vec![f32::NAN; m * n];
            matmul(&x, m, &wq, &mut out, Parallelism::Rayon).unwrap();
            assert_near_oracle(
                &out,
                &oracle,
                (&x, &wf),
                (m, k, n),
                1e-5,
                &format!("{format}"),
            );
        }
    }
}

#[test]
fn parallel_and_serial_agree() {
    let (m, k, n) = (13, 256, 150);
    let x = values(m * k, 7);
    let w = values(n * k, 8);
    for format in [
        Format::Q8_0,
        Format::Q4_0,
        Format::Q4_1,
        Format::F16,
        Format::BF16,
    ] {
        let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
        let mut a = vec![0.0; m * n];
        let mut b = vec![0.0; m * n];
        matmul(&x, m, &wq, &mut a, Parallelism::Rayon).unwrap();
        matmul(&x, m, &wq, &mut b, Parallelism::None).unwrap();
        if format.is_block() {
            // Each output is computed by the same kernel whatever the split: bit for bit.
            assert!(a == b, "{format}: results differ between Rayon and None");
        } else {
            // F16/BF16 panels go through gemm, whose summation order may follow the panel.
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + p.abs()),
                    "{format}: {p} vs {q}"
                );
            }
        }
    }
}

#[test]
fn q8_0_weights_of_minus_128_are_exact() {
    // -128 never comes out of the quantizer but is a valid GGUF byte: the sign trick must
    // still give the exact product.
    let k = 32;
    let mut bytes = vec![0u8; 34];
    bytes[..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
    for b in &mut bytes[2..] {
        *b = (-128i8) as u8;
    }
    let w = QuantizedTensor::from_bytes(Format::Q8_0, 1, k, bytes).unwrap();
    // x = -1 everywhere quantizes to q = -127 with d = 1/127.
    let x = vec![-1.0f32; 4 * k];
    let mut out = vec![0.0; 4];
    matmul(&x, 4, &w, &mut out, Parallelism::None).unwrap();
    let mut oracle = vec![0.0; 4];
    matmul_scalar(&x, 4, &w, &mut oracle).unwrap();
    let d = half::f16::from_f32(1.0 / 127.0).to_f32();
    let exact = d * (32 * 128 * 127) as f32;
    for (a, b) in out.iter().zip(&oracle) {
        assert_eq!(*b, exact);
        assert!((a - b).abs() <= 1e-6 * exact, "{a} vs {b}");
    }
}

#[test]
fn exact_small_case_in_every_format() {
    // Weights each format stores exactly, activations Q8_0 stores exactly (d = 1): every
    // product and sum is a small integer, so every path must give the exact result.
    let k = 64;
    let x: Vec<f32> = (0..k)
        .map(|i| if i % 2 == 0 { 127.0 } else { -1.0 })
        .collect();
    for format in ALL {
        let w: Vec<f32> = (0..2 * k)
            .map(|i| match format {
                Format::Q4_0 | Format::Q4_1 => ((i % 16) as f32) - 8.0,
                _ if i % 32 == 0 => -127.0, // every block's max |w|: d = 1
                _ => ((i * 37) % 255) as f32 - 127.0,
            })
            .collect();
        let wq = QuantizedTensor::quantize(format, 2, k, &w).unwrap();
        assert_eq!(wq.to_f32(), w, "{format} stores these exactly");
        let exact: Vec<f32> = (0..2)
            .map(|j| (0..k).map(|l| x[l] * w[j * k + l]).sum::<f32>())
            .collect();
        for m in [1, 4, 5] {
            let xm: Vec<f32> = x.iter().cycle().take(m * k).copied().collect();
            let mut out = vec![0.0; 2 * m];
            matmul(&xm, m, &wq, &mut out, Parallelism::Rayon).unwrap();
            for row in out.chunks(2) {
                assert_eq!(row, exact, "{format} m = {m}");
            }
        }
    }
}

#[test]
fn matmul_acc_scales_and_accumulates() {
    let (m, k, n) = (5, 64, 9);
    let x = values(m * k, 11);
    let w = values(n * k, 12);
    for format in ALL {
        let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
        let mut plain = vec![0.0; m * n];
        matmul(&x, m, &wq, &mut plain, Parallelism::Rayon).unwrap();
        let old = values(m * n, 13);
        let mut acc = old.clone();
        matmul_acc(&x, m, &wq, &mut acc, 0.5, 2.0, Parallelism::Rayon).unwrap();
        for ((a, p), o) in acc.iter().zip(&plain).zip(&old) {
            assert!(
                (a - (2.0 * o + 0.5 * p)).abs() <= 1e-5 * (1.0 + p.abs()),
                "{format}: {a}"
            );
        }
        // beta = 0 does not read `out`: NaN there does not leak.
        let mut fresh = vec![f32::NAN; m * n];
        matmul_acc(&x, m, &wq, &mut fresh, 1.0, 0.0, Parallelism::None).unwrap();
        for (a, p) in fresh.iter().zip(&plain) {
            assert!(
                (a - p).abs() <= 1e-5 * (1.0 + p.abs()),
                "{format}: {a} vs {p}"
            );
        }
    }
}

#[test]
fn bad_lengths_are_shape_mismatch() {
    let w = QuantizedTensor::quantize(Format::Q4_0, 3, 64, &values(3 * 64, 1)).unwrap();
    let x = values(2 * 64, 2);
    let mut out = vec![0.0; 6];
    assert_eq!(
        matmul(&x[..127], 2, &w, &mut out, Parallelism::Rayon),
        Err(KernelError::ShapeMismatch {
            what: "x",
            expected: 128,
            actual: 127
        })
    );
    assert_eq!(
        matmul(&x, 2, &w, &mut out[..5], Parallelism::Rayon),
        Err(KernelError::ShapeMismatch {
            what: "out",
            expected: 6,
            actual: 5
        })
    );
    assert_eq!(
        matmul_scalar(&x, 3, &w, &mut out),
        Err(KernelError::ShapeMismatch {
            what: "x",
            expected: 192,
            actual: 128
        })
    );
    assert!(matches!(
        matmul(&x, usize::MAX, &w, &mut out, Parallelism::None),
        Err(KernelError::SizeOverflow { .. })
    ));
}

#[test]
fn non_finite_activations_are_named() {
    let w = QuantizedTensor::quantize(Format::Q8_0, 2, 32, &values(64, 1)).unwrap();
    for format in ALL {
        let w = w.convert(format).unwrap();
        let mut x = values(3 * 32, 2);
        x[40] = f32::NAN;
        x[70] = f32::INFINITY;
        let mut out = vec![0.0; 6];
        match matmul(&x, 3, &w, &mut out, Parallelism::Rayon) {
            Err(KernelError::NonFinite { index, value }) => {
                assert_eq!(index, 40);
                assert!(value.is_nan());
            }
            other => panic!("{format}: {other:?}"),
        }
    }
}

#[test]
fn empty_shapes_work() {
    for format in ALL {
        // n = 0
        let w = QuantizedTensor::quantize(format, 0, 64, &[]).unwrap();
        let mut out = vec![];
        matmul(&values(128, 1), 2, &w, &mut out, Parallelism::Rayon).unwrap();
        // m = 0
        let w = QuantizedTensor::quantize(format, 3, 32, &values(96, 2)).unwrap();
        matmul(&[], 0, &w, &mut out, Parallelism::Rayon).unwrap();
        matmul_scalar(&[], 0, &w, &mut out).unwrap();
        // k = 0: the product is zero, beta still applies.
        let w = QuantizedTensor::quantize(format, 3, 0, &[]).unwrap();
        let mut out = vec![1.0; 6];
        matmul(&[], 2, &w, &mut out, Parallelism::Rayon).unwrap();
        assert_eq!(out, vec![0.0; 6], "{format}");
        let mut out = vec![1.0; 6];
        matmul_acc(&[], 2, &w, &mut out, 1.0, 3.0, Parallelism::Rayon).unwrap();
        assert_eq!(out, vec![3.0; 6], "{format}");
        let mut out = vec![1.0; 6];
        matmul_scalar(&[], 2, &w, &mut out).unwrap();
        assert_eq!(out, vec![0.0; 6], "{format}");
    }
}
