//! GGUF v3 files: a streaming writer that never leaves a partial file behind, and a reader.
//!
//! The layout follows llama.cpp's `docs/gguf.md`: the magic `GGUF`, version 3, the tensor and
//! metadata counts (u64), the metadata key-value pairs, the tensor infos (name, dimensions in GGML
//! order, GGML type id, offset into the data section), padding to the alignment, then the tensor
//! data, each tensor starting at a multiple of the alignment. Everything is little-endian.
//!
//! GGML lists dimensions fastest-varying first: `ne[0]` is the row length. A row-major tensor of
//! shape `[rows, cols]` is therefore stored with dimensions `[cols, rows]`. [`GgufBuilder`] takes
//! row-major shapes, as the rest of this crate does, and reverses them on the way out;
//! [`GgufTensorInfo::shape`] reverses them back on the way in.
//!
//! Writing happens in two steps so that tensors can be produced one at a time and never all sit in
//! memory: declare every tensor (name, shape, format) on a [`GgufBuilder`], which fixes every
//! offset, then [`GgufBuilder::create`] writes the header into a temporary file beside the target
//! and returns a [`GgufFileWriter`] that takes the tensors' bytes in order.
//! [`GgufFileWriter::finish`] renames the temporary file to the target; dropping the writer, or any
//! error, deletes it.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_kernels::gguf::{GgufBuilder, GgufFile, MetadataValue};
//! use haagenti_adaptive_kernels::{Format, QuantizedTensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny.gguf");
//! let values: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
//! let weight = QuantizedTensor::quantize(Format::Q8_0, 2, 64, &values)?;
//!
//! let mut builder = GgufBuilder::new();
//! builder.metadata("general.name", MetadataValue::String("tiny".into()));
//! builder.add_tensor("weight", &[2, 64], Format::Q8_0)?;
//! let mut writer = builder.create(&path)?;
//! writer.write_tensor(&weight)?;
//! writer.finish()?;
//!
//! let file = GgufFile::open(&path)?;
//! assert_eq!(file.version(), 3);
//! assert_eq!(file.tensor_info("weight").unwrap().shape(), vec![2, 64]);
//! assert_eq!(file.tensor("weight")?, weight);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Format, KernelError, QuantizedTensor};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The GGUF version this module writes (and the only one it reads).
pub const GGUF_VERSION: u32 = 3;
/// The alignment of the data section and of every tensor in it, in bytes, unless the file's
/// `general.alignment` says otherwise.
pub const GGUF_DEFAULT_ALIGNMENT: u32 = 32;
/// The most dimensions a GGML tensor has.
pub const GGUF_MAX_DIMS: usize = 4;
/// The longest tensor name, in bytes, that llama.cpp's loader accepts (`GGML_MAX_NAME - 1`).
///
/// The GGUF specification caps names at 64 bytes. This writer accepts longer names, which candle
/// and gguf-py read without complaint, because diffusion checkpoints routinely use them; callers
/// that target llama.cpp should check names against this length.
pub const GGUF_LLAMA_CPP_MAX_NAME_LEN: usize = 63;

