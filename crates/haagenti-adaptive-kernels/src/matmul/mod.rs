//! Matrix multiplication `out[m x n] = x[m x k] · w[n x k]ᵀ` with weights in any [`Format`].
//!
//! - **Q8_0, Q4_0, Q4_1 weights** (W8A8 / W4A8, as ggml): each call quantizes the activation rows
//!   to Q8_0 blocks once, then every 32-value block product runs in integer arithmetic and is
//!   scaled by `d_w * d_x` in f32 (Q4_1 adds `m_w * d_x * Σq_x`). On x86_64 with AVX2, from two
//!   activation rows on, each task repacks its weight rows eight at a time (values transposed
//!   so that one vector holds four consecutive values of all eight rows) and a blocked
//!   micro-kernel computes up to 6 activation rows x 8 weight rows per pass, lane-wise with no
//!   horizontal reductions; a single activation row runs a row kernel on the weights in place.
//!   On aarch64 NEON (with `sdot` when present) runs a row kernel.
//! - **F16 and BF16 weights**: converted to f32 on the fly; a streaming kernel for few activation
//!   rows (AVX2 on x86_64, NEON on aarch64). For many rows, weight matrices of up to 2 M values
//!   are converted whole, once per call (on x86_64 straight into the `k x n` transpose, which
//!   `gemm` packs faster), for one `gemm` call over every row, into a panel each thread keeps
//!   for its next call (at most 8 MiB); larger ones convert a panel per tile of weight rows,
//!   each handed to `gemm` on its task's thread.
//! - **F32 weights**: the `gemm` crate; on x86_64 and aarch64 a streaming kernel for few
//!   activation rows, where `gemm` spends its time packing weights it uses once.
//!
//! Work is split by [`Parallelism`] over tiles of weight rows (and of activation rows when there
//! are few weight rows); inner kernels are single-threaded, and each task writes its tile of
//! `out` itself. [`matmul_scalar`] is the portable
//! oracle: the SIMD paths match it within `1e-5` of `Σ|x·w|` (the order of f32 additions
//! differs), and `HAAGENTI_FORCE_SCALAR=1` makes [`matmul`] use it (split by rayon all the same).

pub(crate) mod pack;
mod scalar;

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::format::Format;
use crate::tensor::QuantizedTensor;

pub use scalar::matmul_scalar;

/// How [`matmul`] spreads its work over threads.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::Parallelism;
///
/// assert_eq!(Parallelism::default(), Parallelism::Rayon);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parallelism {
    /// Split tiles over the current rayon pool (the global pool outside `ThreadPool::install`).
    #[default]
    Rayon,
    /// Run on the calling thread only.
    None,
}

impl Parallelism {
    /// Below this many multiply-adds a product runs on the calling thread: waking a sleeping
    /// pool thread costs tens of microseconds, and far more under a hypervisor, where it
    /// varies from call to call. Measured in the runtime's denoising loops (2 threads, an idle
    /// pool between calls), products of ~2 M multiply-adds ran 1.3x slower and ±40 % less
    /// predictably on two threads than on one.
    pub const MIN_PARALLEL_MACS: usize = 1 << 22;

    /// `self`, or [`Parallelism::None`] for work of fewer than [`Self::MIN_PARALLEL_MACS`]
    /// multiply-adds.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_kernels::Parallelism;
    ///
    /// assert_eq!(Parallelism::Rayon.for_work(1 << 10), Parallelism::None);
    /// assert_eq!(Parallelism::Rayon.for_work(1 << 30), Parallelism::Rayon);
    /// ```
    #[must_use]
    pub fn for_work(self, macs: usize) -> Self {
        if macs < Self::MIN_PARALLEL_MACS {
            Self::None
        } else {
            self
        }
    }
}

/// `out[m x n] = x[m x k] · w[n x k]ᵀ`, where `w` has `n` rows of `k` values in any [`Format`].
///
/// `x` and `out` are row-major. For block formats (Q8_0, Q4_0, Q4_1) the activation rows are
/// quantized to Q8_0 blocks first and the products run in integer arithmetic, so the result is
/// that of the quantized activations (as in ggml); for F16/BF16/F32 weights it is the f32
/// product. Empty shapes (`m`, `n` or `k` zero) are fine.
///
/// # Errors
///
/// - [`KernelError::ShapeMismatch`] when `x.len() != m * k` or `out.len() != m * n`;
/// - [`KernelError::NonFinite`] naming the first NaN or infinite value of `x` (for block
///   formats found while the rows are quantized, and for float formats with fewer weight rows
///   than columns found in the finished product, so `out` may have been written);
/// - [`KernelError::SizeOverflow`] when `m * k` or `m * n` overflows `usize`;
/// - [`KernelError::InvalidData`] when `w`'s bytes do not match its shape.
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, matmul};
///
/// let (m, k, n) = (2, 64, 3);
/// let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
/// let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect();
/// let wq = QuantizedTensor::quantize(Format::Q8_0, n, k, &w)?;
///
/// let mut out = vec![0.0; m * n];
/// matmul(&x, m, &wq, &mut out, Parallelism::Rayon)?;
///
/// for i in 0..m {
///     for j in 0..n {
///         let exact: f32 = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
///         assert!((out[i * n + j] - exact).abs() < 0.05 * k as f32 / 32.0);
///     }
/// }
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn matmul(
    x: &[f32],
    m: usize,
    w: &QuantizedTensor,
    out: &mut [f32],
    par: Parallelism,
) -> Result<()> {
    matmul_acc(x, m, w, out, 1.0, 0.0, par)
}

/// `out = beta * out + alpha * (x · wᵀ)`, the accumulating form of [`matmul`].
///
/// When `beta == 0` the old contents of `out` are not read (a NaN there does not propagate).
///
/// # Errors
///
/// As [`matmul`].
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, matmul_acc};
///
/// let w = QuantizedTensor::quantize(Format::F32, 1, 2, &[1.0, 2.0])?;
/// let mut out = vec![10.0];
/// matmul_acc(&[3.0, 4.0], 1, &w, &mut out, 0.5, 2.0, Parallelism::None)?;
/// assert_eq!(out, [2.0 * 10.0 + 0.5 * 11.0]);
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn matmul_acc(
    x: &[f32],
    m: usize,
    w: &QuantizedTensor,
    out: &mut [f32],
    alpha: f32,
    beta: f32,
    par: Parallelism,
) -> Result<()> {
    matmul_acc_scan(x, m, w, out, (alpha, beta), par, true)
}

