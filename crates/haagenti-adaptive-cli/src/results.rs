//! What `run` measured: the types `run.rs` fills and `report.rs` prints, so neither imports the
//! other.

use haagenti_adaptive::Precision;
use haagenti_adaptive::runtime::{CalibrationReport, GmmConfig, Sampler, StepCosts};
use serde::Serialize;

/// One row of the results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunRow {
    pub(crate) name: String,
    /// Sum over steps of each step's median time over the repeats.
    pub(crate) seconds: f64,
    /// Median absolute deviation of the repeats' whole-run times.
    pub(crate) seconds_spread: f64,
    /// Median over the repeats of the whole run's time.
    pub(crate) run_median_seconds: f64,
    pub(crate) load_seconds: f64,
    pub(crate) speedup: f64,
    pub(crate) predicted_speedup: f64,
    pub(crate) peak_weight_bytes: usize,
    pub(crate) psnr_db: Option<f64>,
    pub(crate) mode_agreement: f64,
    pub(crate) psnr_agreeing_db: Option<f64>,
    pub(crate) mse: f64,
    pub(crate) schedule: Vec<Precision>,
    pub(crate) step_seconds: Vec<f64>,
}

/// Everything `run` measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunOutput {
    pub(crate) model: GmmConfig,
    pub(crate) sampler: Sampler,
    pub(crate) steps: usize,
    pub(crate) batch: usize,
    pub(crate) sigmas: Vec<f64>,
    pub(crate) kernel_path: String,
    /// Step and switch costs on the full batch, which the predicted speedups use.
    pub(crate) costs: StepCosts,
    pub(crate) runs: Vec<RunRow>,
    pub(crate) calibration: Option<CalibrationReport>,
    pub(crate) claim: Option<String>,
    pub(crate) total_seconds: f64,
}
