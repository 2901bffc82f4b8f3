//! Quantize a safetensors checkpoint into a GGUF v3 file, measuring the error of every tensor.
//!
//! [`quantize_checkpoint`] memory-maps the input, parses its header with the `safetensors` crate,
//! and converts every tensor, in file order, to the requested [`Format`]:
//!
//! - Source dtypes F32, F16 and BF16 are read; any other dtype is an
//!   [`CheckpointError::UnsupportedDtype`] naming the tensor, reported before anything is written.
//! - A tensor of shape `[d0, ..., dn]` is treated as `[rows = d0 * ... * d(n-1), cols = dn]`; a
//!   scalar (rank 0) as one value of shape `[1]`; GGUF allows at most four dimensions, so a tensor of
//!   rank above four keeps its last three and folds the leading ones into the first.
//! - For a block format (Q8_0, Q4_0, Q4_1), rank-1 tensors (biases, norms: small and sensitive)
//!   and tensors whose row length is not a multiple of 32 are stored as F16 instead, and the
//!   report says why ([`Fallback`]).
//! - A tensor stored as F16 (requested or as a fallback) whose values exceed f16's range
//!   (`|x| > 65504`) is stored as F32 instead ([`Fallback::OutOfF16Range`]).
//! - NaN or infinite weights are an error naming the tensor and the index of the first one.
//!
//! Each tensor is quantized in row chunks in parallel on the current rayon pool, reconstructed,
//! compared with the original ([`error_stats`]) and streamed to the output, so memory holds one
//! tensor at a time (as f32, twice) rather than the whole checkpoint. The output is written to a
//! temporary file beside the target and renamed at the end: on any error no output file is left.
//!
//! # Examples
//!
//! ```
//! use std::collections::HashMap;
//! use haagenti_adaptive_kernels::Format;
//! use haagenti_adaptive_kernels::checkpoint::{quantize_checkpoint, Fallback};
//! use haagenti_adaptive_kernels::gguf::GgufFile;
//! use safetensors::tensor::{Dtype, TensorView};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let input = dir.path().join("model.safetensors");
//! let weight: Vec<u8> = (0..4 * 64)
//!     .flat_map(|i| ((i as f32) * 0.01).sin().to_le_bytes())
//!     .collect();
//! let bias: Vec<u8> = (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let tensors = HashMap::from([
//!     ("layer.weight", TensorView::new(Dtype::F32, vec![4, 64], &weight)?),
//!     ("layer.bias", TensorView::new(Dtype::F32, vec![4], &bias)?),
//! ]);
//! safetensors::serialize_to_file(tensors, None, &input)?;
//!
//! let output = dir.path().join("model.gguf");
//! let report = quantize_checkpoint(&input, &output, Format::Q4_0, |_| {})?;
//! let weight = report.tensors.iter().find(|t| t.name == "layer.weight").unwrap();
//! assert_eq!(weight.format, Format::Q4_0);
//! assert_eq!(weight.bytes, 4 * 2 * 18);
//! assert!(weight.stats.sqnr_db > 15.0);
//! let bias = report.tensors.iter().find(|t| t.name == "layer.bias").unwrap();
//! assert_eq!((bias.format, bias.fallback), (Format::F16, Some(Fallback::Vector)));
//!
//! let file = GgufFile::open(&output)?;
//! assert_eq!(file.tensor_infos().len(), 2);
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde::Serialize;

use crate::gguf::{GgufBuilder, GgufError, MetadataValue};
use crate::{ErrorStats, Format, KernelError, QuantizedTensor, error_stats};

/// About this many values are quantized per parallel work item.
const CHUNK_VALUES: usize = 1 << 18;

/// The value of `general.quantized_by` in files this module writes.
pub const QUANTIZED_BY: &str = "haagenti-adaptive";

