//! Layers over NHWC activations (`batch x height x width x channels`, channels fastest), with
//! weights held per precision and products through the kernels' `matmul` and `conv2d`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_kernels::blocks::BlockQ8_0;
use haagenti_adaptive_kernels::{
    Conv2dParams, Conv2dShape, ConvWeight, Format, Parallelism, QuantizedTensor, conv2d_residual,
    dequantize_row_q8_0, matmul, quantize_row_q8_0,
};
use rayon::prelude::*;

use crate::math;
use crate::strided::{self, Layout};
use crate::{NnError, Result};

/// Largest activation magnitude an integer matmul takes as is: Q8_0 activation blocks store
/// `max|x| / 127` as f16 (largest finite 65504), so above `127 * 65504` the scale would overflow
/// to infinity and the product be NaN without an error from the kernel. Larger activations (this
/// UNet's decoder reaches 1.3e7) are scaled down by a power of two first.
pub const Q8_ACTIVATION_LIMIT: f32 = 127.0 * 65504.0;

/// Values a block format quantizes together; a weight row (its `k`) must be a multiple of it.
const BLOCK_LEN: usize = 32;

/// What the residual of a refined product is multiplied by before its own Q8_0 rounding: it is
/// at most half a step of the first rounding (`max|x| / 254` of its block), and 2^8 (exact in
/// f32) lifts its block scales back to the first pass's range, out of f16's subnormals.
const RESIDUAL_SCALE: f32 = 256.0;

/// Pixels a task of [`GroupNorm::forward`] sums or writes: a 128x128 image splits into 16, enough
/// for rayon to balance two to eight cores, while a task's per-channel sums stay small.
const NORM_RUN_PIXELS: usize = 1024;

/// Query rows an attention task computes scores for: 128 rows of the 32x32 level's 1024 keys
/// are 512 KiB of scores, which stay in L2 from the q·kᵀ product through softmax to the product
/// with v, and that level splits into 8 tasks an image for the pool.
const QUERY_BLOCK: usize = 128;

/// The precision a layer with `k` values per weight row runs at when the step asks for `p`:
/// `p` itself, or for an integer block format that cannot split `k`, the nearest float precision
/// in fidelity order (BF16).
pub fn effective_precision(p: Precision, k: usize) -> Precision {
    if p.is_integer() && !k.is_multiple_of(BLOCK_LEN) {
        Precision::ALL
            .into_iter()
            .find(|q| *q > p && !q.is_integer())
            .unwrap_or(Precision::FP32)
    } else {
        p
    }
}

/// A weight matrix `n x k` (row `j` multiplies an activation row of `k` values) with an f32
/// master and resident copies per requested precision, like the runtime's `WeightSet` (but with
/// only the forward layout: inference never multiplies by the transpose).
///
/// A convolution's weight is the same matrix with `k = kernel * kernel * in_channels` in
/// `(ky, kx, c)` order; the resident copies are the kernels' [`ConvWeight`]s, whose tensor a
/// fully connected layer (a 1x1 "convolution") multiplies directly.
#[derive(Clone, Debug)]
pub struct Weights {
    name: String,
    n: usize,
    k: usize,
    kernel: usize,
    master: Vec<f32>,
    resident: BTreeMap<Precision, ConvWeight>,
    refine_activations: bool,
}

impl Weights {
    /// Weights named `name` over a row-major `n x k` master.
    ///
    /// # Errors
    ///
    /// [`NnError::ShapeMismatch`] when `master.len() != n * k`, [`NnError::Model`] for a
    /// non-finite value or an `n * k` that overflows.
    pub fn new(name: impl Into<String>, n: usize, k: usize, master: Vec<f32>) -> Result<Self> {
        let name = name.into();
        // An overflowing n * k is refused rather than wrapped onto some buffer's length.
        let expected = n.checked_mul(k).ok_or_else(|| {
            NnError::Model(format!("{name}: a {n} x {k} weight matrix overflows"))
        })?;
        if master.len() != expected {
            return Err(NnError::ShapeMismatch {
                what: "weight matrix",
                expected,
                actual: master.len(),
            });
        }
        if master.iter().any(|v| !v.is_finite()) {
            return Err(NnError::Model(format!("{name} has a non-finite weight")));
        }
        Ok(Self {
            name,
            n,
            k,
            kernel: 1,
            master,
            resident: BTreeMap::new(),
            refine_activations: false,
        })
    }

    /// The weights of a `kernel x kernel` convolution: `k` must be `kernel² * in_channels`.
    ///
    /// # Errors
    ///
    /// As [`Weights::new`], and [`NnError::Model`] when `kernel²` does not divide `k`.
    pub fn conv(
        name: impl Into<String>,
        n: usize,
        k: usize,
        kernel: usize,
        master: Vec<f32>,
    ) -> Result<Self> {
        let mut w = Self::new(name, n, k, master)?;
        if kernel == 0 || !k.is_multiple_of(kernel * kernel) {
            return Err(NnError::Model(format!(
                "{}: rows of {k} values are not {kernel}x{kernel} taps",
                w.name
            )));
        }
        w.kernel = kernel;
        Ok(w)
    }