/// [`matmul_acc`] with its `(alpha, beta)`, scanning `x` for non-finite values on the float
/// path when `scan`. Without the scan it is for activations the caller has already found
/// finite (the im2col tiles of a convolution, gathered from its checked input and zeros):
/// the float path's scan read each tile once more. Block formats check while they quantize
/// either way (it costs nothing there).
pub(crate) fn matmul_acc_scan(
    x: &[f32],
    m: usize,
    w: &QuantizedTensor,
    out: &mut [f32],
    (alpha, beta): (f32, f32),
    par: Parallelism,
    scan: bool,
) -> Result<()> {
    let s = Shape::check_lengths(x, m, w, out)?;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    let par = par.for_work(s.m * s.n * s.k);
    let p = Product {
        s,
        w,
        out,
        alpha,
        beta,
        par,
    };
    if w.format().is_block() && s.k > 0 {
        // The activations' finiteness is checked by the quantizer's own pass over them.
        return quant_matmul_on(crate::dispatch::kernel_path(), Acts::Raw(x), p);
    }
    if s.k == 0 {
        if scan {
            check_finite_par(x, par)?;
        }
        epilogue_zero(p.out, beta);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::avx2() {
        return float_checked(t, x, p, scan);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::neon() {
        return float_checked(t, x, p, scan);
    }
    if scan {
        check_finite_par(x, par)?;
    }
    scalar::matmul_par(x, p)
}

/// `out = beta * out + alpha * (xq · wᵀ)` for block-format weights (Q8_0, Q4_0, Q4_1) and
/// activation rows already quantized to Q8_0 ([`PackedX::quantize`](pack::PackedX::quantize),
/// or gathered from such rows with [`PackedX::from_rows`](pack::PackedX::from_rows)): the
/// second half of [`matmul_acc`], for callers that reuse quantized activations (the 9 taps of
/// a 3x3 convolution). `m` is `xq`'s row count, `k` its `32 * nb`.
///
/// # Errors
///
/// - [`KernelError::UnsupportedConversion`] when `w` is not a block format;
/// - [`KernelError::ShapeMismatch`] when `w.cols() != xq.k()` or `out.len() != m * n`;
/// - [`KernelError::SizeOverflow`], [`KernelError::InvalidData`] as [`matmul`].
#[allow(dead_code)] // reason: the convolution's entry point
pub(crate) fn matmul_q8_activations(
    xq: &pack::PackedX,
    w: &QuantizedTensor,
    out: &mut [f32],
    alpha: f32,
    beta: f32,
    par: Parallelism,
) -> Result<()> {
    let s = Shape::check_packed(xq, w, out)?;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    if s.k == 0 {
        epilogue_zero(out, beta);
        return Ok(());
    }
    let p = Product {
        s,
        w,
        out,
        alpha,
        beta,
        par,
    };
    quant_matmul_on(crate::dispatch::kernel_path(), Acts::Packed(xq), p)
}

/// A product whose lengths were checked against each other and which is not empty:
/// `out = beta * out + alpha * (x · wᵀ)` for the weights `w` of shape `s`, split over threads
/// by `par`. The activations travel beside it, as f32 rows or quantized ones.
pub(crate) struct Product<'a> {
    /// The checked shape.
    s: Shape,
    /// The weights, `s.n x s.k`.
    w: &'a QuantizedTensor,
    /// The row-major `s.m x s.n` output.
    out: &'a mut [f32],
    /// The epilogue's `alpha`.
    alpha: f32,
    /// The epilogue's `beta` (`0` leaves the old `out` unread).
    beta: f32,
    /// How the tiles are spread over threads.
    par: Parallelism,
}

impl Product<'_> {
    /// The same product, borrowing `out` for a shorter while (to read it after a kernel ran).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn reborrow(&mut self) -> Product<'_> {
        Product {
            out: &mut *self.out,
            ..*self
        }
    }
}

/// The activation rows of a block-format product: quantized already, or f32 values that
/// the path quantizes (and checks for finiteness) itself.
#[derive(Clone, Copy)]
enum Acts<'a> {
    /// Rows quantized to Q8_0.
    Packed(&'a pack::PackedX),
    /// `m x k` f32 values, not yet checked.
    Raw(&'a [f32]),
}

impl<'a> Acts<'a> {
    /// The quantized rows: borrowed, or quantized (and checked) into `owned`.
    ///
    /// # Errors
    ///
    /// [`KernelError::NonFinite`] naming the first NaN or infinite raw activation.
    fn quantized<'b>(
        self,
        s: &Shape,
        par: Parallelism,
        owned: &'b mut Option<pack::PackedX>,
    ) -> Result<&'b pack::PackedX>
    where
        'a: 'b,
    {
        match self {
            Acts::Packed(p) => Ok(p),
            Acts::Raw(x) => Ok(owned.insert(pack::PackedX::new_checked(x, s.m, s.k, par)?)),
        }
    }
}

/// Block-format weights against `acts` on the kernels of `path` (scalar where the CPU lacks
/// it): the one place that picks the instruction set of a block-format product. The AVX2
/// driver quantizes raw rows inside its tasks when it splits by rows; the other paths
/// quantize them once into a [`pack::PackedX`] first.
fn quant_matmul_on(
    path: crate::dispatch::KernelPath,
    acts: Acts<'_>,
    p: Product<'_>,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::dispatch::Avx2::for_path(path) {
        let wide = crate::dispatch::Avx512::for_path(path).filter(|t| t.vnni);
        return x86::quant_matmul(t, wide, acts, p);
    }
    let mut owned = None;
    let xq = acts.quantized(&p.s, p.par, &mut owned)?;
    #[cfg(target_arch = "aarch64")]
    if let Some(t) = crate::dispatch::Neon::for_path(path) {
        return aarch64::quant_matmul(t, xq, p);
    }
    let _ = path;
    scalar::quant_par(xq, p)
}

/// A checked problem shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Activation rows.
    pub(crate) m: usize,
    /// Weight rows (output columns).
    pub(crate) n: usize,
    /// Shared inner dimension.
    pub(crate) k: usize,
    /// Bytes of one weight row.
    pub(crate) row_bytes: usize,
}

impl Shape {
    /// Checks every length `matmul` relies on.
    fn check(x: &[f32], m: usize, w: &QuantizedTensor, out: &[f32]) -> Result<Shape> {
        let shape = Self::check_lengths(x, m, w, out)?;
        check_finite(x)?;
        Ok(shape)
    }

    /// [`Shape::check`] without the scan of `x` for non-finite values (the caller scans it,
    /// split over threads where it is large).
    fn check_lengths(x: &[f32], m: usize, w: &QuantizedTensor, out: &[f32]) -> Result<Shape> {
        let (n, k) = (w.rows(), w.cols());
        check_len("x", m, k, x.len())?;
        check_len("out", m, n, out.len())?;
        Self::check_weights(m, w)
    }

    /// Checks `xq` (packed activation rows), block-format `w` and `out` against each other.
    fn check_packed(xq: &pack::PackedX, w: &QuantizedTensor, out: &[f32]) -> Result<Shape> {
        let format = w.format();
        if !format.is_block() {
            return Err(KernelError::UnsupportedConversion {
                from: Format::Q8_0,
                to: format,
            });
        }
        let (m, n, k) = (xq.m, w.rows(), w.cols());
        if xq.k() != k {
            return Err(KernelError::ShapeMismatch {
                what: "packed activation row length",
                expected: k,
                actual: xq.k(),
            });
        }
        check_len("out", m, n, out.len())?;
        Self::check_weights(m, w)
    }

    /// Checks `w`'s bytes against its shape.
    fn check_weights(m: usize, w: &QuantizedTensor) -> Result<Shape> {
        let (n, k) = (w.rows(), w.cols());
        let format = w.format();
        let row_bytes = format.row_bytes(k)?;
        let total = row_bytes
            .checked_mul(n)
            .ok_or(KernelError::SizeOverflow { rows: n, cols: k })?;
        if w.as_bytes().len() != total {
            return Err(KernelError::InvalidData(format!(
                "{format} weights of shape [{n}, {k}] need {total} bytes, found {}",
                w.as_bytes().len()
            )));
        }
        Ok(Shape { m, n, k, row_bytes })
    }
}

/// Checks that `len == rows * cols` (`what` names the slice in the error).
pub(crate) fn check_len(what: &'static str, rows: usize, cols: usize, len: usize) -> Result<()> {
    let expected = rows
        .checked_mul(cols)
        .ok_or(KernelError::SizeOverflow { rows, cols })?;
    if len != expected {
        return Err(KernelError::ShapeMismatch {
            what,
            expected,
            actual: len,
        });
    }
    Ok(())
}

/// [`KernelError::NonFinite`] for the first NaN or infinite value of `x`.
pub(crate) fn check_finite(x: &[f32]) -> Result<()> {
    match first_non_finite(x) {
        Some(index) => Err(KernelError::NonFinite {
            index,
            value: x[index],
        }),
        None => Ok(()),
    }
}

