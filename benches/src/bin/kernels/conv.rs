//! The `conv` group of the kernels benchmark (`kernels --conv`): our `conv2d` on the 3x3 and 1x1
//! layers of a diffusion UNet, at every format, against im2col + the `gemm` crate's f32 GEMM and
//! against im2col + our `matmul` at the same format, in the same run.
//!
//! ```text
//! cargo xtask bench kernels --conv [--quick] [--threads 2] [--json FILE]
//! ```
//!
//! Method: batch 1, NHWC f32 activations, stride 1, "same" padding. For each thread count a rayon
//! pool of that many threads runs every measurement (`gemm` gets `Parallelism::Rayon(threads)`).
//! The baselines build the whole im2col matrix first (split over the pool by rows), then
//! multiply; `conv2d` is one call. A layer's kernels run round-robin after a warm-up call each,
//! for as many rounds as a time budget allows; the figure is the median. `x gemm f32` is the
//! im2col + gemm f32 time over the kernel's; `x im2col+ours` is the im2col + our matmul time at
//! the same format over `conv2d`'s (above 1: the convolution API is faster).

use std::hint::black_box;
use std::time::Duration;

use anyhow::{Context as _, bail};
use haagenti_adaptive_kernels::{
    Conv2dParams, Conv2dShape, ConvWeight, Parallelism, conv2d, kernel_path, matmul,
};
use rayon::prelude::*;
use serde::Serialize;

use super::{Kernel, OUR_FORMATS, gemm_f32, measure, median, rel_err, values};

/// A UNet layer: name, input `[height, width, c_in]`, `c_out`, square kernel size.
struct Layer {
    name: &'static str,
    hw: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
}

/// The layers of issue 11's table, as convolutions.
const LAYERS: [Layer; 6] = [
    Layer {
        name: "3x3 32->32 128x128",
        hw: 128,
        c_in: 32,
        c_out: 32,
        kernel: 3,
    },
    Layer {
        name: "3x3 64->32 128x128",
        hw: 128,
        c_in: 64,
        c_out: 32,
        kernel: 3,
    },
    Layer {
        name: "3x3 64->64 64x64",
        hw: 64,
        c_in: 64,
        c_out: 64,
        kernel: 3,
    },
    Layer {
        name: "3x3 96->96 32x32",
        hw: 32,
        c_in: 96,
        c_out: 96,
        kernel: 3,
    },
    Layer {
        name: "3x3 128->128 16x16",
        hw: 16,
        c_in: 128,
        c_out: 128,
        kernel: 3,
    },
    Layer {
        name: "1x1 64->192 64x64",
        hw: 64,
        c_in: 64,
        c_out: 192,
        kernel: 1,
    },
];

/// One format on one layer.
#[derive(Serialize)]
struct ConvRow {
    layer: String,
    /// `MxKxN` of the im2col GEMM.
    gemm_shape: String,
    format: String,
    threads: usize,
    conv2d_ms: f64,
    im2col_ours_ms: f64,
    im2col_gemm_f32_ms: f64,
    /// `im2col_gemm_f32_ms / conv2d_ms`.
    conv2d_vs_gemm_f32: f64,
    /// `im2col_ours_ms / conv2d_ms`: at least 1 is the target.
    conv2d_vs_im2col_ours: f64,
    /// Largest |conv2d - gemm f32| over largest |gemm f32|.
    rel_err: f64,
}

#[derive(Serialize)]
struct ConvReport {
    kernel_path: String,
    quick: bool,
    results: Vec<ConvRow>,
}

/// Entry point of `kernels --conv ...`.
pub(super) fn main() -> anyhow::Result<()> {
    let (mut quick, mut threads, mut json) = (false, vec![2], None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--conv" | "--bench" => {}
            "--quick" => quick = true,
            "--json" => json = Some(args.next().context("--json needs a file name")?),
            "--threads" => {
                let list = args.next().context("--threads needs a list such as 1,2")?;
                threads = list
                    .split(',')
                    .map(|t| t.trim().parse::<usize>().context("bad thread count"))
                    .collect::<anyhow::Result<_>>()?;
                if threads.contains(&0) {
                    bail!("thread counts must be at least 1");
                }
            }
            other => bail!("unknown argument {other:?} for --conv"),
        }
    }
    let mut results = Vec::new();
    for &t in &threads {
        eprintln!("conv: measuring with {t} thread(s)...");
        results.extend(run(t, quick)?);
    }
    let report = ConvReport {
        kernel_path: kernel_path().to_string(),
        quick,
        results,
    };
    print!("{}", markdown(&report));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {path}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

fn markdown(report: &ConvReport) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "kernel path: {}; {}\n\n| layer (im2col MxKxN) | format | threads | conv2d ms | \
         im2col+ours ms | im2col+gemm f32 ms | x gemm f32 | x im2col+ours | rel err |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        report.kernel_path,
        if report.quick {
            "quick run (few samples)"
        } else {
            "full run"
        }
    );
    for r in &report.results {
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1e} |",
            r.layer,
            r.gemm_shape,
            r.format,
            r.threads,
            r.conv2d_ms,
            r.im2col_ours_ms,
            r.im2col_gemm_f32_ms,
            r.conv2d_vs_gemm_f32,
            r.conv2d_vs_im2col_ours,
            r.rel_err
        );
    }
    s
}