    /// The weight's name in the checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Output features (`n`).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input features (`k`).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Whether integer products also multiply the Q8_0 rounding residual of the activations
    /// (see [`Weights::set_refine_activations`]).
    pub fn refines_activations(&self) -> bool {
        self.refine_activations
    }

    /// With `refine`, an integer product runs twice on the same integer weights: on the
    /// activations' Q8_0 blocks, then on what that rounding lost (`x - dequant(q8(x))`, itself
    /// rounded to Q8_0), so that the activations reach the weights with about 16 bits instead
    /// of 8 while the weights stay at the step's precision. It doubles the layer's integer
    /// work, so it is for the layers whose input one Q8_0 scale per 32 values cannot hold (see
    /// [`TerrainUnet`](crate::TerrainUnet) for which and why). Float precisions ignore it.
    pub fn set_refine_activations(&mut self, refine: bool) {
        self.refine_activations = refine;
    }

    /// The precision this layer runs at when a step asks for `p`.
    pub fn effective(&self, p: Precision) -> Precision {
        effective_precision(p, self.k)
    }

    /// Makes the copy for steps at `p` resident (stored at [`Weights::effective`]); loading a
    /// resident precision does nothing.
    ///
    /// # Errors
    ///
    /// [`NnError::Kernel`] when the kernels reject the shape.
    pub fn load(&mut self, p: Precision) -> Result<()> {
        if !self.resident.contains_key(&p) {
            let format = Format::from_precision(self.effective(p));
            let q = QuantizedTensor::quantize(format, self.n, self.k, &self.master)?;
            let c_in = self.k / (self.kernel * self.kernel);
            let w = ConvWeight::from_tensor(q, c_in, self.kernel, self.kernel)?;
            self.resident.insert(p, w);
        }
        Ok(())
    }

    /// Drops the copy for `p`, if resident.
    pub fn release(&mut self, p: Precision) {
        self.resident.remove(&p);
    }

    /// Bytes of the resident copies.
    pub fn resident_bytes(&self) -> usize {
        self.resident.values().map(|w| w.tensor().byte_len()).sum()
    }

    /// Parameters (`n * k`).
    pub fn params(&self) -> usize {
        self.n * self.k
    }

    /// Whether the kernels' Q8_0 activation blocks are runs of 32 consecutive input values
    /// (a matmul row, or a pixel's channels of a convolution that quantizes pixels once), so
    /// that rounding the whole input as one row rounds it as they do.
    fn pixel_blocks(&self) -> bool {
        (self.k / (self.kernel * self.kernel)).is_multiple_of(BLOCK_LEN)
    }

    /// The resident copy for `p`.
    fn resident(&self, p: Precision) -> Result<&ConvWeight> {
        self.resident.get(&p).ok_or(NnError::NotResident(p))
    }

    /// `out = product(x) + addends` where `product` multiplies activations by this layer's copy
    /// for `p` (a matmul or a convolution), writes every value of its output and adds the
    /// [`Addends`] it is given. For integer weights the activations are first brought into
    /// [`Q8_ACTIVATION_LIMIT`] by a power of two, and with [`Weights::set_refine_activations`]
    /// their rounding residual is multiplied too.
    fn product(
        &self,
        x: &[f32],
        out: &mut [f32],
        p: Precision,
        addends: Addends<'_>,
        product: impl Fn(&[f32], &mut [f32], Addends<'_>) -> Result<()>,
    ) -> Result<()> {
        if !self.effective(p).is_integer() {
            return product(x, out, addends);
        }
        // The product is linear in x: run it on x / 2^e and scale the result back by 2^e. A
        // power of two changes no mantissa, so each Q8_0 block quantizes the same values it
        // would have, just with a representable scale.
        let (x, scale) = guarded(x);
        // Unscaled, the first pass adds the addends in its tiles; scaled, they are added
        // after the scale is undone (dividing them by 2^e would take a pass of its own).
        let fused = scale == 1.0;
        product(&x, out, if fused { addends } else { Addends::NONE })?;
        if self.refine_activations && self.pixel_blocks() {
            // x = dequant(q8(x)) + residual, up to one f32 subtraction.
            let mut blocks = vec![BlockQ8_0::default(); x.len() / BLOCK_LEN];
            quantize_row_q8_0(&x, &mut blocks);
            let mut residual = vec![0f32; x.len()];
            dequantize_row_q8_0(&blocks, &mut residual);
            residual
                .par_iter_mut()
                .zip(x.par_iter())
                .for_each(|(r, v)| *r = (v - *r) * RESIDUAL_SCALE);
            let (residual, residual_scale) = guarded(&residual);
            let mut extra = vec![0f32; out.len()];
            product(&residual, &mut extra, Addends::NONE)?;
            let f = residual_scale / RESIDUAL_SCALE;
            out.par_iter_mut()
                .zip(extra.par_iter())
                .for_each(|(o, e)| *o += f * e);
        }
        if !fused {
            out.par_iter_mut().for_each(|o| *o *= scale);
            addends.add_to(out);
        }
        Ok(())
    }

    /// `x[m x k] · Wᵀ` at `p`.
    fn matmul(&self, x: &[f32], m: usize, p: Precision) -> Result<Vec<f32>> {
        let w = self.resident(p)?.tensor();
        let mut out = vec![0f32; m * self.n];
        self.product(x, &mut out, p, Addends::NONE, |x, out, addends| {
            matmul(x, m, w, out, Parallelism::Rayon)?;
            addends.add_to(out);
            Ok(())
        })?;
        Ok(out)
    }
}

/// What a product adds to its output: a bias per output column and a residual of the output's
/// shape, each optional.
#[derive(Clone, Copy, Debug)]
struct Addends<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
}