/// [`check_finite`], split over the rayon pool for large `x` under [`Parallelism::Rayon`]: at
/// 16384 x 288 activations (19 MB) the scan on one thread took a third of `gemm`'s time for the
/// whole product. The error names the first non-finite value all the same.
fn check_finite_par(x: &[f32], par: Parallelism) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    if par == Parallelism::None || x.len() < 4 * CHUNK {
        return check_finite(x);
    }
    let first = x
        .par_chunks(CHUNK)
        .enumerate()
        .find_first(|(_, c)| !all_finite(c))
        .and_then(|(i, c)| first_non_finite(c).map(|j| i * CHUNK + j));
    match first {
        Some(index) => Err(KernelError::NonFinite {
            index,
            value: x[index],
        }),
        None => Ok(()),
    }
}

/// [`KernelError::NonFinite`] for the first NaN or infinite value of `x`, found from the
/// finished float product `out = beta * out + alpha * x · wᵀ` (`alpha != 0`, `s.n > 0`): a
/// non-finite `x[i][l]` makes every term `x[i][l] * w[j][l]` of row `i` NaN or infinite, and no
/// multiply-add, nor the epilogue, turns that back into a finite value, so every such row of
/// `out` is non-finite and only those rows of `x` need a scan (a row of `out` can also overflow,
/// or hold the caller's NaN when `beta != 0`; its `x` row is then scanned and found clean). At
/// 16384 x 576 x 32 the scan of `x` beforehand took a fifth of the whole product's time.
fn check_finite_after(x: &[f32], s: &Shape, out: &[f32], par: Parallelism) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    let (n, k) = (s.n, s.k);
    let rows_per = (CHUNK / n).max(1);
    let scan = |(c, rows): (usize, &[f32])| {
        rows.chunks_exact(n).enumerate().find_map(|(r, o)| {
            if all_finite(o) {
                return None;
            }
            let i = c * rows_per + r;
            first_non_finite(&x[i * k..(i + 1) * k]).map(|j| i * k + j)
        })
    };
    let first = match par {
        Parallelism::Rayon if out.len() >= 4 * CHUNK => out
            .par_chunks(rows_per * n)
            .enumerate()
            .find_map_first(scan),
        _ => out.chunks(rows_per * n).enumerate().find_map(scan),
    };
    match first {
        Some(index) => Err(KernelError::NonFinite {
            index,
            value: x[index],
        }),
        None => Ok(()),
    }
}

/// Whether every value of `x` is finite, branch-free (it vectorizes).
fn all_finite(x: &[f32]) -> bool {
    x.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// Index of the first NaN or infinite value.
fn first_non_finite(x: &[f32]) -> Option<usize> {
    const CHUNK: usize = 256;
    for (c, chunk) in x.chunks(CHUNK).enumerate() {
        // Branch-free test first (vectorizes), exact position only on failure.
        if !all_finite(chunk) {
            return chunk
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| c * CHUNK + i);
        }
    }
    None
}

/// `out = beta * out` (the product is empty when `k == 0`).
fn epilogue_zero(out: &mut [f32], beta: f32) {
    if beta == 0.0 {
        out.fill(0.0);
    } else {
        out.iter_mut().for_each(|o| *o *= beta);
    }
}

/// One unit of parallel work: weight rows `n0..n1` against activation row groups `g0..g1`.
#[derive(Clone, Copy, Debug)]
struct Task {
    n0: usize,
    n1: usize,
    g0: usize,
    g1: usize,
}

/// Splits `n` weight rows (in chunks of a multiple of `align`, at most `nc`) and `groups`
/// activation row groups into tasks, enough to keep `threads` threads busy.
fn plan_tasks(n: usize, groups: usize, nc: usize, align: usize, threads: usize) -> Vec<Task> {
    if n == 0 || groups == 0 {
        return Vec::new();
    }
    let target = if threads <= 1 { 1 } else { 4 * threads };
    // Weight chunk: at most `nc`, small enough to give `target` chunks, a multiple of `align`.
    let per = n.div_ceil(target).div_ceil(align) * align;
    let chunk = per.clamp(align, nc.max(align));
    let n_chunks = n.div_ceil(chunk);
    // Split the activation rows too when the weight rows alone give too few tasks.
    let g_chunks = if n_chunks >= target {
        1
    } else {
        target.div_ceil(n_chunks).min(groups.max(1))
    };
    let g_per = groups.div_ceil(g_chunks.max(1)).max(1);
    let mut tasks = Vec::with_capacity(n_chunks * g_chunks);
    for g0 in (0..groups).step_by(g_per) {
        for n0 in (0..n).step_by(chunk) {
            tasks.push(Task {
                n0,
                n1: (n0 + chunk).min(n),
                g0,
                g1: (g0 + g_per).min(groups),
            });
        }
    }
    tasks
}

/// Threads `par` stands for.
fn threads(par: Parallelism) -> usize {
    match par {
        Parallelism::Rayon => rayon::current_num_threads(),
        Parallelism::None => 1,
    }
}

/// The rectangle of `out` one task owns: rows `row0..row0 + rows` and columns
/// `col0..col0 + cols` of the row-major `m x n` output. Writes go through the epilogue
/// (`o = beta * o + alpha * v`). Only [`run_tiles`] makes these, one per task, for disjoint
/// rectangles inside `out`; the raw pointer keeps a tile on the thread that runs its task.
pub(crate) struct TileOut {
    /// Start of `out`.
    ptr: *mut f32,
    /// Row length of `out`.
    n: usize,
    /// First row of the tile.
    row0: usize,
    /// Rows in the tile.
    rows: usize,
    /// First column of the tile.
    col0: usize,
    /// Columns in the tile.
    cols: usize,
    /// The epilogue's `alpha`.
    alpha: f32,
    /// The epilogue's `beta`.
    beta: f32,
}

impl TileOut {
    /// Rows in the tile.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Columns in the tile.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Writes `vals` to tile row `r` from tile column `c` on, through the epilogue.
    ///
    /// # Panics
    ///
    /// When the values would leave the tile (a bug in the caller, never bad input).
    #[inline]
    pub(crate) fn write(&mut self, r: usize, c: usize, vals: &[f32]) {
        assert!(
            r < self.rows && c + vals.len() <= self.cols,
            "TileOut::write outside the tile"
        );
        let at = (self.row0 + r) * self.n + self.col0 + c;
        // SAFETY: `run_tiles` checked that the whole tile lies inside `out`, which it borrows
        // exclusively, and the check above keeps these `vals.len()` elements inside the tile;
        // tiles of different tasks are disjoint and a `TileOut` never leaves its task's thread
        // (it is neither `Send` nor `Sync`), so nothing else reads or writes them meanwhile.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), vals.len()) };
        let (alpha, beta) = (self.alpha, self.beta);
        // The epilogue with its branch hoisted, eight values at a time in fixed-size arrays so
        // that they become vector loads and stores (kernels write 8 columns at a time, rows
        // apart: scalar stores there stall on the store buffer).
        let (d8, d_rest) = dst.as_chunks_mut::<8>();
        let (v8, v_rest) = vals.as_chunks::<8>();
        for (o, v) in d8.iter_mut().zip(v8) {
            *o = if beta == 0.0 {
                v.map(|v| alpha * v)
            } else {
                std::array::from_fn(|i| beta * o[i] + alpha * v[i])
            };
        }
        for (o, &v) in d_rest.iter_mut().zip(v_rest) {
            *o = if beta == 0.0 {
                alpha * v
            } else {
                beta * *o + alpha * v
            };
        }
    }
}