/// The im2col matrix of `x` (NHWC, one image) for `shape`, rows split over the current pool:
/// what a caller of a plain matmul builds first.
fn im2col(x: &[f32], s: &Conv2dShape, cols: &mut [f32]) {
    let [kh, kw] = s.kernel();
    let [ph, pw] = s.params().padding;
    let (h, w, c) = (s.height(), s.width(), s.c_in());
    let patch = kh * kw * c;
    cols.par_chunks_mut(patch).enumerate().for_each(|(p, row)| {
        let (oy, ox) = (p / s.out_width(), p % s.out_width());
        for ky in 0..kh {
            for kx in 0..kw {
                let dst = &mut row[(ky * kw + kx) * c..][..c];
                let (iy, ix) = ((oy + ky).wrapping_sub(ph), (ox + kx).wrapping_sub(pw));
                if iy < h && ix < w {
                    dst.copy_from_slice(&x[(iy * w + ix) * c..][..c]);
                } else {
                    dst.fill(0.0);
                }
            }
        }
    });
}

fn run(threads: usize, quick: bool) -> anyhow::Result<Vec<ConvRow>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot build the rayon pool")?;
    let (budget, min_rounds, max_rounds) = if quick {
        (Duration::from_millis(300), 3, 3)
    } else {
        (Duration::from_secs(4), 7, 40)
    };
    let mut rows = Vec::new();
    for (li, l) in LAYERS.iter().enumerate() {
        eprintln!("  {}", l.name);
        let (k, pad) = (l.kernel, l.kernel / 2);
        let x = values(l.hw * l.hw * l.c_in, 300 + li as u64);
        let w_ohwi = values(l.c_out * k * k * l.c_in, 400 + li as u64);
        let weights = OUR_FORMATS
            .iter()
            .map(|&f| ConvWeight::from_ohwi(f, l.c_out, l.c_in, k, k, &w_ohwi))
            .collect::<Result<Vec<_>, _>>()?;
        let shape = Conv2dShape::new(1, l.hw, l.hw, &weights[0], Conv2dParams::new(1, pad))?;
        let (m, kk, n) = shape.gemm_dims();

        let mut reference = vec![0f32; m * n];
        let mut cols = vec![0f32; m * kk];
        pool.install(|| im2col(&x, &shape, &mut cols));
        gemm_f32(&cols, &w_ohwi, false, (m, kk, n), &mut reference, threads);

        // Kernel 0: im2col + gemm f32; then per format im2col + ours, conv2d.
        let mut outs = vec![vec![0f32; m * n]; 1 + 2 * weights.len()];
        let samples = {
            let mut outs = outs.iter_mut();
            let mut kernels: Vec<Kernel<'_>> = Vec::new();
            let (x, shape, w_f32) = (&x, &shape, &w_ohwi);
            let out = outs.next().context("one output per kernel")?;
            let mut cols = vec![0f32; m * kk];
            kernels.push(Box::new(move || {
                im2col(x, shape, &mut cols);
                gemm_f32(&cols, w_f32, false, (m, kk, n), out, threads);
                black_box(&out);
                Ok(())
            }));
            for wc in &weights {
                let out = outs.next().context("one output per kernel")?;
                let mut cols = vec![0f32; m * kk];
                kernels.push(Box::new(move || {
                    im2col(x, shape, &mut cols);
                    matmul(&cols, m, wc.tensor(), out, Parallelism::Rayon)?;
                    black_box(&out);
                    Ok(())
                }));
                let out = outs.next().context("one output per kernel")?;
                kernels.push(Box::new(move || {
                    conv2d(x, shape, wc, None, out, Parallelism::Rayon)?;
                    black_box(&out);
                    Ok(())
                }));
            }
            measure(&pool, &mut kernels, 1, budget, min_rounds, max_rounds)?
        };
        let gemm_ms = median(&samples[0]);
        for (i, f) in OUR_FORMATS.iter().enumerate() {
            let ours_ms = median(&samples[1 + 2 * i]);
            let conv_ms = median(&samples[2 + 2 * i]);
            rows.push(ConvRow {
                layer: l.name.to_string(),
                gemm_shape: format!("{m}x{kk}x{n}"),
                format: f.name().to_string(),
                threads,
                conv2d_ms: conv_ms,
                im2col_ours_ms: ours_ms,
                im2col_gemm_f32_ms: gemm_ms,
                conv2d_vs_gemm_f32: gemm_ms / conv_ms,
                conv2d_vs_im2col_ours: ours_ms / conv_ms,
                rel_err: rel_err(&reference, &std::mem::take(&mut outs[2 + 2 * i])),
            });
        }
    }
    Ok(rows)
}
