//! The portable matmul: the oracle every SIMD path is tested against, and the path
//! `HAAGENTI_FORCE_SCALAR=1` selects.
//!
//! For block formats it does the SIMD kernels' arithmetic with the SIMD kernels' inputs:
//! activations quantized by the scalar Q8_0 quantizer (bit-exact with the SIMD one), exact `i32`
//! block dot products (`Σ q_w q_x`, with `q_w - 8` for Q4_0), then per block in f32
//! `sum += (d_w * d_x) * isum` (Q4_1: `+ m_w * (d_x * Σ q_x)`). Only the order of the f32
//! additions differs from the SIMD kernels, which keep per-lane partial sums.

use half::{bf16, f16};

use super::pack::PackedX;
use super::{Product, Shape, plan_tasks, run_tasks, threads};
use crate::blocks::QK;
use crate::error::Result;
use crate::format::Format;
use crate::tensor::QuantizedTensor;

/// The scalar oracle of [`matmul`](crate::matmul): `out[m x n] = x[m x k] · w[n x k]ᵀ` on one
/// thread with plain loops.
///
/// Block formats quantize each activation row to Q8_0 with the scalar quantizer and take integer
/// block dot products; F16/BF16 weights are converted value by value; every sum runs in order,
/// in f32, without fused multiply-adds.
///
/// # Errors
///
/// As [`matmul`](crate::matmul).
///
/// # Examples
///
/// ```
/// use haagenti_adaptive_kernels::{Format, Parallelism, QuantizedTensor, matmul, matmul_scalar};
///
/// let (m, k, n) = (3, 64, 5);
/// let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
/// let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect();
/// let wq = QuantizedTensor::quantize(Format::Q4_0, n, k, &w)?;
/// let (mut fast, mut oracle) = (vec![0.0; m * n], vec![0.0; m * n]);
/// matmul(&x, m, &wq, &mut fast, Parallelism::Rayon)?;
/// matmul_scalar(&x, m, &wq, &mut oracle)?;
/// for (a, b) in fast.iter().zip(&oracle) {
///     assert!((a - b).abs() <= 1e-4);
/// }
/// # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
/// ```
pub fn matmul_scalar(x: &[f32], m: usize, w: &QuantizedTensor, out: &mut [f32]) -> Result<()> {
    let s = Shape::check(x, m, w, out)?;
    let xq = if w.format().is_block() {
        PackedX::new_scalar(x, s.m, s.k)
    } else {
        PackedX::new_scalar(&[], s.m, 0)
    };
    let bytes = w.as_bytes();
    for i in 0..s.m {
        for j in 0..s.n {
            out[i * s.n + j] = dot(w.format(), row(bytes, &s, j), &s, x, &xq, i);
        }
    }
    Ok(())
}

/// The scalar path of `matmul_acc` for float weights, split over weight rows by `p.par`.
pub(super) fn matmul_par(x: &[f32], p: Product<'_>) -> Result<()> {
    let none = PackedX::new_scalar(&[], p.s.m, 0);
    run_scalar(x, &none, p)
}

/// The scalar path of block formats on pre-quantized activation rows, split over weight rows.
pub(super) fn quant_par(xq: &PackedX, p: Product<'_>) -> Result<()> {
    run_scalar(&[], xq, p)
}

/// Every `out` value through [`dot`]: `x` for float weights, `xq` for block formats.
fn run_scalar(x: &[f32], xq: &PackedX, p: Product<'_>) -> Result<()> {
    let (s, format, bytes) = (p.s, p.w.format(), p.w.as_bytes());
    let tasks = plan_tasks(s.n, 1, 64, 1, threads(p.par));
    run_tasks(
        &tasks,
        p,
        |_| (0, s.m),
        |t, buf| {
            let nc = t.n1 - t.n0;
            for i in 0..s.m {
                for j in t.n0..t.n1 {
                    buf[i * nc + (j - t.n0)] = dot(format, row(bytes, &s, j), &s, x, xq, i);
                }
            }
        },
    );
    Ok(())
}
/// The bytes of weight row `j`.
fn row<'a>(bytes: &'a [u8], s: &Shape, j: usize) -> &'a [u8] {
    bytes
        .get(j * s.row_bytes..(j + 1) * s.row_bytes)
        .unwrap_or(&[])
}

/// Little-endian f16 bits at `b[0..2]`, as f32.
#[inline]
fn f16_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Dot product of activation row `i` with one weight row: of `x` for float weights, of `xq`
/// for block formats.
fn dot(format: Format, wrow: &[u8], s: &Shape, x: &[f32], xq: &PackedX, i: usize) -> f32 {
    let xr = x.get(i * s.k..(i + 1) * s.k).unwrap_or(&[]);
    let xb_row = xq.row(i);
    let mut sum = 0.0f32;
    match format {
        Format::F32 => {
            for (&a, b) in xr.iter().zip(wrow.chunks_exact(4)) {
                sum += a * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Format::F16 => {
            for (&a, b) in xr.iter().zip(wrow.chunks_exact(2)) {
                sum += a * f16_at(b);
            }
        }
        Format::BF16 => {
            for (&a, b) in xr.iter().zip(wrow.chunks_exact(2)) {
                sum += a * bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Format::Q8_0 => {
            for (wb, xb) in wrow.chunks_exact(34).zip(xb_row) {
                let isum: i32 = wb[2..]
                    .iter()
                    .zip(&xb.qs)
                    .map(|(&a, &b)| i32::from(a as i8) * i32::from(b))
                    .sum();
                sum += (f16_at(wb) * xb.d) * isum as f32;
            }
        }
        Format::Q4_0 => {
            for (wb, xb) in wrow.chunks_exact(18).zip(xb_row) {
                let mut isum = 0i32;
                for (j, &q) in wb[2..].iter().enumerate() {
                    isum += (i32::from(q & 0x0F) - 8) * i32::from(xb.qs[j]);
                    isum += (i32::from(q >> 4) - 8) * i32::from(xb.qs[j + QK / 2]);
                }
                sum += (f16_at(wb) * xb.d) * isum as f32;
            }
        }
        Format::Q4_1 => {
            for (wb, xb) in wrow.chunks_exact(20).zip(xb_row) {
                let mut isum = 0i32;
                for (j, &q) in wb[4..].iter().enumerate() {
                    isum += i32::from(q & 0x0F) * i32::from(xb.qs[j]);
                    isum += i32::from(q >> 4) * i32::from(xb.qs[j + QK / 2]);
                }
                sum += (f16_at(wb) * xb.d) * isum as f32;
                // `xb.s` is `d_x * Σ q_x`.
                sum += f16_at(&wb[2..]) * xb.s;
            }
        }
    }
    sum
}
