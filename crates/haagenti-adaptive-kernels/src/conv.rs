//! 2-D convolution of NHWC f32 activations with weights in any [`Format`], as a GEMM over the
//! matmul kernels.
//!
//! - [`ConvWeight`] holds `c_out` filters of `kh x kw` taps over `c_in` channels as a
//!   [`QuantizedTensor`] of `c_out` rows in tap-major, channel-minor order
//!   (`[c_out, kh, kw, c_in]`), so that one row of the im2col matrix is the taps' channel vectors
//!   back to back and each weight row multiplies it directly. [`ConvWeight::from_oihw`] takes
//!   PyTorch's `[c_out, c_in, kh, kw]` and reorders once.
//! - [`Conv2dShape`] checks the input size, the weight and the [`Conv2dParams`] (stride, zero
//!   padding) once and carries the output size; [`conv2d`] checks the slices against it.
//! - [`conv2d`] gathers a tile of output pixels' receptive fields at a time (im2col, a bounded
//!   buffer of about [`IM2COL_TILE_BYTES`]) and multiplies each tile by the weight rows with
//!   [`matmul`](crate::matmul); tiles are split over threads by [`Parallelism`]. A 1x1
//!   convolution with stride 1 and no padding is a plain matmul on the input.
//! - [`conv2d_scalar`] is the oracle: a direct loop over output pixels, taps and channels with the
//!   dequantized weight, summed in f64.
//!
//! For block-format weights the activations go through Q8_0, as in [`matmul`](crate::matmul).
//! With `c_in` a multiple of 32 every input pixel is quantized once, to `c_in / 32` blocks, and
//! the im2col tiles gather those blocks (zero blocks for padding, which is what zeros quantize
//! to), so the taps that share a pixel share its quantization and the matmul runs on the
//! gathered blocks directly; the result is that of the direct convolution of the
//! Q8_0-rounded input. Other `c_in` (blocks that straddle taps) gather f32 and quantize each
//! im2col row, as [`matmul`](crate::matmul) does.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_kernels::{
//!     Conv2dParams, Conv2dShape, ConvWeight, Format, Parallelism, conv2d, conv2d_scalar,
//! };
//!
//! // A 3x3 convolution, 32 -> 8 channels, on one 5x6 image, stride 1, padding 1 ("same").
//! let (c_in, c_out, h, w) = (32, 8, 5, 6);
//! let filters: Vec<f32> = (0..c_out * c_in * 9).map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5).collect();
//! let weight = ConvWeight::from_oihw(Format::Q8_0, c_out, c_in, 3, 3, &filters)?;
//! let shape = Conv2dShape::new(1, h, w, &weight, Conv2dParams::new(1, 1))?;
//! assert_eq!((shape.out_height(), shape.out_width()), (5, 6));
//!
//! let x: Vec<f32> = (0..shape.input_len()).map(|i| (i as f32 * 0.37).sin()).collect();
//! let bias = vec![0.25; c_out];
//! let mut out = vec![0.0; shape.output_len()];
//! conv2d(&x, &shape, &weight, Some(&bias), &mut out, Parallelism::Rayon)?;
//!
//! // Against the direct convolution with the dequantized weight: Q8_0 activations cost little.
//! let mut exact = vec![0.0; shape.output_len()];
//! conv2d_scalar(&x, &shape, &weight, Some(&bias), &mut exact)?;
//! for (a, b) in out.iter().zip(&exact) {
//!     assert!((a - b).abs() < 0.05, "{a} vs {b}");
//! }
//! # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
//! ```

use rayon::prelude::*;

use crate::blocks::QK;
use crate::error::{KernelError, Result};
use crate::format::Format;
use crate::matmul::pack::{PackedX, RowBlock};
use crate::matmul::{Parallelism, matmul_acc_scan, matmul_q8_activations};
use crate::tensor::QuantizedTensor;

