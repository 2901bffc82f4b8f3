//! Tensor files for exchanging inputs and outputs with other runtimes: safetensors (one f32 or
//! f16 tensor, or the one named) and NumPy `.npy` (little-endian `<f4`, C order).

use std::collections::HashMap;
use std::path::Path;

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

fn file_error(path: &Path, message: impl Into<String>) -> NnError {
    NnError::TensorFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Reads a tensor: `.npy` by extension, else safetensors (the tensor `name`, or the only one).
///
/// # Errors
///
/// [`NnError::TensorFile`] for an unreadable file, a dtype other than f32 (f16 too in
/// safetensors), or a safetensors file with several tensors and no `name`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_nn::tensor_file::{Tensor, read, write};
///
/// let dir = std::env::temp_dir().join(format!("tensor-file-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let t = Tensor { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
/// for name in ["x.npy", "x.safetensors"] {
///     let path = dir.join(name);
///     write(&path, "x", &t)?;
///     assert_eq!(read(&path, None)?, t);
/// }
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), haagenti_adaptive_nn::NnError>(())
/// ```
pub fn read(path: &Path, name: Option<&str>) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
    if is_npy(path) {
        return read_npy(path, &bytes);
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| file_error(path, e.to_string()))?;
    let names = st.names();
    let chosen = match name {
        Some(n) => n.to_owned(),
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(file_error(
                path,
                format!("has {} tensors; name one of {names:?}", names.len()),
            ));
        }
    };
    let view = st
        .tensor(&chosen)
        .map_err(|e| file_error(path, format!("{chosen}: {e}")))?;
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
        other => {
            return Err(file_error(
                path,
                format!("{chosen} is {other:?}, not F32 or F16"),
            ));
        }
    };
    Ok(Tensor {
        shape: view.shape().to_vec(),
        data,
    })
}

fn read_npy(path: &Path, bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(file_error(path, "not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(file_error(path, format!(".npy version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| file_error(path, "truncated .npy header"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr").unwrap_or_default();
    if !descr.starts_with("'<f4'") {
        return Err(file_error(
            path,
            format!("dtype {descr:.8}: only '<f4' is read"),
        ));
    }
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(file_error(path, "Fortran-order arrays are not read"));
    }
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| file_error(path, "no shape in the .npy header"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| file_error(path, format!("shape ({shape_text})")))?;
    let len: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    if body.len() != 4 * len {
        return Err(file_error(
            path,
            format!("{} data bytes for shape {shape:?}", body.len()),
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor { shape, data })
}

/// Writes `tensor` as `.npy` (by extension) or as safetensors holding one f32 tensor `name`.
///
/// # Errors
///
/// [`NnError::TensorFile`] when the shape and data disagree or the file cannot be written.
pub fn write(path: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    let len: usize = tensor.shape.iter().product();
    if len != tensor.data.len() {
        return Err(file_error(
            path,
            format!("shape {:?} for {} values", tensor.shape, tensor.data.len()),
        ));
    }
    let raw: Vec<u8> = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = if is_npy(path) {
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
    std::fs::write(path, bytes).map_err(|e| file_error(path, e.to_string()))
}
