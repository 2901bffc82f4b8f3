//! The model interface the samplers and the executor drive.

use haagenti_adaptive_core::Precision;
use serde::{Deserialize, Serialize};

use crate::{Result, RuntimeError};

/// A model that estimates the clean sample from a noisy one, with weights held per precision.
///
/// Samples are `batch x dim` row-major f32. The executor calls [`Denoiser::load`] before a
/// precision's first use and [`Denoiser::release`] after its last, so [`Denoiser::resident_bytes`]
/// follows the plan.
pub trait Denoiser {
    /// Values in one sample.
    fn dim(&self) -> usize;

    /// Makes the weights at `p` resident (quantizing them if needed). Loading a resident precision
    /// does nothing.
    ///
    /// # Errors
    ///
    /// When the weights cannot be stored at `p`.
    fn load(&mut self, p: Precision) -> Result<()>;

    /// Drops the weights at `p` if resident.
    fn release(&mut self, p: Precision);

    /// Bytes of all resident weight copies.
    fn resident_bytes(&self) -> usize;

    /// Writes the denoised estimate `D(x; sigma)` computed with the weights at `p` into `out`.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::NotResident`] when `p` is not loaded, [`RuntimeError::ShapeMismatch`] when
    /// `x` or `out` is not `batch * dim` long, or a kernel error.
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        sigma: f64,
        p: Precision,
        out: &mut [f32],
    ) -> Result<()>;
}

/// The precision of one model evaluation, possibly blended with a second during a gradual
/// transition.
///
/// With `blend = Some(Blend { from, factor })` the estimate is
/// `(1 - factor) * D_from + factor * D_precision`: 0 is all `from`, 1 all `precision` (the seed's
/// `blend_at` convention).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    /// The precision the step runs at (the one being transitioned to).
    pub precision: Precision,
    /// The precision being left and the weight of `precision`, during a gradual transition.
    pub blend: Option<Blend>,
}

/// The second precision of a blended step and the weight of the step's own precision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blend {
    /// The precision being left.
    pub from: Precision,
    /// Weight of the target precision, in `[0, 1]`.
    pub factor: f32,
}

impl Mix {
    /// A plain step at `p`.
    pub const fn at(p: Precision) -> Self {
        Self {
            precision: p,
            blend: None,
        }
    }

    /// The precisions this step evaluates: one, or two when blending.
    pub fn precisions(&self) -> impl Iterator<Item = Precision> + '_ {
        std::iter::once(self.precision).chain(self.blend.map(|b| b.from))
    }
}

/// Evaluates `den` at `mix`, blending two evaluations when the mix says so.
///
/// `scratch` must be as long as `out`; it holds the second evaluation.
///
/// # Errors
///
/// The denoiser's errors, and [`RuntimeError::InvalidPlan`] for a blend factor outside `[0, 1]`.
pub fn denoise_mix<D: Denoiser + ?Sized>(
    den: &mut D,
    x: &[f32],
    batch: usize,
    sigma: f64,
    mix: Mix,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<()> {
    den.denoise(x, batch, sigma, mix.precision, out)?;
    if let Some(Blend { from, factor }) = mix.blend {
        if !(0.0..=1.0).contains(&factor) {
            return Err(RuntimeError::InvalidPlan(format!(
                "blend factor {factor} is outside [0, 1]"
            )));
        }
        scratch.resize(out.len(), 0.0);
        den.denoise(x, batch, sigma, from, scratch)?;
        for (o, s) in out.iter_mut().zip(scratch.iter()) {
            *o = factor * *o + (1.0 - factor) * s;
        }
    }
    Ok(())
}