impl Addends<'_> {
    const NONE: Addends<'static> = Addends {
        bias: None,
        residual: None,
    };

    /// Adds them to `out` in one pass (rows of the bias's length).
    fn add_to(&self, out: &mut [f32]) {
        let n = self.bias.map_or(1, <[f32]>::len).max(1);
        match (self.bias, self.residual) {
            (None, None) => {}
            (Some(bias), None) => out.par_chunks_mut(n).for_each(|row| {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }),
            (None, Some(r)) => out
                .par_iter_mut()
                .zip(r.par_iter())
                .for_each(|(v, r)| *v += r),
            (Some(bias), Some(r)) => {
                out.par_chunks_mut(n)
                    .zip(r.par_chunks(n))
                    .for_each(|(row, res)| {
                        for ((v, r), b) in row.iter_mut().zip(res).zip(bias) {
                            *v += r + b;
                        }
                    })
            }
        }
    }
}

/// `x` scaled into [`Q8_ACTIVATION_LIMIT`] by a power of two, and that power (1 when `x` is
/// in range, borrowed as is).
fn guarded(x: &[f32]) -> (Cow<'_, [f32]>, f32) {
    let amax = x.par_iter().map(|v| v.abs()).reduce(|| 0.0, f32::max);
    if amax <= Q8_ACTIVATION_LIMIT {
        return (Cow::Borrowed(x), 1.0);
    }
    let s = (amax / Q8_ACTIVATION_LIMIT).log2().ceil().exp2();
    (Cow::Owned(x.par_iter().map(|v| v / s).collect()), s)
}

/// A fully connected layer `y = x Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weights, `out x in`.
    pub weight: Weights,
    /// The bias, `out` values.
    pub bias: Vec<f32>,
}

impl Linear {
    /// `out[m x n] = x[m x k] Wᵀ + b` at `p`.
    ///
    /// # Errors
    ///
    /// [`NnError::NotResident`] or a kernel error (e.g. a length that disagrees).
    pub fn forward(&self, x: &[f32], m: usize, p: Precision) -> Result<Vec<f32>> {
        let mut out = self.weight.matmul(x, m, p)?;
        for row in out.chunks_exact_mut(self.bias.len().max(1)) {
            row.iter_mut().zip(&self.bias).for_each(|(o, b)| *o += b);
        }
        Ok(out)
    }
}

/// Spatial size of an NHWC activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Samples.
    pub batch: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels.
    pub channels: usize,
}

impl Shape {
    /// Pixels over the batch.
    pub fn pixels(&self) -> usize {
        self.batch * self.height * self.width
    }

    /// Values.
    pub fn len(&self) -> usize {
        self.pixels() * self.channels
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same pixels with `channels` channels.
    pub fn with_channels(self, channels: usize) -> Self {
        Self { channels, ..self }
    }
}

/// A stride-1 2-D convolution with a square odd kernel and "same" zero padding, on NHWC
/// activations, through the kernels' [`conv2d`]: a 1x1 convolution is a plain matmul, a 3x3 one
/// a matmul over im2col tiles, where for integer weights each input pixel is rounded to Q8_0
/// once and its blocks are shared by the nine taps that read it.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The weights, `out_channels x (kernel * kernel * in_channels)` in `(ky, kx, c)` order.
    pub weight: Weights,
    /// The bias, `out_channels` values.
    pub bias: Vec<f32>,
    /// Kernel size (1 or 3 here).
    pub kernel: usize,
    /// Input channels.
    pub in_channels: usize,
}

