//! `haagenti-adaptive quantize`: a safetensors checkpoint in, a GGUF v3 file and a per-tensor error
//! report out.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use haagenti_adaptive::kernels::Format;
use haagenti_adaptive::kernels::checkpoint::{
    CheckpointReport, Fallback, Progress, quantize_checkpoint,
};
use haagenti_adaptive::kernels::gguf::GGUF_LLAMA_CPP_MAX_NAME_LEN;
use indicatif::{ProgressBar, ProgressStyle};

/// Inputs at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// Arguments of `haagenti-adaptive quantize`.
#[derive(clap::Args)]
pub(crate) struct QuantizeArgs {
    /// The safetensors checkpoint to read (F32, F16 or BF16 tensors).
    input: PathBuf,
    /// The format to store weights in. Under a block format (q*), rank-1 tensors and rows whose
    /// length is not a multiple of 32 are stored as f16 and listed.
    #[arg(long = "type", value_name = "TYPE", value_parser = ["q4_0", "q4_1", "q8_0", "f16", "bf16"])]
    ty: String,
    /// The GGUF file to write [default: INPUT with the extension .gguf].
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let format: Format = args.ty.parse()?;
    let output = args
        .out
        .clone()
        .unwrap_or_else(|| args.input.with_extension("gguf"));
    if output == args.input {
        anyhow::bail!(
            "the output {} would replace the input; pass --out",
            output.display()
        );
    }
    let size = std::fs::metadata(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?
        .len();
    let bar = if size >= PROGRESS_MIN_BYTES {
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .context("progress bar template")?,
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = quantize_checkpoint(&args.input, &output, format, |p: &Progress<'_>| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("{}/{} {}", p.done, p.count, p.name));
    });
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    let long_names = report
        .tensors
        .iter()
        .filter(|t| t.name.len() > GGUF_LLAMA_CPP_MAX_NAME_LEN)
        .count();
    if long_names > 0 {
        eprintln!(
            "note: {long_names} tensor names are longer than {GGUF_LLAMA_CPP_MAX_NAME_LEN} bytes; \
             candle and gguf-py read them, llama.cpp's loader does not"
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn sqnr(db: f64) -> String {
    if db.is_infinite() && db > 0.0 {
        "exact".to_owned()
    } else {
        format!("{db:.2}")
    }
}

fn fallback_note(f: Option<Fallback>) -> &'static str {
    match f {
        None => "",
        Some(Fallback::Vector) => " (rank 1)",
        Some(Fallback::RowLength) => " (row % 32)",
        Some(Fallback::OutOfF16Range) => " (> f16 max)",
    }
}

/// The report as a markdown table, then the totals.
fn table(report: &CheckpointReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let name_w = report
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "| {:name_w$} | {:>18} | {:>5} | {:>18} | {:>12} | {:>12} | {:>8} | {:>10} |",
        "tensor", "shape", "dtype", "format", "bytes before", "bytes after", "SQNR dB", "max abs"
    );
    let _ = writeln!(
        s,
        "|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(name_w + 2),
        "-".repeat(20),
        "-".repeat(7),
        "-".repeat(20),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(10),
        "-".repeat(12)
    );
    for t in &report.tensors {
        let shape = format!("{:?}", t.shape);
        let fmt = format!("{}{}", t.format, fallback_note(t.fallback));
        let _ = writeln!(
            s,
            "| {:name_w$} | {:>18} | {:>5} | {:>18} | {:>12} | {:>12} | {:>8} | {:>10.3e} |",
            t.name,
            shape,
            t.dtype,
            fmt,
            t.bytes_before,
            t.bytes,
            sqnr(t.stats.sqnr_db),
            t.stats.max_abs
        );
    }
    let ratio = if report.total_bytes == 0 {
        0.0
    } else {
        report.total_bytes_before as f64 / report.total_bytes as f64
    };
    let _ = writeln!(
        s,
        "\n{} tensors ({} as {}, {} kept as f16/f32), {} values: {} -> {} ({ratio:.2}x smaller), \
         file {}; lowest SQNR {} dB, largest abs error {:.3e}\nwrote {}",
        report.tensors.len(),
        report.converted,
        report.format,
        report.fallbacks,
        report.total_values,
        mib(report.total_bytes_before),
        mib(report.total_bytes),
        mib(report.file_bytes),
        sqnr(report.min_sqnr_db),
        report.max_abs,
        display(&report.output),
    );
    s
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
