//! What `run` measured: the types `run.rs` fills and `report.rs` prints, so neither imports the
//! other.

use haagenti_adaptive::Precision;
use haagenti_adaptive::runtime::{CalibrationReport, GmmConfig, ImageShape, Sampler, StepCosts};
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
    /// Mean SSIM against FP32, for models whose samples are images.
    pub(crate) ssim: Option<f64>,
    pub(crate) mse: f64,
    pub(crate) schedule: Vec<Precision>,
    pub(crate) step_seconds: Vec<f64>,
}

/// The model a run measured. The mixture serialises as its configuration (`k`, `d`, `s`,
/// `seed`), as before there was a choice.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum ModelInfo {
    Gmm(GmmConfig),
    Terrain {
        name: &'static str,
        difficulty: f32,
        /// Parameters of its Conv and Gemm weights.
        params: usize,
        /// Layers a block format cannot split, and the precision they run at instead of INT8 or
        /// INT4.
        promoted_layers: Vec<String>,
    },
}

/// Final samples of every run, for models whose samples are images (the report's pictures).
#[derive(Clone, Debug)]
pub(crate) struct RunImages {
    pub(crate) shape: ImageShape,
    /// The FP32 run's samples.
    pub(crate) reference: Vec<f32>,
    /// Run names, in `RunOutput::runs` order.
    pub(crate) names: Vec<String>,
    /// Each run's samples, in the same order.
    pub(crate) samples: Vec<Vec<f32>>,
}

/// Everything `run` measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunOutput {
    pub(crate) model: ModelInfo,
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
    /// The FP32 run's measured time over the time the cost table predicts for it: far from 1,
    /// the machine's speed changed between measuring costs and timing runs, and the predicted
    /// speedups compare two different machines.
    pub(crate) cost_pace: f64,
    /// The calibrated schedule's PSNR bound, when given as one.
    pub(crate) min_psnr: Option<f64>,
    pub(crate) total_seconds: f64,
    #[serde(skip)]
    pub(crate) images: Option<RunImages>,
}
