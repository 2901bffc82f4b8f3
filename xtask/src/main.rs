//! Project tasks, run as `cargo xtask <task>`: the commands a person would otherwise type by hand.
//!
//! - `cargo xtask ci`: what CI runs (`.ci/run` without its package installs).
//! - `cargo xtask bench kernels [--candle] [--quick] [--cold] [--json FILE] [--threads 1,2]
//!   [--shapes MxKxN,...] [--no-throughput]`: kernel speed against the `gemm` crate's f32 matmul
//!   (and candle's quantized matmul with `--candle`), as ratios measured in one run; `--cold` reads
//!   every kernel's weights from memory rather than cache; `--conv [--quick] [--threads 2]`
//!   times the convolution API on UNet layers instead.
//! - `cargo xtask bench model terrain [--quick] [--threads N] [--profile]`: the terrain UNet's
//!   evaluation at every precision (batch 1 and 4) and a consistency sampling run, alternating
//!   with onnxruntime FP32 on the same inputs (`tools/reference/ort_bench.py`, run from a venv in
//!   `tools/reference/.venv` that this task makes with pip when missing; without it, our figures
//!   alone and the reason); `--profile` adds the per-layer profile at each precision.
//! - `cargo xtask bench schedule`: schedule generation and planning, and the error-budget solver
//!   with step and switch costs at 30, 100 and 500 steps (criterion). The calibration method
//!   itself is the library call `haagenti_adaptive::runtime::calibrate`, which
//!   `haagenti-adaptive run` drives.
//! - `cargo xtask fetch-model terrain`: downloads the terrain UNet's wheel with pip, checks the
//!   ONNX file's sha256 and stores it in the model folder (`HAAGENTI_MODELS`, by default
//!   `~/.cache/haagenti-adaptive/models`); does nothing when the file is already there.
//! - `cargo xtask fuzz list` and `cargo xtask fuzz TARGET --seconds N [--jobs J]`: the libFuzzer
//!   targets of `fuzz/` (needs the nightly toolchain and `cargo install cargo-fuzz`); `fuzz ci`
//!   runs every target briefly, or says it skipped them when nightly or cargo-fuzz is missing.

mod fetch_model;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage:
  cargo xtask ci
  cargo xtask bench kernels [--candle] [--quick] [--cold] [--json FILE] [--threads 1,2]
                            [--shapes MxKxN,...] [--no-throughput]
  cargo xtask bench kernels --conv [--quick] [--threads 2] [--json FILE]
  cargo xtask bench model terrain [--quick] [--threads N] [--profile]
  cargo xtask bench schedule [criterion args]
  cargo xtask fetch-model terrain
  cargo xtask fuzz list
  cargo xtask fuzz TARGET [--seconds N] [--jobs J]
  cargo xtask fuzz ci [--seconds N]";

/// The fuzz targets of `fuzz/Cargo.toml`, with what each feeds arbitrary bytes to.
const FUZZ_TARGETS: [(&str, &str); 7] = [
    (
        "safetensors_quantize",
        "a safetensors checkpoint through quantize_checkpoint, the GGUF read back",
    ),
    ("gguf_read", "GgufFile::parse and every tensor it declares"),
    (
        "schedule_json",
        "profile, noise-profile, schedule-config and error-table JSON; small tables solved",
    ),
    (
        "noise_spec",
        "the --noise SPEC parser and the sigmas it gives",
    ),
    ("gmm_spec", "the --model gmm:k=..,d=.. parser"),
    (
        "onnx_read",
        "OnnxModel::decode, every initializer, and the terrain UNet's graph walks",
    ),
    (
        "tensor_file",
        "denoise's tensor-file reader: .npy and safetensors (named or not)",
    ),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci(),
        ["bench", "kernels", rest @ ..] => bench_kernels(rest),
        ["bench", "model", rest @ ..] => bench_model(rest),
        ["bench", "schedule", rest @ ..] => {
            let mut cmd = cargo();
            cmd.args([
                "bench",
                "-p",
                "haagenti-adaptive-benches",
                "--bench",
                "schedule",
                "--",
            ]);
            cmd.args(rest);
            run(cmd)
        }
        ["fetch-model", name] => fetch_model::fetch(name),
        ["fuzz", "list"] => {
            for (name, what) in FUZZ_TARGETS {
                println!("{name:22} {what}");
            }
            Ok(())
        }
        ["fuzz", "ci", rest @ ..] => fuzz_ci(rest),
        ["fuzz", target, rest @ ..] => fuzz(target, rest),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown task {args:?}\n{USAGE}"),
    }
}

/// Runs `.ci/run` with its package installs skipped, so CI and a developer run the same steps.
fn ci() -> anyhow::Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join(".ci/run"));
    cmd.env("HAAGENTI_CI_SKIP_INSTALL", "1");
    run(cmd)
}

