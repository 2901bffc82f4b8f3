//! Quantize a safetensors checkpoint into a GGUF v3 file, measuring the error of every tensor.
//!
//! [`quantize_checkpoint`] checks its paths first (the input must be a regular file of at most
//! [`MAX_CHECKPOINT_BYTES`]; the output is checked by [`io::check_output`](crate::io::check_output),
//! so it is never the input under another name, a directory or a device), reads the safetensors
//! header (at most [`MAX_HEADER_BYTES`]), checks that the file's length is the one the header
//! describes, and converts every tensor, in file order:
//!
//! - F32, F16 and BF16 tensors are quantized to the requested [`Format`]. A tensor of shape
//!   `[d0, ..., dn]` is treated as `[rows = d0 * ... * d(n-1), cols = dn]`; a scalar (rank 0) as
//!   one value of shape `[1]`; GGUF allows at most four dimensions, so a tensor of rank above four
//!   keeps its last three and folds the leading ones into the first.
//! - I8, I16, I32, I64 and F64 tensors (position ids, counters) are carried into the GGUF
//!   unchanged, as GGML's types of the same name ([`CarriedTensor`]).
//! - Tensors of dtypes GGUF has no type for (BOOL, U8, U16, U32, U64, the F8 and F4 variants,
//!   C64) are left out and listed with the reason ([`SkippedTensor`]), never a failure of the
//!   whole file.
//! - For a block format (Q8_0, Q4_0, Q4_1), rank-1 tensors (biases, norms: small and sensitive)
//!   and tensors whose row length is not a multiple of 32 are stored as F16 instead, and the
//!   report says why ([`Fallback`]).
//! - A tensor whose values the chosen format cannot hold falls back to the next format that can:
//!   a block format whose f16 scale would overflow (Q8_0 above about 8.3e6) to F16, F16 above
//!   65504 to F32, BF16 beyond its range (an f32 mask of -3.4e38) to F32. The report names the
//!   reason and the exact index and value that forced it ([`TensorReport::fallback_detail`]).
//! - NaN or infinite weights are an error naming the tensor and the index of the first one,
//!   found before anything is written.
//! - Limits, checked before any allocation: a tensor holds at most [`MAX_TENSOR_VALUES`] values
//!   (it is held in memory as f32, twice); a shape with a dimension or a value count above
//!   2^63 - 1, which gguf readers refuse, is refused before writing.
//!
//! The input is read with positioned reads, one tensor at a time, not memory-mapped: a file
//! truncated by another process while it is read gives [`CheckpointError::Truncated`] instead of
//! killing the process with SIGBUS. (Bytes rewritten in place by another process are read as
//! they are then; nothing can detect that short of locking, which other tools do not honour.)
//! Each float tensor is read twice, once to choose its format (the GGUF header, which comes first,
//! needs every format) and once to convert it.
//!
//! Each tensor is quantized in row chunks in parallel on the current rayon pool, reconstructed,
//! compared with the original ([`error_stats`]) and streamed to the output, so memory holds one
//! tensor at a time (as f32, twice) rather than the whole checkpoint. The output is written to a
//! temporary file beside the target and renamed at the end: on any error no output file is left
//! (see [`io::AtomicFile`](crate::io::AtomicFile) for signals).
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
use safetensors::tensor::{Dtype, Metadata};
use serde::Serialize;

use crate::gguf::{GgufBuilder, GgufError, MetadataValue, PlainType};
use crate::io::{self, IoError};
use crate::{ErrorStats, Format, KernelError, QuantizedTensor, error_stats};

/// About this many values are quantized per parallel work item.
const CHUNK_VALUES: usize = 1 << 18;

/// The value of `general.quantized_by` in files this module writes.
pub const QUANTIZED_BY: &str = "haagenti-adaptive";

/// The largest checkpoint read: 1 TiB, ten times the largest published checkpoints.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 40;

/// The largest safetensors header read: 100 MB, the `safetensors` crate's own limit.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The most values one float tensor may hold: 2^32 (16 GiB as f32, held twice while it is
/// converted); the largest embedding tables of published models hold about 2^31.
pub const MAX_TENSOR_VALUES: u64 = 1 << 32;