impl Conv2d {
    /// A convolution from PyTorch's `[out, in, kh, kw]` weight layout.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] for a non-square or even kernel, a bias of the wrong length, or
    /// weights whose count is not the shape's.
    pub fn from_oihw(name: &str, dims: &[usize], oihw: &[f32], bias: Vec<f32>) -> Result<Self> {
        let &[o, i, kh, kw] = dims else {
            return Err(NnError::Model(format!(
                "{name}: conv weight shape {dims:?}"
            )));
        };
        if kh != kw || kh % 2 == 0 || bias.len() != o {
            return Err(NnError::Model(format!(
                "{name}: conv weight {dims:?} with bias of {}",
                bias.len()
            )));
        }
        // The values must be exactly the shape's before the reordered copy is allocated and
        // indexed: the dims come from a file.
        let len = [o, i, kh, kw]
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d));
        if len != Some(oihw.len()) {
            return Err(NnError::Model(format!(
                "{name}: conv weight shape {dims:?} for {} values",
                oihw.len()
            )));
        }
        let k = kh * kw * i;
        if oihw.len() != o * k {
            return Err(NnError::ShapeMismatch {
                what: "conv weight",
                expected: o * k,
                actual: oihw.len(),
            });
        }
        let mut w = vec![0f32; o * k];
        for oc in 0..o {
            for ic in 0..i {
                for y in 0..kh {
                    for x in 0..kw {
                        w[oc * k + (y * kw + x) * i + ic] = oihw[((oc * i + ic) * kh + y) * kw + x];
                    }
                }
            }
        }
        Ok(Self {
            weight: Weights::conv(name, o, k, kh, w)?,
            bias,
            kernel: kh,
            in_channels: i,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.rows()
    }

    /// The convolution of `x` (NHWC, `shape`) at `p`; with `residual` (same shape as the output)
    /// the result is added to it.
    ///
    /// # Errors
    ///
    /// [`NnError::ShapeMismatch`] when `x` or `residual` has the wrong length, or a kernel error.
    pub fn forward(
        &self,
        x: &[f32],
        shape: Shape,
        residual: Option<&[f32]>,
        p: Precision,
    ) -> Result<Vec<f32>> {
        let c = self.in_channels;
        let o = self.out_channels();
        if shape.channels != c || x.len() != shape.len() {
            return Err(NnError::ShapeMismatch {
                what: "convolution input",
                expected: shape.pixels() * c,
                actual: x.len(),
            });
        }
        let pixels = shape.pixels();
        if let Some(r) = residual
            && r.len() != pixels * o
        {
            return Err(NnError::ShapeMismatch {
                what: "convolution residual",
                expected: pixels * o,
                actual: r.len(),
            });
        }
        let w = self.weight.resident(p)?;
        let conv_shape = Conv2dShape::new(
            shape.batch,
            shape.height,
            shape.width,
            w,
            Conv2dParams::new(1, self.kernel / 2),
        )?;
        let mut out = vec![0f32; pixels * o];
        let addends = Addends {
            bias: Some(&self.bias),
            residual,
        };
        // The kernels add bias and residual to each output tile while it is in cache.
        self.weight.product(x, &mut out, p, addends, |x, out, a| {
            Ok(conv2d_residual(
                x,
                &conv_shape,
                w,
                a.bias,
                a.residual,
                out,
                Parallelism::Rayon,
            )?)
        })?;
        Ok(out)
    }
}

/// Group normalization as the exporter wrote it: an InstanceNormalization over `groups` groups
/// (with its own per-group scale and bias), then a per-channel scale and shift.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    /// Groups the channels are split into.
    pub groups: usize,
    /// Added to the variance.
    pub epsilon: f32,
    /// The InstanceNormalization's scale, one a group.
    pub group_scale: Vec<f32>,
    /// The InstanceNormalization's bias, one a group.
    pub group_bias: Vec<f32>,
    /// The per-channel scale (PyTorch's `weight`).
    pub gamma: Vec<f32>,
    /// The per-channel shift (PyTorch's `bias`).
    pub beta: Vec<f32>,
}

/// A per-sample `x * (1 + scale) + shift` after a norm (the UNet's scale-shift conditioning);
/// `scale_shift` is `batch x 2C`, scales first.
#[derive(Clone, Copy, Debug)]
pub struct Modulation<'a> {
    /// `batch x 2C` values.
    pub scale_shift: &'a [f32],
}

impl GroupNorm {
    /// Normalizes `x` (NHWC) in f32, applies the optional modulation, then SiLU when `silu`.
    ///
    /// # Errors
    ///
    /// [`NnError::ShapeMismatch`] for wrong lengths, [`NnError::Model`] when the channels do not
    /// split into the groups.
    pub fn forward(
        &self,
        x: &[f32],
        shape: Shape,
        modulation: Option<Modulation<'_>>,
        silu: bool,
    ) -> Result<Vec<f32>> {
        let affine = self.affine(x, shape, modulation)?;
        let chunk = affine.run * shape.channels;
        // The output is written once, never zeroed first: each run of pixels is copied into
        // its place and transformed there, while it is in cache (zeroing a fresh 2 MiB
        // buffer was a pass of its own over memory).
        let mut out = Vec::with_capacity(x.len());
        out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(chunk.max(1))
            .zip(x.par_chunks(chunk.max(1)))
            .enumerate()
            .for_each(|(i, (dst, src))| affine.apply(i, dst.write_copy_of_slice(src), silu));
        // SAFETY: the chunks above cover the first `x.len()` values of the capacity, and
        // `write_copy_of_slice` initialized each one (a chunk and its source have one length).
        unsafe { out.set_len(x.len()) };
        Ok(out)
    }