/// Errors of checkpoint quantization.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The input could not be opened or mapped.
    #[error("cannot read {}", path.display())]
    Io {
        /// The input file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not a valid safetensors file.
    #[error("{} is not a valid safetensors file", path.display())]
    Safetensors {
        /// The input file.
        path: PathBuf,
        /// What the safetensors parser found.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A tensor's dtype is not F32, F16 or BF16.
    #[error("tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 tensors can be quantized")]
    UnsupportedDtype {
        /// The tensor concerned.
        name: String,
        /// Its dtype, as safetensors spells it.
        dtype: String,
    },
    /// The kernels rejected a tensor (non-finite values, a scale out of f16's range).
    #[error("tensor `{name}`")]
    Tensor {
        /// The tensor concerned.
        name: String,
        /// What the kernels found (indices are row-major in the whole tensor).
        #[source]
        source: KernelError,
    },
    /// Writing the GGUF file failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Why a tensor is not stored in the requested format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// A rank-0 or rank-1 tensor (bias, norm weight): kept as F16 under a block format.
    Vector,
    /// The row length is not a multiple of 32: kept as F16 under a block format.
    RowLength,
    /// A value exceeds f16's range: kept as F32.
    OutOfF16Range,
}

/// What happened to one tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorReport {
    /// The tensor's name.
    pub name: String,
    /// Its shape in the input file.
    pub shape: Vec<usize>,
    /// Its dtype in the input file (`"F32"`, `"F16"`, `"BF16"`).
    pub dtype: String,
    /// The format it is stored in.
    pub format: Format,
    /// Why `format` differs from the requested one, if it does.
    pub fallback: Option<Fallback>,
    /// Bytes in the input file.
    pub bytes_before: u64,
    /// Bytes in the output file (without alignment padding).
    pub bytes: u64,
    /// Error of the stored tensor against the input values. `sqnr_db` is +inf (JSON `null`) when
    /// the tensor is reproduced exactly.
    #[serde(flatten)]
    pub stats: ErrorStats,
}

/// What happened to a whole checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointReport {
    /// The input file.
    pub input: PathBuf,
    /// The output file.
    pub output: PathBuf,
    /// The format requested.
    pub format: Format,
    /// One entry a tensor, in file order.
    pub tensors: Vec<TensorReport>,
    /// Tensor bytes in the input.
    pub total_bytes_before: u64,
    /// Tensor bytes in the output (without header and padding).
    pub total_bytes: u64,
    /// Size of the output file.
    pub file_bytes: u64,
    /// Values in all tensors.
    pub total_values: u64,
    /// Tensors stored in the requested format.
    pub converted: usize,
    /// Tensors stored in another format (see [`TensorReport::fallback`]).
    pub fallbacks: usize,
    /// The largest absolute error of any value.
    pub max_abs: f64,
    /// The lowest SQNR of any tensor, in dB (+inf, JSON `null`, when every tensor is exact).
    pub min_sqnr_db: f64,
}

/// Progress of [`quantize_checkpoint`], passed to its callback after each tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// The tensor just written.
    pub name: &'a str,
    /// Tensors written so far.
    pub done: usize,
    /// Tensors in all.
    pub count: usize,
    /// Input bytes processed so far.
    pub bytes_done: u64,
    /// Input tensor bytes in all.
    pub bytes_total: u64,
}

struct Plan<'a> {
    name: String,
    source_shape: Vec<usize>,
    gguf_shape: Vec<usize>,
    dtype: Dtype,
    data: &'a [u8],
    format: Format,
    fallback: Option<Fallback>,
}

/// The GGUF shape of a source shape: rank 0 becomes `[1]`, rank above four folds its leading
/// dimensions into the first.
fn gguf_shape(shape: &[usize]) -> Vec<usize> {
    match shape.len() {
        0 => vec![1],
        1..=4 => shape.to_vec(),
        n => {
            let lead: usize = shape[..n - 3].iter().product();
            let mut out = vec![lead];
            out.extend_from_slice(&shape[n - 3..]);
            out
        }
    }
}

/// Decodes little-endian F32/F16/BF16 bytes into f32, in parallel.
fn to_f32(dtype: Dtype, data: &[u8]) -> Vec<f32> {
    let width = match dtype {
        Dtype::F32 => 4,
        _ => 2,
    };
    let mut out = vec![0f32; data.len() / width];
    out.par_chunks_mut(CHUNK_VALUES)
        .zip(data.par_chunks(CHUNK_VALUES * width))
        .for_each(|(out, bytes)| match dtype {
            Dtype::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Dtype::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            _ => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
        });
    out
}

/// Moves a row-major index reported for a chunk to the whole tensor.
fn offset_error(err: KernelError, start: usize) -> KernelError {
    match err {
        KernelError::NonFinite { index, value } => KernelError::NonFinite {
            index: index + start,
            value,
        },
        KernelError::OutOfRange {
            format,
            index,
            value,
        } => KernelError::OutOfRange {
            format,
            index: index + start,
            value,
        },
        other => other,
    }
}

