//! `haagenti-adaptive`: plan precision schedules, quantize checkpoints, probe the hardware, and run
//! a denoising loop at the scheduled precisions.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod denoise;
mod plan;
mod png;
mod printable;
mod probe;
mod quantize;
mod report;
mod results;
mod run;
mod signals;

/// Adaptive precision for diffusion-model inference.
#[derive(Parser)]
#[command(name = "haagenti-adaptive", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a precision schedule and print it as a table, or as JSON.
    Plan(plan::PlanArgs),
    /// Quantize a safetensors checkpoint into a GGUF file and report the error of every tensor.
    Quantize(quantize::QuantizeArgs),
    /// Report this machine's CPU features and GPU adapters, and the capabilities they give.
    Probe(probe::ProbeArgs),
    /// Evaluate a pretrained network once on a tensor file and write its output.
    Denoise(denoise::DenoiseArgs),
    /// Run a denoising loop at several schedules and measure speed, memory and quality.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Run(args) => run::run(args),
        Command::Denoise(args) => denoise::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes, as a shell user expects. Tensor names and
            // paths in it come from files: escaped, a newline in a name cannot split the line
            // and an escape sequence cannot reach the terminal.
            eprintln!("error: {}", printable::escape_controls(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
