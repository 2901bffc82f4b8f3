//! What `haagenti-adaptive run --model terrain` needs besides the runtime's calibration API: the
//! model spec, loading with a one-line error when the file is missing, the noise levels and
//! executor for each sampler, the initial noise, and the quality measure (PSNR and SSIM).
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_nn::sampling::{TerrainSpec, consistency_sigmas};
//!
//! let spec: TerrainSpec = "terrain:difficulty=0.5".parse()?;
//! assert_eq!(spec.difficulty, 0.5);
//! // Three evaluations, at the first three of four Karras levels (the fourth, sigma_min, would
//! // return its input), then the clean output.
//! let s = consistency_sigmas(3, 0.002)?;
//! assert_eq!(s.len(), 4);
//! assert_eq!((s[0], s[3]), (80.0, 0.0));
//! assert!((s[1] - 9.72).abs() < 0.01 && (s[2] - 0.470).abs() < 0.001);
//! # Ok::<(), haagenti_adaptive_nn::NnError>(())
//! ```

use std::str::FromStr;

use haagenti_adaptive_runtime::{
    ConsistencyNoise, Denoiser, Executor, ImageShape, Quality, Sampler, gaussian_noise,
    image_quality, karras_sigmas,
};

use crate::{NnError, Result, TERRAIN_SIZE, TerrainUnet, terrain_model_path};

/// The largest noise level the network was trained at (EDM's `sigma_max`): the initial noise's
/// standard deviation.
pub const TERRAIN_SIGMA_MAX: f64 = 80.0;

/// Karras et al.'s `rho`, which spaces the noise levels.
pub const KARRAS_RHO: f64 = 7.0;

/// The shape of one height map.
pub const TERRAIN_SHAPE: ImageShape = ImageShape {
    width: TERRAIN_SIZE,
    height: TERRAIN_SIZE,
};

/// Default evaluations of a consistency run: 3.
///
/// Consistency models are made for 1 to about 4 evaluations; one gives a schedule nothing to
/// choose, and three put one evaluation at high noise (80), one at middle noise (9.72) and one at
/// low noise (0.47), so that precision can be tried at each regime (the seed's claim is about
/// noise levels) while a whole default `run` (a dozen schedules, calibration and checks) stays
/// within a few minutes on 2 cores.
///
/// The package's own generator samples this network in exactly one step, and more steps do
/// not make its samples better: each re-noised evaluation leaves noise it does not remove
/// (measured here: mean neighbour difference of the FP32 height maps 1.2 grey levels of 255 at
/// one step, 10 at two, 22 at three). Quality here is against FP32 from the same noise, which
/// that does not change; `--steps 1` is the package's sampling.
pub const DEFAULT_CONSISTENCY_STEPS: usize = 3;

/// `terrain[:difficulty=D]`: the terrain network conditioned on difficulty `D` in `[0, 1]`
/// (default 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TerrainSpec {
    /// The difficulty every sample is conditioned on.
    pub difficulty: f32,
}

impl Default for TerrainSpec {
    fn default() -> Self {
        Self { difficulty: 1.0 }
    }
}

impl FromStr for TerrainSpec {
    type Err = NnError;

    /// Parses `terrain` or `terrain:difficulty=D`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| NnError::InvalidInput(format!("model spec {s:?}: {why}"));
        let rest = match s.trim().split_once(':') {
            None if s.trim() == "terrain" => return Ok(Self::default()),
            Some(("terrain", rest)) => rest,
            _ => return Err(bad("expected terrain[:difficulty=D]".into())),
        };
        let mut spec = Self::default();
        for part in rest.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            match key.trim() {
                "difficulty" => {
                    let d: f32 = value
                        .trim()
                        .parse()
                        .map_err(|e| bad(format!("difficulty {value:?}: {e}")))?;
                    if !(0.0..=1.0).contains(&d) {
                        return Err(bad(format!("difficulty {d} is outside [0, 1]")));
                    }
                    spec.difficulty = d;
                }
                other => return Err(bad(format!("unknown key {other:?} (expected difficulty)"))),
            }
        }
        Ok(spec)
    }
}

impl TerrainSpec {
    /// Reads the network from the model folder ([`terrain_model_path`]) and sets its difficulty.
    ///
    /// # Errors
    ///
    /// [`NnError::ModelMissing`] (naming `cargo xtask fetch-model terrain`) when the file is not
    /// there or no model folder is known, and [`TerrainUnet::from_file`]'s errors.
    pub fn load(&self) -> Result<TerrainUnet> {
        let missing = |path: String| NnError::ModelMissing {
            path,
            model: "terrain",
        };
        let path = terrain_model_path()
            .ok_or_else(|| missing("the model folder (set HAAGENTI_MODELS or HOME)".into()))?;
        if !path.is_file() {
            return Err(missing(path.display().to_string()));
        }
        let mut unet = TerrainUnet::from_file(&path)?;
        unet.set_difficulty(self.difficulty)?;
        Ok(unet)
    }
}