/// Bytes of im2col rows one tile gathers, at most (about; a tile holds at least one row): small
/// enough that a tile and its weights stay in the L2 cache of one core while the matmul reads it.
pub const IM2COL_TILE_BYTES: usize = 512 << 10;

/// Stride and zero padding of a 2-D convolution, each `[vertical, horizontal]`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::Conv2dParams;
///
/// let p = Conv2dParams::new(2, 1);
/// assert_eq!((p.stride, p.padding), ([2, 2], [1, 1]));
/// assert_eq!(Conv2dParams::default(), Conv2dParams::new(1, 0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between output pixels, in input pixels: `[rows, columns]`, each at least 1.
    pub stride: [usize; 2],
    /// Zero pixels added on each side of the input: `[top and bottom, left and right]`.
    pub padding: [usize; 2],
}

impl Conv2dParams {
    /// The same stride and padding in both directions.
    pub const fn new(stride: usize, padding: usize) -> Conv2dParams {
        Conv2dParams {
            stride: [stride, stride],
            padding: [padding, padding],
        }
    }
}

impl Default for Conv2dParams {
    /// Stride 1, no padding.
    fn default() -> Self {
        Conv2dParams::new(1, 0)
    }
}

/// The filters of a 2-D convolution in one [`Format`]: `c_out` rows of `kh * kw * c_in` values in
/// tap-major, channel-minor order (`[c_out, kh, kw, c_in]`).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{ConvWeight, Format};
///
/// // PyTorch order [c_out, c_in, kh, kw]: 1 filter, 2 channels, 1x2 taps.
/// let w = ConvWeight::from_oihw(Format::F32, 1, 2, 1, 2, &[1.0, 2.0, 3.0, 4.0])?;
/// // Stored [c_out, kh, kw, c_in]: tap 0's channels, then tap 1's.
/// assert_eq!(w.tensor().to_f32(), [1.0, 3.0, 2.0, 4.0]);
/// assert_eq!((w.c_out(), w.c_in(), w.kernel()), (1, 2, [1, 2]));
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ConvWeight {
    tensor: QuantizedTensor,
    c_in: usize,
    kernel: [usize; 2],
}

impl ConvWeight {
    /// Quantizes filters given in PyTorch's `[c_out, c_in, kh, kw]` order into `format`,
    /// reordering them to `[c_out, kh, kw, c_in]` first.
    ///
    /// # Errors
    ///
    /// - [`KernelError::ShapeMismatch`] when `values.len() != c_out * c_in * kh * kw`;
    /// - [`KernelError::SizeOverflow`] when that count overflows;
    /// - as [`QuantizedTensor::quantize`] for the values (a block format needs
    ///   `kh * kw * c_in` to be a multiple of 32).
    pub fn from_oihw(
        format: Format,
        c_out: usize,
        c_in: usize,
        kh: usize,
        kw: usize,
        values: &[f32],
    ) -> Result<ConvWeight> {
        let row = patch_len(c_in, kh, kw)?;
        let len = checked_len(c_out, row)?;
        if values.len() != len {
            return Err(KernelError::ShapeMismatch {
                what: "values",
                expected: len,
                actual: values.len(),
            });
        }
        let taps = kh * kw;
        // [o][i][tap] -> [o][tap][i]: a transpose of each filter's c_in x taps matrix.
        let mut ohwi = vec![0.0f32; len];
        for (src, dst) in values.chunks_exact(row).zip(ohwi.chunks_exact_mut(row)) {
            for (i, channel) in src.chunks_exact(taps).enumerate() {
                for (tap, &v) in channel.iter().enumerate() {
                    dst[tap * c_in + i] = v;
                }
            }
        }
        ConvWeight::from_ohwi(format, c_out, c_in, kh, kw, &ohwi)
    }