/// Errors of checkpoint quantization.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The input could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The input file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A path was refused before any work: the input is not a regular file or too large, or the
    /// output is the input, a directory, a device or `-`.
    #[error(transparent)]
    Path(#[from] IoError),
    /// The input is not a valid safetensors file.
    #[error("{} is not a valid safetensors file", path.display())]
    Safetensors {
        /// The input file.
        path: PathBuf,
        /// What the safetensors parser found.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The header is larger than [`MAX_HEADER_BYTES`].
    #[error("{}: the safetensors header is {len} bytes, more than the limit of {limit}", path.display())]
    HeaderTooLarge {
        /// The input file.
        path: PathBuf,
        /// The header length the file declares.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not as long as its header says.
    #[error(
        "{} is {actual} bytes but its header describes {expected}: truncated, or not a safetensors file",
        path.display()
    )]
    LengthMismatch {
        /// The input file.
        path: PathBuf,
        /// Bytes the header describes (8 + header + data).
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// The file became shorter while it was read.
    #[error("{} became shorter while it was read (truncated by another process?)", path.display())]
    Truncated {
        /// The input file.
        path: PathBuf,
    },
    /// A tensor holds more values than [`MAX_TENSOR_VALUES`].
    #[error("tensor `{name}` holds {values} values, more than the limit of {limit}")]
    TensorTooLarge {
        /// The tensor concerned.
        name: String,
        /// Its value count.
        values: u64,
        /// The limit.
        limit: u64,
    },
    /// A tensor's dtype is not F32, F16 or BF16 (no longer returned: such tensors are carried or
    /// skipped; kept so that matches on it still compile).
    #[error("tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 tensors can be quantized")]
    UnsupportedDtype {
        /// The tensor concerned.
        name: String,
        /// Its dtype, as safetensors spells it.
        dtype: String,
    },
    /// The kernels rejected a tensor (non-finite values).
    #[error("tensor `{name}`")]
    Tensor {
        /// The tensor concerned.
        name: String,
        /// What the kernels found (indices are row-major in the whole tensor).
        #[source]
        source: KernelError,
    },
    /// Writing the GGUF file failed, or a shape cannot be stored in one.
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
    /// A value is too large for a block's f16 scale: kept as F16 (or F32 beyond f16's range).
    OutOfBlockRange,
    /// A value is beyond bf16's range: kept as F32.
    OutOfBf16Range,
}

/// What happened to one float tensor.
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
    /// For a fallback forced by a value: which value, where, and what could not hold it.
    pub fallback_detail: Option<String>,
    /// Bytes in the input file.
    pub bytes_before: u64,
    /// Bytes in the output file (without alignment padding).
    pub bytes: u64,
    /// Error of the stored tensor against the input values. `sqnr_db` is +inf (JSON `null`) when
    /// the tensor is reproduced exactly.
    #[serde(flatten)]
    pub stats: ErrorStats,
}

/// A tensor of integers or f64, written into the GGUF unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CarriedTensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape in the input file.
    pub shape: Vec<usize>,
    /// Its dtype in the input file (`"I64"`, ...).
    pub dtype: String,
    /// The GGML type it is stored as (`"i64"`, ...).
    pub ggml_type: &'static str,
    /// Bytes, the same in both files.
    pub bytes: u64,
}

/// A tensor left out of the GGUF because GGUF has no type for its dtype.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedTensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape in the input file.
    pub shape: Vec<usize>,
    /// Its dtype in the input file (`"BOOL"`, `"U8"`, ...).
    pub dtype: String,
    /// Why it is left out.
    pub reason: String,
}

/// What happened to a whole checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointReport {
    /// The input file.
    pub input: PathBuf,
    /// The output file (links resolved).
    pub output: PathBuf,
    /// The format requested.
    pub format: Format,
    /// One entry a float tensor, in file order.
    pub tensors: Vec<TensorReport>,
    /// Integer and f64 tensors written unchanged, in file order.
    pub carried: Vec<CarriedTensor>,
    /// Tensors left out, in file order.
    pub skipped: Vec<SkippedTensor>,
    /// Float tensor bytes in the input.
    pub total_bytes_before: u64,
    /// Float tensor bytes in the output (without header and padding).
    pub total_bytes: u64,
    /// Size of the output file.
    pub file_bytes: u64,
    /// Values in all float tensors.
    pub total_values: u64,
    /// Tensors stored in the requested format.
    pub converted: usize,
    /// Float tensors stored in another format (see [`TensorReport::fallback`]).
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
    /// Tensors to write in all.
    pub count: usize,
    /// Input bytes processed so far.
    pub bytes_done: u64,
    /// Input tensor bytes to write in all.
    pub bytes_total: u64,
}