    /// [`GroupNorm::forward`] in place, for an input the caller no longer needs: no output
    /// buffer to allocate, and the write pass stores to the lines it has just read.
    ///
    /// # Errors
    ///
    /// As [`GroupNorm::forward`].
    pub fn forward_in_place(
        &self,
        x: &mut [f32],
        shape: Shape,
        modulation: Option<Modulation<'_>>,
        silu: bool,
    ) -> Result<()> {
        let affine = self.affine(x, shape, modulation)?;
        let chunk = affine.run * shape.channels;
        x.par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, run)| affine.apply(i, run, silu));
        Ok(())
    }

    /// The per-sample, per-channel multiply-add the norm (and modulation) comes to on `x`.
    fn affine(
        &self,
        x: &[f32],
        shape: Shape,
        modulation: Option<Modulation<'_>>,
    ) -> Result<Affine> {
        let c = shape.channels;
        if c != self.gamma.len() || !c.is_multiple_of(self.groups) {
            return Err(NnError::Model(format!(
                "group norm over {} channels in {} groups got {c} channels",
                self.gamma.len(),
                self.groups
            )));
        }
        if x.len() != shape.len() {
            return Err(NnError::ShapeMismatch {
                what: "group norm input",
                expected: shape.len(),
                actual: x.len(),
            });
        }
        if let Some(m) = modulation
            && m.scale_shift.len() != shape.batch * 2 * c
        {
            return Err(NnError::ShapeMismatch {
                what: "scale-shift",
                expected: shape.batch * 2 * c,
                actual: m.scale_shift.len(),
            });
        }
        let hw = shape.height * shape.width;
        let cpg = c / self.groups;
        // Work is split into runs of pixels, not images: at batch 1 a split by image left one
        // of the two cores idle, and a norm at 128x128 is a sixth of an FP32 evaluation.
        let run = NORM_RUN_PIXELS.min(hw.max(1));
        let runs_per_image = hw.div_ceil(run);
        // Per-channel sums in f64 for each run, one pass over the image; runs then add up.
        let partial: Vec<(Vec<f64>, Vec<f64>)> = (0..shape.batch * runs_per_image)
            .into_par_iter()
            .map(|i| {
                let (b, r) = (i / runs_per_image, i % runs_per_image);
                let start = b * hw + r * run;
                let end = (b * hw + ((r + 1) * run).min(hw)) * c;
                let mut sum = vec![0f64; c];
                let mut sq = vec![0f64; c];
                for px in x[start * c..end].chunks_exact(c) {
                    for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(px) {
                        *s += v as f64;
                        *q += (v as f64) * (v as f64);
                    }
                }
                (sum, sq)
            })
            .collect();
        let count = (hw * cpg) as f64;
        let mut mul = vec![0f32; shape.batch * c];
        let mut add = vec![0f32; shape.batch * c];
        for b in 0..shape.batch {
            let image = &partial[b * runs_per_image..(b + 1) * runs_per_image];
            for g in 0..self.groups {
                let chans = g * cpg..(g + 1) * cpg;
                let s: f64 = image.iter().flat_map(|(s, _)| &s[chans.clone()]).sum();
                let q: f64 = image.iter().flat_map(|(_, q)| &q[chans.clone()]).sum();
                let mean = s / count;
                let var = (q / count - mean * mean).max(0.0);
                let rstd = 1.0 / (var + self.epsilon as f64).sqrt();
                for ch in chans {
                    // y = ((x - mean) rstd gs + gb) gamma + beta, as one multiply-add.
                    let mut a = rstd * self.group_scale[g] as f64 * self.gamma[ch] as f64;
                    let mut bias = (self.group_bias[g] as f64
                        - mean * rstd * self.group_scale[g] as f64)
                        * self.gamma[ch] as f64
                        + self.beta[ch] as f64;
                    if let Some(m) = modulation {
                        let ss = &m.scale_shift[b * 2 * c..(b + 1) * 2 * c];
                        let scale = 1.0 + ss[ch] as f64;
                        a *= scale;
                        bias = bias * scale + ss[c + ch] as f64;
                    }
                    mul[b * c + ch] = a as f32;
                    add[b * c + ch] = bias as f32;
                }
            }
        }
        Ok(Affine {
            mul,
            add,
            run,
            hw,
            channels: c,
        })
    }
}

/// `y = x * mul + add` per sample and channel (a norm with its scale, shift and modulation
/// folded in), applied to runs of `run` pixels.
struct Affine {
    /// `batch x C` factors.
    mul: Vec<f32>,
    /// `batch x C` terms.
    add: Vec<f32>,
    /// Pixels a run.
    run: usize,
    /// Pixels an image.
    hw: usize,
    /// Channels.
    channels: usize,
}

