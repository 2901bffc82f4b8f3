//! Adaptive precision for diffusion-model inference.
//!
//! Early denoising steps work on samples that are mostly noise, where rounding errors may be drowned
//! by the noise; late steps refine detail. This crate schedules each step at the cheapest precision
//! (INT4, INT8, BF16, FP16, FP32) that keeps the result good, plans the transitions between them,
//! runs each precision on real kernels, probes the machine, and measures what a schedule does.
//!
//! It keeps every name of the original `haagenti-adaptive` 0.1.0 (flat at the crate root, and in
//! [`prelude`]), so its users change only the version in `Cargo.toml`. The layers are separate
//! crates, re-exported here as modules; depend on one directly to take only what it needs.
//!
//! | module | crate | what it holds |
//! | --- | --- | --- |
//! | [`core`] | `haagenti-adaptive-core` | precisions, capabilities, transition strategies, errors |
//! | [`schedule`] | `haagenti-adaptive-schedule` | profiles, presets, schedules, noise schedules, the solver |
//! | [`transition`] | `haagenti-adaptive-transition` | transitions and the planner |
//! | [`kernels`] | `haagenti-adaptive-kernels` | block formats, quantized matmul, GGUF, checkpoints |
//! | [`probe`] | `haagenti-adaptive-probe` | CPU features and wgpu adapters |
//! | [`runtime`] | `haagenti-adaptive-runtime` | the denoising loop, reference model, calibration |
//!
//! # Examples
//!
//! The original crate's usage compiles unchanged:
//!
//! ```
//! use haagenti_adaptive::prelude::*;
//! use haagenti_adaptive::{
//!     PrecisionCapabilities, ScheduleConfig, TransitionPlanner, TransitionStrategy, quick_schedule,
//! };
//!
//! let schedule = quick_schedule(ProfilePreset::Balanced, 30)?;
//! assert_eq!(schedule.steps.len(), 30);
//! assert_eq!(schedule.precision_at(0), Ok(Precision::INT4));
//!
//! let config = ScheduleConfig::with_preset(ProfilePreset::Quality)
//!     .steps(50)
//!     .capabilities(PrecisionCapabilities::legacy_gpu(4096))
//!     .min_quality(0.9);
//! let schedule = PrecisionSchedule::generate(config)?;
//! // The legacy GPU runs nothing below FP16, so no step is scheduled below it.
//! assert!(schedule.steps.iter().all(|s| s.precision >= Precision::FP16));
//!
//! let zones: Vec<(u32, u32, Precision)> = vec![(0, 10, Precision::INT8), (10, 30, Precision::FP16)];
//! let transitions = TransitionPlanner::new(8192)
//!     .with_strategy(TransitionStrategy::Gradual { steps: 3 })
//!     .plan_transitions(&zones);
//! assert_eq!(transitions.len(), 1);
//! # Ok::<(), haagenti_adaptive::AdaptiveError>(())
//! ```
//!
//! # Features
//!
//! - `wgpu` (default): the probe enumerates GPU adapters through wgpu; without it, it reports the
//!   CPU alone.
#![forbid(unsafe_code)]

/// Precisions, capabilities, transition strategies and the shared error type.
pub use haagenti_adaptive_core as core;
/// Quantization kernels: GGUF block formats, f16/bf16, quantized matmul, GGUF files, checkpoints.
pub use haagenti_adaptive_kernels as kernels;
/// Neural-network layers, the ONNX reader and the terrain UNet.
pub use haagenti_adaptive_nn as nn;
/// Hardware probing: CPU features and every wgpu adapter.
pub use haagenti_adaptive_probe as probe;
/// The denoising runtime: samplers, the reference model, residency, calibration.
pub use haagenti_adaptive_runtime as runtime;
/// Precision profiles, presets, schedules, noise schedules and the error-budget solver.
pub use haagenti_adaptive_schedule as schedule;
/// Transitions between precisions and the planner.
pub use haagenti_adaptive_transition as transition;

/// Error of schedule generation, planning and capability checks.
pub use haagenti_adaptive_core::AdaptiveError;
/// Numeric precision of a denoising step.
pub use haagenti_adaptive_core::Precision;
/// What a device executes and how much memory it has.
pub use haagenti_adaptive_core::PrecisionCapabilities;
/// `std::result::Result` with [`AdaptiveError`].
pub use haagenti_adaptive_core::Result;
/// How one precision hands over to the next.
pub use haagenti_adaptive_core::TransitionStrategy;
/// A precision profile: zones of the run mapped to precisions.
pub use haagenti_adaptive_schedule::PrecisionProfile;
/// A complete per-step precision schedule.
pub use haagenti_adaptive_schedule::PrecisionSchedule;
/// One zone of a [`PrecisionProfile`].
pub use haagenti_adaptive_schedule::PrecisionZone;
/// The ready-made profiles.
pub use haagenti_adaptive_schedule::ProfilePreset;
/// Configuration of schedule generation.
pub use haagenti_adaptive_schedule::ScheduleConfig;
/// The precision of one step.
pub use haagenti_adaptive_schedule::StepPrecision;
/// Generates a schedule for a preset and a step count.
pub use haagenti_adaptive_schedule::quick_schedule;
/// A transition between two precisions with its blend factors.
pub use haagenti_adaptive_transition::PrecisionTransition;
/// Plans transitions for a schedule.
pub use haagenti_adaptive_transition::TransitionPlanner;

/// The names most code needs, as in the original crate.
pub mod prelude {
    pub use haagenti_adaptive_core::{Precision, Result};
    pub use haagenti_adaptive_schedule::{PrecisionProfile, PrecisionSchedule, ProfilePreset};
}

/// The README's Rust examples, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