    /// Quantizes filters already in `[c_out, kh, kw, c_in]` order into `format`.
    ///
    /// # Errors
    ///
    /// As [`from_oihw`](Self::from_oihw).
    pub fn from_ohwi(
        format: Format,
        c_out: usize,
        c_in: usize,
        kh: usize,
        kw: usize,
        values: &[f32],
    ) -> Result<ConvWeight> {
        let row = patch_len(c_in, kh, kw)?;
        let tensor = QuantizedTensor::quantize(format, c_out, row, values)?;
        Ok(ConvWeight {
            tensor,
            c_in,
            kernel: [kh, kw],
        })
    }

    /// Wraps a tensor of `c_out` rows already in `[c_out, kh, kw, c_in]` order (e.g. read from a
    /// GGUF file and reordered there).
    ///
    /// # Errors
    ///
    /// [`KernelError::ShapeMismatch`] when the tensor's rows are not `kh * kw * c_in` long;
    /// [`KernelError::SizeOverflow`] when that count overflows.
    pub fn from_tensor(
        tensor: QuantizedTensor,
        c_in: usize,
        kh: usize,
        kw: usize,
    ) -> Result<ConvWeight> {
        let row = patch_len(c_in, kh, kw)?;
        if tensor.cols() != row {
            return Err(KernelError::ShapeMismatch {
                what: "weight row (kh * kw * c_in)",
                expected: row,
                actual: tensor.cols(),
            });
        }
        Ok(ConvWeight {
            tensor,
            c_in,
            kernel: [kh, kw],
        })
    }

    /// The weights as a `[c_out, kh * kw * c_in]` matrix.
    pub fn tensor(&self) -> &QuantizedTensor {
        &self.tensor
    }

    /// The storage format.
    pub fn format(&self) -> Format {
        self.tensor.format()
    }

    /// Output channels (filters).
    pub fn c_out(&self) -> usize {
        self.tensor.rows()
    }

    /// Input channels.
    pub fn c_in(&self) -> usize {
        self.c_in
    }

    /// Taps `[kh, kw]`: rows and columns of the kernel window.
    pub fn kernel(&self) -> [usize; 2] {
        self.kernel
    }
}

/// `kh * kw * c_in`, the values of one filter, or [`KernelError::SizeOverflow`].
fn patch_len(c_in: usize, kh: usize, kw: usize) -> Result<usize> {
    checked_len(checked_len(kh, kw)?, c_in)
}

/// `a * b`, or [`KernelError::SizeOverflow`].
fn checked_len(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or(KernelError::SizeOverflow { rows: a, cols: b })
}

/// A checked 2-D convolution problem: NHWC input `[batch, height, width, c_in]`, a weight of
/// `c_out` filters of `kh x kw` taps, the [`Conv2dParams`], and the NHWC output
/// `[batch, out_height, out_width, c_out]` they give.
///
/// `out_height = (height + 2 * padding[0] - kh) / stride[0] + 1`, and likewise for the width.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Conv2dParams, Conv2dShape, ConvWeight, Format};
///
/// let w = ConvWeight::from_ohwi(Format::F16, 4, 3, 3, 3, &[0.5; 4 * 3 * 3 * 3])?;
/// let s = Conv2dShape::new(2, 7, 8, &w, Conv2dParams::new(2, 1))?;
/// assert_eq!((s.out_height(), s.out_width()), (4, 4));
/// assert_eq!((s.input_len(), s.output_len()), (2 * 7 * 8 * 3, 2 * 4 * 4 * 4));
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    batch: usize,
    height: usize,
    width: usize,
    c_in: usize,
    c_out: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    out_height: usize,
    out_width: usize,
    /// `batch * out_height * out_width`: rows of the im2col matrix.
    pixels: usize,
    /// `kh * kw * c_in`: columns of the im2col matrix.
    patch: usize,
}