impl Affine {
    /// Transforms run `i` (its pixels' values, in place), then SiLU when `silu`.
    fn apply(&self, i: usize, values: &mut [f32], silu: bool) {
        let c = self.channels;
        // A run may straddle two images when `run` does not divide `hw`: the image is found
        // per pixel.
        let first = i * self.run;
        for (j, px) in values.chunks_exact_mut(c).enumerate() {
            let b = (first + j) / self.hw;
            let (mul, add) = (&self.mul[b * c..(b + 1) * c], &self.add[b * c..(b + 1) * c]);
            for ((v, &m), &a) in px.iter_mut().zip(mul).zip(add) {
                *v = *v * m + a;
            }
        }
        // SiLU over the whole run at once, so that its exp vectorizes.
        if silu {
            math::silu_in_place(values);
        }
    }
}

/// `x * sigmoid(x)`, with [`math::exp`](crate::math::exp).
pub fn silu_f32(x: f32) -> f32 {
    math::silu_scalar(x)
}

/// SiLU in place (vectorized where the kernels' path has SIMD).
pub fn silu(x: &mut [f32]) {
    x.par_chunks_mut(NORM_RUN_PIXELS)
        .for_each(math::silu_in_place);
}

/// 2x2 average pooling with stride 2 (even sizes); returns the pooled activation and its shape.
pub fn avg_pool2(x: &[f32], shape: Shape) -> (Vec<f32>, Shape) {
    let (h2, w2, c) = (shape.height / 2, shape.width / 2, shape.channels);
    let out_shape = Shape {
        height: h2,
        width: w2,
        ..shape
    };
    let mut out = vec![0f32; out_shape.len()];
    let w = shape.width;
    out.par_chunks_mut(w2 * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, y) = (row / h2, row % h2);
            let top = &x[((b * shape.height + 2 * y) * w) * c..][..w * c];
            let bottom = &x[((b * shape.height + 2 * y + 1) * w) * c..][..w * c];
            for xo in 0..w2 {
                let (l, r) = (2 * xo * c, (2 * xo + 1) * c);
                for ch in 0..c {
                    out[xo * c + ch] =
                        0.25 * (top[l + ch] + top[r + ch] + bottom[l + ch] + bottom[r + ch]);
                }
            }
        });
    (out, out_shape)
}

/// Nearest-neighbour 2x up-sampling; returns the activation and its shape.
pub fn upsample_nearest2(x: &[f32], shape: Shape) -> (Vec<f32>, Shape) {
    let c = shape.channels;
    let out_shape = Shape {
        height: 2 * shape.height,
        width: 2 * shape.width,
        ..shape
    };
    let (w, w2) = (shape.width, out_shape.width);
    let mut out = vec![0f32; out_shape.len()];
    out.par_chunks_mut(w2 * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, y) = (row / out_shape.height, row % out_shape.height);
            let src = &x[((b * shape.height + y / 2) * w) * c..][..w * c];
            for xo in 0..w2 {
                out[xo * c..(xo + 1) * c].copy_from_slice(&src[(xo / 2) * c..(xo / 2 + 1) * c]);
            }
        });
    (out, out_shape)
}

/// The Fourier timestep embedding `[cos(t f), sin(t f)]` for each `t`, `2 * freqs.len()` values a
/// row.
pub fn fourier_embedding(t: &[f32], freqs: &[f32]) -> Vec<f32> {
    t.iter()
        .flat_map(|&t| {
            let cos = freqs.iter().map(move |&f| (t * f).cos());
            let sin = freqs.iter().map(move |&f| (t * f).sin());
            cos.chain(sin)
        })
        .collect()
}

/// Multi-head self-attention over the pixels of a normalized NHWC activation, as guided
/// diffusion's `QKVAttention`: a 1x1 `qkv` convolution whose output channels are q, k and v (each
/// split into heads of `head_channels`), `softmax(q kᵀ) v` per head with q and k both scaled by
/// `head_channels^-1/4`, then the 1x1 `proj_out` convolution. The q·k and weights·v products run
/// in f32 (activations by activations) on strided views of the qkv output, with no per-head
/// copies; softmax is f32.
#[derive(Clone, Debug)]
pub struct Attention {
    /// The q, k, v projection.
    pub qkv: Conv2d,
    /// The output projection.
    pub proj_out: Conv2d,
    /// Channels a head.
    pub head_channels: usize,
    /// The factor q and k are multiplied by.
    pub qk_scale: f32,
}

