//! Placeholder facade.
#![forbid(unsafe_code)]
pub use haagenti_adaptive_core as core;