impl Conv2dShape {
    /// Checks a convolution of a `[batch, height, width, weight.c_in()]` input by `weight`.
    ///
    /// # Errors
    ///
    /// - [`KernelError::InvalidConvolution`] for a zero stride, or a kernel window larger than
    ///   the padded input (no output pixel), or an empty kernel window;
    /// - [`KernelError::SizeOverflow`] when an input, output or im2col size overflows `usize`.
    pub fn new(
        batch: usize,
        height: usize,
        width: usize,
        weight: &ConvWeight,
        params: Conv2dParams,
    ) -> Result<Conv2dShape> {
        let [kh, kw] = weight.kernel;
        if params.stride.contains(&0) {
            return Err(KernelError::InvalidConvolution {
                reason: "stride must be at least 1",
            });
        }
        if kh == 0 || kw == 0 {
            return Err(KernelError::InvalidConvolution {
                reason: "kernel window must have at least one tap",
            });
        }
        let out_dim = |size: usize, pad: usize, k: usize, stride: usize| -> Result<usize> {
            let padded = pad.checked_mul(2).and_then(|p| p.checked_add(size)).ok_or(
                KernelError::SizeOverflow {
                    rows: size,
                    cols: pad,
                },
            )?;
            if padded < k {
                return Err(KernelError::InvalidConvolution {
                    reason: "kernel window larger than the padded input",
                });
            }
            Ok((padded - k) / stride + 1)
        };
        let out_height = out_dim(height, params.padding[0], kh, params.stride[0])?;
        let out_width = out_dim(width, params.padding[1], kw, params.stride[1])?;
        let (c_in, c_out) = (weight.c_in, weight.c_out());
        let pixels = checked_len(checked_len(batch, out_height)?, out_width)?;
        checked_len(pixels, c_out)?;
        let in_pixels = checked_len(checked_len(batch, height)?, width)?;
        checked_len(in_pixels, c_in)?;
        Ok(Conv2dShape {
            batch,
            height,
            width,
            c_in,
            c_out,
            kernel: weight.kernel,
            params,
            out_height,
            out_width,
            pixels,
            patch: weight.tensor.cols(),
        })
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Input rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Input columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Input channels.
    pub fn c_in(&self) -> usize {
        self.c_in
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Taps `[kh, kw]`.
    pub fn kernel(&self) -> [usize; 2] {
        self.kernel
    }

    /// Stride and padding.
    pub fn params(&self) -> Conv2dParams {
        self.params
    }

    /// Output rows.
    pub fn out_height(&self) -> usize {
        self.out_height
    }

    /// Output columns.
    pub fn out_width(&self) -> usize {
        self.out_width
    }

    /// Values of the NHWC input, `batch * height * width * c_in`.
    pub fn input_len(&self) -> usize {
        self.batch * self.height * self.width * self.c_in
    }

    /// Values of the NHWC output, `batch * out_height * out_width * c_out`.
    pub fn output_len(&self) -> usize {
        self.pixels * self.c_out
    }

    /// The im2col GEMM `[m, k] x [k, n]` this convolution is: output pixels, `kh * kw * c_in`,
    /// `c_out`.
    pub fn gemm_dims(&self) -> (usize, usize, usize) {
        (self.pixels, self.patch, self.c_out)
    }

    /// Whether the im2col matrix is the input itself (1x1 taps, stride 1, no padding).
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.params.stride == [1, 1] && self.params.padding == [0, 0]
    }

    /// Checks `weight`, `x`, `bias` and `out` against this shape.
    fn check(
        &self,
        x: &[f32],
        weight: &ConvWeight,
        bias: Option<&[f32]>,
        out: &[f32],
    ) -> Result<()> {
        if weight.c_in != self.c_in || weight.c_out() != self.c_out || weight.kernel != self.kernel
        {
            return Err(KernelError::ShapeMismatch {
                what: "weight (c_out * kh * kw * c_in)",
                expected: self.c_out * self.patch,
                actual: weight.c_out() * weight.tensor.cols(),
            });
        }
        let lengths = [
            ("x", self.input_len(), x.len()),
            ("out", self.output_len(), out.len()),
            ("bias", self.c_out, bias.map_or(self.c_out, <[f32]>::len)),
        ];
        for (what, expected, actual) in lengths {
            if expected != actual {
                return Err(KernelError::ShapeMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        for v in [Some(x), bias].into_iter().flatten() {
            if let Some(index) = v.iter().position(|v| !v.is_finite()) {
                return Err(KernelError::NonFinite {
                    index,
                    value: v[index],
                });
            }
        }
        Ok(())
    }

    /// Writes the im2col rows of output pixels `p0..p0 + buf.len() / (kh * kw * unit)` into
    /// `buf`: for each pixel its taps' input vectors in `[kh, kw]` order, `zero`s where a tap
    /// falls on the padding. `src` holds `unit` values per input pixel (its `c_in` channels, or
    /// its `c_in / 32` quantized blocks).
    fn im2col<T: Copy>(&self, src: &[T], unit: usize, zero: T, p0: usize, buf: &mut [T]) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.params.stride;
        let [ph, pw] = self.params.padding;
        let run = kw * unit;
        for (p, dst) in (p0..).zip(buf.chunks_exact_mut((kh * run).max(1))) {
            let ox = p % self.out_width;
            let oy = (p / self.out_width) % self.out_height;
            let b = p / (self.out_width * self.out_height);
            // Taps kx in kx0..kx1 fall inside the image; in NHWC their pixels are adjacent, so
            // each tap row is one copy between two runs of zeros.
            let x0 = ox * sw;
            let kx0 = pw.saturating_sub(x0).min(kw);
            let kx1 = (self.width + pw).saturating_sub(x0).clamp(kx0, kw);
            for (ky, drow) in dst.chunks_exact_mut(run.max(1)).enumerate() {
                let iy = (oy * sh + ky).wrapping_sub(ph);
                if iy >= self.height || kx0 == kx1 {
                    drow.fill(zero);
                    continue;
                }
                let ix0 = x0 + kx0 - pw;
                let at = ((b * self.height + iy) * self.width + ix0) * unit;
                drow[..kx0 * unit].fill(zero);
                drow[kx0 * unit..kx1 * unit].copy_from_slice(&src[at..at + (kx1 - kx0) * unit]);
                drow[kx1 * unit..].fill(zero);
            }
        }
    }

    /// Output pixels per im2col tile whose rows take `row_bytes` each: tiles of at most about
    /// [`IM2COL_TILE_BYTES`], as many as a multiple of `threads` (so that each thread gets the
    /// same number), and as few as that allows (each tile repacks the weights).
    fn tile_pixels(&self, row_bytes: usize, threads: usize) -> usize {
        let bytes = self.pixels.saturating_mul(row_bytes.max(1));
        let threads = threads.max(1);
        let tiles = bytes.div_ceil(IM2COL_TILE_BYTES).div_ceil(threads).max(1) * threads;
        // Multiples of 16 rows keep the matmul kernels' row passes whole.
        self.pixels.div_ceil(tiles).div_ceil(16).max(1) * 16
    }
}

/// 2-D convolution: `out[b, oy, ox, o] = bias[o] + Σ_{ky, kx, i} x[b, oy*sh + ky - ph,
/// ox*sw + kx - pw, i] · w[o, ky, kx, i]`, with NHWC `x` and `out` and zeros outside the input.
///
/// For F32, F16 and BF16 weights it is the f32 convolution (summed in another order than
/// [`conv2d_scalar`]); for block formats the activations are rounded to Q8_0 as in
/// [`matmul`](crate::matmul).
///
/// # Errors
///
/// - [`KernelError::ShapeMismatch`] when `weight` is not the one `shape` was made for, or `x`,
///   `out` or `bias` has the wrong length;
/// - [`KernelError::NonFinite`] naming the first NaN or infinite value of `x` (or of `bias`);
/// - [`KernelError::InvalidData`] when the weight's bytes do not match its shape.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Conv2dParams, Conv2dShape, ConvWeight, Format, Parallelism, conv2d};
///
/// // A 3x3 box filter over a 3x3 one-channel image of ones, stride 1, padding 1: each output
/// // pixel counts the input pixels its window covers.
/// let w = ConvWeight::from_ohwi(Format::F32, 1, 1, 3, 3, &[1.0; 9])?;
/// let s = Conv2dShape::new(1, 3, 3, &w, Conv2dParams::new(1, 1))?;
/// let mut out = vec![0.0; s.output_len()];
/// conv2d(&[1.0; 9], &s, &w, None, &mut out, Parallelism::None)?;
/// assert_eq!(out, [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0]);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn conv2d(
    x: &[f32],
    shape: &Conv2dShape,
    weight: &ConvWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    par: Parallelism,
) -> Result<()> {
    conv2d_residual(x, shape, weight, bias, None, out, par)
}

/// [`conv2d`] with an addend: `out = conv(x) + bias + residual`, where `residual` has the
/// output's shape (a ResNet block's skip). The bias and the residual are added to each output
/// tile right after its product, while the tile is in cache, instead of in another pass over
/// the whole output.
///
/// `residual` is not scanned for non-finite values: it is only added, so a NaN there shows in
/// the output where it was.
///
/// # Errors
///
/// As [`conv2d`], and [`KernelError::ShapeMismatch`] when `residual` is not as long as `out`.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{
///     Conv2dParams, Conv2dShape, ConvWeight, Format, Parallelism, conv2d_residual,
/// };
///
/// // A 1x1 convolution doubling one channel, plus a bias of 1 and a residual.
/// let w = ConvWeight::from_ohwi(Format::F32, 1, 1, 1, 1, &[2.0])?;
/// let s = Conv2dShape::new(1, 1, 3, &w, Conv2dParams::default())?;
/// let mut out = vec![0.0; 3];
/// let (bias, residual) = ([1.0], [10.0, 20.0, 30.0]);
/// conv2d_residual(&[1.0, 2.0, 3.0], &s, &w, Some(&bias), Some(&residual), &mut out, Parallelism::None)?;
/// assert_eq!(out, [13.0, 25.0, 37.0]);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn conv2d_residual(
    x: &[f32],
    shape: &Conv2dShape,
    weight: &ConvWeight,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    par: Parallelism,
) -> Result<()> {
    shape.check(x, weight, bias, out)?;
    if let Some(r) = residual
        && r.len() != out.len()
    {
        return Err(KernelError::ShapeMismatch {
            what: "residual",
            expected: out.len(),
            actual: r.len(),
        });
    }
    let (m, k, n) = shape.gemm_dims();
    if m == 0 || n == 0 {
        return Ok(());
    }
    let w = &weight.tensor;
    let threads = match par {
        Parallelism::Rayon => rayon::current_num_threads(),
        Parallelism::None => 1,
    };
    // The addends of output tile `t` (of `tile` pixels), added in place.
    let epilogue = |t: usize, tile: usize, out_tile: &mut [f32]| {
        let residual = residual.map(|r| &r[t * tile * n..][..out_tile.len()]);
        add_epilogue(out_tile, n, bias, residual);
    };
    // One tile's product on its thread: its rows are `x`'s (checked finite above) or im2col
    // rows gathered from them and zeros, so the float path's scan for NaN is skipped.
    let tile_product = |rows_x: &[f32], out_tile: &mut [f32]| {
        let rows = out_tile.len() / n;
        matmul_acc_scan(
            rows_x,
            rows,
            w,
            out_tile,
            (1.0, 0.0),
            Parallelism::None,
            false,
        )
    };
    if shape.is_pointwise() {
        if bias.is_none() && residual.is_none() {
            // `x` was checked finite above.
            return matmul_acc_scan(x, m, w, out, (1.0, 0.0), par, false);
        }
        // Tiles of input rows multiplied on one thread each, so that the addends meet each
        // tile in cache.
        let tile = shape.tile_pixels(k * size_of::<f32>(), threads);
        return for_each_tile(out, tile * n, par, |t, out_tile| {
            let rows = out_tile.len() / n;
            tile_product(&x[t * tile * k..][..rows * k], out_tile)?;
            epilogue(t, tile, out_tile);
            Ok(())
        });
    }
    if w.format().is_block() && shape.c_in.is_multiple_of(QK) {
        // Quantize every input pixel once; the taps that reuse a pixel copy its blocks.
        let pixels = shape.batch * shape.height * shape.width;
        let xq = PackedX::quantize(x, pixels, shape.c_in, par)?;
        let unit = shape.c_in / QK;
        let nb = k / QK;
        let tile = shape.tile_pixels(nb * size_of::<RowBlock>(), threads);
        return for_each_tile(out, tile * n, par, |t, out_tile| {
            let rows = out_tile.len() / n;
            let mut blocks = vec![RowBlock::ZERO; rows * nb];
            shape.im2col(&xq.rows, unit, RowBlock::ZERO, t * tile, &mut blocks);
            let packed = PackedX::from_rows(nb, rows, blocks)?;
            matmul_q8_activations(&packed, w, out_tile, 1.0, 0.0, Parallelism::None)?;
            epilogue(t, tile, out_tile);
            Ok(())
        });
    }
    let tile = shape.tile_pixels(k * size_of::<f32>(), threads);
    for_each_tile(out, tile * n, par, |t, out_tile| {
        let rows = out_tile.len() / n;
        let mut cols = vec![0.0f32; rows * k];
        shape.im2col(x, shape.c_in, 0.0, t * tile, &mut cols);
        tile_product(&cols, out_tile)?;
        epilogue(t, tile, out_tile);
        Ok(())
    })
}

/// Runs `task(t, tile)` on the consecutive `len`-value tiles of `out` (the last may be
/// shorter), split over threads by `par`. Each task owns its rows of `out`: one tile is
/// gathered, multiplied on one thread and given its bias while it is in cache.
fn for_each_tile<F>(out: &mut [f32], len: usize, par: Parallelism, task: F) -> Result<()>
where
    F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
{
    let task = |(t, tile): (usize, &mut [f32])| task(t, tile);
    match par {
        Parallelism::Rayon if out.len() > len => {
            out.par_chunks_mut(len).enumerate().try_for_each(task)
        }
        _ => out.chunks_mut(len).enumerate().try_for_each(task),
    }
}

/// Adds `bias` to every `n`-value row of `out`, and `residual` (as long as `out`) value by value.
fn add_epilogue(out: &mut [f32], n: usize, bias: Option<&[f32]>, residual: Option<&[f32]>) {
    match (bias, residual) {
        (None, None) => {}
        (Some(bias), None) => {
            for row in out.chunks_exact_mut(n) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
        (None, Some(r)) => out.iter_mut().zip(r).for_each(|(o, r)| *o += r),
        (Some(bias), Some(r)) => {
            for (row, res) in out.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                for ((o, r), b) in row.iter_mut().zip(res).zip(bias) {
                    *o += r + b;
                }
            }
        }
    }
}

/// The oracle of [`conv2d`]: the direct convolution, output pixel by output pixel, with the
/// weight dequantized to f32, every sum in f64 and rounded once.
///
/// The activations are not rounded to Q8_0, so for block formats [`conv2d`] differs from it by
/// that rounding (at most half a step, `max|x| / 254`, per activation of a 32-value block).
///
/// # Errors
///
/// As [`conv2d`].
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Conv2dParams, Conv2dShape, ConvWeight, Format, conv2d_scalar};
///
/// // Stride 2 without padding picks every other pixel of a 1x4 image.
/// let w = ConvWeight::from_ohwi(Format::F32, 1, 1, 1, 1, &[2.0])?;
/// let s = Conv2dShape::new(1, 1, 4, &w, Conv2dParams::new(2, 0))?;
/// let mut out = vec![0.0; s.output_len()];
/// conv2d_scalar(&[1.0, 2.0, 3.0, 4.0], &s, &w, Some(&[0.5]), &mut out)?;
/// assert_eq!(out, [2.5, 6.5]);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn conv2d_scalar(
    x: &[f32],
    shape: &Conv2dShape,
    weight: &ConvWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    shape.check(x, weight, bias, out)?;
    let w = weight.tensor.to_f32();
    let s = shape;
    let [kh, kw] = s.kernel;
    let [sh, sw] = s.params.stride;
    let [ph, pw] = s.params.padding;
    let (c_in, c_out) = (s.c_in, s.c_out);
    for b in 0..s.batch {
        for oy in 0..s.out_height {
            for ox in 0..s.out_width {
                let at = ((b * s.out_height + oy) * s.out_width + ox) * c_out;
                for (o, dst) in out[at..at + c_out].iter_mut().enumerate() {
                    let mut sum = bias.map_or(0.0, |bias| f64::from(bias[o]));
                    for ky in 0..kh {
                        let Some(iy) = (oy * sh + ky).checked_sub(ph).filter(|&iy| iy < s.height)
                        else {
                            continue;
                        };
                        for kx in 0..kw {
                            let Some(ix) =
                                (ox * sw + kx).checked_sub(pw).filter(|&ix| ix < s.width)
                            else {
                                continue;
                            };
                            let xs = ((b * s.height + iy) * s.width + ix) * c_in;
                            let ws = ((o * kh + ky) * kw + kx) * c_in;
                            for i in 0..c_in {
                                sum += f64::from(x[xs + i]) * f64::from(w[ws + i]);
                            }
                        }
                    }
                    *dst = sum as f32;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Conv2dShape {
        let weight =
            ConvWeight::from_ohwi(Format::F32, 1, c, k, k, &vec![0.0; k * k * c]).expect("weight");
        Conv2dShape::new(2, h, w, &weight, Conv2dParams::new(stride, pad)).expect("shape")
    }

    /// im2col against a definition by index, with each input value its own index + 1.
    #[test]
    fn im2col_gathers_each_tap_or_zero() {
        for &(h, w, c, k, stride, pad) in &[
            (5, 7, 3, 3, 1, 1),
            (6, 5, 2, 3, 2, 1),
            (4, 4, 1, 3, 2, 0),
            (3, 2, 4, 2, 1, 2),
            (1, 1, 2, 3, 1, 1),
        ] {
            let s = shape(h, w, c, k, stride, pad);
            let x: Vec<f32> = (0..s.input_len()).map(|i| i as f32 + 1.0).collect();
            let (m, patch, _) = s.gemm_dims();
            let mut cols = vec![-1.0; m * patch];
            s.im2col(&x, c, 0.0, 0, &mut cols);
            for p in 0..m {
                let (b, oy, ox) = (
                    p / (s.out_height * s.out_width),
                    p / s.out_width % s.out_height,
                    p % s.out_width,
                );
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        for i in 0..c {
                            let want =
                                if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                    x[((b * h + iy as usize) * w + ix as usize) * c + i]
                                } else {
                                    0.0
                                };
                            let got = cols[p * patch + (ky * k + kx) * c + i];
                            assert_eq!(got, want, "{h}x{w}x{c} k{k} s{stride} p{pad} pixel {p}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_are_bounded_and_cover_small_problems_in_several() {
        let s = shape(128, 128, 64, 3, 1, 1);
        let row_bytes = s.patch * 4;
        let rows = s.tile_pixels(row_bytes, 2);
        assert!(rows * row_bytes <= IM2COL_TILE_BYTES + 16 * row_bytes);
        // A problem within the budget still gives each thread a tile, and one thread one tile.
        let small = shape(8, 8, 32, 3, 1, 1);
        assert_eq!(
            small.pixels.div_ceil(small.tile_pixels(small.patch * 4, 2)),
            2
        );
        assert_eq!(
            small.tile_pixels(small.patch * 4, 1),
            small.pixels.div_ceil(16) * 16
        );
    }
}
