//! The crate's error type.

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_kernels::KernelError;

/// Errors of the network code: unreadable files, graphs that are not the expected model, bad
/// shapes, and kernel errors.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },

    /// The bytes are not an ONNX model this reader can decode.
    #[error("onnx: {0}")]
    Onnx(String),

    /// The graph is not the network the model code expects (a missing weight, a wrong shape).
    #[error("model: {0}")]
    Model(String),

    /// A buffer whose length disagrees with the shape it should have.
    #[error("{what} has length {actual}, expected {expected}")]
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length it should have.
        expected: usize,
        /// The length it has.
        actual: usize,
    },

    /// A layer was asked to run at a precision whose weights are not resident.
    #[error("weights at {0} are not resident")]
    NotResident(Precision),

    /// An input value that is not finite or outside its domain.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A tensor file that cannot be read or written.
    #[error("tensor file {path}: {message}")]
    TensorFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },

    /// A pretrained model's file is not in the model folder.
    #[error("{path} is missing: run `cargo xtask fetch-model {model}`")]
    ModelMissing {
        /// Where it was looked for.
        path: String,
        /// The model's name for `cargo xtask fetch-model`.
        model: &'static str,
    },

    /// A kernel (quantization or matmul) failed.
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),
}

/// `std::result::Result` with [`NnError`].
pub type Result<T> = std::result::Result<T, NnError>;
