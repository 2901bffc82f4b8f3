//! `cargo xtask bench model terrain`: the terrain UNet's speed at every precision against
//! onnxruntime FP32 on the same inputs, alternating in one process pair.
//!
//! ```text
//! cargo run --release -p haagenti-adaptive-benches --bin model -- terrain \
//!     [--quick] [--threads N] [--profile] [--python PATH]
//! ```
//!
//! Method: onnxruntime runs in `tools/reference/ort_bench.py`, a long-lived subprocess (its CPU
//! provider, graph optimisations on, intra-op threads = `--threads`) that answers `run N` with
//! the wall time of N evaluations; our side runs in a rayon pool of as many threads. For each
//! batch (1 and 4; 1 with `--quick`) and precision, after one warm-up call each, the two take
//! turns for several rounds and the figure is each side's median. The input is Gaussian noise at
//! sigma 2 (difficulty 0.5), written as `.npy` for the script, so both evaluate the same tensor;
//! our FP32 output is checked against onnxruntime's. Then a whole consistency sampling run per
//! uniform precision (4 steps, Karras sigmas from 80 to 0.002) against onnxruntime doing the same
//! number of evaluations; each run's PSNR is against our FP32 run from the same noise.
//! `--profile` prints the per-layer profile at each precision (batch 1).
//!
//! Without the model file (`cargo xtask fetch-model terrain`) the bench says so and stops;
//! without a Python that imports onnxruntime it prints our figures alone, with the reason.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use haagenti_adaptive_core::Precision;
use haagenti_adaptive_kernels::io::check_output;
use haagenti_adaptive_nn::tensor_file::{self, Tensor};
use haagenti_adaptive_nn::{TERRAIN_SIZE, TerrainUnet, terrain_model_path};
use haagenti_adaptive_runtime::{
    ConsistencyNoise, Denoiser, Executor, RunPlan, Sampler, gaussian_noise, karras_sigmas,
    psnr_from_mse,
};

/// The noise level and difficulty of the single-evaluation input.
const SIGMA: f32 = 2.0;
const DIFFICULTY: f32 = 0.5;
/// Steps of the consistency sampling run.
const SAMPLING_STEPS: usize = 4;

struct Options {
    quick: bool,
    threads: usize,
    profile: bool,
    python: Option<PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        quick: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        profile: false,
        python: None,
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("terrain") => {}
        other => bail!(
            "usage: model terrain [--quick] [--threads N] [--profile] [--python PATH] (got {other:?})"
        ),
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--profile" => o.profile = true,
            "--threads" => {
                let v = it.next().context("--threads needs a value")?;
                o.threads = v.parse().with_context(|| format!("--threads {v:?}"))?;
            }
            "--python" => o.python = Some(it.next().context("--python needs a path")?.into()),
            _ => bail!("unknown option {a:?}"),
        }
    }
    Ok(o)
}

/// The onnxruntime subprocess.
struct Ort {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    version: String,
}

impl Ort {
    fn start(python: &Path, model: &Path, threads: usize) -> anyhow::Result<Ort> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/reference/ort_bench.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(model)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", python.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut ort = Ort {
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        let line = ort.read_line()?;
        ort.version = line
            .strip_prefix("ready ")
            .with_context(|| format!("ort_bench.py said {line:?}"))?
            .to_owned();
        Ok(ort)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("ort_bench.py exited");
        }
        Ok(line.trim().to_owned())
    }

    /// Sends `command`, returns what follows `ok`.
    fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self.read_line()?;
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("ort_bench.py: {command}: {line}"),
        }
    }

    /// Seconds of `n` evaluations of the loaded input.
    fn run(&mut self, n: usize) -> anyhow::Result<f64> {
        let s = self.ask(&format!("run {n}"))?;
        s.parse().with_context(|| format!("run answered {s:?}"))
    }
}

