//! `cargo xtask bench kernels`: our quantized matmul at every format against the `gemm` crate's
//! f32 matmul (and, with `--features candle`, candle-core's `QMatMul`), plus quantize, dequantize
//! and f16/bf16 conversion throughput; `--conv` runs the convolution group instead (conv.rs).
//!
//! ```text
//! cargo run --release -p haagenti-adaptive-benches --bin kernels [--features candle] -- \
//!     [--quick] [--cold] [--json FILE] [--threads 1,2] [--shapes MxKxN,...] [--no-throughput]
//! ```
//!
//! Method: for each thread count the binary re-runs itself as a worker process (candle sizes its
//! matmul thread pool once per process from `CANDLE_NUM_THREADS`), which builds a rayon pool of
//! that many threads and `install`s every measurement in it; `gemm` gets
//! `Parallelism::Rayon(threads)`. Each shape's kernels run in alternation (round-robin), after one
//! warm-up call each, for as many rounds as a time budget allows; the figure is the median.
//! `ratio_vs_f32` is the time of the faster of two `gemm` f32 layouts over the kernel's time
//! (above 1 means faster than f32); `ratio_vs_best_f32` takes the fastest f32 matmul of the run,
//! ours included (our f32 path streams the weights for few activation rows, faster than `gemm`
//! there), so that no ratio rests on a baseline weaker than one we have.
//!
//! Each kernel multiplies by the same weights every call, so weights smaller than the last-level
//! cache (every quantized copy of a 4096 x 4096 matrix fits this machine's 32 MiB L3) are read
//! from cache while f32's 64 MiB streams from memory. `--cold` gives every kernel
//! [`COLD_FOOTPRINT`] of weight copies and uses the next copy at each call, so that every format's
//! weights come from memory, as the layers of a model larger than the cache do.

use std::hint::black_box;
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, kernel_path, matmul};
use serde::{Deserialize, Serialize};

/// The default matmul shapes: transformer-like ones, then the im2col shapes of a diffusion
/// UNet's convolutions (many activation rows, few output channels; issue 11's table).
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 4096, 4096),
    (16, 4096, 1024),
    (64, 4096, 4096),
    (256, 1024, 1024),
    (16384, 288, 32),
    (16384, 576, 32),
    (4096, 576, 64),
    (1024, 864, 96),
    (256, 1152, 128),
    (4096, 64, 192),
];
const OUR_FORMATS: [Format; 6] = [
    Format::F32,
    Format::F16,
    Format::BF16,
    Format::Q8_0,
    Format::Q4_0,
    Format::Q4_1,
];
/// Bytes of weight copies each kernel cycles through with `--cold`: three times this machine's
/// 32 MiB L3, so no copy is still cached when its turn comes again.
const COLD_FOOTPRINT: usize = 96 << 20;
/// Values in the quantize/dequantize throughput buffers: 16 MiB of f32, which streams from
/// memory, and 256 KiB, which stays in L2 with its blocks (so the kernel, not DRAM, bounds it).
const THROUGHPUT_VALUES: [usize; 2] = [4096 * 1024, 64 * 1024];

/// One measured figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Row {
    /// `MxKxN` for matmul, `N values` for throughput.
    shape: String,
    kernel: String,
    /// The code path that ran it: our kernel path (`avx512-vnni`, `avx2+fma+f16c`, ...), or
    /// `gemm` / `candle` for the baselines.
    #[serde(default)]
    path: String,
    threads: usize,
    median_ms: f64,
    min_ms: f64,
    samples: usize,
    /// Baseline (best gemm f32) time over this kernel's time; matmul rows only.
    ratio_vs_f32: Option<f64>,
    /// Fastest f32 time of the run (both gemm layouts and ours) over this kernel's time.
    ratio_vs_best_f32: Option<f64>,
    gflops: Option<f64>,
    /// GB/s of f32 values processed; throughput rows only.
    gbps: Option<f64>,
    /// Candle's time for the same operation over ours; throughput rows with a candle twin.
    ratio_vs_candle: Option<f64>,
    /// Largest |out - out_f32| over largest |out_f32|, against the gemm f32 result.
    rel_err: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    kernel_path: String,
    candle: bool,
    quick: bool,
    /// Weights cycled through copies larger than the cache (`--cold`).
    cold: bool,
    results: Vec<Row>,
}