/// The metadata key holding the alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// Errors of GGUF reading and writing.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The operating system refused a read, write, create or rename.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done (`"cannot create"`, `"cannot write"`, ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a gguf file: the magic is {found:?}, not \"GGUF\"")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The file is GGUF, but not version 3.
    #[error("gguf version {0} is not supported (only version 3 is)")]
    UnsupportedVersion(u32),
    /// The bytes contradict themselves: truncated, out of bounds, or impossible values.
    #[error("corrupt gguf file: {0}")]
    Corrupt(String),
    /// A metadata value cannot be written (an array mixing element types).
    #[error("metadata key `{key}`: {reason}")]
    InvalidMetadata {
        /// The key concerned.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tensor declaration or a tensor's bytes do not fit what was declared.
    #[error("tensor `{name}`: {reason}")]
    InvalidTensor {
        /// The tensor concerned.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No tensor of that name is in the file.
    #[error("no tensor named `{0}` in the gguf file")]
    TensorNotFound(String),
    /// The tensor is stored in a GGML type this crate has no [`Format`] for.
    #[error("tensor `{name}` has ggml type {ggml_type}, which this crate cannot decode")]
    UnsupportedType {
        /// The tensor concerned.
        name: String,
        /// Its GGML type id.
        ggml_type: u32,
    },
    /// The kernels rejected a tensor's shape or bytes.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The output path was refused, or creating, syncing or renaming it failed.
    #[error(transparent)]
    File(#[from] crate::io::IoError),
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, GgufError>;

/// One metadata value, typed as GGUF types it.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 7 (one byte, 0 or 1).
    Bool(bool),
    /// GGUF type 8 (u64 length, then UTF-8 bytes).
    String(String),
    /// GGUF type 9: every element has the same type. An empty array is written with element type
    /// u8.
    Array(Vec<MetadataValue>),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 12.
    F64(f64),
}

impl MetadataValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(u64::from(v)),
            Self::U16(v) => Some(u64::from(v)),
            Self::U32(v) => Some(u64::from(v)),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn write_payload(&self, key: &str, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Self::U8(v) => out.push(*v),
            Self::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::Bool(v) => out.push(u8::from(*v)),
            Self::String(s) => put_string(out, s),
            Self::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Self::Array(items) => {
                let elem_type = items.first().map_or(0, Self::type_id);
                if items.iter().any(|item| item.type_id() != elem_type) {
                    return Err(GgufError::InvalidMetadata {
                        key: key.to_owned(),
                        reason: "array elements must all have the same type",
                    });
                }
                out.extend_from_slice(&elem_type.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.write_payload(key, out)?;
                }
            }
        }
        Ok(())
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

/// Bytes a tensor of `format` with row-major `shape` occupies (the last dimension is the row).
fn tensor_byte_len(name: &str, shape: &[usize], format: Format) -> Result<u64> {
    let invalid = |reason: String| GgufError::InvalidTensor {
        name: name.to_owned(),
        reason,
    };
    let (&cols, leading) = shape
        .split_last()
        .ok_or_else(|| invalid("a tensor needs at least one dimension".into()))?;
    let rows = leading
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid("the element count overflows".into()))?;
    let row_bytes = format.row_bytes(cols)?;
    row_bytes
        .checked_mul(rows)
        .map(|b| b as u64)
        .ok_or_else(|| invalid("the byte size overflows".into()))
}

/// GGUF tensor types that hold values unchanged: integer buffers and f64, which checkpoints carry
/// beside their weights (position ids, step counters) and which this crate never quantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlainType {
    /// GGML type 24.
    I8,
    /// GGML type 25.
    I16,
    /// GGML type 26.
    I32,
    /// GGML type 27.
    I64,
    /// GGML type 28.
    F64,
}

impl PlainType {
    /// Every plain type.
    pub const ALL: [PlainType; 5] = [Self::I8, Self::I16, Self::I32, Self::I64, Self::F64];

    /// The GGML type id.
    pub const fn ggml_type(self) -> u32 {
        match self {
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
        }
    }

    /// The plain type of a GGML type id, if it is one.
    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    /// Bytes a value takes.
    pub const fn value_bytes(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 => 2,
            Self::I32 => 4,
            Self::I64 | Self::F64 => 8,
        }
    }

    /// The lowercase GGML name (`"i64"`, `"f64"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }
}

/// Bytes a tensor of a GGML type occupies, when this crate knows the type.
fn typed_byte_len(name: &str, shape: &[usize], ggml_type: u32) -> Option<Result<u64>> {
    if let Some(format) = Format::from_ggml_type(ggml_type) {
        return Some(tensor_byte_len(name, shape, format));
    }
    let plain = PlainType::from_ggml_type(ggml_type)?;
    Some(
        shape
            .iter()
            .try_fold(plain.value_bytes(), |acc, &d| acc.checked_mul(d))
            .map(|b| b as u64)
            .ok_or_else(|| GgufError::InvalidTensor {
                name: name.to_owned(),
                reason: "the byte size overflows".into(),
            }),
    )
}

/// A tensor declared on a [`GgufBuilder`]: where its bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTensor {
    /// The tensor's name.
    pub name: String,
    /// Row-major shape (the last dimension is the row length).
    pub shape: Vec<usize>,
    /// Storage format; `None` for a [`PlainType`] tensor.
    pub format: Option<Format>,
    /// GGML type id.
    pub ggml_type: u32,
    /// Offset from the start of the data section, a multiple of the alignment.
    pub offset: u64,
    /// Byte length of the tensor's data (without padding).
    pub byte_len: u64,
}

