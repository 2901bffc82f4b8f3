//! Project tasks, run as `cargo xtask <task>`: the commands a person would otherwise type by hand.
//!
//! - `cargo xtask ci`: what CI runs (`.ci/run` without its package installs).
//! - `cargo xtask bench kernels [--candle] [--quick] [--cold] [--json FILE] [--threads 1,2]
//!   [--shapes MxKxN,...] [--no-throughput]`: kernel speed against the `gemm` crate's f32 matmul
//!   (and candle's quantized matmul with `--candle`), as ratios measured in one run; `--cold` reads
//!   every kernel's weights from memory rather than cache.
//! - `cargo xtask bench schedule`: schedule generation and planning, and the error-budget solver
//!   with step and switch costs at 30, 100 and 500 steps (criterion). The calibration method
//!   itself is the library call `haagenti_adaptive::runtime::calibrate`, which
//!   `haagenti-adaptive run` drives.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage:
  cargo xtask ci
  cargo xtask bench kernels [--candle] [--quick] [--cold] [--json FILE] [--threads 1,2]
                            [--shapes MxKxN,...] [--no-throughput]
  cargo xtask bench schedule [criterion args]";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci(),
        ["bench", "kernels", rest @ ..] => bench_kernels(rest),
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

fn bench_kernels(rest: &[&str]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "haagenti-adaptive-benches",
        "--bin",
        "kernels",
    ]);
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