struct Options {
    quick: bool,
    cold: bool,
    json: Option<String>,
    threads: Vec<usize>,
    worker: bool,
    /// Matmul shapes to run (`MxKxN`); all of [`SHAPES`] when empty.
    shapes: Vec<String>,
    throughput: bool,
}

impl Options {
    /// The arguments a worker process needs to measure what these options ask for.
    fn worker_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.quick {
            args.push("--quick".to_string());
        }
        if self.cold {
            args.push("--cold".to_string());
        }
        if !self.shapes.is_empty() {
            args.extend(["--shapes".to_string(), self.shapes.join(",")]);
        }
        if !self.throughput {
            args.push("--no-throughput".to_string());
        }
        args
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options {
        quick: false,
        cold: false,
        json: None,
        threads: vec![1, 2],
        worker: false,
        shapes: Vec::new(),
        throughput: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--cold" => opts.cold = true,
            "--worker" => opts.worker = true,
            "--json" => opts.json = Some(args.next().context("--json needs a file name")?),
            "--threads" => {
                let list = args.next().context("--threads needs a list such as 1,2")?;
                opts.threads = list
                    .split(',')
                    .map(|t| t.trim().parse::<usize>().context("bad thread count"))
                    .collect::<anyhow::Result<_>>()?;
                if opts.threads.contains(&0) {
                    bail!("thread counts must be at least 1");
                }
            }
            "--shapes" => {
                let list = args
                    .next()
                    .context("--shapes needs a list such as 1x4096x4096")?;
                opts.shapes = list.split(',').map(|s| s.trim().to_string()).collect();
                for shape in &opts.shapes {
                    parse_shape(shape)?;
                }
            }
            "--no-throughput" => opts.throughput = false,
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "kernels [--quick] [--cold] [--json FILE] [--threads 1,2] \
                     [--shapes MxKxN,...] [--no-throughput]: matmul and quantization benchmark (see the source's \
                     docs)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(opts)
}

#[path = "kernels/conv.rs"]
mod conv;

fn main() -> anyhow::Result<()> {
    // The conv group (`--conv`) parses its own arguments; see conv.rs.
    if std::env::args().any(|a| a == "--conv") {
        return conv::main();
    }
    let opts = parse_args()?;
    if opts.worker {
        let threads = *opts.threads.first().context("a worker needs --threads N")?;
        let rows = worker(threads, &opts)?;
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for &threads in &opts.threads {
        eprintln!("measuring with {threads} thread(s)...");
        let mut cmd = Command::new(&exe);
        cmd.args(["--worker", "--threads", &threads.to_string()])
            .env("CANDLE_NUM_THREADS", threads.to_string())
            .env("RAYON_NUM_THREADS", threads.to_string())
            .args(opts.worker_args())
            .stderr(std::process::Stdio::inherit());
        let out = cmd.output().context("cannot start the worker process")?;
        if !out.status.success() {
            bail!("the {threads}-thread worker failed ({})", out.status);
        }
        let rows: Vec<Row> =
            serde_json::from_slice(&out.stdout).context("cannot parse the worker's results")?;
        results.extend(rows);
    }
    let report = Report {
        kernel_path: kernel_path().to_string(),
        candle: cfg!(feature = "candle"),
        quick: opts.quick,
        cold: opts.cold,
        results,
    };
    print!("{}", markdown(&report));
    if let Some(path) = &opts.json {
        let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?;
        f.write_all(serde_json::to_string_pretty(&report)?.as_bytes())?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kernel path: {}; candle: {}; {}; {}\n",
        report.kernel_path,
        report.candle,
        if report.quick {
            "quick run (few samples)"
        } else {
            "full run"
        },
        if report.cold {
            "weights from memory (copies cycled)"
        } else {
            "same weights every call (cached if they fit)"
        }
    );
    let _ = writeln!(
        s,
        "| shape (MxKxN) | kernel | path | threads | median ms | GFLOP/s | x gemm f32 | x best f32 | rel err |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in report.results.iter().filter(|r| r.ratio_vs_f32.is_some()) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.1} | {:.2} | {:.2} | {:.1e} |",
            r.shape,
            r.kernel,
            r.path,
            r.threads,
            r.median_ms,
            r.gflops.unwrap_or(0.0),
            r.ratio_vs_f32.unwrap_or(0.0),
            r.ratio_vs_best_f32.unwrap_or(0.0),
            r.rel_err.unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        s,
        "\n| buffer | operation | threads | median ms | GB/s (f32) | x candle |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in report.results.iter().filter(|r| r.gbps.is_some()) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.2} | {} |",
            r.shape,
            r.kernel,
            r.threads,
            r.median_ms,
            r.gbps.unwrap_or(0.0),
            r.ratio_vs_candle
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
        );
    }
    s
}

/// `MxKxN` as `(m, k, n)`, each at least 1.
fn parse_shape(shape: &str) -> anyhow::Result<(usize, usize, usize)> {
    let dims: Vec<usize> = shape
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("shape {shape:?} is not MxKxN"))?;
    match dims[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => bail!("shape {shape:?} is not MxKxN with three positive sizes"),
    }
}

