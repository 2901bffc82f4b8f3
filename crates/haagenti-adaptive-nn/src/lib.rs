//! Neural-network layers over `haagenti-adaptive-kernels`, an ONNX weight reader, and a real
//! pretrained diffusion network written over them: the terrain consistency UNet.
//!
//! - [`onnx`] decodes an ONNX file (hand-written `prost` messages for the fields needed; no build
//!   script, no `protoc`).
//! - [`layers`] holds NHWC layers: [`layers::Conv2d`] and [`layers::Linear`] through the
//!   kernels' `matmul` at a step's precision, with weights per precision
//!   ([`layers::Weights`]: load / release / resident bytes), group norm, SiLU, attention, average
//!   pooling, nearest up-sampling and the Fourier embedding. Norms, softmax and the attention's
//!   activation-by-activation products run in f32.
//! - [`math`] holds the elementwise functions: a vectorizing `exp` (a Cephes polynomial, AVX2
//!   on the kernels' x86 SIMD paths, scalar under `HAAGENTI_FORCE_SCALAR=1`), softmax and SiLU.
//! - [`tensor_file`] reads and writes safetensors and `.npy` tensors for comparison with other
//!   runtimes.
//! - [`sampling`] sets up `run --model terrain` over the runtime's calibration API: the model
//!   spec, the consistency sampler's noise levels, the initial noise and the quality measure
//!   (PSNR and SSIM against FP32).
//! - [`TerrainUnet`] is the network, built from the ONNX initializers with the architecture as
//!   code, and implements the runtime's [`Denoiser`](haagenti_adaptive_runtime::Denoiser).
//!
//! Layers whose weight rows a block format cannot split (the first convolution, `K = 9`, and the
//! difficulty embedding, `K = 1`) run at BF16 when a step asks for INT8 or INT4
//! ([`TerrainUnet::promotions`] lists them).
//!
//! # Examples
//!
//! ```
//! use haagenti_adaptive_core::Precision;
//! use haagenti_adaptive_nn::layers::{Conv2d, Shape};
//!
//! // A 3x3 convolution from 2 to 32 channels on a 4x4 NHWC image.
//! let w: Vec<f32> = (0..32 * 2 * 9).map(|i| (i as f32 * 0.1).sin()).collect();
//! let mut conv = Conv2d::from_oihw("demo", &[32, 2, 3, 3], &w, vec![0.0; 32])?;
//! conv.weight.load(Precision::FP16)?;
//! let shape = Shape { batch: 1, height: 4, width: 4, channels: 2 };
//! let y = conv.forward(&vec![1.0; shape.len()], shape, None, Precision::FP16)?;
//! assert_eq!(y.len(), 4 * 4 * 32);
//! # Ok::<(), haagenti_adaptive_nn::NnError>(())
//! ```
//!
//! # Features
//!
//! This crate has no cargo features.

mod error;
pub mod graph;
pub mod layers;
pub mod math;
pub mod onnx;
pub mod sampling;
mod strided;
pub mod tensor_file;
mod terrain;

pub use error::{NnError, Result};
pub use terrain::{
    EdmConstants, LayerTime, TERRAIN_FILE, TERRAIN_SIZE, TerrainUnet, models_dir,
    terrain_model_path,
};