impl Attention {
    /// `residual + proj_out(attention(qkv(h)))` for the normalized activation `h`.
    ///
    /// # Errors
    ///
    /// [`NnError::ShapeMismatch`] for wrong lengths, or a matmul error.
    pub fn forward(
        &self,
        h: &[f32],
        shape: Shape,
        residual: &[f32],
        p: Precision,
    ) -> Result<Vec<f32>> {
        let c = shape.channels;
        let d = self.head_channels;
        if d == 0 || !c.is_multiple_of(d) || self.qkv.out_channels() != 3 * c {
            return Err(NnError::Model(format!(
                "attention over {c} channels in heads of {d} with {} qkv channels",
                self.qkv.out_channels()
            )));
        }
        let qkv = self.qkv.forward(h, shape, None, p)?;
        let t = shape.height * shape.width;
        let heads = c / d;
        let mut attended = vec![0f32; shape.pixels() * c];
        // Tasks are blocks of query rows of one image, each doing every head: its scores
        // (QUERY_BLOCK x t) stay in cache through softmax and the product with v, and q, k and
        // v are read in place from the qkv rows (3c values a pixel), each head's result
        // written into its columns of `attended`.
        let mut tasks = Vec::new();
        for (b, image) in attended.chunks_mut((t * c).max(1)).enumerate() {
            for (block, rows) in image.chunks_mut(QUERY_BLOCK * c).enumerate() {
                tasks.push((b, block * QUERY_BLOCK, rows));
            }
        }
        let scale = self.qk_scale * self.qk_scale;
        let stride = 3 * c;
        let task = |(b, first, out): (usize, usize, &mut [f32])| -> Result<()> {
            let rows = out.len() / c;
            let image = &qkv[b * t * stride..(b + 1) * t * stride];
            let mut scores = vec![0f32; rows * t];
            let s = Layout::rows(0, rows, t, t);
            for head in 0..heads {
                let off = head * d;
                let q = Layout::rows(first * stride + off, rows, d, stride);
                let kt = Layout::rows(c + off, t, d, stride).transposed();
                // (q s)·(k s) = s² q·k: the scale is applied once, to the scores.
                strided::gemm(&mut scores, s, image, q, image, kt, scale)?;
                scores.chunks_exact_mut(t).for_each(softmax_in_place);
                let v = Layout::rows(2 * c + off, t, d, stride);
                strided::gemm(
                    out,
                    Layout::rows(off, rows, d, c),
                    &scores,
                    s,
                    image,
                    v,
                    1.0,
                )?;
            }
            Ok(())
        };
        let macs = 2 * shape.batch * heads * t * t * d;
        if Parallelism::Rayon.for_work(macs) == Parallelism::Rayon {
            tasks.into_par_iter().try_for_each(task)?;
        } else {
            tasks.into_iter().try_for_each(task)?;
        }
        self.proj_out.forward(&attended, shape, Some(residual), p)
    }
}

