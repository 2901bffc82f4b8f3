//! Quantization kernels that make `haagenti-adaptive`'s precision labels real: GGUF-compatible
//! `Q8_0`, `Q4_0` and `Q4_1` blocks, `f16`/`bf16`/`f32`, a quantized matmul, error metrics, and
//! GGUF files.
//!
//! - [`Format`] names a storage format and maps each [`Precision`](haagenti_adaptive_core::Precision)
//!   label to one (INT4 -> `Q4_0`, INT8 -> `Q8_0`, FP16 -> `F16`, BF16 -> `BF16`, FP32 -> `F32`).
//! - [`QuantizedTensor`] holds a row-major matrix in a format, as the exact bytes GGUF stores
//!   (byte-compatible with ggml's `quantize_row_*_ref`, so with llama.cpp and candle); it
//!   quantizes from and dequantizes to `f32`, and converts between formats.
//! - [`quantize_row_q8_0`] and the other slice kernels work on [`blocks`] directly; [`scalar`]
//!   holds their portable oracles.
//! - [`matmul`] multiplies f32 activations by quantized weights; [`conv2d`] convolves NHWC f32
//!   images with a [`ConvWeight`] in any format (im2col tiles over the same kernels), with
//!   [`conv2d_scalar`] as its oracle; [`error_stats`] measures a
//!   reconstruction (MSE, max abs error, SQNR, cosine).
//!
//! Bad input (a row length a block format cannot split, lengths that disagree, NaN or infinite
//! values, values that overflow a 16-bit encoding) returns a typed [`KernelError`], never a panic.
//! Empty tensors work.
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::Precision;
//! use haagenti_adaptive_kernels::{Format, QuantizedTensor, error_stats, kernel_path};
//!
//! let (rows, cols) = (16, 256);
//! let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
//! let q = QuantizedTensor::quantize(Format::from(Precision::INT8), rows, cols, &w)?;
//! assert_eq!(q.byte_len(), rows * cols / 32 * 34); // 8.5 bits a weight
//!
//! let stats = error_stats(&w, &q.to_f32())?;
//! assert!(stats.sqnr_db > 35.0, "{stats:?}");
//! println!("{} kernels, SQNR {:.1} dB", kernel_path(), stats.sqnr_db);
//! # Ok::<(), haagenti_adaptive_kernels::KernelError>(())
//! ```
//!
//! # Hardware support
//!
//! The kernels are chosen once per process at run time ([`kernel_path`]); the scalar code is
//! always compiled and is the oracle every SIMD kernel is tested against (quantize bit-exact).
//!
//! | CPU | path ([`KernelPath`]) | quantize / dequantize | f16 conversion (`half`) |
//! | --- | --- | --- | --- |
//! | x86_64 with AVX-512 F/BW/VL and AVX512-VNNI (Ice Lake, Sapphire Rapids, Zen 4) | `avx512-vnni` | AVX2 (matmul of block formats: AVX-512 `vpdpbusd`) | F16C |
//! | x86_64 with AVX-512 F/BW/VL, no VNNI (Skylake-X) | `avx512` | AVX2 | F16C |
//! | x86_64 with AVX2 and AVX-VNNI, no AVX-512 (Alder Lake) | `avx-vnni` | AVX2 | F16C |
//! | x86_64 with AVX2, FMA and F16C (Haswell, Zen and later) | `avx2+fma+f16c` | AVX2 | F16C |
//! | other x86_64 | `scalar` | scalar | scalar |
//! | aarch64 with the dot-product extension | `neon+dotprod` | NEON | NEON fp16 where present |
//! | other aarch64 | `neon` | NEON | NEON fp16 where present |
//! | anything else | `scalar` | scalar | scalar |
//!
//! Setting `HAAGENTI_FORCE_SCALAR=1` in the environment (read once) forces the scalar path
//! everywhere, e.g. to test it on a SIMD machine; `HAAGENTI_MAX_ISA=avx2` (or another level,
//! see [`dispatch`]) caps the level. No `target-cpu=native` is needed or assumed.
//! Only little-endian targets are supported (the in-memory blocks are GGUF's bytes).
//!
//! # Features
//!
//! This crate has no cargo features: every path is compiled in and picked at run time.

pub mod blocks;
pub mod checkpoint;
pub mod conv;
mod matmul;

pub use conv::{
    Conv2dParams, Conv2dShape, ConvWeight, IM2COL_TILE_BYTES, conv2d, conv2d_residual,
    conv2d_scalar,
};
pub use matmul::{Parallelism, matmul, matmul_acc, matmul_scalar};

mod arch;
pub mod dispatch;
pub mod error;
pub mod format;
pub mod gguf;
pub mod io;
pub mod metrics;
pub mod quantize;
pub mod scalar;
pub mod tensor;

pub use dispatch::{KernelPath, kernel_path};
pub use error::{KernelError, ParseFormatError, Result};
pub use format::Format;
pub use metrics::{ErrorStats, error_stats};
pub use quantize::{
    bf16_to_f32, dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q8_0, f16_to_f32,
    f32_to_bf16, f32_to_f16, quantize_row_q4_0, quantize_row_q4_1, quantize_row_q8_0,
};
pub use tensor::QuantizedTensor;
