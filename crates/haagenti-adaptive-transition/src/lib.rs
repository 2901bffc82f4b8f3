//! Transition planning between precisions: where each change of a precision schedule happens,
//! how the outputs of the two precisions blend over a window of steps, which weight copies must
//! be resident at each step, and whether they fit in memory.
//!
//! [`PrecisionTransition`] is one change with its per-step blend factors (linear for `Gradual`,
//! smoothstep for `StepAware`, each step of the window its own factor). [`TransitionPlanner`]
//! turns a [`PrecisionSchedule`](haagenti_adaptive_schedule::PrecisionSchedule) into a
//! [`TransitionPlan`]: runs shorter than the minimum gap merge into their higher-precision
//! neighbour (never dropping a change while keeping the schedule: the plan carries the merged
//! schedule, and the two agree step for step), blends that do not fit the memory of a model of a
//! given size become immediate switches, and a precision that does not fit alone is an error.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::{AdaptiveError, Precision, TransitionStrategy};
//! use haagenti_adaptive_schedule::{quick_schedule, ProfilePreset};
//! use haagenti_adaptive_transition::TransitionPlanner;
//!
//! let schedule = quick_schedule(ProfilePreset::Balanced, 30)?;
//! let planner = TransitionPlanner::new(8192).with_strategy(TransitionStrategy::StepAware);
//! let plan = planner.plan_schedule(&schedule)?;
//! // StepAware blends over a tenth of the run (3 steps here) after each change.
//! let t = &plan.transitions[0];
//! assert_eq!((t.from, t.to, t.start_step, t.end_step), (Precision::INT4, Precision::INT8, 8, 11));
//! assert_eq!(plan.blend_at(9), Some(0.5));
//! assert_eq!(plan.resident_at(9)?, vec![Precision::INT4, Precision::INT8]);
//!
//! // 20 billion parameters do not fit 8 GiB even at INT4.
//! let err = planner.with_model_params(20_000_000_000).plan_schedule(&schedule).unwrap_err();
//! assert!(matches!(err, AdaptiveError::VramConstraint { .. }));
//! # Ok::<(), AdaptiveError>(())
//! ```

mod planner;
mod transition;

pub use planner::{DEFAULT_MIN_GAP, TransitionPlan, TransitionPlanner};
pub use transition::PrecisionTransition;