/// How a tensor goes into the GGUF.
enum Kind {
    Float {
        dtype: Dtype,
        format: Format,
        fallback: Option<Fallback>,
        detail: Option<String>,
    },
    Plain(PlainType),
}

struct Plan {
    name: String,
    source_shape: Vec<usize>,
    gguf_shape: Vec<usize>,
    dtype: Dtype,
    /// Offset of the bytes in the file, and their length.
    offset: u64,
    len: u64,
    kind: Kind,
}

/// The GGUF shape of a source shape: rank 0 becomes `[1]`, rank above four folds its leading
/// dimensions into the first (saturating: an overflow is refused later by the builder).
fn gguf_shape(shape: &[usize]) -> Vec<usize> {
    match shape.len() {
        0 => vec![1],
        1..=4 => shape.to_vec(),
        n => {
            let lead = shape[..n - 3]
                .iter()
                .fold(1usize, |a, &d| a.saturating_mul(d));
            let mut out = vec![lead];
            out.extend_from_slice(&shape[n - 3..]);
            out
        }
    }
}

/// The GGML type that carries a non-float dtype unchanged, if GGUF has one.
fn plain_type(dtype: Dtype) -> Option<PlainType> {
    match dtype {
        Dtype::I8 => Some(PlainType::I8),
        Dtype::I16 => Some(PlainType::I16),
        Dtype::I32 => Some(PlainType::I32),
        Dtype::I64 => Some(PlainType::I64),
        Dtype::F64 => Some(PlainType::F64),
        _ => None,
    }
}

/// The first value `format` cannot hold, as `(index, value)`: a value that rounds to infinity in
/// f16 or bf16, or for a block format the largest value of the first block whose f16 scale (or,
/// for Q4_1, minimum) would. The values are finite.
fn first_unfit(format: Format, values: &[f32]) -> Option<(usize, f32)> {
    let at = |i: usize| (i, values[i]);
    match format {
        Format::F32 => None,
        Format::F16 => values
            .par_iter()
            .position_first(|&v| half::f16::from_f32(v).is_infinite())
            .map(at),
        Format::BF16 => values
            .par_iter()
            .position_first(|&v| half::bf16::from_f32(v).is_infinite())
            .map(at),
        Format::Q8_0 | Format::Q4_0 | Format::Q4_1 => {
            let overflows = |x: f32| !half::f16::from_f32(x).is_finite();
            values
                .par_chunks(format.block_len())
                .enumerate()
                .find_first(|(_, block)| {
                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    match format {
                        Format::Q8_0 => overflows(amax / 127.0),
                        Format::Q4_0 => overflows(amax / 8.0),
                        _ => {
                            let min = block.iter().copied().fold(f32::MAX, f32::min);
                            let max = block.iter().copied().fold(-f32::MAX, f32::max);
                            overflows((max - min) / 15.0) || overflows(min)
                        }
                    }
                })
                .map(|(b, block)| {
                    let (j, _) = block
                        .iter()
                        .enumerate()
                        .fold((0, 0.0f32), |(j, a), (k, v)| {
                            if v.abs() > a.abs() {
                                (k, v.abs())
                            } else {
                                (j, a)
                            }
                        });
                    at(b * format.block_len() + j)
                })
        }
    }
}

/// The format a float tensor is stored in: the first of `target` and its fallbacks that holds
/// every value, with the reason and the value that forced the fallback.
fn choose_format(
    source: Dtype,
    mut target: Format,
    mut fallback: Option<Fallback>,
    values: &[f32],
) -> (Format, Option<Fallback>, Option<String>) {
    let mut detail: Option<String> = None;
    loop {
        // A source in the target's own 16-bit type always fits.
        let exact = matches!(
            (source, target),
            (Dtype::F16, Format::F16) | (Dtype::BF16, Format::BF16) | (_, Format::F32)
        );
        let unfit = if exact {
            None
        } else {
            first_unfit(target, values)
        };
        let Some((index, value)) = unfit else {
            return (target, fallback, detail);
        };
        let (next, reason) = match target {
            Format::Q8_0 | Format::Q4_0 | Format::Q4_1 => (Format::F16, Fallback::OutOfBlockRange),
            Format::F16 => (Format::F32, Fallback::OutOfF16Range),
            _ => (Format::F32, Fallback::OutOfBf16Range),
        };
        let note = format!("value {value:e} at index {index} is out of range for {target}");
        detail = Some(match detail {
            None => note,
            Some(d) => format!("{d}; {note}"),
        });
        // The first reason a value forced is the one reported, unless a structural one came
        // before it (a vector kept as f16 that f16 cannot hold is reported as out of f16 range).
        fallback = match fallback {
            Some(Fallback::Vector | Fallback::RowLength) | None => Some(reason),
            kept => kept,
        };
        target = next;
    }
}