/// Collects metadata and tensor declarations; [`create`](Self::create) starts the file.
///
/// A new builder holds `general.alignment = 32` (u32).
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<DeclaredTensor>,
    names: HashSet<String>,
    next_offset: u64,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    /// An empty file description with the default alignment.
    pub fn new() -> Self {
        Self {
            metadata: vec![(
                KEY_ALIGNMENT.to_owned(),
                MetadataValue::U32(GGUF_DEFAULT_ALIGNMENT),
            )],
            tensors: Vec::new(),
            names: HashSet::new(),
            next_offset: 0,
        }
    }

    /// Sets a metadata key, replacing an earlier value of the same key.
    ///
    /// `general.alignment` is managed by the builder; setting it is ignored, so that the offsets
    /// already computed stay valid.
    pub fn metadata(&mut self, key: &str, value: MetadataValue) -> &mut Self {
        if key == KEY_ALIGNMENT {
            return self;
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
        self
    }

    /// Declares the next tensor: its name, row-major shape and storage format. Tensors are written
    /// in the order they are declared. Returns the declaration, offsets included.
    ///
    /// # Errors
    ///
    /// [`GgufError::InvalidTensor`] for an empty or duplicate name, no dimensions or more than
    /// [`GGUF_MAX_DIMS`], or a size that overflows; [`GgufError::Kernel`] when the row length does
    /// not suit the format (a block format needs a multiple of 32).
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        format: Format,
    ) -> Result<&DeclaredTensor> {
        self.declare(name, shape, Some(format), format.ggml_type())
    }

    /// Declares the next tensor as a [`PlainType`]: its bytes are written unchanged.
    ///
    /// # Errors
    ///
    /// As [`add_tensor`](Self::add_tensor), except that any row length is accepted.
    pub fn add_plain_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: PlainType,
    ) -> Result<&DeclaredTensor> {
        self.declare(name, shape, None, ty.ggml_type())
    }

    fn declare(
        &mut self,
        name: &str,
        shape: &[usize],
        format: Option<Format>,
        ggml_type: u32,
    ) -> Result<&DeclaredTensor> {
        let invalid = |reason: String| GgufError::InvalidTensor {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        if self.names.contains(name) {
            return Err(invalid("the name is declared twice".into()));
        }
        if shape.is_empty() || shape.len() > GGUF_MAX_DIMS {
            return Err(invalid(format!(
                "{} dimensions; gguf tensors have 1 to {GGUF_MAX_DIMS}",
                shape.len()
            )));
        }
        // ggml and gguf-py hold dimensions and element counts as int64: larger ones would write a
        // file they refuse.
        let too_large = shape.iter().any(|&d| d as u64 > i64::MAX as u64)
            || shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                .is_none_or(|n| n > i64::MAX as u64);
        if too_large {
            return Err(invalid(format!(
                "shape {shape:?} has more than 2^63 - 1 values in a dimension or in all, \
                 which gguf readers refuse"
            )));
        }
        let byte_len = typed_byte_len(name, shape, ggml_type)
            .expect("declare is called with known types only")?;
        let offset = self.next_offset;
        self.next_offset = offset
            .checked_add(byte_len)
            .map(|end| align_up(end, u64::from(GGUF_DEFAULT_ALIGNMENT)))
            .ok_or_else(|| invalid("the file size overflows".into()))?;
        self.names.insert(name.to_owned());
        self.tensors.push(DeclaredTensor {
            name: name.to_owned(),
            shape: shape.to_vec(),
            format,
            ggml_type,
            offset,
            byte_len,
        });
        Ok(self.tensors.last().expect("just pushed"))
    }

    /// The tensors declared so far, in file order.
    pub fn tensors(&self) -> &[DeclaredTensor] {
        &self.tensors
    }

    /// Serialises the header (everything before the data section, padding included).
    ///
    /// # Errors
    ///
    /// [`GgufError::InvalidMetadata`] for an array mixing element types.
    pub fn header_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            value.write_payload(key, &mut out)?;
        }
        for tensor in &self.tensors {
            put_string(&mut out, &tensor.name);
            out.extend_from_slice(&(tensor.shape.len() as u32).to_le_bytes());
            for &dim in tensor.shape.iter().rev() {
                out.extend_from_slice(&(dim as u64).to_le_bytes());
            }
            out.extend_from_slice(&tensor.ggml_type.to_le_bytes());
            out.extend_from_slice(&tensor.offset.to_le_bytes());
        }
        let padded = align_up(out.len() as u64, u64::from(GGUF_DEFAULT_ALIGNMENT));
        out.resize(padded as usize, 0);
        Ok(out)
    }

    /// Writes the header into a new temporary file in `path`'s directory and returns the writer
    /// that takes the tensors' bytes. Nothing appears at `path` until
    /// [`GgufFileWriter::finish`] succeeds.
    ///
    /// # Errors
    ///
    /// [`GgufError::Io`] when the temporary file cannot be created or written;
    /// [`GgufError::InvalidMetadata`] as [`header_bytes`](Self::header_bytes).
    pub fn create(self, path: &Path) -> Result<GgufFileWriter> {
        let header = self.header_bytes()?;
        let io_err = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| GgufError::Io {
                action,
                path,
                source,
            }
        };
        let target = crate::io::check_output(path, &[])?;
        let mut temp = crate::io::AtomicFile::create(&target)?;
        let file = temp
            .file()
            .try_clone()
            .map_err(io_err("cannot open", temp.temp_path()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header)
            .map_err(io_err("cannot write", temp.temp_path()))?;
        Ok(GgufFileWriter {
            target: path.to_path_buf(),
            temp: Some(temp),
            out,
            tensors: self.tensors,
            current: 0,
            written_in_current: 0,
        })
    }
}

