//! The runtime's error type.

use haagenti_adaptive_core::{AdaptiveError, Precision};
use haagenti_adaptive_kernels::KernelError;

/// Errors of the runtime: bad inputs, plans that cannot run, and errors of the crates below.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A kernel (quantization or matmul) failed.
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),

    /// A schedule or plan from the scheduling crates was rejected.
    #[error(transparent)]
    Schedule(#[from] AdaptiveError),

    /// A model configuration that cannot be built (zero sizes, non-finite variance, ...).
    #[error("invalid model: {0}")]
    InvalidModel(String),

    /// A noise-level list a sampler cannot run over.
    #[error("invalid sigmas: {0}")]
    InvalidSigmas(String),

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

    /// A run plan that disagrees with its inputs (wrong length, empty).
    #[error("invalid plan: {0}")]
    InvalidPlan(String),

    /// A denoiser call asked for a precision whose weights are not resident.
    #[error("weights at {0} are not resident")]
    NotResident(Precision),

    /// A size past the limit that keeps a run's memory bounded (see [`crate::RunSize`]).
    #[error("{what} {value} exceeds the limit of {limit}: {why}")]
    LimitExceeded {
        /// Which size.
        what: &'static str,
        /// The size asked for.
        value: u128,
        /// The largest size accepted.
        limit: u128,
        /// What the limit protects.
        why: &'static str,
    },

    /// Images a quality measure cannot compare (zero or too small a side, a batch that is not
    /// whole images).
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// Calibration inputs that cannot give a table (no precisions, non-finite budget, ...).
    #[error("calibration error: {0}")]
    Calibration(String),
}

/// `std::result::Result` with [`RuntimeError`].
pub type Result<T> = std::result::Result<T, RuntimeError>;