/// The start of `out`, shared by the tasks of [`run_tiles`].
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: only `run_tiles` makes a `SharedOut`, and only to build each task's `TileOut` over
// a disjoint rectangle of the `out` it borrows exclusively; see `TileOut::write`.
unsafe impl Send for SharedOut {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedOut {}

/// Runs `tasks`, each writing the rectangle of `p.out` it covers (activation rows
/// `rows(task)` = `(first, count)`, columns `n0..n1`) through a [`TileOut`], on the thread that
/// computes it, split by `p.par`.
///
/// The tasks must cover disjoint rectangles (as [`plan_tasks`] makes them); a task outside
/// `out` panics rather than writes.
fn run_tiles<F, R>(tasks: &[Task], p: Product<'_>, rows: R, compute: F)
where
    F: Fn(&Task, &mut TileOut) + Sync,
    R: Fn(&Task) -> (usize, usize) + Sync,
{
    let Product {
        s,
        out,
        alpha,
        beta,
        par,
        ..
    } = p;
    let n = s.n;
    let (shared, len) = (SharedOut(out.as_mut_ptr()), out.len());
    // A reference, so that closures capture the `Sync` wrapper rather than its pointer.
    let shared = &shared;
    let one = |t: &Task| {
        let (row0, count) = rows(t);
        assert!(
            t.n0 <= t.n1 && t.n1 <= n && (row0 + count) * n <= len,
            "run_tiles: task outside out"
        );
        let mut tile = TileOut {
            ptr: shared.0,
            n,
            row0,
            rows: count,
            col0: t.n0,
            cols: t.n1 - t.n0,
            alpha,
            beta,
        };
        compute(t, &mut tile);
    };
    match par {
        Parallelism::Rayon if tasks.len() > 1 => tasks.par_iter().for_each(one),
        _ => tasks.iter().for_each(one),
    }
}

/// [`run_tiles`] for kernels that fill a dense `[rows(task) x (n1 - n0)]` buffer per task.
fn run_tasks<F, R>(tasks: &[Task], p: Product<'_>, rows: R, compute: F)
where
    F: Fn(&Task, &mut [f32]) + Sync,
    R: Fn(&Task) -> (usize, usize) + Sync,
{
    run_tiles(tasks, p, rows, |t, tile| {
        let nc = tile.cols();
        let mut buf = vec![0.0f32; tile.rows() * nc];
        compute(t, &mut buf);
        for (r, src) in buf.chunks_exact(nc.max(1)).enumerate() {
            tile.write(r, 0, src);
        }
    });
}

/// F32 weights through the `gemm` crate: `out = beta * out + alpha * x · wᵀ`.
#[allow(clippy::too_many_arguments)] // reason: plain data passed straight through
pub(crate) fn gemm_f32(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
    alpha: f32,
    beta: f32,
    par: Parallelism,
) {
    gemm_f32_laid(x, w, false, m, n, k, out, alpha, beta, par);
}

/// [`gemm_f32`] with `w` either the `n x k` weight rows (`kn` false) or their row-major
/// `k x n` transpose (`kn` true), which `gemm` packs faster at some shapes (256 x 1152 x 128:
/// 0.6 ms against 1.0 ms). Does nothing when the lengths are inconsistent (callers pass
/// checked shapes).
#[allow(clippy::too_many_arguments)] // reason: plain data passed straight through
fn gemm_f32_laid(
    x: &[f32],
    w: &[f32],
    kn: bool,
    m: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
    alpha: f32,
    beta: f32,
    par: Parallelism,
) {
    let consistent = x.len() == m * k && w.len() == n * k && out.len() == m * n;
    debug_assert!(consistent, "gemm_f32_laid: inconsistent lengths");
    if !consistent || m == 0 || n == 0 {
        return;
    }
    let gpar = match par {
        Parallelism::Rayon if rayon::current_num_threads() > 1 => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    // gemm's rhs is the k x n matrix wᵀ: element (l, j) at w[l * rhs_rs + j * rhs_cs].
    let (rhs_cs, rhs_rs) = if kn { (1, n as isize) } else { (k as isize, 1) };
    // SAFETY: the lengths were checked above: `out` is m x n row-major (row stride n, column
    // stride 1), `x` is m x k row-major, and `w` holds n * k values, either n x k row-major
    // (wᵀ's element (l, j) at j * k + l) or k x n row-major (at l * n + j), both inside `w`.
    // `out` is exclusively borrowed and overlaps neither input. gemm computes
    // dst = alpha_g * dst + beta_g * lhs * rhs, reading dst only when asked.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            rhs_cs,
            rhs_rs,
            beta,
            alpha,
            false,
            false,
            false,
            gpar,
        );
    }
}

/// Little-endian f16 (`bf` false) or bf16 `bytes` widened to f32 into `dst`, one value at a
/// time (for bytes too misaligned to view as `half` values).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn widen_half_bytes(bf: bool, bytes: &[u8], dst: &mut [f32]) {
    for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
        let bits = u16::from_le_bytes([b[0], b[1]]);
        *d = if bf {
            half::bf16::from_bits(bits).to_f32()
        } else {
            half::f16::from_bits(bits).to_f32()
        };
    }
}

/// Rows `l0..l0 + dst.len() / n` of the row-major `k x n` transpose of `n x k` little-endian
/// f16 (`bf` false) or bf16 weight rows `bytes`, widened to f32 into `dst` one value at a time
/// (for bytes too misaligned to view as `half` values).
///
/// # Panics
///
/// When `bytes` holds fewer than `n * (l0 + dst.len() / n)` values (a bug in the caller).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn widen_half_bytes_t(
    bf: bool,
    bytes: &[u8],
    (n, k): (usize, usize),
    l0: usize,
    dst: &mut [f32],
) {
    let mut v = [0.0f32];
    for (i, row) in dst.chunks_exact_mut(n.max(1)).enumerate() {
        for (j, d) in row.iter_mut().enumerate() {
            let at = 2 * (j * k + l0 + i);
            widen_half_bytes(bf, &bytes[at..at + 2], &mut v);
            *d = v[0];
        }
    }
}

/// Views little-endian f32 bytes as `f32`s, copying only if they are misaligned.
fn f32_weights(bytes: &[u8]) -> std::borrow::Cow<'_, [f32]> {
    let (pre, mid, post) = {
        // SAFETY: every bit pattern is a valid f32; `align_to` only reinterprets the aligned
        // middle part, and the host is little-endian (blocks.rs refuses big-endian targets).
        unsafe { bytes.align_to::<f32>() }
    };
    if pre.is_empty() && post.is_empty() {
        std::borrow::Cow::Borrowed(mid)
    } else {
        std::borrow::Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }
}

/// Weight rows per task for float weights.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NC_F: usize = 64;
/// From this many activation rows on, F16/BF16 weights go through f32 panels and gemm and F32
/// weights through gemm; below it every float format streams (gemm packs the whole weight matrix
/// for a call, which at M = 4 costs about as much as at M = 16; streaming the weights once is
/// memory-bound instead).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const PANEL_MIN_M: usize = 8;
/// The fewest activation rows from which `weights` F16/BF16 weights go through f32 panels and
/// gemm rather than streaming: the panel costs a conversion and a gemm packing of every weight
/// per call, which only enough rows repay, the more rows the larger the matrix. Measured (2
/// threads, AVX-512 Xeon, ratio to gemm f32, streaming / panel): 8 x 576 x 32 0.83 / 0.84,
/// 32 x 576 x 32 0.71 / 0.91; 32 x 1152 x 128 0.88 / 0.73, 64 x 1152 x 128 0.77 / 0.84;
/// 64 x 1024 x 1024 0.95 / 0.79, 128 x 1024 x 1024 0.77 / 0.90; 64 x 4096 x 4096 1.10 / 0.96,
/// 128 x 4096 x 4096 0.86 / 0.88. On aarch64, where nothing was measured, it stays
/// [`PANEL_MIN_M`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn half_panel_min_m(weights: usize) -> usize {
    if cfg!(target_arch = "aarch64") || weights < 1 << 17 {
        PANEL_MIN_M
    } else if weights < 1 << 20 {
        64
    } else {
        128
    }
}
/// Up to this many F16/BF16 weights (8 MiB once widened) are converted to f32 whole, once per
/// call, from [`half_panel_min_m`] activation rows on; larger matrices convert a panel per task
/// (64 x 4096 x 4096 ran at 0.95x gemm f32 that way, where converting all 16 M weights first
/// would add a 64 MiB write and read).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const WHOLE_PANEL_VALUES: usize = 1 << 21;
/// Weights converted per parallel task when a whole panel is converted.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const PAR_CONVERT_VALUES: usize = 1 << 16;

