//! `haagenti-adaptive denoise`: one evaluation of a pretrained network on a tensor file, so that
//! its output can be compared with another runtime's.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use haagenti_adaptive::Precision;
use haagenti_adaptive::kernels::io::check_output;
use haagenti_adaptive::nn::tensor_file::{self, Tensor};
use haagenti_adaptive::nn::{TERRAIN_SIZE, TerrainUnet, terrain_model_path};
use haagenti_adaptive::runtime::Denoiser;

/// Arguments of `denoise`.
#[derive(Args)]
pub(crate) struct DenoiseArgs {
    /// The network: `terrain` (fetch it with `cargo xtask fetch-model terrain`).
    #[arg(long, default_value = "terrain")]
    model: String,
    /// Noisy inputs, `[B, 1, 128, 128]` (or `[B, 128, 128]`), as `.npy` or safetensors.
    #[arg(long)]
    input: PathBuf,
    /// The tensor to read from a safetensors file with several.
    #[arg(long)]
    input_name: Option<String>,
    /// Noise level of every sample.
    #[arg(long)]
    sigma: f32,
    /// Terrain difficulty in [0, 1].
    #[arg(long, default_value_t = 1.0)]
    difficulty: f32,
    /// Precision of every Conv and Gemm (int4, int8, bf16, fp16, fp32).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Output file (`.npy` or safetensors, tensor `denoised`), `[B, 1, 128, 128]`.
    #[arg(long)]
    out: PathBuf,
    /// Print the time of each layer kind.
    #[arg(long)]
    profile: bool,
}

pub(crate) fn run(args: DenoiseArgs) -> anyhow::Result<()> {
    if args.model != "terrain" {
        bail!(
            "unknown model {:?}: the only network is terrain",
            args.model
        );
    }
    // Checked before the work: the output must not be the input (by identity, through links),
    // and must be a regular file or none.
    let target = check_output(&args.out, &[&args.input])
        .with_context(|| format!("--out {}", args.out.display()))?;
    crate::signals::remove_temporaries_on_termination()?;
    let path =
        terrain_model_path().context("set HAAGENTI_MODELS or HOME to find the model folder")?;
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask fetch-model terrain`",
            path.display()
        );
    }
    let input = tensor_file::read(&args.input, args.input_name.as_deref())?;
    let px = TERRAIN_SIZE * TERRAIN_SIZE;
    let batch = input.data.len() / px;
    let shape_ok = matches!(input.shape.as_slice(), [_, 1, h, w] | [_, h, w] if *h == TERRAIN_SIZE && *w == TERRAIN_SIZE);
    if !shape_ok || batch == 0 {
        bail!(
            "input shape {:?}: expected [B, 1, {TERRAIN_SIZE}, {TERRAIN_SIZE}]",
            input.shape
        );
    }
    let mut unet = TerrainUnet::from_file(&path)?;
    unet.load(args.precision)?;
    let sigma = vec![args.sigma; batch];
    let difficulty = vec![args.difficulty; batch];
    let start = Instant::now();
    let (out, layers) = if args.profile {
        unet.profile(&input.data, &sigma, &difficulty, args.precision)?
    } else {
        (
            unet.forward(&input.data, &sigma, &difficulty, args.precision)?,
            Vec::new(),
        )
    };
    let seconds = start.elapsed().as_secs_f64();
    tensor_file::write(
        &target,
        "denoised",
        &Tensor {
            shape: vec![batch, 1, TERRAIN_SIZE, TERRAIN_SIZE],
            data: out,
        },
    )?;
    for (name, p) in unet.promotions(args.precision) {
        let name = crate::printable::escape_controls(&name);
        eprintln!("{name} runs at {p} (a block cannot split its rows)");
    }
    if !layers.is_empty() {
        let total: f64 = layers.iter().map(|l| l.seconds).sum();
        let mut layers = layers;
        layers.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        println!(
            "{:<32} {:>6} {:>10} {:>7}",
            "layer", "calls", "seconds", "share"
        );
        for l in &layers {
            println!(
                "{:<32} {:>6} {:>10.4} {:>6.1}%",
                l.layer,
                l.calls,
                l.seconds,
                100.0 * l.seconds / total
            );
        }
    }
    println!(
        "denoised {batch} sample(s) at sigma {} with {} in {seconds:.3} s -> {}",
        args.sigma,
        args.precision,
        args.out.display()
    );
    Ok(())
}
