//! Size limits of a run, checked before anything is allocated.
//!
//! Every size a user gives a run (steps, batch, repeats, model dimensions) multiplies into
//! buffers; unchecked, a typo such as `--batch 1000000000000` asks the allocator for terabytes
//! and aborts the process. These limits sit far above any real use (the default run is 30 steps
//! of a batch of 16 on a 1 024 x 4 096 mixture) and far below what would exhaust a machine, so a
//! value past one is an error naming the limit, before any work.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_runtime::{RunSize, RuntimeError, MAX_STEPS};
//!
//! let size = RunSize { steps: 30, batch: 16, repeats: 5, dim: 4096, components: 1024 };
//! assert!(size.check().is_ok());
//! let too_long = RunSize { steps: MAX_STEPS + 1, ..size };
//! assert!(matches!(too_long.check(), Err(RuntimeError::LimitExceeded { what: "steps", .. })));
//! ```

use crate::{Result, RuntimeError};

/// The most denoising steps a run takes: 10 000 (real samplers use 1 to 1 000). Each step keeps
/// timings for every precision and repeat, and the calibrated schedule's solver works over them.
pub const MAX_STEPS: usize = 10_000;

/// The most values one batch of samples may hold (`batch x max(d, k)`): 2^26, a 256 MiB f32
/// buffer, of which a run keeps one a schedule. The default run holds 16 x 4 096 = 65 536.
pub const MAX_BATCH_VALUES: usize = 1 << 26;

/// The most times a run repeats each schedule: 10 000 (the default is 5). A run keeps every
/// repeat's per-step timings and takes repeats x steps denoiser calls a schedule.
pub const MAX_REPEATS: usize = 10_000;

/// The most values of a Gaussian mixture's means (`k x d`): 2^26, 256 MiB as f32, of which the
/// model keeps one copy a resident precision. The default model has 1 024 x 4 096 = 2^22.
pub const MAX_MODEL_VALUES: usize = 1 << 26;

/// The sizes of one run, as [`RunSize::check`] tests them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSize {
    /// Denoising steps.
    pub steps: usize,
    /// Samples of the largest batch the run generates.
    pub batch: usize,
    /// Times each schedule runs.
    pub repeats: usize,
    /// Values a sample (the model's `d`).
    pub dim: usize,
    /// Mixture components (the model's `k`): the denoiser keeps `batch x k` distances.
    pub components: usize,
}

impl RunSize {
    /// Checks every size against its limit (and that none is zero).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::LimitExceeded`] naming the first size past its limit ([`MAX_STEPS`],
    /// [`MAX_REPEATS`], [`MAX_BATCH_VALUES`]); [`RuntimeError::InvalidPlan`] for a zero size.
    pub fn check(&self) -> Result<()> {
        for (what, value) in [
            ("steps", self.steps),
            ("batch", self.batch),
            ("repeats", self.repeats),
        ] {
            if value == 0 {
                return Err(RuntimeError::InvalidPlan(format!(
                    "{what} must be at least 1"
                )));
            }
        }
        check_limit(
            "steps",
            self.steps,
            MAX_STEPS,
            "every step keeps timings of each precision and repeat",
        )?;
        check_limit(
            "repeats",
            self.repeats,
            MAX_REPEATS,
            "every repeat runs and times each schedule again",
        )?;
        let per_sample = self.dim.max(self.components);
        check_limit(
            "batch",
            self.batch,
            MAX_BATCH_VALUES / per_sample.max(1),
            "a batch of samples (batch x max(d, k) values) must fit in 2^26 values",
        )
    }
}

/// `Err(LimitExceeded)` when `value > limit`.
pub(crate) fn check_limit(
    what: &'static str,
    value: usize,
    limit: usize,
    why: &'static str,
) -> Result<()> {
    if value > limit {
        return Err(RuntimeError::LimitExceeded {
            what,
            value: value as u128,
            limit: limit as u128,
            why,
        });
    }
    Ok(())
}

/// `Err(ShapeMismatch)` unless `actual == batch * dim`; an overflowing product never matches
/// (wrapped, a huge `batch` could equal a short buffer's length and then index past it).
pub(crate) fn check_len(what: &'static str, actual: usize, batch: usize, dim: usize) -> Result<()> {
    if batch.checked_mul(dim) != Some(actual) {
        return Err(RuntimeError::ShapeMismatch {
            what,
            expected: batch.saturating_mul(dim),
            actual,
        });
    }
    Ok(())
}
