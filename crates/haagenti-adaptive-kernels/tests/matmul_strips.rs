//! The quantized matmul's tiling edges against the scalar oracle: activation row counts around
//! the micro-kernel's pass sizes (1 row: row kernel; 2 and more: repacked 8-row weight strips
//! x up to 6 activation rows), weight row counts around multiples of 8, one-block rows, and
//! integer block sums at the bounds the i16 accumulation relies on.

use haagenti_adaptive_kernels::{
    Format, Parallelism, QuantizedTensor, matmul, matmul_acc, matmul_scalar,
};

const BLOCK_FORMATS: [Format; 3] = [Format::Q8_0, Format::Q4_0, Format::Q4_1];

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

/// Σ_l |x̂_l| (|ŵ_l| + max |ŵ| of the block) with the activations as the kernels see them
/// (Q8_0 round trip): the magnitude the f32 rounding of a result is relative to.
fn magnitude(xe: &[f32], wf: &[f32], k: usize, i: usize, j: usize) -> f64 {
    (0..k)
        .map(|l| {
            let b = l / 32 * 32;
            let amax = wf[j * k + b..j * k + b + 32]
                .iter()
                .fold(0.0f32, |a, v| a.max(v.abs()));
            f64::from(xe[i * k + l].abs()) * f64::from(wf[j * k + l].abs() + amax)
        })
        .sum()
}

/// Runs `matmul` both ways and checks every element against the oracle.
fn check(x: &[f32], m: usize, wq: &QuantizedTensor, rel: f64) {
    let (n, k) = (wq.rows(), wq.cols());
    let wf = wq.to_f32();
    let xe = QuantizedTensor::quantize(Format::Q8_0, m, k, x)
        .unwrap()
        .to_f32();
    let mut oracle = vec![0.0; m * n];
    matmul_scalar(x, m, wq, &mut oracle).unwrap();
    for par in [Parallelism::None, Parallelism::Rayon] {
        let mut out = vec![f32::NAN; m * n];
        matmul(x, m, wq, &mut out, par).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (a, b) = (out[i * n + j], oracle[i * n + j]);
                let tol = rel * magnitude(&xe, &wf, k, i, j) + 1e-30;
                assert!(
                    f64::from((a - b).abs()) <= tol,
                    "{} {m}x{k}x{n} {par:?} [{i},{j}]: {a} vs oracle {b} (tol {tol})",
                    wq.format()
                );
            }
        }
    }
}

#[test]
fn every_row_and_column_edge_matches_the_oracle() {
    for format in BLOCK_FORMATS {
        for &m in &[1, 2, 3, 4, 5, 6, 7, 11, 12, 13] {
            for &n in &[1, 3, 7, 8, 9, 15, 16, 17, 25] {
                for &k in &[32, 96] {
                    let x = values(m * k, (m * 131 + n * 7 + k) as u64);
                    let w = values(n * k, (n * 17 + k) as u64);
                    let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
                    check(&x, m, &wq, 1e-5);
                }
            }
        }
    }
}

#[test]
fn many_strips_and_tasks_match_the_oracle() {
    // Enough weight rows for several tasks and strips per task, rows split unevenly.
    let (m, k, n) = (23, 256, 203);
    let x = values(m * k, 11);
    let w = values(n * k, 12);
    for format in BLOCK_FORMATS {
        let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
        check(&x, m, &wq, 1e-5);
    }
}