/// `cargo run --release` of the benches crate's binary `bin` (arguments to follow).
fn bench_bin(bin: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "haagenti-adaptive-benches",
        "--bin",
        bin,
    ]);
    cmd
}

fn bench_kernels(rest: &[&str]) -> anyhow::Result<()> {
    let mut cmd = bench_bin("kernels");
    let mut forwarded = Vec::new();
    for &arg in rest {
        if arg == "--candle" {
            cmd.args(["--features", "candle"]);
        } else {
            forwarded.push(arg);
        }
    }
    cmd.arg("--").args(forwarded);
    run(cmd)
}

fn bench_model(rest: &[&str]) -> anyhow::Result<()> {
    let mut cmd = bench_bin("model");
    cmd.arg("--").args(rest);
    match reference_python() {
        Ok(python) => {
            cmd.arg("--python").arg(python);
        }
        Err(e) => println!("onnxruntime: skipped ({e:#})"),
    }
    run(cmd)
}

/// The Python of `tools/reference/.venv` with onnxruntime and numpy, made with pip if missing.
fn reference_python() -> anyhow::Result<PathBuf> {
    let venv = workspace_root().join("tools/reference/.venv");
    let python = venv.join("bin/python");
    let works = |python: &Path| {
        Command::new(python)
            .args(["-c", "import onnxruntime, numpy"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&python) {
        return Ok(python);
    }
    eprintln!("making {} (pip install onnxruntime numpy)", venv.display());
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv);
    run(make).context("python3 -m venv failed: install python3 with venv")?;
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--quiet", "onnxruntime", "numpy"]);
    run(pip).context("pip could not install onnxruntime and numpy (no network?)")?;
    if !works(&python) {
        bail!("{} still cannot import onnxruntime", python.display());
    }
    Ok(python)
}

/// `--seconds N` and `--jobs J` of a fuzz task.
struct FuzzOptions {
    seconds: u64,
    jobs: u32,
}

fn fuzz_options(rest: &[&str], default_seconds: u64) -> anyhow::Result<FuzzOptions> {
    let mut options = FuzzOptions {
        seconds: default_seconds,
        jobs: 1,
    };
    let mut it = rest.iter();
    while let Some(&flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag {
            "--seconds" => {
                options.seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value:?}"))?;
            }
            "--jobs" => {
                options.jobs = value.parse().with_context(|| format!("--jobs {value:?}"))?;
            }
            _ => bail!("unknown fuzz option {flag:?}\n{USAGE}"),
        }
    }
    Ok(options)
}

/// Whether `cargo +nightly fuzz` can run: the fuzz targets need libFuzzer's instrumentation,
/// which only nightly has.
fn fuzz_available() -> bool {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "--version"]);
    cmd.current_dir(workspace_root().join("fuzz"));
    cmd.stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// Runs one target for `--seconds` (libFuzzer's `-max_total_time`), its corpus in
/// `fuzz/corpus/TARGET`; a crash leaves its input in `fuzz/artifacts/TARGET` and fails.
fn fuzz(target: &str, rest: &[&str]) -> anyhow::Result<()> {
    if !FUZZ_TARGETS.iter().any(|(name, _)| *name == target) {
        bail!("unknown fuzz target {target:?} (`cargo xtask fuzz list` names them)");
    }
    let options = fuzz_options(rest, 60)?;
    if !fuzz_available() {
        bail!(
            "fuzzing needs the nightly toolchain and cargo-fuzz: rustup toolchain install \
             nightly && cargo install cargo-fuzz"
        );
    }
    run_fuzz_target(target, &options)
}

fn run_fuzz_target(target: &str, options: &FuzzOptions) -> anyhow::Result<()> {
    // Plain `cargo`, not $CARGO: the stable cargo running xtask would ignore `+nightly`.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join("fuzz"));
    cmd.args(["+nightly", "fuzz", "run", "--release", target, "--"]);
    cmd.arg(format!("-max_total_time={}", options.seconds));
    if options.jobs > 1 {
        cmd.arg(format!("-fork={}", options.jobs));
    }
    run(cmd)
}

/// CI's fuzz step: every target for `--seconds` (default 10) when nightly and cargo-fuzz are
/// installed, otherwise a line saying so and success, since the project builds on stable.
fn fuzz_ci(rest: &[&str]) -> anyhow::Result<()> {
    let options = fuzz_options(rest, 10)?;
    if !fuzz_available() {
        println!("fuzz: skipped (no nightly)");
        return Ok(());
    }
    for (target, _) in FUZZ_TARGETS {
        run_fuzz_target(target, &options)?;
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
