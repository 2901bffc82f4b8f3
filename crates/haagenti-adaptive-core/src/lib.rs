//! Core types of `haagenti-adaptive`: the precisions a diffusion step can run at, what a device
//! can execute, how precisions hand over, and the shared error type.
//!
//! This crate is plain data with no heavy dependencies (serde and thiserror only), so every other
//! crate of the workspace can depend on it.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::{Precision, PrecisionCapabilities};
//!
//! let caps = PrecisionCapabilities::modern_gpu(8192);
//! let p = caps.best_supported("int4".parse::<Precision>()?);
//! assert_eq!(p, Precision::INT4);
//! // 7 billion parameters at 4.5 bits a weight fit in 8 GiB; at FP16 they do not.
//! assert!(caps.fits_model(7_000_000_000, p));
//! assert!(!caps.fits_model(7_000_000_000, Precision::FP16));
//! # Ok::<(), haagenti_adaptive_core::ParsePrecisionError>(())
//! ```

mod capabilities;
mod error;
mod precision;
mod strategy;

pub use capabilities::{PrecisionCapabilities, weight_bytes, weight_mb};
pub use error::{AdaptiveError, Result};
pub use precision::{ParsePrecisionError, Precision};
pub use strategy::{ParseStrategyError, TransitionStrategy};
