//! Tensor files for exchanging inputs and outputs with other runtimes: safetensors (one f32 or
//! f16 tensor, or the one named) and NumPy `.npy` (little-endian `<f4`, C order).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use haagenti_adaptive_kernels::io::{AtomicFile, OutputPath};
use safetensors::{Dtype, SafeTensors};

use crate::{NnError, Result};

/// A dense f32 tensor and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The shape, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The largest tensor file [`read`] reads: 16 GiB, four billion f32 values, far more than any
/// image batch given to `denoise`.
pub const MAX_TENSOR_FILE_BYTES: u64 = 16 << 30;

/// The largest `.npy` header read: NumPy's own reader refuses headers above 10 000 bytes by
/// default (`max_header_size`), and a `'<f4'` array's header is under 128.
pub const MAX_NPY_HEADER_BYTES: usize = 10_000;

/// The two tensor file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// NumPy `.npy`, little-endian `'<f4'`, C order.
    Npy,
    /// safetensors, F32 or F16.
    Safetensors,
}

impl Format {
    /// The format a path names: `.npy` by its extension (any case), anything else safetensors.
    pub fn of(path: &Path) -> Self {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        {
            Self::Npy
        } else {
            Self::Safetensors
        }
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> NnError {
    NnError::TensorFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads a tensor: `.npy` by extension, else safetensors (the tensor `name`, or the only one).
///
/// # Errors
///
/// [`NnError::TensorFile`] for an unreadable file, one that is not a regular file (a FIFO, a
/// device, a directory) or is larger than [`MAX_TENSOR_FILE_BYTES`], and as [`decode`].
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::io::check_output;
/// use haagenti_adaptive_nn::tensor_file::{Tensor, read, write};
///
/// let dir = std::env::temp_dir().join(format!("tensor-file-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let t = Tensor { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
/// for name in ["x.npy", "x.safetensors"] {
///     let path = dir.join(name);
///     let target = check_output(&path, &[]).unwrap();
///     write(&target, "x", &t)?;
///     assert_eq!(read(&path, None)?, t);
/// }
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), haagenti_adaptive_nn::NnError>(())
/// ```
pub fn read(path: &Path, name: Option<&str>) -> Result<Tensor> {
    let bytes = haagenti_adaptive_kernels::io::read_capped(path, MAX_TENSOR_FILE_BYTES)
        .map_err(|e| file_error(path, e.to_string()))?;
    decode_as(path, &bytes, Format::of(path), name)
}

/// Decodes a tensor file's bytes (for safetensors, the tensor `name`, or the only one).
///
/// # Errors
///
/// [`NnError::TensorFile`] (with the path `<bytes>`) for bytes that are not the format, a dtype
/// other than f32 (f16 too in safetensors), a `.npy` header above [`MAX_NPY_HEADER_BYTES`], a
/// shape whose element count overflows or disagrees with the data, or a safetensors file with
/// several tensors and no `name`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_nn::tensor_file::{Format, decode};
///
/// let mut npy = b"\x93NUMPY\x01\x00".to_vec();
/// let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
/// npy.extend((header.len() as u16).to_le_bytes());
/// npy.extend(header.as_bytes());
/// npy.extend([1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()));
/// assert_eq!(decode(&npy, Format::Npy, None)?.data, [1.5, -2.0]);
/// assert!(decode(&npy[..npy.len() - 1], Format::Npy, None).is_err());
/// # Ok::<(), haagenti_adaptive_nn::NnError>(())
/// ```
pub fn decode(bytes: &[u8], format: Format, name: Option<&str>) -> Result<Tensor> {
    decode_as(Path::new("<bytes>"), bytes, format, name)
}

fn decode_as(path: &Path, bytes: &[u8], format: Format, name: Option<&str>) -> Result<Tensor> {
    match format {
        Format::Npy => read_npy(bytes).map_err(|m| file_error(path, m)),
        Format::Safetensors => read_safetensors(bytes, name).map_err(|m| file_error(path, m)),
    }
}

fn read_safetensors(bytes: &[u8], name: Option<&str>) -> std::result::Result<Tensor, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let names = st.names();
    let chosen = match name {
        Some(n) => n.to_owned(),
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(format!(
                "has {} tensors; name one of {names:?}",
                names.len()
            ));
        }
    };
    let view = st.tensor(&chosen).map_err(|e| format!("{chosen}: {e}"))?;
    let data = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => view
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("{chosen} is {other:?}, not F32 or F16")),
    };
    Ok(Tensor {
        shape: view.shape().to_vec(),
        data,
    })
}

fn read_npy(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy version {v}")),
    };
    if header_len > MAX_NPY_HEADER_BYTES {
        return Err(format!(
            ".npy header of {header_len} bytes, more than the limit of {MAX_NPY_HEADER_BYTES}"
        ));
    }
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr").unwrap_or_default();
    if !descr.starts_with("'<f4'") {
        let shown: String = descr.chars().take(8).collect();
        return Err(format!("dtype {shown:?}: only '<f4' is read"));
    }
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order arrays are not read".into());
    }
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("shape ({shape_text})"))?;
    // Checked: the shape is the file's, and a wrapped product could match the data's length.
    let byte_len = shape
        .iter()
        .try_fold(4usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let body = &bytes[start + header_len..];
    if body.len() != byte_len {
        return Err(format!("{} data bytes for shape {shape:?}", body.len()));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor { shape, data })
}

/// Writes `tensor` as `.npy` (by extension) or as safetensors holding one f32 tensor `name`.
///
/// The target was checked by [`check_output`](haagenti_adaptive_kernels::io::check_output)
/// (a regular file or none, not one of the inputs: check it before the work that makes the
/// tensor), and the file is written beside it and renamed into place, so a failed write leaves
/// what was there.
///
/// # Errors
///
/// [`NnError::TensorFile`] when the shape and data disagree or the file cannot be written.
pub fn write(target: &OutputPath, name: &str, tensor: &Tensor) -> Result<()> {
    let path = target.path();
    let len = tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d));
    if len != Some(tensor.data.len()) {
        return Err(file_error(
            path,
            format!("shape {:?} for {} values", tensor.shape, tensor.data.len()),
        ));
    }
    let raw: Vec<u8> = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = if Format::of(path) == Format::Npy {
        let dims: Vec<String> = tensor.shape.iter().map(ToString::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        // Pad so that the data starts at a multiple of 64 bytes, ending the header with '\n'.
        let pad = (64 - (10 + header.len() + 1) % 64) % 64;
        header.push_str(&" ".repeat(pad));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&raw);
        out
    } else {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, tensor.shape.clone(), &raw)
            .map_err(|e| file_error(path, e.to_string()))?;
        safetensors::serialize([(name, view)], None::<HashMap<String, String>>)
            .map_err(|e| file_error(path, e.to_string()))?
    };
    let io = |e: haagenti_adaptive_kernels::io::IoError| file_error(path, e.to_string());
    let mut file = AtomicFile::create(target).map_err(io)?;
    file.file()
        .write_all(&bytes)
        .map_err(|e| file_error(path, e.to_string()))?;
    file.commit().map_err(io)
}