/// Softmax of one row, in place, with the maximum subtracted first.
fn softmax_in_place(row: &mut [f32]) {
    math::softmax_in_place(row);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
    }

    /// A direct NCHW-indexed convolution, the oracle for the im2col path.
    fn conv_direct(
        x: &[f32],
        s: Shape,
        oihw: &[f32],
        o: usize,
        kk: usize,
        bias: &[f32],
    ) -> Vec<f32> {
        let (h, w, c) = (s.height, s.width, s.channels);
        let r = (kk / 2) as isize;
        let mut out = vec![0f32; s.pixels() * o];
        for b in 0..s.batch {
            for y in 0..h {
                for xo in 0..w {
                    for oc in 0..o {
                        let mut acc = bias[oc] as f64;
                        for ic in 0..c {
                            for ky in 0..kk {
                                for kx in 0..kk {
                                    let (sy, sx) = (
                                        y as isize + ky as isize - r,
                                        xo as isize + kx as isize - r,
                                    );
                                    if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                                        let v =
                                            x[((b * h + sy as usize) * w + sx as usize) * c + ic];
                                        acc +=
                                            (v * oihw[((oc * c + ic) * kk + ky) * kk + kx]) as f64;
                                    }
                                }
                            }
                        }
                        out[((b * h + y) * w + xo) * o + oc] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv_matches_direct_convolution() {
        for (kk, c, o) in [(3, 5, 7), (1, 32, 3), (3, 1, 32)] {
            let s = Shape {
                batch: 2,
                height: 6,
                width: 5,
                channels: c,
            };
            let x = values(s.len(), 1.0);
            let w = values(o * c * kk * kk, 2.0);
            let bias = values(o, 3.0);
            let mut conv = Conv2d::from_oihw("t", &[o, c, kk, kk], &w, bias.clone()).unwrap();
            conv.weight.load(Precision::FP32).unwrap();
            let got = conv.forward(&x, s, None, Precision::FP32).unwrap();
            let want = conv_direct(&x, s, &w, o, kk, &bias);
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() < 1e-4, "{g} vs {e} (k {kk})");
            }
            let res = values(want.len(), 4.0);
            let got = conv.forward(&x, s, Some(&res), Precision::FP32).unwrap();
            assert!((got[7] - want[7] - res[7]).abs() < 1e-4);
        }
    }

    #[test]
    fn blocks_that_cannot_split_are_promoted() {
        assert_eq!(effective_precision(Precision::INT8, 9), Precision::BF16);
        assert_eq!(effective_precision(Precision::INT4, 1), Precision::BF16);
        assert_eq!(effective_precision(Precision::INT4, 288), Precision::INT4);
        assert_eq!(effective_precision(Precision::FP16, 9), Precision::FP16);
        let mut w = Weights::new("first", 32, 9, values(288, 0.0)).unwrap();
        w.load(Precision::INT8).unwrap();
        assert_eq!(w.resident_bytes(), 32 * 9 * 2);
        w.release(Precision::INT8);
        assert_eq!(w.resident_bytes(), 0);
    }

    #[test]
    fn integer_matmul_survives_activations_beyond_the_q8_scale_range() {
        let mut lin = Linear {
            weight: Weights::new("l", 2, 32, values(64, 0.0)).unwrap(),
            bias: vec![0.0; 2],
        };
        lin.weight.load(Precision::INT8).unwrap();
        let x: Vec<f32> = values(32, 1.0).iter().map(|v| v * 3e7).collect();
        let got = lin.forward(&x, 1, Precision::INT8).unwrap();
        let small: Vec<f32> = x.iter().map(|v| v / 4.0).collect();
        let want = lin.forward(&small, 1, Precision::INT8).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.is_finite() && (g - 4.0 * w).abs() <= 1e-6 * g.abs(),
                "{g} vs {w}"
            );
        }
        assert!(matches!(
            lin.forward(&x, 1, Precision::FP32),
            Err(NnError::NotResident(_))
        ));
    }

    #[test]
    fn refined_activations_reach_the_weights_with_about_16_bits() {
        // One 32-value block whose values span four orders of magnitude, the small ones
        // carrying the product (the weights are large where the activations are small).
        let x: Vec<f32> = (0..32)
            .map(|i| if i % 8 == 0 { 300.0 } else { 0.05 * (i as f32) })
            .collect();
        let w: Vec<f32> = (0..3 * 32)
            .map(|i| {
                if i % 8 == 0 {
                    1e-4
                } else {
                    1.0 + (i % 5) as f32
                }
            })
            .collect();
        let exact: Vec<f64> = w
            .chunks_exact(32)
            .map(|row| row.iter().zip(&x).map(|(a, b)| (a * b) as f64).sum())
            .collect();
        let mut lin = Linear {
            weight: Weights::new("l", 3, 32, w).unwrap(),
            bias: vec![0.0; 3],
        };
        lin.weight.load(Precision::INT8).unwrap();
        let err = |lin: &Linear, x: &[f32], scale: f64| -> f64 {
            let got = lin.forward(x, 1, Precision::INT8).unwrap();
            got.iter()
                .zip(&exact)
                .map(|(g, e)| ((*g as f64 - e * scale) / (e * scale)).abs())
                .fold(0.0, f64::max)
        };
        let plain = err(&lin, &x, 1.0);
        lin.weight.set_refine_activations(true);
        assert!(lin.weight.refines_activations());
        let refined = err(&lin, &x, 1.0);
        // The weights' own rounding (about 1/254 of a block's largest) is what remains.
        assert!(plain > 0.05 && refined < 0.01, "{plain} {refined}");
        // With the range guard too (300 * 2^16 is beyond the f16 scale range).
        let big: Vec<f32> = x.iter().map(|v| v * 65536.0).collect();
        let guarded = err(&lin, &big, 65536.0);
        assert!(guarded < 0.01, "{guarded}");
    }

    #[test]
    fn group_norm_normalizes_each_group() {
        let s = Shape {
            batch: 2,
            height: 4,
            width: 4,
            channels: 8,
        };
        let x: Vec<f32> = values(s.len(), 0.5)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 3.0 + (i % 8) as f32)
            .collect();
        let gn = GroupNorm {
            groups: 4,
            epsilon: 1e-5,
            group_scale: vec![1.0; 4],
            group_bias: vec![0.0; 4],
            gamma: vec![1.0; 8],
            beta: vec![0.0; 8],
        };
        let y = gn.forward(&x, s, None, false).unwrap();
        for b in 0..2 {
            for g in 0..4 {
                let vals: Vec<f32> = (0..16)
                    .flat_map(|p| (0..2).map(move |j| (p, 2 * g + j)))
                    .map(|(p, ch)| y[(b * 16 + p) * 8 + ch])
                    .collect();
                let mean: f32 = vals.iter().sum::<f32>() / 32.0;
                let var: f32 = vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 32.0;
                assert!(
                    mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                    "{mean} {var}"
                );
            }
        }
        let ss: Vec<f32> = (0..2 * 16)
            .map(|i| if i % 16 < 8 { 1.0 } else { 0.5 })
            .collect();
        let z = gn
            .forward(&x, s, Some(Modulation { scale_shift: &ss }), true)
            .unwrap();
        assert!((z[5] - silu_f32(y[5] * 2.0 + 0.5)).abs() < 1e-5);
    }

    #[test]
    fn pool_and_upsample_are_inverse_on_constant_blocks() {
        let s = Shape {
            batch: 1,
            height: 2,
            width: 2,
            channels: 3,
        };
        let x = values(s.len(), 0.0);
        let (up, us) = upsample_nearest2(&x, s);
        assert_eq!((us.height, us.width), (4, 4));
        let (down, ds) = avg_pool2(&up, us);
        assert_eq!(ds, s);
        for (a, b) in down.iter().zip(&x) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut row = vec![1000.0, 1001.0, 999.0];
        softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] > row[0] && row[0] > row[2]);
    }
}
