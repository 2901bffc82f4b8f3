//! Layers over NHWC activations (`batch x height x width x channels`, channels fastest), with
//! weights held per precision and products through the kernels' `matmul`.

use std::collections::BTreeMap;

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, matmul, matmul_acc};
use rayon::prelude::*;

use crate::{NnError, Result};

/// Largest activation magnitude an integer matmul takes as is: Q8_0 activation blocks store
/// `max|x| / 127` as f16 (largest finite 65504), so above `127 * 65504` the scale would overflow
/// to infinity and the product be NaN without an error from the kernel. Larger activations (this
/// UNet's decoder reaches 1.3e7) are scaled down by a power of two first.
pub const Q8_ACTIVATION_LIMIT: f32 = 127.0 * 65504.0;

/// Values a block format quantizes together; a weight row (its `k`) must be a multiple of it.
const BLOCK_LEN: usize = 32;

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
#[derive(Clone, Debug)]
pub struct Weights {
    name: String,
    n: usize,
    k: usize,
    master: Vec<f32>,
    resident: BTreeMap<Precision, QuantizedTensor>,
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
            master,
            resident: BTreeMap::new(),
        })
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
            self.resident.insert(p, q);
        }
        Ok(())
    }

    /// Drops the copy for `p`, if resident.
    pub fn release(&mut self, p: Precision) {
        self.resident.remove(&p);
    }

    /// Bytes of the resident copies.
    pub fn resident_bytes(&self) -> usize {
        self.resident.values().map(QuantizedTensor::byte_len).sum()
    }

    /// Parameters (`n * k`).
    pub fn params(&self) -> usize {
        self.n * self.k
    }

    /// `out[m x n] = beta * out + x[m x k] · Wᵀ` at `p`.
    fn apply(&self, x: &[f32], m: usize, out: &mut [f32], beta: f32, p: Precision) -> Result<()> {
        let w = self.resident.get(&p).ok_or(NnError::NotResident(p))?;
        if self.effective(p).is_integer() {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            if amax > Q8_ACTIVATION_LIMIT {
                // The product is linear in x: run it on x / 2^e and scale the result back by
                // alpha = 2^e. A power of two changes no mantissa, so each Q8_0 block quantizes
                // the same values it would have, just with a representable scale.
                let e = (amax / Q8_ACTIVATION_LIMIT).log2().ceil();
                let alpha = e.exp2();
                let scaled: Vec<f32> = x.iter().map(|v| v / alpha).collect();
                matmul_acc(&scaled, m, w, out, alpha, beta, Parallelism::Rayon)?;
                return Ok(());
            }
        }
        matmul_acc(x, m, w, out, 1.0, beta, Parallelism::Rayon)?;
        Ok(())
    }
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
    /// [`NnError::NotResident`], [`NnError::ActivationRange`] or a kernel error.
    pub fn forward(&self, x: &[f32], m: usize, p: Precision) -> Result<Vec<f32>> {
        let n = self.weight.rows();
        let mut out: Vec<f32> = (0..m).flat_map(|_| self.bias.iter().copied()).collect();
        self.weight.apply(x, m, &mut out, 1.0, p)?;
        debug_assert_eq!(out.len(), m * n);
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

/// Bytes of im2col rows built at once: large enough for the matmul to run long panels, small
/// enough to stay out of the way of the activations.
const IM2COL_TILE_BYTES: usize = 8 << 20;

/// A stride-1 2-D convolution with a square odd kernel and "same" zero padding, on NHWC
/// activations. Its weight row `o` holds `kernel x kernel x in_channels` values in
/// `(ky, kx, c)` order, so a 1x1 convolution is a plain matmul and a 3x3 one a matmul over im2col
/// rows built a bounded tile at a time.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The weights, `out_channels x (kernel * kernel * in_channels)`.
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
            weight: Weights::new(name, o, k, w)?,
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
    /// [`NnError::ShapeMismatch`] when `x` or `residual` has the wrong length, or a matmul error.
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
        let mut out: Vec<f32> = match residual {
            Some(r) if r.len() == pixels * o => r
                .chunks_exact(o)
                .flat_map(|row| row.iter().zip(&self.bias).map(|(a, b)| a + b))
                .collect(),
            Some(r) => {
                return Err(NnError::ShapeMismatch {
                    what: "convolution residual",
                    expected: pixels * o,
                    actual: r.len(),
                });
            }
            None => (0..pixels)
                .flat_map(|_| self.bias.iter().copied())
                .collect(),
        };
        if self.kernel == 1 {
            self.weight.apply(x, pixels, &mut out, 1.0, p)?;
            return Ok(out);
        }
        let (h, w, kk) = (shape.height, shape.width, self.kernel);
        let k = kk * kk * c;
        let rows_per_tile = (IM2COL_TILE_BYTES / (4 * k * w)).clamp(1, h);
        let mut cols = Vec::new();
        for b in 0..shape.batch {
            let image = &x[b * h * w * c..(b + 1) * h * w * c];
            for y0 in (0..h).step_by(rows_per_tile) {
                let rows = rows_per_tile.min(h - y0);
                cols.resize(rows * w * k, 0.0);
                im2col(image, h, w, c, kk, y0, rows, &mut cols);
                let start = (b * h + y0) * w * o;
                self.weight.apply(
                    &cols,
                    rows * w,
                    &mut out[start..start + rows * w * o],
                    1.0,
                    p,
                )?;
            }
        }
        Ok(out)
    }
}