#[test]
fn block_sums_at_the_i16_bound_are_exact() {
    // Activations of one sign quantize to ±127 everywhere. Q4_0 weights: one value of 1 per
    // block (q = 0) and 31 of -0.875 (q = 15); Q4_1 weights: one 0 (the minimum, q = 0) and 31
    // of 1 (q = 15). Each i16 lane of the Q4 kernels then sums 16 products of 15 x 127 =
    // 30480, next to i16's limit; Q8_0 weights of ±1 quantize to ±127. A saturating or
    // wrapping sum would be far off; every block sum is an exact integer, so the kernels
    // must match the oracle to f32 rounding.
    let k = 128;
    for sign in [1.0f32, -1.0] {
        for format in BLOCK_FORMATS {
            for &(m, n) in &[(1, 9), (2, 8), (6, 9), (7, 17)] {
                let x = vec![sign; m * k];
                let w: Vec<f32> = (0..n * k)
                    .map(|i| match (format, i % 32) {
                        (Format::Q4_0, 0) => 1.0,
                        (Format::Q4_0, _) => -0.875,
                        (Format::Q4_1, 0) => 0.0,
                        (Format::Q4_1, _) => 1.0,
                        _ if i % 2 == 0 => 1.0,
                        _ => sign,
                    })
                    .collect();
                let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
                if format != Format::Q8_0 {
                    // The weights really sit at the nibble bounds.
                    let wf = wq.to_f32();
                    assert!((wf[1] - w[1]).abs() < 1e-3 && (wf[0] - w[0]).abs() < 1e-3);
                }
                check(&x, m, &wq, 1e-6);
            }
        }
    }
}

#[test]
fn q8_0_weights_of_minus_128_are_exact_on_every_path() {
    // -128 never comes out of the quantizer but is a valid GGUF byte: |w| = 128 must still
    // multiply exactly (a pair of products is then 2 x 128 x 127 = 32512 < 32767).
    let (k, n) = (64, 9);
    let mut bytes = vec![0u8; 34 * (k / 32) * n];
    for blk in bytes.chunks_exact_mut(34) {
        blk[..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
        for b in &mut blk[2..] {
            *b = (-128i8) as u8;
        }
    }
    let w = QuantizedTensor::from_bytes(Format::Q8_0, n, k, bytes).unwrap();
    let d = half::f16::from_f32(1.0 / 127.0).to_f32();
    let exact = d * (k as i32 * 128 * 127) as f32;
    for m in [1, 2, 7] {
        // x = -1 everywhere quantizes to q = -127 with d = 1/127.
        let x = vec![-1.0f32; m * k];
        let mut out = vec![0.0; m * n];
        matmul(&x, m, &w, &mut out, Parallelism::Rayon).unwrap();
        for a in &out {
            assert!((a - exact).abs() <= 1e-6 * exact, "m {m}: {a} vs {exact}");
        }
    }
}

#[test]
fn accumulating_form_on_every_path() {
    // The row kernel (m = 1) and full plus partial strip passes (m = 7) write their tiles
    // through `out = beta * out + alpha * product`; with beta = 0 `out` is never read.
    let (k, n) = (96, 19);
    for format in BLOCK_FORMATS {
        for m in [1, 7] {
            let x = values(m * k, 21 + m as u64);
            let wq = QuantizedTensor::quantize(format, n, k, &values(n * k, 22)).unwrap();
            let mut plain = vec![0.0; m * n];
            matmul(&x, m, &wq, &mut plain, Parallelism::None).unwrap();
            let old = values(m * n, 23);
            for par in [Parallelism::None, Parallelism::Rayon] {
                let mut acc = old.clone();
                matmul_acc(&x, m, &wq, &mut acc, 0.5, 2.0, par).unwrap();
                for ((a, p), o) in acc.iter().zip(&plain).zip(&old) {
                    let want = 2.0 * o + 0.5 * p;
                    assert!(
                        (a - want).abs() <= 1e-5 * (1.0 + p.abs()),
                        "{format} m {m}: {a}"
                    );
                }
                let mut fresh = vec![f32::NAN; m * n];
                matmul_acc(&x, m, &wq, &mut fresh, 3.0, 0.0, par).unwrap();
                for (a, p) in fresh.iter().zip(&plain) {
                    assert!(
                        (a - 3.0 * p).abs() <= 1e-5 * (1.0 + p.abs()),
                        "{format}: {a}"
                    );
                }
            }
        }
    }
}