/// Reads `len` bytes at `offset`; a short read means the file was truncated meanwhile.
fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, CheckpointError> {
    let mut buf = vec![0u8; len as usize];
    let result = {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt as _;
            file.read_exact_at(&mut buf, offset)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read as _, Seek as _, SeekFrom};
            let mut f = file;
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_exact(&mut buf))
        }
    };
    match result {
        Ok(()) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(CheckpointError::Truncated {
                path: path.to_path_buf(),
            })
        }
        Err(source) => Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads and validates the header; returns it and the offset of the data section.
fn read_header(
    file: &File,
    path: &Path,
    file_len: u64,
) -> Result<(Metadata, u64), CheckpointError> {
    let st_err = |source| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        source,
    };
    if file_len < 8 {
        return Err(st_err(safetensors::SafeTensorError::HeaderTooSmall));
    }
    let n = u64::from_le_bytes(
        read_at(file, path, 0, 8)?
            .try_into()
            .expect("read_at returns the length asked for"),
    );
    if n > MAX_HEADER_BYTES {
        return Err(CheckpointError::HeaderTooLarge {
            path: path.to_path_buf(),
            len: n,
            limit: MAX_HEADER_BYTES,
        });
    }
    if 8 + n > file_len {
        return Err(st_err(safetensors::SafeTensorError::InvalidHeaderLength));
    }
    let header = read_at(file, path, 8, n)?;
    let text = std::str::from_utf8(&header)
        .map_err(|e| st_err(safetensors::SafeTensorError::InvalidHeader(e)))?;
    // `Metadata`'s deserializer validates the offsets (contiguous, sizes matching the shapes).
    let metadata: Metadata = serde_json::from_str(text).map_err(|e| {
        st_err(safetensors::SafeTensorError::InvalidHeaderDeserialization(
            e,
        ))
    })?;
    let expected = (8 + n).saturating_add(metadata.data_len() as u64);
    if expected != file_len {
        return Err(CheckpointError::LengthMismatch {
            path: path.to_path_buf(),
            expected,
            actual: file_len,
        });
    }
    Ok((metadata, 8 + n))
}