/// Deterministic pseudo-random values in about [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

type Kernel<'a> = Box<dyn FnMut() -> anyhow::Result<()> + Send + 'a>;

/// Runs the kernels round-robin, `warmups` warm-up calls each (enough to touch every weight copy
/// once), then rounds until `budget` is spent (between `min_rounds` and `max_rounds`). Returns
/// each kernel's sorted samples in ms.
fn measure(
    pool: &rayon::ThreadPool,
    kernels: &mut [Kernel<'_>],
    warmups: usize,
    budget: Duration,
    min_rounds: usize,
    max_rounds: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::new(); kernels.len()];
    for k in kernels.iter_mut() {
        for _ in 0..warmups.max(1) {
            pool.install(&mut **k)?;
        }
    }
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < min_rounds || (rounds < max_rounds && start.elapsed() < budget) {
        for (k, s) in kernels.iter_mut().zip(&mut samples) {
            let t = Instant::now();
            pool.install(&mut **k)?;
            s.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rounds += 1;
    }
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    Ok(samples)
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn rel_err(reference: &[f32], out: &[f32]) -> f64 {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let err = reference
        .iter()
        .zip(out)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    if scale == 0.0 { err } else { err / scale }
}

/// `out[m x n] = x[m x k] · w[n x k]ᵀ` with the gemm crate. `w_t` is the same weight stored
/// `[k, n]` row-major, for the other layout.
fn gemm_f32(
    x: &[f32],
    w: &[f32],
    transposed: bool,
    (m, k, n): (usize, usize, usize),
    out: &mut [f32],
    threads: usize,
) {
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n);
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // rhs is k x n: element (kk, j) is w[j * k + kk] (w as [n, k]) or w[kk * n + j] (as [k, n]).
    let (rhs_cs, rhs_rs) = if transposed {
        (1, n as isize)
    } else {
        (k as isize, 1)
    };
    // SAFETY: the pointers cover m*k, k*n and m*n elements (asserted above) with the strides
    // given, dst does not alias lhs or rhs, and read_dst is false so dst need not be initialised.
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
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn worker(threads: usize, opts: &Options) -> anyhow::Result<Vec<Row>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot build the rayon pool")?;
    let (budget, min_rounds, max_rounds) = if opts.quick {
        (Duration::from_millis(300), 2, 3)
    } else {
        (Duration::from_secs(6), 5, 40)
    };
    let mut rows = Vec::new();
    let shapes: Vec<(usize, usize, usize)> = if opts.shapes.is_empty() {
        SHAPES.to_vec()
    } else {
        opts.shapes
            .iter()
            .map(|s| parse_shape(s))
            .collect::<anyhow::Result<_>>()?
    };
    let ours_path = kernel_path().to_string();
    for (si, &(m, k, n)) in shapes.iter().enumerate() {
        let shape = format!("{m}x{k}x{n}");
        eprintln!("  {shape}");
        let x = values(m * k, 1 + si as u64);
        let w = values(n * k, 100 + si as u64);
        let mut w_t = vec![0f32; n * k];
        for j in 0..n {
            for kk in 0..k {
                w_t[kk * n + j] = w[j * k + kk];
            }
        }
        let weights = OUR_FORMATS
            .iter()
            .map(|&f| QuantizedTensor::quantize(f, n, k, &w))
            .collect::<Result<Vec<_>, _>>()?;
        // Copies each kernel cycles through (one unless --cold).
        let copies = |bytes: usize| {
            if opts.cold {
                COLD_FOOTPRINT.div_ceil(bytes.max(1))
            } else {
                1
            }
        };
        let f32_copies = copies(n * k * 4);
        let w_copies: Vec<Vec<f32>> = vec![w.clone(); f32_copies];
        let w_t_copies: Vec<Vec<f32>> = vec![w_t.clone(); f32_copies];
        let weights: Vec<Vec<QuantizedTensor>> = weights
            .into_iter()
            .map(|wq| vec![wq.clone(); copies(wq.as_bytes().len())])
            .collect();
        // Q4_K takes 4.5 bits a weight, like Q4_0: no kernel has more copies than the Q4_0 one.
        let most_copies = weights.iter().map(Vec::len).max().unwrap_or(1);

        let mut reference = vec![0f32; m * n];
        gemm_f32(&x, &w, false, (m, k, n), &mut reference, threads);

        let mut names: Vec<String> = vec!["gemm f32 [n,k]".into(), "gemm f32 [k,n]".into()];
        let mut outs: Vec<Vec<f32>> = Vec::new();
        names.extend(OUR_FORMATS.iter().map(|f| format!("ours {}", f.name())));
        #[cfg(feature = "candle")]
        let candle_weights = candle::Weights::new(&w, &x, (m, k, n), copies)?;
        #[cfg(feature = "candle")]
        names.extend(candle::NAMES.iter().map(|s| s.to_string()));
        outs.resize(names.len(), vec![0f32; m * n]);

        let samples = {
            let mut outs_iter = outs.iter_mut();
            let mut kernels: Vec<Kernel<'_>> = Vec::new();
            for transposed in [false, true] {
                let out = outs_iter.next().expect("one output per kernel");
                let ws = if transposed { &w_t_copies } else { &w_copies };
                let x = &x;
                let mut turn = 0;
                kernels.push(Box::new(move || {
                    turn += 1;
                    gemm_f32(x, &ws[turn % ws.len()], transposed, (m, k, n), out, threads);
                    black_box(&out);
                    Ok(())
                }));
            }
            for wqs in &weights {
                let out = outs_iter.next().expect("one output per kernel");
                let x = &x;
                let mut turn = 0;
                kernels.push(Box::new(move || {
                    turn += 1;
                    matmul(x, m, &wqs[turn % wqs.len()], out, Parallelism::Rayon)?;
                    black_box(&out);
                    Ok(())
                }));
            }
            #[cfg(feature = "candle")]
            for i in 0..candle::NAMES.len() {
                let out = outs_iter.next().expect("one output per kernel");
                let cw = &candle_weights;
                let mut turn = 0;
                kernels.push(Box::new(move || {
                    turn += 1;
                    cw.forward(i, turn, out)
                }));
            }
            measure(
                &pool,
                &mut kernels,
                most_copies,
                budget,
                min_rounds,
                max_rounds,
            )?
        };
        let baseline = median(&samples[0]).min(median(&samples[1]));
        // `names[2]` is our f32 path (OUR_FORMATS starts with F32).
        let best_f32 = baseline.min(median(&samples[2]));
        let flops = 2.0 * (m * k * n) as f64;
        for ((name, s), out) in names.iter().zip(&samples).zip(&outs) {
            let med = median(s);
            let path = if name.starts_with("ours") {
                ours_path.clone()
            } else if name.starts_with("gemm") {
                "gemm".to_string()
            } else {
                "candle".to_string()
            };
            rows.push(Row {
                shape: shape.clone(),
                kernel: name.clone(),
                path,
                threads,
                median_ms: med,
                min_ms: s[0],
                samples: s.len(),
                ratio_vs_f32: Some(baseline / med),
                ratio_vs_best_f32: Some(best_f32 / med),
                gflops: Some(flops / (med * 1e6)),
                gbps: None,
                ratio_vs_candle: None,
                rel_err: Some(rel_err(&reference, out)),
            });
        }
    }
    // Throughput is per thread: single-threaded calls, measured in the 1-thread worker only.
    if threads == 1 && opts.throughput {
        for n in THROUGHPUT_VALUES {
            rows.extend(throughput(&pool, n, budget, min_rounds, max_rounds)?);
        }
    }
    Ok(rows)
}

fn throughput(
    pool: &rayon::ThreadPool,
    n: usize,
    budget: Duration,
    min_rounds: usize,
    max_rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    use haagenti_adaptive_kernels::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
    let reps = (THROUGHPUT_VALUES[0] / n).max(1);
    use haagenti_adaptive_kernels::{
        bf16_to_f32, dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q8_0, f16_to_f32,
        f32_to_bf16, f32_to_f16, quantize_row_q4_0, quantize_row_q4_1, quantize_row_q8_0,
    };
    let x = values(n, 7);
    let mut q8 = vec![BlockQ8_0::default(); n / QK];
    let mut q40 = vec![BlockQ4_0::default(); n / QK];
    let mut q41 = vec![BlockQ4_1::default(); n / QK];
    let mut h = vec![half::f16::ZERO; n];
    let mut b = vec![half::bf16::ZERO; n];
    quantize_row_q8_0(&x, &mut q8);
    quantize_row_q4_0(&x, &mut q40);
    quantize_row_q4_1(&x, &mut q41);
    f32_to_f16(&x, &mut h);
    f32_to_bf16(&x, &mut b);
    let mut y: Vec<Vec<f32>> = vec![vec![0f32; n]; 5];

    // (operation, ours, candle's twin if any)
    let mut names: Vec<&str> = Vec::new();
    let samples = {
        let mut kernels: Vec<Kernel<'_>> = Vec::new();
        let x = &x;
        let mut ys = y.iter_mut();
        // Each timed call repeats the operation so that it lasts about as long as one pass over
        // the largest buffer: a single pass over a small one would time the pool's wake-up.
        macro_rules! push {
            ($name:expr, $body:expr) => {
                names.push($name);
                let mut once: Kernel<'_> = Box::new($body);
                kernels.push(Box::new(move || {
                    for _ in 0..reps {
                        once()?;
                    }
                    Ok(())
                }));
            };
        }
        let (q8m, q40m, q41m, hm, bm) = (&mut q8, &mut q40, &mut q41, &mut h, &mut b);
        // Quantize writes into these; dequantize reads clones made below.
        let (q8c, q40c, q41c, hc, bc) = (
            q8m.clone(),
            q40m.clone(),
            q41m.clone(),
            hm.clone(),
            bm.clone(),
        );
        push!("quantize q8_0 (ours)", move || {
            quantize_row_q8_0(x, q8m);
            Ok(())
        });
        push!("quantize q4_0 (ours)", move || {
            quantize_row_q4_0(x, q40m);
            Ok(())
        });
        push!("quantize q4_1 (ours)", move || {
            quantize_row_q4_1(x, q41m);
            Ok(())
        });
        push!("f32 -> f16 (ours)", move || {
            f32_to_f16(x, hm);
            Ok(())
        });
        push!("f32 -> bf16 (ours)", move || {
            f32_to_bf16(x, bm);
            Ok(())
        });
        let (y0, y1, y2, y3, y4) = (
            ys.next().expect("5"),
            ys.next().expect("5"),
            ys.next().expect("5"),
            ys.next().expect("5"),
            ys.next().expect("5"),
        );
        push!("dequantize q8_0 (ours)", move || {
            dequantize_row_q8_0(&q8c, y0);
            Ok(())
        });
        push!("dequantize q4_0 (ours)", move || {
            dequantize_row_q4_0(&q40c, y1);
            Ok(())
        });
        push!("dequantize q4_1 (ours)", move || {
            dequantize_row_q4_1(&q41c, y2);
            Ok(())
        });
        push!("f16 -> f32 (ours)", move || {
            f16_to_f32(&hc, y3);
            Ok(())
        });
        push!("bf16 -> f32 (ours)", move || {
            bf16_to_f32(&bc, y4);
            Ok(())
        });
        // The memory-bandwidth bound of a pass that reads and writes n values.
        let mut copy = vec![0f32; n];
        push!("copy f32 (memory bound)", move || {
            copy.copy_from_slice(x);
            black_box(&copy);
            Ok(())
        });
        #[cfg(feature = "candle")]
        for (i, name) in candle::THROUGHPUT_NAMES.iter().enumerate() {
            let mut state = candle::Throughput::new(x);
            push!(*name, move || state.run(i));
        }
        measure(pool, &mut kernels, 1, budget, min_rounds, max_rounds)?
    };
    let bytes = (n * 4 * reps) as f64;
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let twin = name
            .strip_suffix(" (ours)")
            .and_then(|op| names.iter().position(|o| *o == format!("{op} (candle)")));
        rows.push(Row {
            shape: format!("{n} values"),
            kernel: name.to_string(),
            path: if name.ends_with("(candle)") {
                "candle".to_string()
            } else {
                kernel_path().to_string()
            },
            threads: 1,
            median_ms: medians[i],
            min_ms: samples[i][0],
            samples: samples[i].len(),
            ratio_vs_f32: None,
            ratio_vs_best_f32: None,
            gflops: None,
            gbps: Some(bytes / (medians[i] * 1e6)),
            ratio_vs_candle: twin.map(|j| medians[j] / medians[i]),
            rel_err: None,
        });
    }
    Ok(rows)
}

