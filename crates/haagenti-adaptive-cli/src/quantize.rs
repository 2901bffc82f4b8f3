//! `haagenti-adaptive quantize`: a safetensors checkpoint in, a GGUF v3 file and a per-tensor error
//! report out.

use std::path::PathBuf;

use anyhow::Context as _;
use haagenti_adaptive::kernels::Format;
use haagenti_adaptive::kernels::checkpoint::{
    CheckpointReport, Fallback, MAX_CHECKPOINT_BYTES, MAX_HEADER_BYTES, MAX_TENSOR_VALUES,
    Progress, quantize_checkpoint,
};
use haagenti_adaptive::kernels::gguf::GGUF_LLAMA_CPP_MAX_NAME_LEN;
use indicatif::{ProgressBar, ProgressStyle};

/// Inputs at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// Names longer than this are shortened in the table (never in the JSON report).
const TABLE_NAME_MAX: usize = 60;

/// Arguments of `haagenti-adaptive quantize`.
#[derive(clap::Args)]
#[command(after_help = format!(
    "Limits: the checkpoint is a regular file of at most {} GiB with a header of at most {} MB; \
     a float tensor holds at most {MAX_TENSOR_VALUES} values. I8/I16/I32/I64/F64 tensors are \
     carried unchanged; dtypes GGUF has no type for (BOOL, U8, U16, U32, U64, F8...) are skipped \
     and listed. The output must be new or a regular file that is not the input; it is written \
     beside the target and renamed into place, and removed on error, Ctrl-C, SIGTERM or SIGHUP.",
    MAX_CHECKPOINT_BYTES >> 30,
    MAX_HEADER_BYTES / 1_000_000
))]
pub(crate) struct QuantizeArgs {
    /// The safetensors checkpoint to read (F32, F16 and BF16 tensors are quantized).
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
    crate::signals::remove_temporaries_on_termination()?;
    // The library checks both paths (identity, file types, sizes) before any work.
    let size = std::fs::metadata(&args.input).map_or(0, |m| m.len());
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
        bar.set_message(progress_message(p));
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

/// The progress bar's message: the tensor counts and the name just written, escaped and
/// shortened as in the table (the bar draws on the terminal).
fn progress_message(p: &Progress<'_>) -> String {
    format!(
        "{}/{} {}",
        p.done,
        p.count,
        table_name(p.name, TABLE_NAME_MAX)
    )
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
        Some(Fallback::OutOfBlockRange) => " (> scale max)",
        Some(Fallback::OutOfBf16Range) => " (> bf16 max)",
    }
}

/// A name as a table shows it: control characters escaped (so that a name cannot move the
/// cursor or recolour the terminal) and, when longer than `max` characters, its middle replaced
/// by `...` (layer names differ at both ends).
fn table_name(name: &str, max: usize) -> String {
    let escaped = crate::printable::escape_controls(name);
    let n = escaped.chars().count();
    if n <= max {
        return escaped;
    }
    let keep = max.saturating_sub(3);
    let head: String = escaped.chars().take(keep / 2).collect();
    let tail: String = escaped.chars().skip(n - (keep - keep / 2)).collect();
    format!("{head}...{tail}")
}

/// The report as a markdown table, then the totals.
fn table(report: &CheckpointReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let names: Vec<String> = report
        .tensors
        .iter()
        .map(|t| table_name(&t.name, TABLE_NAME_MAX))
        .collect();
    let name_w = names
        .iter()
        .map(|n| n.chars().count())
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
    for (t, name) in report.tensors.iter().zip(&names) {
        let shape = format!("{:?}", t.shape);
        let fmt = format!("{}{}", t.format, fallback_note(t.fallback));
        let _ = writeln!(
            s,
            "| {:name_w$} | {:>18} | {:>5} | {:>18} | {:>12} | {:>12} | {:>8} | {:>10.3e} |",
            name,
            shape,
            t.dtype,
            fmt,
            t.bytes_before,
            t.bytes,
            sqnr(t.stats.sqnr_db),
            t.stats.max_abs
        );
    }
    for t in &report.tensors {
        if let Some(detail) = &t.fallback_detail {
            let _ = writeln!(s, "note: {}: {detail}", table_name(&t.name, TABLE_NAME_MAX));
        }
    }
    for t in &report.carried {
        let _ = writeln!(
            s,
            "carried unchanged: {} {:?} {} as {}",
            table_name(&t.name, TABLE_NAME_MAX),
            t.shape,
            t.dtype,
            t.ggml_type
        );
    }
    for t in &report.skipped {
        let _ = writeln!(
            s,
            "skipped: {} {:?} {}: {}",
            table_name(&t.name, TABLE_NAME_MAX),
            t.shape,
            t.dtype,
            t.reason
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
        table_name(&report.output.display().to_string(), usize::MAX),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::{Progress, progress_message, table_name};

    #[test]
    fn progress_messages_escape_and_shorten_names() {
        let name = format!("evil\u{1b}[2J\n{}.weight", "x".repeat(200));
        let p = Progress {
            name: &name,
            done: 3,
            count: 7,
            bytes_done: 10,
            bytes_total: 20,
        };
        let msg = progress_message(&p);
        assert!(msg.starts_with("3/7 evil\\u{1b}[2J\\nxxx"), "{msg}");
        assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg}");
        assert!(
            msg.ends_with(".weight") && msg.chars().count() <= 4 + 60,
            "{msg}"
        );
    }

    #[test]
    fn table_names_escape_control_characters_and_shorten_long_names() {
        assert_eq!(table_name("blk.0.weight", 60), "blk.0.weight");
        assert_eq!(table_name("a\u{1b}[31mb\n", 60), "a\\u{1b}[31mb\\n");
        let long = format!("{}{}", "x".repeat(65_530), "end.w");
        let short = table_name(&long, 60);
        assert_eq!(short.chars().count(), 60);
        assert!(short.starts_with("xxx") && short.ends_with("end.w") && short.contains("..."));
        // Multi-byte characters are cut at character boundaries.
        assert_eq!(table_name(&"é".repeat(100), 10).chars().count(), 10);
    }
}