/// The float-weight kernels of one instruction set, behind the token that proves it.
///
/// Each writes weight rows `n0..n1` against every activation row into `buf`
/// (`m x (n1 - n0)`), and does nothing when the lengths are inconsistent.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)] // reason: one task's plain data
trait FloatKernels: Copy + Sync {
    /// f32 weights streamed, each row read once.
    fn stream_f32(self, w: &[f32], s: &Shape, x: &[f32], n0: usize, n1: usize, buf: &mut [f32]);
    /// f16 (`bf` false) or bf16 weight bytes streamed, widened on the fly.
    fn half_stream(
        self,
        bf: bool,
        w: &[u8],
        s: &Shape,
        x: &[f32],
        n0: usize,
        n1: usize,
        buf: &mut [f32],
    );
    /// f16 (`bf` false) or bf16 little-endian bytes (`2 * dst.len()` of them) widened to f32
    /// into `dst`.
    fn half_to_f32(self, bf: bool, bytes: &[u8], dst: &mut [f32]);
    /// Whether whole f16/bf16 panels go to `gemm` transposed, as `k x n` (through
    /// [`FloatKernels::half_to_f32_t`]), rather than as the `n x k` weight rows.
    const PANEL_KN: bool = false;
    /// Rows `l0..l0 + dst.len() / n` of the row-major `k x n` transpose of the `n x k` f16
    /// (`bf` false) or bf16 weight rows `bytes`, widened to f32 into `dst`; by default
    /// [`widen_half_bytes_t`], one value at a time (it runs only where
    /// [`FloatKernels::PANEL_KN`] is set).
    fn half_to_f32_t(self, bf: bool, bytes: &[u8], nk: (usize, usize), l0: usize, dst: &mut [f32]) {
        widen_half_bytes_t(bf, bytes, nk, l0, dst);
    }
    /// f16/bf16 weight rows converted to an f32 panel and handed to `gemm` on this thread.
    fn half_panel_gemm(
        self,
        bf: bool,
        w: &[u8],
        s: &Shape,
        x: &[f32],
        n0: usize,
        n1: usize,
        buf: &mut [f32],
    );
}

/// [`float_matmul`] with the scan of `x` for non-finite values when `scan`: with fewer output
/// columns than inputs per row `out` is smaller than `x`, so it is scanned after the product
/// instead of `x` before (see [`check_finite_after`]).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn float_checked<T: FloatKernels>(t: T, x: &[f32], p: Product<'_>, scan: bool) -> Result<()> {
    let scan_after = scan && p.alpha != 0.0 && p.s.n < p.s.k;
    if scan && !scan_after {
        check_finite_par(x, p.par)?;
    }
    let mut p = p;
    float_matmul(t, x, p.reborrow());
    if scan_after {
        check_finite_after(x, &p.s, p.out, p.par)
    } else {
        Ok(())
    }
}

/// F32, F16 and BF16 weights on a SIMD path: streaming kernels below [`PANEL_MIN_M`] activation
/// rows for F32 and [`half_panel_min_m`] for F16/BF16; above them gemm for F32 and f32 panels
/// for F16/BF16.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn float_matmul<T: FloatKernels>(t: T, x: &[f32], p: Product<'_>) {
    use crate::format::Format;
    let (s, bytes, format) = (p.s, p.w.as_bytes(), p.w.format());
    let many = s.m
        >= if format == Format::F32 {
            PANEL_MIN_M
        } else {
            half_panel_min_m(s.n * s.k)
        };
    if format == Format::F32 && many {
        let w32 = f32_weights(bytes);
        gemm_f32(x, &w32, s.m, s.n, s.k, p.out, p.alpha, p.beta, p.par);
        return;
    }
    let w32 = if format == Format::F32 {
        f32_weights(bytes)
    } else {
        std::borrow::Cow::Borrowed(&[][..])
    };
    let bf = format == Format::BF16;
    if many && s.n * s.k <= WHOLE_PANEL_VALUES {
        // Few enough weights to convert them all once and run one parallel gemm over every
        // activation row: a panel per task (below) re-reads all of `x` per task and hands gemm
        // a few columns at a time, which at 16384 x 288 x 32 ran at 0.13x gemm f32.
        with_panel(s.n * s.k, |panel| whole_panel(t, bf, x, panel, p));
        return;
    }
    let tasks = plan_tasks(s.n, 1, NC_F, 4, threads(p.par));
    run_tasks(
        &tasks,
        p,
        |_| (0, s.m),
        |task, buf| {
            let (n0, n1) = (task.n0, task.n1);
            if format == Format::F32 {
                t.stream_f32(&w32, &s, x, n0, n1, buf);
            } else if many {
                t.half_panel_gemm(bf, bytes, &s, x, n0, n1, buf);
            } else {
                t.half_stream(bf, bytes, &s, x, n0, n1, buf);
            }
        },
    );
}

/// The whole-panel branch of [`float_matmul`]: every F16/BF16 weight converted once into
/// `panel` (`n * k` values, every one overwritten), then one `gemm` call over all rows.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn whole_panel<T: FloatKernels>(t: T, bf: bool, x: &[f32], panel: &mut [f32], p: Product<'_>) {
    let (s, bytes, par) = (&p.s, p.w.as_bytes(), p.par);
    let kn = T::PANEL_KN;
    // Values per conversion task: rows of the panel (of wᵀ, in whole 8 x 8 blocks of the
    // converter, when it is `k x n`; of `w` otherwise).
    let (row, rows_per) = if kn {
        (s.n, (PAR_CONVERT_VALUES / s.n).max(1).next_multiple_of(8))
    } else {
        (s.k, (PAR_CONVERT_VALUES / s.k).max(1))
    };
    let convert = |(i, dst): (usize, &mut [f32])| {
        if kn {
            t.half_to_f32_t(bf, bytes, (s.n, s.k), i * rows_per, dst);
        } else {
            let v0 = i * rows_per * s.k;
            t.half_to_f32(bf, &bytes[2 * v0..2 * (v0 + dst.len())], dst);
        }
    };
    match par {
        Parallelism::Rayon if panel.len() > PAR_CONVERT_VALUES => panel
            .par_chunks_mut(rows_per * row)
            .enumerate()
            .for_each(convert),
        _ => panel
            .chunks_mut(rows_per * row)
            .enumerate()
            .for_each(convert),
    }
    gemm_f32_laid(x, panel, kn, s.m, s.n, s.k, p.out, p.alpha, p.beta, par);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