/// The noise levels of a `steps`-evaluation consistency run: the first `steps` levels of a
/// Karras list of `steps + 1` levels from [`TERRAIN_SIGMA_MAX`] to `sigma_min`, then 0.
///
/// Song et al.'s multistep sampler picks its levels from such a Karras grid; the grid's last
/// level is `sigma_min`, where a consistency function is the identity (its boundary condition),
/// so an evaluation there would cost a step and change nothing. It is left out: the run's last
/// evaluation returns the clean sample.
///
/// # Errors
///
/// [`NnError::InvalidInput`] for zero steps or a `sigma_min` that is not in `(0, 80)`.
pub fn consistency_sigmas(steps: usize, sigma_min: f64) -> Result<Vec<f64>> {
    if steps == 0 || !(sigma_min > 0.0 && sigma_min < TERRAIN_SIGMA_MAX) {
        return Err(NnError::InvalidInput(format!(
            "consistency sampling needs at least 1 step and 0 < sigma_min < 80, got {steps} steps and {sigma_min}"
        )));
    }
    let mut s = karras_sigmas(steps + 1, sigma_min, TERRAIN_SIGMA_MAX, KARRAS_RHO)
        .map_err(|e| NnError::InvalidInput(e.to_string()))?;
    // [80, ..., sigma_min, 0] -> [80, ..., 0].
    s.remove(steps);
    Ok(s)
}

/// The executor of a `steps`-step run of `unet` with `sampler`: for the consistency sampler,
/// [`consistency_sigmas`] with the per-step noise drawn from `seed`; for Euler, Heun and DDIM
/// (the network as `D(x; sigma)`), Karras levels from 80 to the network's `sigma_min`, then 0.
///
/// Every run and calibration branch of one executor draws the same consistency noise, so runs
/// at different precisions differ only by precision.
///
/// # Errors
///
/// As [`consistency_sigmas`].
pub fn terrain_executor(
    unet: &TerrainUnet,
    sampler: Sampler,
    steps: usize,
    seed: u64,
) -> Result<Executor> {
    let sigma_min = f64::from(unet.edm().sigma_min);
    let invalid = |e: haagenti_adaptive_runtime::RuntimeError| NnError::InvalidInput(e.to_string());
    if sampler == Sampler::Consistency {
        let exec =
            Executor::new(sampler, consistency_sigmas(steps, sigma_min)?).map_err(invalid)?;
        Ok(exec.with_noise(ConsistencyNoise { seed, sigma_min }))
    } else {
        let sigmas =
            karras_sigmas(steps, sigma_min, TERRAIN_SIGMA_MAX, KARRAS_RHO).map_err(invalid)?;
        Executor::new(sampler, sigmas).map_err(invalid)
    }
}

/// `batch` initial height maps of pure noise at [`TERRAIN_SIGMA_MAX`] from `seed`.
///
/// # Errors
///
/// [`NnError::InvalidInput`] when `batch` height maps pass the runtime's
/// [`MAX_BATCH_VALUES`](haagenti_adaptive_runtime::MAX_BATCH_VALUES) (checked before
/// allocating).
pub fn terrain_noise(unet: &TerrainUnet, batch: usize, seed: u64) -> Result<Vec<f32>> {
    gaussian_noise(batch, unet.dim(), TERRAIN_SIGMA_MAX, seed)
        .map_err(|e| NnError::InvalidInput(e.to_string()))
}

/// The quality of a batch of height maps against the FP32 batch from the same noise, for
/// [`calibrate`](haagenti_adaptive_runtime::calibrate)'s `quality`: PSNR over the data range 2
/// (the network clips to `[-1, 1]`) and mean SSIM ([`image_quality`]).
///
/// # Errors
///
/// As [`image_quality`].
pub fn terrain_quality(
    reference: &[f32],
    samples: &[f32],
) -> haagenti_adaptive_runtime::Result<Quality> {
    image_quality(reference, samples, TERRAIN_SHAPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject() {
        assert_eq!("terrain".parse::<TerrainSpec>().unwrap().difficulty, 1.0);
        assert_eq!(
            "terrain:difficulty=0"
                .parse::<TerrainSpec>()
                .unwrap()
                .difficulty,
            0.0
        );
        for bad in [
            "gmm",
            "terrain:difficulty=2",
            "terrain:difficulty=x",
            "terrain:size=3",
            "terrain:difficulty",
            "terrainx",
        ] {
            assert!(bad.parse::<TerrainSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn consistency_levels_leave_out_sigma_min() {
        for steps in 1..6 {
            let s = consistency_sigmas(steps, 0.002).unwrap();
            assert_eq!(s.len(), steps + 1);
            assert_eq!(s[0], 80.0);
            assert_eq!(s[steps], 0.0);
            assert!(s.windows(2).all(|w| w[0] > w[1]));
            assert!(s[..steps].iter().all(|&v| v > 0.002));
        }
        assert!(consistency_sigmas(0, 0.002).is_err());
        assert!(consistency_sigmas(3, 0.0).is_err());
        assert!(consistency_sigmas(3, 90.0).is_err());
    }
}