#[cfg(feature = "candle")]
mod candle {
    //! candle-core's quantized matmul and quantization, for comparison.

    use anyhow::Context as _;
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ8_0, GgmlType};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    pub(super) const NAMES: [&str; 3] = ["candle q8_0", "candle q4_0", "candle q4_k"];
    const DTYPES: [GgmlDType; 3] = [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K];

    /// Each format's weights, in as many copies as asked for.
    pub(super) struct Weights {
        mms: Vec<Vec<QMatMul>>,
        x: Tensor,
    }

    impl Weights {
        /// `copies(bytes)` says how many copies a format whose weights take `bytes` gets.
        pub(super) fn new(
            w: &[f32],
            x: &[f32],
            (m, k, n): (usize, usize, usize),
            copies: impl Fn(usize) -> usize,
        ) -> anyhow::Result<Self> {
            let dev = Device::Cpu;
            let wt = Tensor::from_slice(w, (n, k), &dev)?;
            let mms = DTYPES
                .iter()
                .map(|&d| {
                    let q = QTensor::quantize(&wt, d)?;
                    let bytes = q.data()?.into_owned();
                    // Deep copies: cloning a QMatMul would share its storage.
                    (0..copies(bytes.len()))
                        .map(|_| {
                            let q = qtensor_from_ggml(d, &bytes, vec![n, k], &dev)?;
                            QMatMul::from_qtensor(q)
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Self {
                mms,
                x: Tensor::from_slice(x, (m, k), &dev)?,
            })
        }

        /// Format `i`'s product with the input, using copy `turn` (modulo the copies).
        pub(super) fn forward(&self, i: usize, turn: usize, out: &mut [f32]) -> anyhow::Result<()> {
            let copies = &self.mms[i];
            let y = copies[turn % copies.len()].forward(&self.x)?;
            let y = y.flatten_all()?.to_vec1::<f32>()?;
            if y.len() != out.len() {
                anyhow::bail!("candle returned {} values, expected {}", y.len(), out.len());
            }
            out.copy_from_slice(&y);
            Ok(())
        }
    }

    pub(super) const THROUGHPUT_NAMES: [&str; 12] = [
        "quantize q8_0 (candle)",
        "quantize q4_0 (candle)",
        "quantize q4_1 (candle)",
        "quantize q4_k (candle)",
        "f32 -> f16 (candle)",
        "f32 -> bf16 (candle)",
        "dequantize q8_0 (candle)",
        "dequantize q4_0 (candle)",
        "dequantize q4_1 (candle)",
        "dequantize q4_k (candle)",
        "f16 -> f32 (candle)",
        "bf16 -> f32 (candle)",
    ];

    /// Buffers for one of candle's conversions.
    pub(super) struct Throughput<'a> {
        x: &'a [f32],
        y: Vec<f32>,
        q8: Vec<BlockQ8_0>,
        q40: Vec<BlockQ4_0>,
        q41: Vec<BlockQ4_1>,
        q4k: Vec<BlockQ4K>,
        h: Vec<half::f16>,
        b: Vec<half::bf16>,
    }

    impl<'a> Throughput<'a> {
        pub(super) fn new(x: &'a [f32]) -> Self {
            let n = x.len();
            let mut s = Self {
                x,
                y: vec![0.0; n],
                q8: vec![BlockQ8_0::zeros(); n / BlockQ8_0::BLCK_SIZE],
                q40: vec![BlockQ4_0::zeros(); n / BlockQ4_0::BLCK_SIZE],
                q41: vec![BlockQ4_1::zeros(); n / BlockQ4_1::BLCK_SIZE],
                q4k: vec![BlockQ4K::zeros(); n / BlockQ4K::BLCK_SIZE],
                h: vec![half::f16::ZERO; n],
                b: vec![half::bf16::ZERO; n],
            };
            BlockQ8_0::from_float(x, &mut s.q8);
            BlockQ4_0::from_float(x, &mut s.q40);
            BlockQ4_1::from_float(x, &mut s.q41);
            BlockQ4K::from_float(x, &mut s.q4k);
            half::f16::from_float(x, &mut s.h);
            half::bf16::from_float(x, &mut s.b);
            s
        }

        pub(super) fn run(&mut self, i: usize) -> anyhow::Result<()> {
            let x = self.x;
            match i {
                0 => BlockQ8_0::from_float(x, &mut self.q8),
                1 => BlockQ4_0::from_float(x, &mut self.q40),
                2 => BlockQ4_1::from_float(x, &mut self.q41),
                3 => BlockQ4K::from_float(x, &mut self.q4k),
                4 => half::f16::from_float(x, &mut self.h),
                5 => half::bf16::from_float(x, &mut self.b),
                6 => BlockQ8_0::to_float(&self.q8, &mut self.y),
                7 => BlockQ4_0::to_float(&self.q40, &mut self.y),
                8 => BlockQ4_1::to_float(&self.q41, &mut self.y),
                9 => BlockQ4K::to_float(&self.q4k, &mut self.y),
                10 => half::f16::to_float(&self.h, &mut self.y),
                11 => half::bf16::to_float(&self.b, &mut self.y),
                _ => None.context("no such candle conversion")?,
            }
            std::hint::black_box(&self.y);
            Ok(())
        }
    }
}