/// Fills `cols` (`rows * w` rows of `kk * kk * c`) with the zero-padded patches of output rows
/// `y0 .. y0 + rows` of one image.
#[allow(
    clippy::too_many_arguments,
    reason = "one image's geometry, passed flat to keep the inner loop free of indirection"
)]
fn im2col(
    image: &[f32],
    h: usize,
    w: usize,
    c: usize,
    kk: usize,
    y0: usize,
    rows: usize,
    cols: &mut [f32],
) {
    let k = kk * kk * c;
    let r = (kk / 2) as isize;
    cols.par_chunks_mut(w * k)
        .enumerate()
        .for_each(|(dy, row_cols)| {
            let y = (y0 + dy) as isize;
            for xo in 0..w {
                let patch = &mut row_cols[xo * k..(xo + 1) * k];
                for ky in 0..kk {
                    let sy = y + ky as isize - r;
                    for kx in 0..kk {
                        let sx = xo as isize + kx as isize - r;
                        let dst = &mut patch[(ky * kk + kx) * c..(ky * kk + kx + 1) * c];
                        if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                            dst.fill(0.0);
                        } else {
                            let src = (sy as usize * w + sx as usize) * c;
                            dst.copy_from_slice(&image[src..src + c]);
                        }
                    }
                }
            }
        });
    debug_assert_eq!(cols.len(), rows * w * k);
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
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw * c)
            .zip(x.par_chunks(hw * c))
            .enumerate()
            .for_each(|(b, (out, x))| {
                // Per-channel sums in f64, then groups: one pass over the image.
                let mut sum = vec![0f64; c];
                let mut sq = vec![0f64; c];
                for px in x.chunks_exact(c) {
                    for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(px) {
                        *s += v as f64;
                        *q += (v as f64) * (v as f64);
                    }
                }
                let count = (hw * cpg) as f64;
                let mut mul = vec![0f32; c];
                let mut add = vec![0f32; c];
                for g in 0..self.groups {
                    let s: f64 = sum[g * cpg..(g + 1) * cpg].iter().sum();
                    let q: f64 = sq[g * cpg..(g + 1) * cpg].iter().sum();
                    let mean = s / count;
                    let var = (q / count - mean * mean).max(0.0);
                    let rstd = 1.0 / (var + self.epsilon as f64).sqrt();
                    for ch in g * cpg..(g + 1) * cpg {
                        // y = ((x - mean) rstd gs + gb) gamma + beta, as one multiply-add.
                        let a = rstd * self.group_scale[g] as f64 * self.gamma[ch] as f64;
                        let bias = (self.group_bias[g] as f64
                            - mean * rstd * self.group_scale[g] as f64)
                            * self.gamma[ch] as f64
                            + self.beta[ch] as f64;
                        let (mut a, mut bias) = (a, bias);
                        if let Some(m) = modulation {
                            let ss = &m.scale_shift[b * 2 * c..(b + 1) * 2 * c];
                            let scale = 1.0 + ss[ch] as f64;
                            a *= scale;
                            bias = bias * scale + ss[c + ch] as f64;
                        }
                        mul[ch] = a as f32;
                        add[ch] = bias as f32;
                    }
                }
                for (po, px) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for ch in 0..c {
                        let v = px[ch] * mul[ch] + add[ch];
                        po[ch] = if silu { silu_f32(v) } else { v };
                    }
                }
            });
        Ok(out)
    }
}

/// `x * sigmoid(x)`.
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SiLU in place.
pub fn silu(x: &mut [f32]) {
    x.par_iter_mut().for_each(|v| *v = silu_f32(*v));
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
/// in f32 (activations by activations) through the kernels' `F32` matmul; softmax is f32.
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
        let qkv = self.qkv.forward(h, shape, None, p)?;
        let t = shape.height * shape.width;
        let d = self.head_channels;
        let heads = c / d;
        let mut attended = vec![0f32; shape.pixels() * c];
        let mut q = vec![0f32; t * d];
        let mut k = vec![0f32; t * d];
        let mut vt = vec![0f32; d * t];
        let mut scores = vec![0f32; t * t];
        let mut head_out = vec![0f32; t * d];
        for b in 0..shape.batch {
            let rows = &qkv[b * t * 3 * c..(b + 1) * t * 3 * c];
            for head in 0..heads {
                for (s, row) in rows.chunks_exact(3 * c).enumerate() {
                    let off = head * d;
                    for j in 0..d {
                        q[s * d + j] = row[off + j] * self.qk_scale;
                        k[s * d + j] = row[c + off + j] * self.qk_scale;
                        vt[j * t + s] = row[2 * c + off + j];
                    }
                }
                let kt = QuantizedTensor::quantize(Format::F32, t, d, &k)?;
                matmul(&q, t, &kt, &mut scores, Parallelism::Rayon)?;
                scores.par_chunks_mut(t).for_each(softmax_in_place);
                let v = QuantizedTensor::quantize(Format::F32, d, t, &vt)?;
                matmul(&scores, t, &v, &mut head_out, Parallelism::Rayon)?;
                let dst = &mut attended[b * t * c..(b + 1) * t * c];
                for (s, o) in head_out.chunks_exact(d).enumerate() {
                    dst[s * c + head * d..s * c + (head + 1) * d].copy_from_slice(o);
                }
            }
        }
        self.proj_out.forward(&attended, shape, Some(residual), p)
    }
}

/// Softmax of one row, in place, with the maximum subtracted first.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
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