/// Quantizes `values` (`rows x cols`) in parallel row chunks and reconstructs them; returns the
/// chunks in order and the reconstruction.
fn quantize_chunks(
    format: Format,
    rows: usize,
    cols: usize,
    values: &[f32],
) -> Result<(Vec<QuantizedTensor>, Vec<f32>), KernelError> {
    if values.is_empty() {
        let q = QuantizedTensor::quantize(format, rows, cols, values)?;
        return Ok((vec![q], Vec::new()));
    }
    let chunk_rows = (CHUNK_VALUES / cols).max(1);
    let chunk_len = chunk_rows * cols;
    let chunks = values
        .par_chunks(chunk_len)
        .enumerate()
        .map(|(i, c)| {
            QuantizedTensor::quantize(format, c.len() / cols, cols, c)
                .map_err(|e| offset_error(e, i * chunk_len))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut recon = vec![0f32; values.len()];
    recon
        .par_chunks_mut(chunk_len)
        .zip(chunks.par_iter())
        .try_for_each(|(out, q)| q.dequantize_into(out))?;
    Ok((chunks, recon))
}

/// Quantizes every tensor of the safetensors file `input` to `format` and writes a GGUF v3 file
/// at `output` (replacing any file there). `progress` is called after each tensor. See the
/// [module docs](self) for the rules.
///
/// The file carries `general.alignment` (32), `general.name` (the input's file stem),
/// `general.quantized_by` (`"haagenti-adaptive"`), `general.quantization_version` (2, as ggml's
/// block formats) and `haagenti.format` (the requested format's name).
///
/// # Errors
///
/// [`CheckpointError::Io`] and [`CheckpointError::Safetensors`] for an unreadable or corrupt input;
/// [`CheckpointError::UnsupportedDtype`]; [`CheckpointError::Tensor`] for non-finite values;
/// [`CheckpointError::Gguf`] when the output cannot be written. In every error case no output
/// file is left behind.
pub fn quantize_checkpoint(
    input: &Path,
    output: &Path,
    format: Format,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<CheckpointReport, CheckpointError> {
    let io_err = |source| CheckpointError::Io {
        path: input.to_path_buf(),
        source,
    };
    let file = File::open(input).map_err(io_err)?;
    // SAFETY: the map is read-only and lives only during this call. Another process truncating
    // or rewriting the file meanwhile would change the bytes under us; as for every memory-mapped
    // reader, we rely on checkpoints not being modified while they are quantized.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
    let st_err = |source| CheckpointError::Safetensors {
        path: input.to_path_buf(),
        source,
    };
    let (_, metadata) = SafeTensors::read_metadata(&mmap).map_err(st_err)?;
    let tensors = SafeTensors::deserialize(&mmap).map_err(st_err)?;

    // Plan every tensor before writing anything, so that a bad dtype fails fast.
    let mut plans = Vec::new();
    for name in metadata.offset_keys() {
        let view = tensors.tensor(&name).map_err(st_err)?;
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(CheckpointError::UnsupportedDtype {
                name,
                dtype: dtype.to_string(),
            });
        }
        let source_shape = view.shape().to_vec();
        let gguf_shape = gguf_shape(&source_shape);
        let cols = *gguf_shape.last().expect("gguf_shape is never empty");
        let (mut target, mut fallback) = if !format.is_block() {
            (format, None)
        } else if source_shape.len() <= 1 {
            (Format::F16, Some(Fallback::Vector))
        } else if !cols.is_multiple_of(format.block_len()) {
            (Format::F16, Some(Fallback::RowLength))
        } else {
            (format, None)
        };
        if target == Format::F16 && dtype != Dtype::F16 {
            let max = to_f32(dtype, view.data())
                .into_par_iter()
                .filter(|x| x.is_finite())
                .map(f32::abs)
                .reduce(|| 0.0, f32::max);
            if max > half::f16::MAX.to_f32() {
                (target, fallback) = (Format::F32, Some(Fallback::OutOfF16Range));
            }
        }
        plans.push(Plan {
            name,
            source_shape,
            gguf_shape,
            dtype,
            data: view.data(),
            format: target,
            fallback,
        });
    }

    let mut builder = GgufBuilder::new();
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    builder
        .metadata("general.name", MetadataValue::String(stem))
        .metadata(
            "general.quantized_by",
            MetadataValue::String(QUANTIZED_BY.to_owned()),
        )
        .metadata("general.quantization_version", MetadataValue::U32(2))
        .metadata(
            "haagenti.format",
            MetadataValue::String(format.name().to_owned()),
        );
    for plan in &plans {
        builder.add_tensor(&plan.name, &plan.gguf_shape, plan.format)?;
    }
    let declared: Vec<u64> = builder.tensors().iter().map(|d| d.byte_len).collect();
    let mut writer = builder.create(output)?;

    let bytes_total: u64 = plans.iter().map(|p| p.data.len() as u64).sum();
    let mut bytes_done = 0u64;
    let mut reports = Vec::with_capacity(plans.len());
    for (i, plan) in plans.iter().enumerate() {
        let values = to_f32(plan.dtype, plan.data);
        let cols = *plan.gguf_shape.last().expect("gguf_shape is never empty");
        let rows = values.len().checked_div(cols).unwrap_or(0);
        let tensor_err = |source| CheckpointError::Tensor {
            name: plan.name.clone(),
            source,
        };
        let (chunks, recon) =
            quantize_chunks(plan.format, rows, cols, &values).map_err(tensor_err)?;
        for chunk in &chunks {
            writer.write_tensor_data(chunk.as_bytes())?;
        }
        let stats = error_stats(&values, &recon).map_err(tensor_err)?;
        bytes_done += plan.data.len() as u64;
        reports.push(TensorReport {
            name: plan.name.clone(),
            shape: plan.source_shape.clone(),
            dtype: plan.dtype.to_string(),
            format: plan.format,
            fallback: plan.fallback,
            bytes_before: plan.data.len() as u64,
            bytes: declared[i],
            stats,
        });
        progress(&Progress {
            name: &plan.name,
            done: i + 1,
            count: plans.len(),
            bytes_done,
            bytes_total,
        });
    }
    writer.finish()?;
    let file_bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);

    let fallbacks = reports.iter().filter(|r| r.fallback.is_some()).count();
    Ok(CheckpointReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        format,
        total_bytes_before: bytes_total,
        total_bytes: reports.iter().map(|r| r.bytes).sum(),
        file_bytes,
        total_values: reports
            .iter()
            .map(|r| r.shape.iter().product::<usize>() as u64)
            .sum(),
        converted: reports.len() - fallbacks,
        fallbacks,
        max_abs: reports.iter().map(|r| r.stats.max_abs).fold(0.0, f64::max),
        min_sqnr_db: reports
            .iter()
            .map(|r| r.stats.sqnr_db)
            .fold(f64::INFINITY, f64::min),
        tensors: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fold_to_at_most_four_dimensions() {
        assert_eq!(gguf_shape(&[]), vec![1]);
        assert_eq!(gguf_shape(&[7]), vec![7]);
        assert_eq!(gguf_shape(&[2, 3, 4, 32]), vec![2, 3, 4, 32]);
        assert_eq!(gguf_shape(&[2, 5, 3, 4, 32]), vec![10, 3, 4, 32]);
    }

    #[test]
    fn decodes_little_endian_floats() {
        let f32_bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(to_f32(Dtype::F32, &f32_bytes), vec![1.5, -2.0]);
        let f16_bytes: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(to_f32(Dtype::F16, &f16_bytes), vec![0.5, -3.0]);
        let bf16_bytes: Vec<u8> = [half::bf16::from_f32(0.25), half::bf16::from_f32(96.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(to_f32(Dtype::BF16, &bf16_bytes), vec![0.25, 96.0]);
    }

    #[test]
    fn chunk_errors_report_whole_tensor_indices() {
        let cols = 32;
        let rows = 2 * CHUNK_VALUES / cols;
        let mut values = vec![0.5f32; rows * cols];
        let bad = CHUNK_VALUES + 70;
        values[bad] = f32::NAN;
        let err = quantize_chunks(Format::Q8_0, rows, cols, &values).unwrap_err();
        assert!(
            matches!(err, KernelError::NonFinite { index, .. } if index == bad),
            "{err:?}"
        );
    }
}