/// Takes the tensors' bytes in declaration order; see the [module docs](self).
///
/// Dropping it before [`finish`](Self::finish) deletes the temporary file.
#[derive(Debug)]
pub struct GgufFileWriter {
    target: PathBuf,
    temp: Option<crate::io::AtomicFile>,
    out: BufWriter<File>,
    tensors: Vec<DeclaredTensor>,
    current: usize,
    written_in_current: u64,
}

impl GgufFileWriter {
    /// The next tensor expected, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&DeclaredTensor> {
        self.tensors.get(self.current)
    }

    fn temp_path(&self) -> PathBuf {
        self.temp
            .as_ref()
            .map_or_else(|| self.target.clone(), |t| t.temp_path().to_path_buf())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|source| GgufError::Io {
            action: "cannot write",
            path: self.temp_path(),
            source,
        })
    }

    /// Writes the whole of the next tensor.
    ///
    /// # Errors
    ///
    /// [`GgufError::InvalidTensor`] when every tensor is already written, or when `tensor`'s
    /// format, element count or row length differ from the declaration, or part of this tensor was
    /// already written with [`write_tensor_data`](Self::write_tensor_data); [`GgufError::Io`].
    pub fn write_tensor(&mut self, tensor: &QuantizedTensor) -> Result<()> {
        let Some(decl) = self.next_tensor() else {
            return Err(GgufError::InvalidTensor {
                name: String::new(),
                reason: "every declared tensor is already written".into(),
            });
        };
        let elements: usize = decl.shape.iter().product();
        let cols = *decl.shape.last().unwrap_or(&0);
        let mismatch = if decl.format != Some(tensor.format()) {
            Some(format!(
                "declared as ggml type {}, given {}",
                decl.ggml_type,
                tensor.format().name()
            ))
        } else if tensor.rows() * tensor.cols() != elements
            || (elements != 0 && tensor.cols() != cols)
        {
            Some(format!(
                "declared with shape {:?}, given [{}, {}]",
                decl.shape,
                tensor.rows(),
                tensor.cols()
            ))
        } else if self.written_in_current != 0 {
            Some("part of this tensor was already written".into())
        } else {
            None
        };
        if let Some(reason) = mismatch {
            return Err(GgufError::InvalidTensor {
                name: decl.name.clone(),
                reason,
            });
        }
        self.write_tensor_data(tensor.as_bytes())
    }

    /// Appends bytes to the current tensor; once its declared byte length is reached, pads to the
    /// alignment and moves to the next. Lets a caller stream a large tensor in pieces (whole rows
    /// quantized in parallel, say). The bytes are not checked beyond their count. Empty `bytes`
    /// complete a declared tensor of zero bytes; non-empty bytes skip past such tensors.
    ///
    /// # Errors
    ///
    /// [`GgufError::InvalidTensor`] when `bytes` run past the current tensor's declared length (or
    /// every tensor is written); [`GgufError::Io`].
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            // Completes a tensor of zero bytes.
            if self
                .tensors
                .get(self.current)
                .is_some_and(|d| d.byte_len == 0)
            {
                self.complete_current()?;
            }
            return Ok(());
        }
        // Bytes cannot belong to a tensor of zero bytes: they start the next one.
        self.skip_empty_tensors()?;
        let Some(decl) = self.tensors.get(self.current) else {
            return Err(GgufError::InvalidTensor {
                name: String::new(),
                reason: "more bytes than the declared tensors hold".into(),
            });
        };
        let remaining = decl.byte_len - self.written_in_current;
        if bytes.len() as u64 > remaining {
            return Err(GgufError::InvalidTensor {
                name: decl.name.clone(),
                reason: format!(
                    "declared as {} bytes, given {} more than that",
                    decl.byte_len,
                    bytes.len() as u64 - remaining
                ),
            });
        }
        let byte_len = decl.byte_len;
        self.write_raw(bytes)?;
        self.written_in_current += bytes.len() as u64;
        if self.written_in_current == byte_len {
            self.complete_current()?;
        }
        Ok(())
    }

    fn complete_current(&mut self) -> Result<()> {
        let decl = &self.tensors[self.current];
        let end = decl.offset + decl.byte_len;
        let pad = align_up(end, u64::from(GGUF_DEFAULT_ALIGNMENT)) - end;
        self.write_raw(&vec![0u8; pad as usize])?;
        self.current += 1;
        self.written_in_current = 0;
        Ok(())
    }

    fn skip_empty_tensors(&mut self) -> Result<()> {
        while self
            .tensors
            .get(self.current)
            .is_some_and(|d| d.byte_len == 0 && self.written_in_current == 0)
        {
            self.complete_current()?;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the temporary file to the target path (replacing any file
    /// there).
    ///
    /// # Errors
    ///
    /// [`GgufError::InvalidTensor`] naming the first tensor not completely written;
    /// [`GgufError::Io`] when flushing, syncing or renaming fails. The temporary file is deleted
    /// in every error case.
    pub fn finish(mut self) -> Result<()> {
        self.skip_empty_tensors()?;
        if let Some(decl) = self.tensors.get(self.current) {
            return Err(GgufError::InvalidTensor {
                name: decl.name.clone(),
                reason: format!(
                    "only {} of its {} bytes were written",
                    self.written_in_current, decl.byte_len
                ),
            });
        }
        let temp_path = self.temp_path();
        let io_err = |action: &'static str, path: PathBuf| {
            move |source| GgufError::Io {
                action,
                path,
                source,
            }
        };
        self.out
            .flush()
            .map_err(io_err("cannot write", temp_path.clone()))?;
        let temp = self
            .temp
            .take()
            .expect("the temporary file lives until finish");
        temp.commit()?;
        Ok(())
    }
}

/// A tensor's entry in a GGUF file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Dimensions in GGML order (`dims[0]` is the row length).
    pub ggml_dims: Vec<u64>,
    /// GGML type id.
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (the GGML dimensions reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.ggml_dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The storage format, if this crate knows the GGML type.
    pub fn format(&self) -> Option<Format> {
        Format::from_ggml_type(self.ggml_type)
    }
}

/// A GGUF v3 file read into memory: header, metadata, tensor infos and data.
///
/// Every length and offset is checked against the file size, so corrupt input gives
/// [`GgufError::Corrupt`], never a panic or a huge allocation.
#[derive(Clone, Debug)]
pub struct GgufFile {
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: usize,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn corrupt(msg: impl Into<String>) -> GgufError {
    GgufError::Corrupt(msg.into())
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = self.bytes.len() - self.pos;
        if n > remaining as u64 {
            return Err(corrupt(format!(
                "{what} needs {n} bytes at offset {}, only {remaining} remain",
                self.pos
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(format!("{what} is not utf-8")))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<MetadataValue> {
        use MetadataValue as V;
        Ok(match type_id {
            0 => V::U8(self.array::<1>(key)?[0]),
            1 => V::I8(i8::from_le_bytes(self.array(key)?)),
            2 => V::U16(u16::from_le_bytes(self.array(key)?)),
            3 => V::I16(i16::from_le_bytes(self.array(key)?)),
            4 => V::U32(self.u32(key)?),
            5 => V::I32(i32::from_le_bytes(self.array(key)?)),
            6 => V::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => V::Bool(false),
                1 => V::Bool(true),
                b => return Err(corrupt(format!("metadata `{key}`: bool byte {b}"))),
            },
            8 => V::String(self.string(key)?),
            9 => {
                if depth > 8 {
                    return Err(corrupt(format!("metadata `{key}`: arrays nested too deep")));
                }
                let elem_type = self.u32(key)?;
                let len = self.u64(key)?;
                // Every element takes at least one byte: a length beyond the file is corrupt.
                if len > (self.bytes.len() - self.pos) as u64 {
                    return Err(corrupt(format!(
                        "metadata `{key}`: array of {len} elements overruns the file"
                    )));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                V::Array(items)
            }
            10 => V::U64(self.u64(key)?),
            11 => V::I64(i64::from_le_bytes(self.array(key)?)),
            12 => V::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(corrupt(format!(
                    "metadata `{key}`: unknown value type {other}"
                )));
            }
        })
    }
}

impl GgufFile {
    /// Reads and parses a file.
    ///
    /// # Errors
    ///
    /// [`GgufError::Io`] when it cannot be read; as [`parse`](Self::parse) otherwise.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes)
    }

    /// Parses a whole file held in memory.
    ///
    /// # Errors
    ///
    /// [`GgufError::BadMagic`], [`GgufError::UnsupportedVersion`], or [`GgufError::Corrupt`] for
    /// anything truncated, out of bounds, misaligned or duplicated.
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let mut cur = Cursor {
            bytes: &bytes,
            pos: 0,
        };
        let magic: [u8; 4] = cur.array("the magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = cur.u32("the version")?;
        if version != GGUF_VERSION {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = cur.u64("the tensor count")?;
        let kv_count = cur.u64("the metadata count")?;
        // A key-value pair takes at least 13 bytes, a tensor info at least 24.
        let remaining = (bytes.len() - cur.pos) as u64;
        if kv_count.saturating_mul(13) > remaining || tensor_count.saturating_mul(24) > remaining {
            return Err(corrupt(format!(
                "{tensor_count} tensors and {kv_count} metadata entries cannot fit in {} bytes",
                bytes.len()
            )));
        }
        let mut metadata = Vec::with_capacity(kv_count as usize);
        for _ in 0..kv_count {
            let key = cur.string("a metadata key")?;
            let type_id = cur.u32(&key)?;
            let value = cur.value(type_id, &key, 0)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
            None => u64::from(GGUF_DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(corrupt(format!(
                        "general.alignment {v:?} is not a power of two"
                    )));
                }
            },
        };
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut names = HashSet::new();
        for _ in 0..tensor_count {
            let name = cur.string("a tensor name")?;
            let n_dims = cur.u32(&name)?;
            if n_dims == 0 || n_dims as usize > GGUF_MAX_DIMS {
                return Err(corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let ggml_dims = (0..n_dims)
                .map(|_| cur.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            let ggml_type = cur.u32(&name)?;
            let offset = cur.u64(&name)?;
            if !offset.is_multiple_of(alignment) {
                return Err(corrupt(format!(
                    "tensor `{name}` offset {offset} is not a multiple of {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(corrupt(format!("tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensorInfo {
                name,
                ggml_dims,
                ggml_type,
                offset,
            });
        }
        let data_offset = align_up(cur.pos as u64, alignment);
        if data_offset > bytes.len() as u64 {
            return Err(corrupt("the data section starts past the end of the file"));
        }
        let file = Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset: data_offset as usize,
            bytes,
        };
        // Every tensor of a known type must lie within the file.
        for info in &file.tensors {
            if info.format().is_some() || PlainType::from_ggml_type(info.ggml_type).is_some() {
                file.tensor_bytes(&info.name)?;
            }
        }
        Ok(file)
    }

    /// The GGUF version (always 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The offset of the data section from the start of the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Every metadata pair, in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// The value of one metadata key.
    pub fn metadata_value(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every tensor info, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of one tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of one tensor (without padding).
    ///
    /// # Errors
    ///
    /// [`GgufError::TensorNotFound`]; [`GgufError::UnsupportedType`] for a GGML type this crate
    /// does not know (its size is unknown); [`GgufError::Corrupt`] when the bytes lie outside the
    /// file or the dimensions overflow.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound(name.to_owned()))?;
        let shape = info
            .ggml_dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).map_err(|_| corrupt("dimension overflows")))
            .collect::<Result<Vec<_>>>()?;
        let len = typed_byte_len(name, &shape, info.ggml_type)
            .ok_or_else(|| GgufError::UnsupportedType {
                name: name.to_owned(),
                ggml_type: info.ggml_type,
            })?
            .map_err(|e| match e {
                GgufError::Kernel(k) => corrupt(format!("tensor `{name}`: {k}")),
                other => corrupt(other.to_string()),
            })?;
        let start = (self.data_offset as u64)
            .checked_add(info.offset)
            .ok_or_else(|| corrupt(format!("tensor `{name}` offset overflows")))?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len() as u64)
            .ok_or_else(|| corrupt(format!("tensor `{name}` runs past the end of the file")))?;
        Ok(&self.bytes[start as usize..end as usize])
    }

    /// One tensor as a [`QuantizedTensor`] of `[rows, cols]`, `cols` being the row length and
    /// `rows` the product of the other dimensions.
    ///
    /// # Errors
    ///
    /// As [`tensor_bytes`](Self::tensor_bytes).
    pub fn tensor(&self, name: &str) -> Result<QuantizedTensor> {
        let bytes = self.tensor_bytes(name)?;
        let info = self.tensor_info(name).expect("tensor_bytes found it");
        let format = info.format().ok_or_else(|| GgufError::UnsupportedType {
            name: name.to_owned(),
            ggml_type: info.ggml_type,
        })?;
        let cols = info.ggml_dims[0] as usize;
        let rows = info.ggml_dims[1..].iter().product::<u64>() as usize;
        Ok(QuantizedTensor::from_bytes(
            format,
            rows,
            cols,
            bytes.to_vec(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_specification() {
        let mut b = GgufBuilder::new();
        b.add_tensor("w", &[3, 32], Format::Q4_0).unwrap();
        let header = b.header_bytes().unwrap();
        assert_eq!(&header[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(header[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(header[8..16].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(header[16..24].try_into().unwrap()), 1);
        // First key: general.alignment, type u32 (4), value 32.
        assert_eq!(u64::from_le_bytes(header[24..32].try_into().unwrap()), 17);
        assert_eq!(&header[32..49], b"general.alignment");
        assert_eq!(u32::from_le_bytes(header[49..53].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(header[53..57].try_into().unwrap()), 32);
        // Tensor info: name "w", 2 dims, ne = [32, 3], type Q4_0 = 2, offset 0.
        assert_eq!(u64::from_le_bytes(header[57..65].try_into().unwrap()), 1);
        assert_eq!(header[65], b'w');
        assert_eq!(u32::from_le_bytes(header[66..70].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(header[70..78].try_into().unwrap()), 32);
        assert_eq!(u64::from_le_bytes(header[78..86].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(header[86..90].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(header[90..98].try_into().unwrap()), 0);
        assert_eq!(header.len(), 128);
        assert!(header[98..].iter().all(|&b| b == 0));
    }

    #[test]
    fn offsets_are_aligned() {
        let mut b = GgufBuilder::new();
        let a = b.add_tensor("a", &[1, 32], Format::Q8_0).unwrap().clone();
        let c = b.add_tensor("c", &[5], Format::F16).unwrap().clone();
        let d = b.add_tensor("d", &[2, 32], Format::Q4_1).unwrap().clone();
        assert_eq!((a.offset, a.byte_len), (0, 34));
        assert_eq!((c.offset, c.byte_len), (64, 10));
        assert_eq!((d.offset, d.byte_len), (96, 40));
    }

    #[test]
    fn bad_declarations_are_rejected() {
        let mut b = GgufBuilder::new();
        b.add_tensor("a", &[4], Format::F32).unwrap();
        assert!(matches!(
            b.add_tensor("a", &[4], Format::F32),
            Err(GgufError::InvalidTensor { .. })
        ));
        assert!(matches!(
            b.add_tensor("b", &[], Format::F32),
            Err(GgufError::InvalidTensor { .. })
        ));
        assert!(matches!(
            b.add_tensor("b", &[1, 1, 1, 1, 1], Format::F32),
            Err(GgufError::InvalidTensor { .. })
        ));
        assert!(matches!(
            b.add_tensor("b", &[2, 33], Format::Q8_0),
            Err(GgufError::Kernel(_))
        ));
        assert_eq!(b.tensors().len(), 1);
    }

    #[test]
    fn mixed_arrays_are_rejected() {
        let mut b = GgufBuilder::new();
        b.metadata(
            "x",
            MetadataValue::Array(vec![MetadataValue::U8(1), MetadataValue::I8(1)]),
        );
        assert!(matches!(
            b.header_bytes(),
            Err(GgufError::InvalidMetadata { .. })
        ));
    }
}
