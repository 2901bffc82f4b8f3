//! The error type shared by the scheduling crates.

use crate::Precision;

/// Errors of schedule generation, transition planning and capability checks.
///
/// The variants and their fields are the seed crate's; each is now produced where its name says.
/// Like the seed's, the enum is exhaustive: code that matches every variant keeps compiling.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AdaptiveError {
    /// A step index outside the schedule.
    #[error("step {step} is outside a schedule of {total_steps} steps")]
    InvalidStep {
        /// The step asked for.
        step: u32,
        /// The schedule's length.
        total_steps: u32,
    },

    /// A transition that cannot be carried out as described.
    #[error("invalid transition from {from} to {to}: {reason}")]
    InvalidTransition {
        /// Precision before the transition.
        from: Precision,
        /// Precision after the transition.
        to: Precision,
        /// What is wrong with it.
        reason: String,
    },

    /// A precision the capabilities cannot execute, with nothing supported at or above it.
    #[error("precision {0} is not supported and no higher supported precision exists")]
    UnsupportedPrecision(Precision),

    /// A malformed precision profile.
    #[error("invalid profile: {0}")]
    ProfileError(String),

    /// A schedule that cannot be generated from its configuration or inputs.
    #[error("schedule error: {0}")]
    ScheduleError(String),

    /// Weights that do not fit the memory available.
    #[error("needs {required_mb} MB but only {available_mb} MB are available")]
    VramConstraint {
        /// Megabytes the plan needs at its peak.
        required_mb: u64,
        /// Megabytes available.
        available_mb: u64,
    },

    /// A schedule whose estimated quality falls below the configured minimum.
    #[error("estimated quality {actual:.4} is below the minimum {threshold:.4}")]
    QualityConstraint {
        /// The schedule's estimated quality.
        actual: f32,
        /// The configured minimum.
        threshold: f32,
    },
}

/// `std::result::Result` with [`AdaptiveError`].
pub type Result<T> = std::result::Result<T, AdaptiveError>;
