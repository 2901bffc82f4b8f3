//! Quick release-mode timing of `matmul` at every weight format against the `gemm` crate's f32
//! matmul, alternating runs, median of several. Not the formal benchmark (`cargo xtask bench
//! kernels`); a development aid.
//!
//! ```text
//! cargo run --release -p haagenti-adaptive-kernels --example matmul_timing [runs] [M,K,N ...]
//! ```

use std::time::Instant;

use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, kernel_path, matmul};

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

fn gemm_f32(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, out: &mut [f32], threads: usize) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: x is m x k, w is n x k (read as wᵀ, k x n), out is m x n, all row-major and
    // exclusively or immutably borrowed for the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(7);
    let mut shapes: Vec<(usize, usize, usize)> = args
        .iter()
        .skip(1)
        .filter_map(|s| {
            let v: Vec<usize> = s.split(',').filter_map(|p| p.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    if shapes.is_empty() {
        shapes = vec![
            (1, 4096, 4096),
            (16, 4096, 1024),
            (64, 4096, 4096),
            (256, 1024, 1024),
        ];
    }
    let formats = [
        Format::Q8_0,
        Format::Q4_0,
        Format::Q4_1,
        Format::F16,
        Format::BF16,
        Format::F32,
    ];
    println!("kernel path: {}; runs: {runs} (median)", kernel_path());
    println!(
        "| M,K,N | threads | format | median ms | gemm f32 ms | ratio vs f32 | min ms | gemm min ms | ratio of mins |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(m, k, n) in &shapes {
        let x = values(m * k, 1);
        let w = values(n * k, 2);
        let tensors: Vec<QuantizedTensor> = formats
            .iter()
            .map(|&f| QuantizedTensor::quantize(f, n, k, &w).unwrap())
            .collect();
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut out = vec![0.0f32; m * n];
                let par = if threads > 1 {
                    Parallelism::Rayon
                } else {
                    Parallelism::None
                };
                for (f, t) in formats.iter().zip(&tensors) {
                    // Warm-up.
                    gemm_f32(&x, &w, m, n, k, &mut out, threads);
                    matmul(&x, m, t, &mut out, par).unwrap();
                    let (mut base, mut ours) = (Vec::new(), Vec::new());
                    for _ in 0..runs {
                        let s = Instant::now();
                        gemm_f32(&x, &w, m, n, k, &mut out, threads);
                        base.push(s.elapsed().as_secs_f64() * 1e3);
                        let s = Instant::now();
                        matmul(&x, m, t, &mut out, par).unwrap();
                        ours.push(s.elapsed().as_secs_f64() * 1e3);
                    }
                    let (b, o) = (median(&mut base), median(&mut ours));
                    // `median` sorted both: the first entries are the minimums.
                    let (bm, om) = (base[0], ours[0]);
                    println!(
                        "| {m},{k},{n} | {threads} | {f} | {o:.3} | {b:.3} | {:.2}x | {om:.3} | {bm:.3} | {:.2}x |",
                        b / o,
                        bm / om
                    );
                }
            });
        }
    }
}