impl Drop for Ort {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (s / a.len().max(1) as f64).sqrt()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = parse(&args)?;
    let Some(model) = terrain_model_path().filter(|p| p.exists()) else {
        println!(
            "bench model terrain: skipped (no model file: run `cargo xtask fetch-model terrain`)"
        );
        return Ok(());
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build_global()
        .context("rayon pool")?;
    let mut unet = TerrainUnet::from_file(&model)?;
    let mut ort = match &o.python {
        None => {
            println!("onnxruntime: skipped (no Python given: the xtask passes its venv's)");
            None
        }
        Some(py) => match Ort::start(py, &model, o.threads) {
            Ok(ort) => Some(ort),
            Err(e) => {
                println!("onnxruntime: skipped ({e:#})");
                None
            }
        },
    };
    let (eval_rounds, sample_rounds) = if o.quick { (3, 1) } else { (7, 3) };
    let batches: &[usize] = if o.quick { &[1] } else { &[1, 4] };
    println!(
        "terrain UNet, {} threads, kernels {}, onnxruntime {}; medians of {eval_rounds} alternating rounds after a warm-up",
        o.threads,
        haagenti_adaptive_kernels::kernel_path(),
        ort.as_ref().map_or("-", |o| o.version.as_str()),
    );
    let dir = tempfile_dir()?;
    let px = TERRAIN_SIZE * TERRAIN_SIZE;
    println!("\none evaluation (sigma {SIGMA}, difficulty {DIFFICULTY}):");
    println!(
        "{:>5} {:>9} {:>10} {:>10} {:>9} {:>11}",
        "batch", "precision", "ours s", "ort fp32 s", "ours/ort", "rms vs fp32"
    );
    for &batch in batches {
        let x = gaussian_noise(batch, px, SIGMA as f64, 7 + batch as u64)?;
        let sigma = vec![SIGMA; batch];
        let difficulty = vec![DIFFICULTY; batch];
        if let Some(ort) = ort.as_mut() {
            let path = dir.join(format!("noisy{batch}.npy"));
            let t = Tensor {
                shape: vec![batch, 1, TERRAIN_SIZE, TERRAIN_SIZE],
                data: x.clone(),
            };
            tensor_file::write(&check_output(&path, &[])?, "noisy", &t)?;
            ort.ask(&format!("load {} {SIGMA} {DIFFICULTY}", path.display()))?;
        }
        let mut fp32_out = Vec::new();
        for p in Precision::ALL.into_iter().rev() {
            unet.load(p)?;
            let out = unet.forward(&x, &sigma, &difficulty, p)?;
            if let Some(ort) = ort.as_mut() {
                ort.run(1)?;
            }
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..eval_rounds {
                let t = Instant::now();
                std::hint::black_box(unet.forward(&x, &sigma, &difficulty, p)?);
                ours.push(t.elapsed().as_secs_f64());
                if let Some(ort) = ort.as_mut() {
                    theirs.push(ort.run(1)?);
                }
            }
            unet.release(p);
            if p == Precision::FP32 {
                fp32_out = out.clone();
                if let Some(ort) = ort.as_mut() {
                    let path = dir.join("ort_out.npy");
                    ort.ask(&format!("save {}", path.display()))?;
                    let theirs = tensor_file::read(&path, None)?;
                    println!(
                        "      (our FP32 against onnxruntime's output: max abs {:.1e})",
                        max_abs(&out, &theirs.data)
                    );
                }
            }
            let (m, t) = (median(ours), median(theirs));
            println!(
                "{batch:>5} {:>9} {m:>10.3} {t:>10.3} {:>9.2} {:>11.2e}",
                p.to_string(),
                m / t,
                rms(&out, &fp32_out)
            );
        }
    }
    sampling(
        &mut unet,
        ort.as_mut(),
        &dir,
        if o.quick { 1 } else { 4 },
        sample_rounds,
    )?;
    if o.profile {
        profile(&mut unet, px)?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A consistency sampling run per uniform precision against onnxruntime's time for as many
/// evaluations.
fn sampling(
    unet: &mut TerrainUnet,
    mut ort: Option<&mut Ort>,
    dir: &Path,
    batch: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let edm = unet.edm();
    let sigmas = karras_sigmas(SAMPLING_STEPS, edm.sigma_min as f64, 80.0, 7.0)?;
    let exec = Executor::new(Sampler::Consistency, sigmas.clone())?.with_noise(ConsistencyNoise {
        seed: 11,
        sigma_min: edm.sigma_min as f64,
    });
    let dim = unet.dim();
    let x0 = gaussian_noise(batch, dim, 80.0, 5)?;
    let evals: usize = sigmas[1..]
        .iter()
        .map(|&s| Sampler::Consistency.evals(s))
        .sum();
    if let Some(ort) = ort.as_deref_mut() {
        let path = dir.join("x0.npy");
        let t = Tensor {
            shape: vec![batch, 1, TERRAIN_SIZE, TERRAIN_SIZE],
            data: x0.clone(),
        };
        tensor_file::write(&check_output(&path, &[])?, "noisy", &t)?;
        ort.ask(&format!("load {} 80 {}", path.display(), unet.difficulty()))?;
    }
    println!(
        "\nconsistency sampling, {SAMPLING_STEPS} steps ({evals} evaluations), batch {batch}, medians of {rounds} alternating rounds:"
    );
    println!(
        "{:>9} {:>10} {:>10} {:>9} {:>12}",
        "precision", "ours s", "ort fp32 s", "ours/ort", "PSNR vs fp32"
    );
    let mut fp32 = Vec::new();
    for p in Precision::ALL.into_iter().rev() {
        let plan = RunPlan::uniform(p.to_string(), p, SAMPLING_STEPS);
        // Warm-up: one run of ours (loading the weights each time, as a run does), one of ort.
        let first = exec.run(unet, &plan, &x0, batch, |_| {})?;
        if let Some(ort) = ort.as_deref_mut() {
            ort.run(evals)?;
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(exec.run(unet, &plan, &x0, batch, |_| {})?);
            ours.push(t.elapsed().as_secs_f64());
            if let Some(ort) = ort.as_deref_mut() {
                theirs.push(ort.run(evals)?);
            }
        }
        if p == Precision::FP32 {
            fp32 = first.samples.clone();
        }
        let mse = rms(&first.samples, &fp32).powi(2);
        let (m, t) = (median(ours), median(theirs));
        // Height maps in [-1, 1]: a peak-to-peak of 2.
        let psnr = psnr_from_mse(mse, 2.0);
        println!(
            "{:>9} {m:>10.3} {t:>10.3} {:>9.2} {:>12.1}",
            p.to_string(),
            m / t,
            psnr
        );
    }
    Ok(())
}

/// The per-layer profile at each precision, batch 1: the ten costliest layer kinds.
fn profile(unet: &mut TerrainUnet, px: usize) -> anyhow::Result<()> {
    let x = gaussian_noise(1, px, SIGMA as f64, 3)?;
    for p in Precision::ALL.into_iter().rev() {
        unet.load(p)?;
        unet.forward(&x, &[SIGMA], &[DIFFICULTY], p)?;
        let (_, mut rows) = unet.profile(&x, &[SIGMA], &[DIFFICULTY], p)?;
        unet.release(p);
        let total: f64 = rows.iter().map(|r| r.seconds).sum();
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        println!("\nprofile {p}, batch 1: {total:.3} s over the timed layers");
        for r in rows.iter().take(10) {
            println!(
                "  {:32} {:>3} calls {:>8.4} s {:>5.1}%",
                r.layer,
                r.calls,
                r.seconds,
                100.0 * r.seconds / total
            );
        }
    }
    Ok(())
}

/// A fresh folder for the tensors handed to the script.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("haagenti-bench-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