/// Decodes little-endian F32/F16/BF16 bytes into f32, after checking every value is finite.
fn finite_values(plan_name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    let values = to_f32(dtype, bytes);
    if let Some(index) = values.par_iter().position_first(|v| !v.is_finite()) {
        return Err(CheckpointError::Tensor {
            name: plan_name.to_owned(),
            source: KernelError::NonFinite {
                index,
                value: values[index],
            },
        });
    }
    Ok(values)
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

/// Quantizes every float tensor of the safetensors file `input` to `format` and writes a GGUF v3
/// file at `output` (replacing a regular file there). `progress` is called after each tensor. See
/// the [module docs](self) for the rules.
///
/// The file carries `general.alignment` (32), `general.name` (the input's file stem),
/// `general.quantized_by` (`"haagenti-adaptive"`), `general.quantization_version` (2, as ggml's
/// block formats) and `haagenti.format` (the requested format's name).
///
/// # Errors
///
/// [`CheckpointError::Path`] for an input or output refused before any work;
/// [`CheckpointError::Io`], [`CheckpointError::Safetensors`], [`CheckpointError::HeaderTooLarge`],
/// [`CheckpointError::LengthMismatch`] and [`CheckpointError::Truncated`] for an unreadable,
/// corrupt or truncated input; [`CheckpointError::TensorTooLarge`]; [`CheckpointError::Tensor`]
/// for non-finite values; [`CheckpointError::Gguf`] for a shape GGUF readers refuse or when the
/// output cannot be written. In every error case no output file is left behind.
pub fn quantize_checkpoint(
    input: &Path,
    output: &Path,
    format: Format,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<CheckpointReport, CheckpointError> {
    // Every path check comes before any work.
    let file_len = io::check_input(input, MAX_CHECKPOINT_BYTES)?.len();
    let target = io::check_output(output, &[input])?;
    let file = File::open(input).map_err(|source| CheckpointError::Io {
        path: input.to_path_buf(),
        source,
    })?;
    let (metadata, data_start) = read_header(&file, input, file_len)?;

    // Plan every tensor before writing anything, so that bad values fail fast.
    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .expect("offset_keys names the header's tensors");
        let dtype = info.dtype;
        let source_shape = info.shape.clone();
        let (start, end) = info.data_offsets;
        let offset = data_start + start as u64;
        let len = (end - start) as u64;
        let gguf_shape = gguf_shape(&source_shape);
        let values = source_shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        let kind = if matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            if values > MAX_TENSOR_VALUES {
                return Err(CheckpointError::TensorTooLarge {
                    name,
                    values,
                    limit: MAX_TENSOR_VALUES,
                });
            }
            let cols = *gguf_shape.last().expect("gguf_shape is never empty");
            let (target, fallback) = if !format.is_block() {
                (format, None)
            } else if source_shape.len() <= 1 {
                (Format::F16, Some(Fallback::Vector))
            } else if !cols.is_multiple_of(format.block_len()) {
                (Format::F16, Some(Fallback::RowLength))
            } else {
                (format, None)
            };
            let bytes = read_at(&file, input, offset, len)?;
            let values = finite_values(&name, dtype, &bytes)?;
            let (format, fallback, detail) = choose_format(dtype, target, fallback, &values);
            Kind::Float {
                dtype,
                format,
                fallback,
                detail,
            }
        } else if let Some(plain) = plain_type(dtype) {
            Kind::Plain(plain)
        } else {
            skipped.push(SkippedTensor {
                name,
                shape: source_shape,
                dtype: dtype.to_string(),
                reason: format!("gguf has no type for {dtype}"),
            });
            continue;
        };
        plans.push(Plan {
            name,
            source_shape,
            gguf_shape,
            dtype,
            offset,
            len,
            kind,
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
        match plan.kind {
            Kind::Float { format, .. } => {
                builder.add_tensor(&plan.name, &plan.gguf_shape, format)?;
            }
            Kind::Plain(ty) => {
                builder.add_plain_tensor(&plan.name, &plan.gguf_shape, ty)?;
            }
        }
    }
    let declared: Vec<u64> = builder.tensors().iter().map(|d| d.byte_len).collect();
    let mut writer = builder.create(target.path())?;

    let bytes_total: u64 = plans.iter().map(|p| p.len).sum();
    let mut bytes_done = 0u64;
    let mut reports = Vec::with_capacity(plans.len());
    let mut carried = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let bytes = read_at(&file, input, plan.offset, plan.len)?;
        match &plan.kind {
            Kind::Plain(ty) => {
                writer.write_tensor_data(&bytes)?;
                carried.push(CarriedTensor {
                    name: plan.name.clone(),
                    shape: plan.source_shape.clone(),
                    dtype: plan.dtype.to_string(),
                    ggml_type: ty.name(),
                    bytes: plan.len,
                });
            }
            Kind::Float {
                dtype,
                format,
                fallback,
                detail,
            } => {
                let values = finite_values(&plan.name, *dtype, &bytes)?;
                drop(bytes);
                let cols = *plan.gguf_shape.last().expect("gguf_shape is never empty");
                let rows = values.len().checked_div(cols).unwrap_or(0);
                let tensor_err = |source| CheckpointError::Tensor {
                    name: plan.name.clone(),
                    source,
                };
                let (chunks, recon) =
                    quantize_chunks(*format, rows, cols, &values).map_err(tensor_err)?;
                for chunk in &chunks {
                    writer.write_tensor_data(chunk.as_bytes())?;
                }
                let stats = error_stats(&values, &recon).map_err(tensor_err)?;
                reports.push(TensorReport {
                    name: plan.name.clone(),
                    shape: plan.source_shape.clone(),
                    dtype: plan.dtype.to_string(),
                    format: *format,
                    fallback: *fallback,
                    fallback_detail: detail.clone(),
                    bytes_before: plan.len,
                    bytes: declared[i],
                    stats,
                });
            }
        }
        bytes_done += plan.len;
        progress(&Progress {
            name: &plan.name,
            done: i + 1,
            count: plans.len(),
            bytes_done,
            bytes_total,
        });
    }
    writer.finish()?;
    let file_bytes = std::fs::metadata(target.path()).map_or(0, |m| m.len());

    let fallbacks = reports.iter().filter(|r| r.fallback.is_some()).count();
    Ok(CheckpointReport {
        input: input.to_path_buf(),
        output: target.path().to_path_buf(),
        format,
        total_bytes_before: reports.iter().map(|r| r.bytes_before).sum(),
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
        carried,
        skipped,
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