thread_local! {
    /// The f32 panel of this thread's last whole-panel conversion (at most
    /// [`WHOLE_PANEL_VALUES`] values, 8 MiB), kept so that the next call neither allocates nor
    /// zeroes one: at 256 x 1152 x 128 a fresh 590 KB panel per call cost page faults and a
    /// memset.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's kept panel of `len` values (stale contents), or on a fresh one
/// when the kept panel is in use (a rayon task of another call stolen while this thread waits
/// inside `gemm`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn with_panel(len: usize, f: impl FnOnce(&mut [f32])) {
    PANEL.with(|p| match p.try_borrow_mut() {
        Ok(mut kept) => {
            if kept.len() < len {
                kept.resize(len, 0.0);
            }
            f(&mut kept[..len]);
        }
        Err(_) => f(&mut vec![0.0; len]),
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 driver: tiling and task split around the kernels of `arch::x86_64::matmul_avx2`.

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::pack::{self, RowBlock};
    use super::{Acts, Product, Shape, Task, plan_tasks, run_tiles, threads};
    use crate::arch::x86_64::matmul_avx2 as k;
    use crate::arch::x86_64::matmul_avx512 as k512;
    use crate::blocks::QK;
    use crate::dispatch::{Avx2, Avx512};
    use crate::error::Result;

    /// Weight rows per task, at most: a tile of quantized weights that stays in L2.
    const NC_Q: usize = 64;

    impl super::FloatKernels for Avx2 {
        fn stream_f32(
            self,
            w: &[f32],
            s: &Shape,
            x: &[f32],
            n0: usize,
            n1: usize,
            buf: &mut [f32],
        ) {
            k::stream(self, w, s, x, n0, n1, buf);
        }
        fn half_stream(
            self,
            bf: bool,
            w: &[u8],
            s: &Shape,
            x: &[f32],
            n0: usize,
            n1: usize,
            buf: &mut [f32],
        ) {
            k::half_stream(self, bf, w, s, x, n0, n1, buf);
        }
        fn half_to_f32(self, bf: bool, bytes: &[u8], dst: &mut [f32]) {
            k::half_to_f32(self, bf, bytes, dst);
        }
        // gemm packs a k x n panel faster than n x k weight rows at most shapes.
        const PANEL_KN: bool = true;
        fn half_to_f32_t(
            self,
            bf: bool,
            bytes: &[u8],
            nk: (usize, usize),
            l0: usize,
            dst: &mut [f32],
        ) {
            k::half_to_f32_t(self, bf, bytes, nk, l0, dst);
        }
        fn half_panel_gemm(
            self,
            bf: bool,
            w: &[u8],
            s: &Shape,
            x: &[f32],
            n0: usize,
            n1: usize,
            buf: &mut [f32],
        ) {
            k::half_panel_gemm(self, bf, w, s, x, n0, n1, buf);
        }
    }

    /// Bytes of quantized activation rows a row-split task quantizes and runs at a time: a
    /// slice that stays in L1/L2 while every weight strip passes over it.
    const SUB_BYTES: usize = 64 << 10;

    /// Block-format weights against `acts`: the AVX-512 VNNI strip kernels when `wide` is
    /// given and there are two rows or more, the AVX2 kernels otherwise. With few weight rows
    /// (all their strips fit in L2, see [`k::row_split_fits`]) the work is split by
    /// activation rows only: every strip is repacked once per call and each task quantizes
    /// its own rows, so that the f32 activations are read once and their blocks never leave
    /// the cache; otherwise the rows are quantized once up front and tasks split weight rows
    /// (and rows, when the weight rows alone give too few tasks).
    ///
    /// # Errors
    ///
    /// [`crate::KernelError::NonFinite`] naming the first NaN or infinite value of raw
    /// activations (`out` may then have been partly written).
    pub(super) fn quant_matmul(
        t: Avx2,
        wide: Option<Avx512>,
        acts: Acts<'_>,
        p: Product<'_>,
    ) -> Result<()> {
        let (s, bytes, f) = (p.s, p.w.as_bytes(), p.w.format());
        let wide = wide.filter(|_| s.m >= 2);
        let nb = s.k / QK;
        if wide.is_none() && s.m >= 2 && k::row_split_fits(f, s.n, nb) {
            return row_split(t, acts, p);
        }
        let mut owned = None;
        let packed = acts.quantized(&s, p.par, &mut owned)?;
        // Row groups of the kernel's pass size, so tasks split rows between passes; weight
        // rows per task a multiple of the kernel's strip.
        let (mr, align) = match wide {
            Some(_) => (k512::MR, 16),
            None => (k::rows_per_pass(s.m), 8),
        };
        let tasks = plan_tasks(s.n, s.m.div_ceil(mr), NC_Q, align, threads(p.par));
        let rows = |task: &Task| {
            let r0 = task.g0 * mr;
            (r0, (task.g1 * mr).min(s.m) - r0)
        };
        run_tiles(&tasks, p, rows, |task, tile| {
            let (r0, count) = rows(task);
            let (n0, n1, r1) = (task.n0, task.n1, r0 + count);
            let done = wide
                .is_some_and(|t5| k512::quant_task(t5, f, bytes, &s, packed, n0, n1, r0, r1, tile));
            if !done {
                k::quant_task(t, f, bytes, &s, packed, n0, n1, r0, r1, tile);
            }
        });
        Ok(())
    }

    /// The row-split driver of [`quant_matmul`]: all weight rows repacked once, tasks of
    /// consecutive activation rows (a multiple of the strip kernel's pass), each quantizing
    /// (for raw activations) and running slices of [`SUB_BYTES`] against every strip.
    fn row_split(t: Avx2, acts: Acts<'_>, p: Product<'_>) -> Result<()> {
        let s = p.s;
        let nb = s.k / QK;
        let strips = k::PackedStrips::new(t, p.w.format(), p.w.as_bytes(), &s);
        let pass = k::rows_per_pass(s.m);
        // Rows of one slice, and of one task: about 8 tasks a thread (rayon balances them
        // when a hypervisor takes a core away for a while).
        let sub = ((SUB_BYTES / (nb * size_of::<RowBlock>()).max(1)) / pass).max(1) * pass;
        let th = threads(p.par);
        let per_task = if th <= 1 {
            s.m
        } else {
            s.m.div_ceil(8 * th).div_ceil(pass).max(1) * pass
        };
        let tasks: Vec<Task> = (0..s.m.div_ceil(per_task))
            .map(|g| Task {
                n0: 0,
                n1: s.n,
                g0: g,
                g1: g + 1,
            })
            .collect();
        let rows = |task: &Task| {
            let r0 = task.g0 * per_task;
            (r0, (r0 + per_task).min(s.m) - r0)
        };
        let bad = AtomicBool::new(false);
        run_tiles(&tasks, p, rows, |task, tile| {
            let (r0, count) = rows(task);
            let mut buf = match acts {
                Acts::Raw(_) => vec![RowBlock::ZERO; sub.min(count) * nb],
                Acts::Packed(_) => Vec::new(),
            };
            for j0 in (0..count).step_by(sub) {
                let c = sub.min(count - j0);
                let (a, b) = ((r0 + j0) * nb, (r0 + j0 + c) * nb);
                let xr: &[RowBlock] = match acts {
                    Acts::Packed(p) => &p.rows[a..b],
                    Acts::Raw(x) => {
                        let dst = &mut buf[..c * nb];
                        if !pack::pack_rows(&x[a * QK..b * QK], dst) {
                            bad.store(true, Ordering::Relaxed);
                            return;
                        }
                        dst
                    }
                };
                k::strips_task(t, &strips, xr, j0, tile);
            }
        });
        if bad.load(Ordering::Relaxed)
            && let Acts::Raw(x) = acts
        {
            super::check_finite(x)?;
            debug_assert!(false, "the packer flagged finite activations");
        }
        Ok(())
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    //! The NEON driver: row kernels of `arch::aarch64::matmul_neon` for quantized weights,
    //! streaming kernels of `arch::aarch64::stream_neon` for few activation rows of float
    //! weights, f32 panels and `gemm` for many; split by weight rows.

    use super::pack::PackedX;
    use super::{Product, Shape, Task, plan_tasks, run_tasks, threads};
    use crate::arch::aarch64::matmul_neon as k;
    use crate::arch::aarch64::stream_neon as sk;
    use crate::dispatch::Neon;
    use crate::error::Result;

    /// Weight rows per task, at most.
    const NC: usize = 64;

    impl super::FloatKernels for Neon {
        fn stream_f32(
            self,
            w: &[f32],
            s: &Shape,
            x: &[f32],
            n0: usize,
            n1: usize,
            buf: &mut [f32],
        ) {
            sk::stream(self, w, s, x, n0, n1, buf);
        }
        fn half_stream(
            self,
            bf: bool,
            w: &[u8],
            s: &Shape,
            x: &[f32],
            n0: usize,
            n1: usize,
            buf: &mut [f32],
        ) {
            sk::half_stream(self, bf, w, s, x, n0, n1, buf);
        }
        fn half_to_f32(self, bf: bool, bytes: &[u8], dst: &mut [f32]) {
            sk::half_to_f32(self, bf, bytes, dst);
        }
        fn half_panel_gemm(
            self,
            bf: bool,
            w: &[u8],
            s: &Shape,
            x: &[f32],
            n0: usize,
            n1: usize,
            buf: &mut [f32],
        ) {
            sk::half_panel_gemm(self, bf, w, s, x, n0, n1, buf);
        }
    }

    /// Block-format weights against activation rows quantized in `packed`.
    pub(super) fn quant_matmul(t: Neon, packed: &PackedX, p: Product<'_>) -> Result<()> {
        let (s, bytes, f) = (p.s, p.w.as_bytes(), p.w.format());
        let groups = packed.groups();
        let tasks = plan_tasks(s.n, groups, NC, 4, threads(p.par));
        let rows = |task: &Task| packed.rows_of(task.g0, task.g1);
        run_tasks(&tasks, p, rows, |task, buf| {
            k::quant_task(
                t, f, bytes, &s, packed, task.n0, task.n1, task.g0, task.g1, buf,
            );
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_cover_every_row_and_group_once() {
        for &(n, groups, threads) in &[
            (0, 3, 2),
            (1, 1, 2),
            (19, 3, 2),
            (4096, 1, 2),
            (19, 64, 8),
            (100, 5, 1),
        ] {
            let tasks = plan_tasks(n, groups, 64, 4, threads);
            let mut seen = vec![0u32; n * groups];
            for t in &tasks {
                assert!(t.n0 < t.n1 && t.n1 <= n && t.g0 < t.g1 && t.g1 <= groups);
                for i in t.n0..t.n1 {
                    for g in t.g0..t.g1 {
                        seen[i * groups + g] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "n {n} groups {groups}: {tasks:?}"
            );
        }
    }

    /// `m x k` activations with a few sign changes and magnitudes.
    fn activations(m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| (i as f32 * 0.37).sin() * (1.0 + (i % 7) as f32))
            .collect()
    }

    #[test]
    fn prequantized_rows_give_what_matmul_gives() {
        let (m, k, n) = (13, 96, 19);
        let x = activations(m, k);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.71).cos()).collect();
        for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
            let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
            let xq = pack::PackedX::quantize(&x, m, k, Parallelism::Rayon).unwrap();
            assert_eq!((xq.m(), xq.k()), (m, k));
            let (mut direct, mut split) = (vec![1.0; m * n], vec![1.0; m * n]);
            matmul_acc(&x, m, &wq, &mut direct, 0.5, 2.0, Parallelism::Rayon).unwrap();
            matmul_q8_activations(&xq, &wq, &mut split, 0.5, 2.0, Parallelism::Rayon).unwrap();
            assert_eq!(direct, split, "{format}");
        }
    }

    #[test]
    fn zero_blocks_stand_for_zero_activations() {
        let (m, k, n) = (5, 64, 9);
        let mut x = activations(m, k);
        // Row 2's second block is zero: a padding tap.
        x[2 * k + 32..3 * k].fill(0.0);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.29).sin()).collect();
        for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
            let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
            let xq = pack::PackedX::quantize(&x, m, k, Parallelism::None).unwrap();
            let mut blocks: Vec<_> = (0..m).flat_map(|r| xq.row(r).to_vec()).collect();
            blocks[2 * 2 + 1] = pack::RowBlock::ZERO;
            let gathered = pack::PackedX::from_rows(2, m, blocks).unwrap();
            let (mut direct, mut split) = (vec![0.0; m * n], vec![0.0; m * n]);
            matmul(&x, m, &wq, &mut direct, Parallelism::None).unwrap();
            matmul_q8_activations(&gathered, &wq, &mut split, 1.0, 0.0, Parallelism::None).unwrap();
            assert_eq!(direct, split, "{format}");
        }
    }

    #[test]
    fn prequantized_entry_checks_its_inputs() {
        let x = activations(3, 64);
        let xq = pack::PackedX::quantize(&x, 3, 64, Parallelism::None).unwrap();
        let w = QuantizedTensor::quantize(Format::Q8_0, 2, 64, &[0.5; 128]).unwrap();
        let mut out = vec![0.0; 6];
        let float = QuantizedTensor::quantize(Format::F16, 2, 64, &[0.5; 128]).unwrap();
        assert!(matches!(
            matmul_q8_activations(&xq, &float, &mut out, 1.0, 0.0, Parallelism::None),
            Err(KernelError::UnsupportedConversion { .. })
        ));
        let wide = QuantizedTensor::quantize(Format::Q8_0, 2, 96, &[0.5; 192]).unwrap();
        assert!(matches!(
            matmul_q8_activations(&xq, &wide, &mut out, 1.0, 0.0, Parallelism::None),
            Err(KernelError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            matmul_q8_activations(&xq, &w, &mut out[..5], 1.0, 0.0, Parallelism::None),
            Err(KernelError::ShapeMismatch { what: "out", .. })
        ));
        assert!(matches!(
            pack::PackedX::quantize(&x, 3, 48, Parallelism::None),
            Err(KernelError::RowLengthNotBlockMultiple { .. })
        ));
        let mut bad = x.clone();
        bad[70] = f32::NAN;
        assert!(matches!(
            pack::PackedX::quantize(&bad, 3, 64, Parallelism::None),
            Err(KernelError::NonFinite { index: 70, .. })
        ));
        assert!(matches!(
            pack::PackedX::from_rows(2, 3, vec![pack::RowBlock::ZERO; 5]),
            Err(KernelError::ShapeMismatch { .. })
        ));
    }

    /// Which micro-kernels [`quant_matmul_on`] runs for `path`: levels without kernels of their
    /// own (avx-vnni and avx512 today) run the AVX2 ones, and the report must say so.
    fn micro_kernels(path: crate::dispatch::KernelPath) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::dispatch::Avx512::for_path(path).is_some_and(|t| t.vnni) {
                return "avx512-vnni";
            }
            if crate::dispatch::Avx2::for_path(path).is_some() {
                return "avx2";
            }
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(t) = crate::dispatch::Neon::for_path(path) {
            return if t.dotprod { "neon+dotprod" } else { "neon" };
        }
        let _ = path;
        "scalar"
    }

    /// Every block-format kernel path this CPU has, called directly with its token, against the
    /// scalar oracle; the paths it lacks are printed as not tested.
    #[test]
    fn every_supported_path_matches_the_oracle() {
        use crate::dispatch::KernelPath;
        let shapes = [
            (1, 64, 9),
            (2, 32, 16),
            (7, 96, 17),
            (13, 256, 40),
            (30, 128, 33),
        ];
        for path in KernelPath::ALL {
            if !path.supported() {
                println!("block-format kernels on {path}: not tested (CPU lacks it)");
                continue;
            }
            for &(m, k, n) in &shapes {
                let x = activations(m, k);
                let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.53).cos() * 2.0).collect();
                for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
                    let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
                    let mut oracle = vec![0.0; m * n];
                    matmul_scalar(&x, m, &wq, &mut oracle).unwrap();
                    let xq = pack::PackedX::new(&x, m, k, Parallelism::Rayon);
                    let mut out = vec![f32::NAN; m * n];
                    let p = Product {
                        s: Shape::check_packed(&xq, &wq, &out).unwrap(),
                        w: &wq,
                        out: &mut out,
                        alpha: 1.0,
                        beta: 0.0,
                        par: Parallelism::Rayon,
                    };
                    quant_matmul_on(path, Acts::Packed(&xq), p).unwrap();
                    for (i, (a, b)) in out.iter().zip(&oracle).enumerate() {
                        let (r, c) = (i / n, i % n);
                        let mag: f32 = (0..k).map(|l| (x[r * k + l] * w[c * k + l]).abs()).sum();
                        assert!(
                            (a - b).abs() <= 1e-5 * mag.max(1.0),
                            "{path} {format} {m}x{k}x{n} at ({r}, {c}): {a} vs {b}"
                        );
                    }
                }
            }
            println!(
                "block-format kernels on {path} ({} micro-kernels): tested against the oracle",
                micro_kernels(path)
            );
        }
    }

    #[test]
    fn parallel_scan_names_the_first_non_finite_value() {
        let mut x = vec![1.0f32; 1 << 20];
        assert!(check_finite_par(&x, Parallelism::Rayon).is_ok());
        x[900_001] = f32::NAN;
        x[300_007] = f32::NEG_INFINITY;
        x[700_000] = f32::INFINITY;
        for par in [Parallelism::Rayon, Parallelism::None] {
            assert!(matches!(
                check_finite_par(&x, par),
                Err(KernelError::NonFinite { index: 300_007, value }) if value == f32::NEG_INFINITY
            ));
        }
        // Through the public entry point, large enough to split.
        let (m, k) = (8192, 64);
        let mut x = vec![0.5f32; m * k];
        x[m * k - 3] = f32::NAN;
        let w = QuantizedTensor::quantize(Format::F16, 16, k, &vec![0.25; 16 * k]).unwrap();
        let mut out = vec![0.0; m * 16];
        assert!(matches!(
            matmul(&x, m, &w, &mut out, Parallelism::Rayon),
            Err(KernelError::NonFinite { index, .. }) if index == m * k - 3
        ));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposed_half_panels_are_the_widened_transpose() {
        let Some(t) = crate::dispatch::avx2() else {
            println!("transposed f16/bf16 panels on avx2: not tested (CPU lacks it)");
            return;
        };
        // Edges in both directions (n and rows not multiples of 8), a first row l0 > 0, and
        // bytes misaligned for `half` values (the one-at-a-time fallback).
        for &(n, k) in &[(1, 1), (8, 8), (13, 29), (24, 100), (130, 17)] {
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.29).sin() * 3.0).collect();
            for format in [Format::F16, Format::BF16] {
                let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
                let wf = wq.to_f32();
                let mut shifted = vec![0u8; wq.as_bytes().len() + 1];
                shifted[1..].copy_from_slice(wq.as_bytes());
                for bytes in [wq.as_bytes(), &shifted[1..]] {
                    for l0 in [0, k / 2] {
                        let mut dst = vec![f32::NAN; (k - l0) * n];
                        FloatKernels::half_to_f32_t(
                            t,
                            format == Format::BF16,
                            bytes,
                            (n, k),
                            l0,
                            &mut dst,
                        );
                        for (at, v) in dst.iter().enumerate() {
                            let (i, j) = (at / n, at % n);
                            assert_eq!(
                                v.to_bits(),
                                wf[j * k + l0 + i].to_bits(),
                                "{format} {n}x{k} from {l0} at ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
        println!("transposed f16/bf16 panels on avx2: tested");
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn a_kept_panel_in_use_gives_a_fresh_one() {
        with_panel(16, |outer| {
            outer.fill(1.0);
            // As when a stolen rayon task of another call converts on this thread.
            with_panel(8, |inner| {
                assert_eq!(inner, &[0.0; 8]);
                inner.fill(2.0);
            });
            assert!(outer.iter().all(|&v| v == 1.0));
        });
        // The kept panel comes back with its stale contents, grown on demand.
        with_panel(4, |p| assert_eq!(p, &[1.0; 4]));
        with_panel(32, |p| assert_eq!(p.len(), 32));
    }

    #[test]
    fn float_products_find_non_finite_activations_in_their_output() {
        // Fewer weight rows than columns: `x` is scanned through the finished product.
        let (m, k, n) = (4099, 96, 13);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.41).sin()).collect();
        for format in [Format::F16, Format::BF16, Format::F32] {
            let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
            for par in [Parallelism::Rayon, Parallelism::None] {
                let mut x = activations(m, k);
                x[m * k - 40] = f32::NAN;
                // w[0][0] is 0: infinity times zero is NaN, still non-finite.
                x[3000 * k] = f32::INFINITY;
                x[3000 * k + 7] = f32::NAN;
                let mut out = vec![0.0; m * n];
                assert!(matches!(
                    matmul(&x, m, &wq, &mut out, par),
                    Err(KernelError::NonFinite { index, value })
                        if index == 3000 * k && value == f32::INFINITY
                ));
                // A NaN the caller left in `out` (kept by beta) and a product that overflows
                // are results, not errors.
                let x = activations(m, k);
                let mut out = vec![0.0; m * n];
                out[5 * n + 2] = f32::NAN;
                matmul_acc(&x, m, &wq, &mut out, 1.0, 1.0, par).unwrap();
                assert!(out[5 * n + 2].is_nan() && out[5 * n + 1].is_finite());
                let mut out = vec![0.0; m * n];
                matmul_acc(&x, m, &wq, &mut out, f32::MAX, 0.0, par).unwrap();
                assert!(out.iter().any(|v| v.is_infinite()));
            }
        }
    }

    #[test]
    fn row_split_tasks_name_the_first_non_finite_value() {
        // Many rows and few weight rows: the driver quantizes rows inside its tasks.
        let (m, k, n) = (4099, 96, 13);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.41).sin()).collect();
        for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
            let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
            let mut x = activations(m, k);
            x[m * k - 40] = f32::NAN;
            x[3000 * k + 5] = f32::INFINITY;
            let mut out = vec![0.0; m * n];
            assert!(matches!(
                matmul(&x, m, &wq, &mut out, Parallelism::Rayon),
                Err(KernelError::NonFinite { index, .. }) if index == 3000 * k + 5
            ));
        }
    }

    #[test]
    fn row_split_matches_the_oracle_at_many_rows() {
        // Odd row counts (last pass and last task short), weight rows not a multiple of 8,
        // both entry points (raw and prequantized rows), accumulation with beta.
        for &(m, k, n) in &[(2, 32, 1), (1201, 288, 32), (777, 64, 19), (3001, 160, 45)] {
            let x = activations(m, k);
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.53).cos() * 2.0).collect();
            for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
                let wq = QuantizedTensor::quantize(format, n, k, &w).unwrap();
                let mut oracle = vec![0.5; m * n];
                let mut mm = vec![0.0; m * n];
                matmul_scalar(&x, m, &wq, &mut mm).unwrap();
                for (o, v) in oracle.iter_mut().zip(&mm) {
                    *o = 2.0 * *o + 0.5 * v;
                }
                let xq = pack::PackedX::quantize(&x, m, k, Parallelism::Rayon).unwrap();
                for par in [Parallelism::Rayon, Parallelism::None] {
                    let (mut raw, mut pre) = (vec![0.5; m * n], vec![0.5; m * n]);
                    matmul_acc(&x, m, &wq, &mut raw, 0.5, 2.0, par).unwrap();
                    matmul_q8_activations(&xq, &wq, &mut pre, 0.5, 2.0, par).unwrap();
                    assert_eq!(raw, pre, "{format} {m}x{k}x{n}");
                    for (i, (a, b)) in raw.iter().zip(&oracle).enumerate() {
                        let (r, c) = (i / n, i % n);
                        let mag: f32 = (0..k).map(|l| (x[r * k + l] * w[c * k + l]).abs()).sum();
                        assert!(
                            (a - b).abs() <= 1e-5 * mag.max(1.0) + 1e-5,
                            "{format} {m}x{k}x{n} at ({r}, {c}): {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn first_non_finite_finds_the_first() {
        let mut x = vec![1.0f32; 1000];
        assert_eq!(first_non_finite(&x), None);
        x[700] = f32::INFINITY;
        x[900] = f32::NAN;
        assert_eq!(first_non_finite(&x), Some(700));
    }
}
