//! The terrain consistency UNet (pip package `adaptive-terrain-diffusion` 0.4.2): guided
//! diffusion's `UNetModel` with scale-shift conditioning, ResBlock down/up-sampling and
//! `QKVAttention`, wrapped in the EDM consistency-model scalings, built from the ONNX file's
//! initializers with the architecture written out here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_runtime::{Denoiser, RuntimeError};

use crate::graph::{FoundGroupNorm, GraphReader};
use crate::layers::{
    Attention, Conv2d, GroupNorm, Linear, Modulation, Shape, Weights, avg_pool2, fourier_embedding,
    silu, upsample_nearest2,
};
use crate::onnx::OnnxModel;
use crate::{NnError, Result};
use rayon::prelude::*;

/// The ONNX file's name in the model folder.
pub const TERRAIN_FILE: &str = "terrain_consistency_unet_difficulty100.onnx";

/// Height and width of the height maps the network was trained on.
pub const TERRAIN_SIZE: usize = 128;

/// Base channels.
const MODEL_CHANNELS: usize = 32;
/// Channel multiplier per level (128, 64, 32, 16, 8 pixels).
const CHANNEL_MULT: [usize; 5] = [1, 1, 2, 3, 4];
/// ResBlocks a level on the way down (one more on the way up).
const NUM_RES_BLOCKS: usize = 4;
/// Levels with attention after each ResBlock.
const ATTENTION_LEVELS: [usize; 3] = [2, 3, 4];
/// Channels an attention head.
const HEAD_CHANNELS: usize = 32;

/// The folder models are kept in: `HAAGENTI_MODELS`, else `~/.cache/haagenti-adaptive/models`
/// (where `cargo xtask fetch-model` puts them).
///
/// # Examples
///
/// ```
/// let dir = haagenti_adaptive_nn::models_dir();
/// assert!(dir.is_some() || std::env::var_os("HOME").is_none());
/// ```
pub fn models_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HAAGENTI_MODELS") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/haagenti-adaptive/models"))
}

/// The terrain model's path in [`models_dir`], if that folder is known.
pub fn terrain_model_path() -> Option<PathBuf> {
    models_dir().map(|d| d.join(TERRAIN_FILE))
}

/// A 2x resampling of an NHWC activation: [`avg_pool2`] or [`upsample_nearest2`].
type Resampler = fn(&[f32], Shape) -> (Vec<f32>, Shape);

/// Down- or up-sampling inside a ResBlock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resample {
    None,
    Down,
    Up,
}

/// Guided diffusion's `ResBlock` with `use_scale_shift_norm`.
#[derive(Clone, Debug)]
struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
    resample: Resample,
}

/// Guided diffusion's `AttentionBlock`: a norm, then attention with a residual.
#[derive(Clone, Debug)]
struct AttentionBlock {
    norm: GroupNorm,
    attention: Attention,
}

/// One step of the encoder or decoder: a ResBlock, then optionally attention, then optionally an
/// up-sampling ResBlock (decoder only).
#[derive(Clone, Debug)]
struct Stage {
    res: ResBlock,
    attention: Option<AttentionBlock>,
    upsample: Option<ResBlock>,
}

/// The EDM consistency-model constants of the graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmConstants {
    /// The smallest noise level (the boundary condition's sigma).
    pub sigma_min: f32,
    /// The data standard deviation.
    pub sigma_data: f32,
    /// `c_noise = noise_scale * ln(sigma)`.
    pub noise_scale: f32,
    /// The output is clipped to `[clip_min, clip_max]`.
    pub clip_min: f32,
    /// See `clip_min`.
    pub clip_max: f32,
}

impl EdmConstants {
    /// `(c_in, c_skip, c_out, c_noise)` at `sigma`, as the graph computes them:
    /// `c_in = 1 / sqrt(sigma² + sd²)`, `c_skip = sd² / ((sigma - sigma_min)² + sd²)`,
    /// `c_out = (sigma - sigma_min) sd / sqrt(sigma² + sd²)`.
    pub fn scalings(&self, sigma: f32) -> (f32, f32, f32, f32) {
        let sd2 = self.sigma_data * self.sigma_data;
        let s = sigma - self.sigma_min;
        let norm = (sigma * sigma + sd2).sqrt();
        (
            1.0 / norm,
            sd2 / (s * s + sd2),
            s * self.sigma_data / norm,
            self.noise_scale * sigma.ln(),
        )
    }
}

/// Wall time of one layer kind over a [`TerrainUnet::profile`] evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTime {
    /// Layer kind, e.g. `conv3x3 128->128 @16x16`.
    pub layer: String,
    /// Calls.
    pub calls: usize,
    /// Seconds over all calls.
    pub seconds: f64,
}

/// Accumulates layer times when profiling.
#[derive(Debug, Default)]
struct Profiler {
    enabled: bool,
    rows: Vec<LayerTime>,
}

impl Profiler {
    fn time<T>(
        &mut self,
        layer: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.enabled {
            return f();
        }
        let start = Instant::now();
        let out = f()?;
        let seconds = start.elapsed().as_secs_f64();
        let name = layer();
        match self.rows.iter_mut().find(|r| r.layer == name) {
            Some(r) => {
                r.calls += 1;
                r.seconds += seconds;
            }
            None => self.rows.push(LayerTime {
                layer: name,
                calls: 1,
                seconds,
            }),
        }
        Ok(out)
    }
}

/// The terrain consistency UNet: `denoised = clip(c_skip x + c_out F(c_in x, c_noise, difficulty))`
/// for 1 x 128 x 128 height maps, every Conv and Gemm with a weight at the step's precision
/// (layers a block format cannot split at the nearest float precision: [`TerrainUnet::promotions`]).
///
/// At INT8 and INT4 two kinds of layer input are multiplied in two integer passes (the Q8_0
/// blocks, then their rounding residual: [`TerrainUnet::refined_layers`]), because one Q8_0
/// scale per 32 values cannot hold them. Measured on the fixture inputs, each alone takes INT8
/// from an rms error of about 0.01 to over 0.1 against FP32 at sigma 80:
/// - the scale-shift projections' input, SiLU of the timestep embedding (one row shared by
///   every ResBlock, values 0 to 400 with a median of 43): its 8-bit rounding alone costs an rms
///   error of 0.14, since every ResBlock's per-channel scale moves with it;
/// - the output convs' input, the norm after the scale-shift, whose channels differ by up to
///   five orders of magnitude (means 0.08 to 2e4 in `output_blocks.14.0`), so that the small
///   channels of a block round to nothing; that layer alone costs 0.01.
///
/// The projections are one row a sample (their cost is nothing); the output convs are half the
/// 3x3 convolutions, so refining adds up to half again to the integer convolution work.
///
/// # Examples
///
/// ```no_run
/// use haagenti_adaptive_core::Precision;
/// use haagenti_adaptive_nn::{TerrainUnet, terrain_model_path};
/// use haagenti_adaptive_runtime::Denoiser;
///
/// let mut unet = TerrainUnet::from_file(&terrain_model_path().unwrap())?;
/// unet.load(Precision::INT8)?;
/// let x = vec![0.0; unet.dim()];
/// let mut out = vec![0.0; unet.dim()];
/// unet.denoise(&x, 1, 2.0, Precision::INT8, &mut out)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TerrainUnet {
    time_embed: [Linear; 2],
    label_emb: [Linear; 2],
    freqs: Vec<f32>,
    input_conv: Conv2d,
    input_stages: Vec<Stage>,
    middle: (ResBlock, AttentionBlock, ResBlock),
    output_stages: Vec<Stage>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    edm: EdmConstants,
    difficulty: f32,
}

/// Every `Weights` of a [`TerrainUnet`], borrowed shared or (with `mut`) exclusively: one
/// traversal for both.
macro_rules! weights_of {
    ($net:expr, $($m:ident)?) => {{
        let net = $net;
        let mut v = Vec::new();
        for l in (& $($m)? net.time_embed).into_iter().chain((& $($m)? net.label_emb).into_iter()) {
            v.push(& $($m)? l.weight);
        }
        v.push(& $($m)? net.input_conv.weight);
        let (m0, ma, m1) = & $($m)? net.middle;
        let mut blocks = Vec::new();
        let mut attentions = Vec::new();
        let stages = (& $($m)? net.input_stages).into_iter().chain((& $($m)? net.output_stages).into_iter());
        for s in stages {
            blocks.push(& $($m)? s.res);
            if let Some(a) = & $($m)? s.attention {
                attentions.push(a);
            }
            if let Some(u) = & $($m)? s.upsample {
                blocks.push(u);
            }
        }
        blocks.extend([m0, m1]);
        attentions.push(ma);
        for b in blocks {
            v.push(& $($m)? b.in_conv.weight);
            v.push(& $($m)? b.emb.weight);
            v.push(& $($m)? b.out_conv.weight);
            if let Some(s) = & $($m)? b.skip {
                v.push(& $($m)? s.weight);
            }
        }
        for a in attentions {
            v.push(& $($m)? a.attention.qkv.weight);
            v.push(& $($m)? a.attention.proj_out.weight);
        }
        v.push(& $($m)? net.out_conv.weight);
        v
    }};
}

fn group_norm(found: FoundGroupNorm) -> GroupNorm {
    GroupNorm {
        groups: found.groups,
        epsilon: found.epsilon,
        group_scale: found.group_scale,
        group_bias: found.group_bias,
        gamma: found.gamma,
        beta: found.beta,
    }
}

fn linear(r: &mut GraphReader<'_>, prefix: &str) -> Result<Linear> {
    let name = format!("{prefix}.weight");
    let (dims, w) = r.take(&name)?;
    let (_, bias) = r.take(&format!("{prefix}.bias"))?;
    let &[n, k] = dims.as_slice() else {
        return Err(NnError::Model(format!("{name} has shape {dims:?}")));
    };
    if bias.len() != n {
        return Err(NnError::Model(format!(
            "{prefix}.bias has {} values",
            bias.len()
        )));
    }
    Ok(Linear {
        weight: Weights::new(name, n, k, w)?,
        bias,
    })
}

fn conv(r: &mut GraphReader<'_>, prefix: &str) -> Result<Conv2d> {
    let name = format!("{prefix}.weight");
    let (dims, w) = r.take(&name)?;
    let (_, bias) = r.take(&format!("{prefix}.bias"))?;
    Conv2d::from_oihw(&name, &dims, &w, bias)
}

fn res_block(r: &mut GraphReader<'_>, prefix: &str, resample: Resample) -> Result<ResBlock> {
    let in_weight = format!("{prefix}.in_layers.2.weight");
    let out_weight = format!("{prefix}.out_layers.3.weight");
    let in_norm = group_norm(r.group_norm_before(&in_weight)?);
    let out_norm = group_norm(r.group_norm_before(&out_weight)?);
    if resample == Resample::Up {
        // The graph's Resize scales must be the 2x nearest up-sampling this code does.
        let conv_node = r.node_with_weight(&in_weight)?;
        let resize = r
            .producer_op(conv_node.input(0)?, "Resize")
            .ok_or_else(|| NnError::Model(format!("{prefix}: no Resize before the conv")))?;
        let scales = resize.inputs.get(2).cloned().unwrap_or_default();
        let (_, s) = r.take(&scales)?;
        if s != [1.0, 1.0, 2.0, 2.0] {
            return Err(NnError::Model(format!("{prefix}: resize scales {s:?}")));
        }
    }
    let skip_name = format!("{prefix}.skip_connection.weight");
    let skip = if r.model().initializers.contains_key(&skip_name) {
        Some(conv(r, &format!("{prefix}.skip_connection"))?)
    } else {
        None
    };
    // The two inputs one Q8_0 scale per 32 values cannot hold (see `TerrainUnet`): the
    // scale-shift projection's (SiLU of the embedding) and the output conv's (modulated).
    let mut emb = linear(r, &format!("{prefix}.emb_layers.1"))?;
    emb.weight.set_refine_activations(true);
    let mut out_conv = conv(r, &format!("{prefix}.out_layers.3"))?;
    out_conv.weight.set_refine_activations(true);
    Ok(ResBlock {
        in_norm,
        in_conv: conv(r, &format!("{prefix}.in_layers.2"))?,
        emb,
        out_norm,
        out_conv,
        skip,
        resample,
    })
}

fn attention_block(r: &mut GraphReader<'_>, prefix: &str) -> Result<AttentionBlock> {
    let qkv_weight = format!("{prefix}.qkv.weight");
    let norm = group_norm(r.group_norm_before(&qkv_weight)?);
    // qkv conv -> Reshape -> Split -> Mul(q, scale), Mul(k, scale).
    let qkv_out = r.node_with_weight(&qkv_weight)?.output(0)?.to_owned();
    let reshape = r.consumer(&qkv_out, "Reshape")?;
    let split = r.consumer(reshape.output(0)?, "Split")?;
    let mut scales = Vec::new();
    for part in 0..2 {
        let mul = r.consumer(split.output(part)?, "Mul")?;
        let name = r.constant_input(mul)?.to_owned();
        scales.push(r.take_scalar(&name)?);
    }
    if scales[0] != scales[1] {
        return Err(NnError::Model(format!(
            "{prefix}: q and k scales {scales:?}"
        )));
    }
    Ok(AttentionBlock {
        norm,
        attention: Attention {
            qkv: conv(r, &format!("{prefix}.qkv"))?,
            proj_out: conv(r, &format!("{prefix}.proj_out"))?,
            head_channels: HEAD_CHANNELS,
            qk_scale: scales[0],
        },
    })
}

/// Follows the graph from the `sigma` input to the EDM constants (reading each once).
fn edm_constants(r: &mut GraphReader<'_>) -> Result<(EdmConstants, Vec<f32>)> {
    let sub = r.consumer("sigma", "Sub")?;
    let name = r.constant_input(sub)?.to_owned();
    let sigma_min = r.take_scalar(&name)?;
    // (sigma - sigma_min) * sigma_data.
    let mul = r.consumer(sub.output(0)?, "Mul")?;
    let name = r.constant_input(mul)?.to_owned();
    let sigma_data = r.take_scalar(&name)?;
    // sigma_data² added to a squared sigma, and the exponent of that Pow.
    let pow = r.consumer("sigma", "Pow")?;
    let name = r.constant_input(pow)?.to_owned();
    let exponent = r.take_scalar(&name)?;
    let add = r.consumer(pow.output(0)?, "Add")?;
    let name = r.constant_input(add)?.to_owned();
    let sd2 = r.take_scalar(&name)?;
    if exponent != 2.0 || (sd2 - sigma_data * sigma_data).abs() > 1e-6 {
        return Err(NnError::Model(format!(
            "EDM scalings with exponent {exponent}, sigma_data {sigma_data} and sigma_data² {sd2}"
        )));
    }
    let log = r.consumer("sigma", "Log")?;
    let mul = r.consumer(log.output(0)?, "Mul")?;
    let name = r.constant_input(mul)?.to_owned();
    let noise_scale = r.take_scalar(&name)?;
    let unsqueeze = r.consumer(mul.output(0)?, "Unsqueeze")?;
    let freq_mul = r.consumer(unsqueeze.output(0)?, "Mul")?;
    let name = r.constant_input(freq_mul)?.to_owned();
    let (_, freqs) = r.take(&name)?;
    let output = r.model().outputs.first().cloned().unwrap_or_default();
    let clip = r
        .producer_op(&output, "Clip")
        .ok_or_else(|| NnError::Model("the output is not clipped".into()))?;
    let clip_min = r.take_scalar(clip.input(1)?)?;
    let clip_max = r.take_scalar(clip.input(2)?)?;
    // The scale-shift `1 + scale` adds the same shared constant 1.0 as the clip maximum.
    Ok((
        EdmConstants {
            sigma_min,
            sigma_data,
            noise_scale,
            clip_min,
            clip_max,
        },
        freqs,
    ))
}

impl TerrainUnet {
    /// Reads the ONNX file and builds the network.
    ///
    /// # Errors
    ///
    /// [`NnError::Io`] or [`NnError::Onnx`] for the file, [`NnError::Model`] when the graph is
    /// not this network.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_onnx(&OnnxModel::read(path)?)
    }

    /// Builds the network from a decoded model.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] when the graph is not this network.
    pub fn from_onnx(model: &OnnxModel) -> Result<Self> {
        Self::build(&mut GraphReader::new(model))
    }

    /// Builds the network with `reader`, whose use counts then show what was read.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] when the graph is not this network.
    pub fn build(r: &mut GraphReader<'_>) -> Result<Self> {
        let (edm, freqs) = edm_constants(r)?;
        let time_embed = [
            linear(r, "network.time_embed.0")?,
            linear(r, "network.time_embed.2")?,
        ];
        let label_emb = [
            linear(r, "network.label_emb.0")?,
            linear(r, "network.label_emb.2")?,
        ];
        let input_conv = conv(r, "network.input_blocks.0.0")?;
        let mut input_stages = Vec::new();
        let mut index = 1;
        for level in 0..CHANNEL_MULT.len() {
            for _ in 0..NUM_RES_BLOCKS {
                let prefix = format!("network.input_blocks.{index}");
                let res = res_block(r, &format!("{prefix}.0"), Resample::None)?;
                let attention = if ATTENTION_LEVELS.contains(&level) {
                    Some(attention_block(r, &format!("{prefix}.1"))?)
                } else {
                    None
                };
                input_stages.push(Stage {
                    res,
                    attention,
                    upsample: None,
                });
                index += 1;
            }
            if level + 1 != CHANNEL_MULT.len() {
                let res = res_block(
                    r,
                    &format!("network.input_blocks.{index}.0"),
                    Resample::Down,
                )?;
                input_stages.push(Stage {
                    res,
                    attention: None,
                    upsample: None,
                });
                index += 1;
            }
        }
        let middle = (
            res_block(r, "network.middle_block.0", Resample::None)?,
            attention_block(r, "network.middle_block.1")?,
            res_block(r, "network.middle_block.2", Resample::None)?,
        );
        let mut output_stages = Vec::new();
        let mut index = 0;
        for level in (0..CHANNEL_MULT.len()).rev() {
            for i in 0..=NUM_RES_BLOCKS {
                let prefix = format!("network.output_blocks.{index}");
                let res = res_block(r, &format!("{prefix}.0"), Resample::None)?;
                let has_attention = ATTENTION_LEVELS.contains(&level);
                let attention = if has_attention {
                    Some(attention_block(r, &format!("{prefix}.1"))?)
                } else {
                    None
                };
                let upsample = if level > 0 && i == NUM_RES_BLOCKS {
                    let slot = if has_attention { 2 } else { 1 };
                    Some(res_block(r, &format!("{prefix}.{slot}"), Resample::Up)?)
                } else {
                    None
                };
                output_stages.push(Stage {
                    res,
                    attention,
                    upsample,
                });
                index += 1;
            }
        }
        let out_norm = group_norm(r.group_norm_before("network.out.2.weight")?);
        let out_conv = conv(r, "network.out.2")?;
        if input_conv.in_channels != 1 || out_conv.out_channels() != 1 {
            return Err(NnError::Model(
                "the network is not 1 channel in and out".into(),
            ));
        }
        if input_conv.out_channels() != MODEL_CHANNELS {
            return Err(NnError::Model(format!(
                "the first conv has {} channels, expected {MODEL_CHANNELS}",
                input_conv.out_channels()
            )));
        }
        Ok(Self {
            time_embed,
            label_emb,
            freqs,
            input_conv,
            input_stages,
            middle,
            output_stages,
            out_norm,
            out_conv,
            edm,
            difficulty: 1.0,
        })
    }

    /// The EDM constants read from the graph.
    pub fn edm(&self) -> EdmConstants {
        self.edm
    }

    /// The difficulty [`Denoiser::denoise`] conditions on (default 1).
    pub fn difficulty(&self) -> f32 {
        self.difficulty
    }

    /// Sets the difficulty [`Denoiser::denoise`] conditions on.
    ///
    /// # Errors
    ///
    /// [`NnError::InvalidInput`] outside `[0, 1]`.
    pub fn set_difficulty(&mut self, difficulty: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&difficulty) {
            return Err(NnError::InvalidInput(format!(
                "difficulty {difficulty} is outside [0, 1]"
            )));
        }
        self.difficulty = difficulty;
        Ok(())
    }

    /// Every weight matrix, in a fixed order.
    pub fn weights(&self) -> Vec<&Weights> {
        weights_of!(self,)
    }

    fn weights_mut(&mut self) -> Vec<&mut Weights> {
        weights_of!(self, mut)
    }

    /// Every weight matrix: name, rows, columns.
    pub fn weight_shapes(&self) -> Vec<(String, usize, usize)> {
        self.weights()
            .into_iter()
            .map(|w| (w.name().to_owned(), w.rows(), w.cols()))
            .collect()
    }

    /// Parameters of all Conv and Gemm weights (biases and norms excluded).
    pub fn params(&self) -> usize {
        self.weight_shapes().iter().map(|(_, n, k)| n * k).sum()
    }

    /// The layers that run at another precision than `p` asks for, with the one they run at.
    pub fn promotions(&self, p: Precision) -> Vec<(String, Precision)> {
        self.weight_shapes()
            .into_iter()
            .filter_map(|(name, _, k)| {
                let e = crate::layers::effective_precision(p, k);
                (e != p).then_some((name, e))
            })
            .collect()
    }

    /// The layers whose integer products also multiply their input's Q8_0 rounding residual
    /// ([`Weights::set_refine_activations`]): every ResBlock's scale-shift projection
    /// (`emb_layers.1`) and output conv (`out_layers.3`). Their weights stay at the step's
    /// precision; it is their inputs that one 8-bit scale per 32 values cannot hold.
    pub fn refined_layers(&self) -> Vec<String> {
        self.weights()
            .into_iter()
            .filter(|w| w.refines_activations())
            .map(|w| w.name().to_owned())
            .collect()
    }

    /// `denoised` for `batch` height maps (`x` is `batch x 128 x 128`) with a noise level and a
    /// difficulty per sample, at `p`.
    ///
    /// # Errors
    ///
    /// [`NnError::ShapeMismatch`] for wrong lengths, [`NnError::InvalidInput`] for a sigma that is
    /// not positive and finite, [`NnError::NotResident`] when `p` is not loaded.
    pub fn forward(
        &self,
        x: &[f32],
        sigma: &[f32],
        difficulty: &[f32],
        p: Precision,
    ) -> Result<Vec<f32>> {
        self.forward_profiled(x, sigma, difficulty, p, &mut Profiler::default())
    }

    /// [`TerrainUnet::forward`] with the wall time of each layer kind.
    ///
    /// # Errors
    ///
    /// As [`TerrainUnet::forward`].
    pub fn profile(
        &self,
        x: &[f32],
        sigma: &[f32],
        difficulty: &[f32],
        p: Precision,
    ) -> Result<(Vec<f32>, Vec<LayerTime>)> {
        let mut prof = Profiler {
            enabled: true,
            rows: Vec::new(),
        };
        let out = self.forward_profiled(x, sigma, difficulty, p, &mut prof)?;
        Ok((out, prof.rows))
    }

    fn forward_profiled(
        &self,
        x: &[f32],
        sigma: &[f32],
        difficulty: &[f32],
        p: Precision,
        prof: &mut Profiler,
    ) -> Result<Vec<f32>> {
        let batch = sigma.len();
        let px = TERRAIN_SIZE * TERRAIN_SIZE;
        if x.len() != batch * px {
            return Err(NnError::ShapeMismatch {
                what: "noisy height maps",
                expected: batch * px,
                actual: x.len(),
            });
        }
        if difficulty.len() != batch {
            return Err(NnError::ShapeMismatch {
                what: "difficulty",
                expected: batch,
                actual: difficulty.len(),
            });
        }
        if let Some(s) = sigma.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(NnError::InvalidInput(format!(
                "sigma {s} is not positive and finite"
            )));
        }
        if let Some(v) = x.iter().chain(difficulty).find(|v| !v.is_finite()) {
            return Err(NnError::InvalidInput(format!(
                "input value {v} is not finite"
            )));
        }
        let scalings: Vec<_> = sigma.iter().map(|&s| self.edm.scalings(s)).collect();
        // Conditioning: emb = time_embed(fourier(c_noise)) + label_emb(difficulty).
        let emb = prof.time(
            || "embeddings".into(),
            || {
                let c_noise: Vec<f32> = scalings.iter().map(|s| s.3).collect();
                let mut t = self.time_embed[0].forward(
                    &fourier_embedding(&c_noise, &self.freqs),
                    batch,
                    p,
                )?;
                silu(&mut t);
                let t = self.time_embed[1].forward(&t, batch, p)?;
                let mut l = self.label_emb[0].forward(difficulty, batch, p)?;
                silu(&mut l);
                let l = self.label_emb[1].forward(&l, batch, p)?;
                let mut emb: Vec<f32> = t.iter().zip(&l).map(|(a, b)| a + b).collect();
                // Every ResBlock reads SiLU(emb).
                silu(&mut emb);
                Ok(emb)
            },
        )?;
        let scaled: Vec<f32> = x
            .chunks_exact(px)
            .zip(&scalings)
            .flat_map(|(img, s)| img.iter().map(move |v| v * s.0))
            .collect();
        let mut shape = Shape {
            batch,
            height: TERRAIN_SIZE,
            width: TERRAIN_SIZE,
            channels: 1,
        };
        let h = prof.time(
            || conv_label(&self.input_conv, shape),
            || self.input_conv.forward(&scaled, shape, None, p),
        )?;
        shape = shape.with_channels(self.input_conv.out_channels());
        // Each encoder output is kept once, as the skip the decoder reads, and the next stage
        // reads it there (no copy).
        let mut skips = vec![(h, shape)];
        for stage in &self.input_stages {
            let (last, last_shape) = skips
                .last()
                .ok_or_else(|| NnError::Model("no encoder output".into()))?;
            let next = self.stage(stage, last, *last_shape, &emb, p, prof)?;
            skips.push(next);
        }
        let (m0, ma, m1) = &self.middle;
        let (last, last_shape) = skips
            .last()
            .ok_or_else(|| NnError::Model("no encoder output".into()))?;
        let (mut h, mut shape) = self.res(m0, last, *last_shape, &emb, p, prof)?;
        h = self.attend(ma, &h, shape, p, prof)?;
        (h, shape) = self.res(m1, &h, shape, &emb, p, prof)?;
        for stage in &self.output_stages {
            let (skip, skip_shape) = skips
                .pop()
                .ok_or_else(|| NnError::Model("more decoder stages than skips".into()))?;
            // torch.cat([h, skip], dim=1) in NHWC: each pixel's channels, h's first.
            let joined = prof.time(
                || {
                    format!(
                        "concat {}+{}ch @{}",
                        shape.channels, skip_shape.channels, shape.height
                    )
                },
                || {
                    Ok(concat_channels(
                        &h,
                        shape.channels,
                        &skip,
                        skip_shape.channels,
                    ))
                },
            )?;
            shape = shape.with_channels(shape.channels + skip_shape.channels);
            (h, shape) = self.stage(stage, &joined, shape, &emb, p, prof)?;
        }
        // The decoder's output is read only by this norm: normalized in place.
        prof.time(
            || format!("group norm {}ch @{}", shape.channels, shape.height),
            || self.out_norm.forward_in_place(&mut h, shape, None, true),
        )?;
        let f = prof.time(
            || conv_label(&self.out_conv, shape),
            || self.out_conv.forward(&h, shape, None, p),
        )?;
        let out = x
            .chunks_exact(px)
            .zip(f.chunks_exact(px))
            .zip(&scalings)
            .flat_map(|((xi, fi), s)| {
                xi.iter().zip(fi).map(move |(xv, fv)| {
                    (s.1 * xv + s.2 * fv).clamp(self.edm.clip_min, self.edm.clip_max)
                })
            })
            .collect();
        Ok(out)
    }

    fn stage(
        &self,
        stage: &Stage,
        h: &[f32],
        shape: Shape,
        emb: &[f32],
        p: Precision,
        prof: &mut Profiler,
    ) -> Result<(Vec<f32>, Shape)> {
        let (mut h, mut shape) = self.res(&stage.res, h, shape, emb, p, prof)?;
        if let Some(a) = &stage.attention {
            h = self.attend(a, &h, shape, p, prof)?;
        }
        if let Some(u) = &stage.upsample {
            (h, shape) = self.res(u, &h, shape, emb, p, prof)?;
        }
        Ok((h, shape))
    }

    fn attend(
        &self,
        a: &AttentionBlock,
        h: &[f32],
        shape: Shape,
        p: Precision,
        prof: &mut Profiler,
    ) -> Result<Vec<f32>> {
        let normed = prof.time(
            || format!("group norm {}ch @{}", shape.channels, shape.height),
            || a.norm.forward(h, shape, None, false),
        )?;
        prof.time(
            || format!("attention {}ch @{}", shape.channels, shape.height),
            || a.attention.forward(&normed, shape, h, p),
        )
    }

    fn res(
        &self,
        b: &ResBlock,
        x: &[f32],
        shape: Shape,
        emb: &[f32],
        p: Precision,
        prof: &mut Profiler,
    ) -> Result<(Vec<f32>, Shape)> {
        let h = prof.time(
            || format!("group norm {}ch @{}", shape.channels, shape.height),
            || b.in_norm.forward(x, shape, None, true),
        )?;
        let (h, x_resampled, shape) = match b.resample {
            Resample::None => (h, None, shape),
            r => {
                let (name, resample): (_, Resampler) = if r == Resample::Down {
                    ("avg pool", avg_pool2)
                } else {
                    ("upsample", upsample_nearest2)
                };
                prof.time(
                    || format!("{name} {}ch @{}", shape.channels, shape.height),
                    || {
                        let (h, s) = resample(&h, shape);
                        let (x, _) = resample(x, shape);
                        Ok((h, Some(x), s))
                    },
                )?
            }
        };
        let x = x_resampled.as_deref().unwrap_or(x);
        let h = prof.time(
            || conv_label(&b.in_conv, shape),
            || b.in_conv.forward(&h, shape, None, p),
        )?;
        let out_c = b.in_conv.out_channels();
        let out_shape = shape.with_channels(out_c);
        let scale_shift = prof.time(
            || "embeddings".into(),
            || b.emb.forward(emb, shape.batch, p),
        )?;
        // The input conv's output is read only by this norm: normalized in place.
        let mut h = h;
        prof.time(
            || format!("group norm {out_c}ch @{}", shape.height),
            || {
                b.out_norm.forward_in_place(
                    &mut h,
                    out_shape,
                    Some(Modulation {
                        scale_shift: &scale_shift,
                    }),
                    true,
                )
            },
        )?;
        // The identity skip is the block's input itself, read in place by the output conv.
        let projected = match &b.skip {
            Some(s) => Some(prof.time(|| conv_label(s, shape), || s.forward(x, shape, None, p))?),
            None => None,
        };
        let skip = projected.as_deref().unwrap_or(x);
        let out = prof.time(
            || conv_label(&b.out_conv, out_shape),
            || b.out_conv.forward(&h, out_shape, Some(skip), p),
        )?;
        Ok((out, out_shape))
    }
}

fn conv_label(c: &Conv2d, shape: Shape) -> String {
    format!(
        "conv{k}x{k} {}->{} @{}",
        c.in_channels,
        c.out_channels(),
        shape.height,
        k = c.kernel
    )
}

fn concat_channels(a: &[f32], ca: usize, b: &[f32], cb: usize) -> Vec<f32> {
    let mut out = vec![0f32; a.len() + b.len()];
    if ca + cb == 0 {
        return out;
    }
    // Split over the pool in runs of pixels: at 128x128 this copy is a few MiB.
    out.par_chunks_mut(ca + cb)
        .zip(a.par_chunks(ca.max(1)))
        .zip(b.par_chunks(cb.max(1)))
        .with_min_len(1024)
        .for_each(|((o, pa), pb)| {
            o[..ca].copy_from_slice(&pa[..ca]);
            o[ca..].copy_from_slice(&pb[..cb]);
        });
    out
}

fn runtime_error(e: NnError) -> RuntimeError {
    match e {
        NnError::Kernel(k) => RuntimeError::Kernel(k),
        NnError::NotResident(p) => RuntimeError::NotResident(p),
        NnError::ShapeMismatch {
            what,
            expected,
            actual,
        } => RuntimeError::ShapeMismatch {
            what,
            expected,
            actual,
        },
        other => RuntimeError::InvalidModel(other.to_string()),
    }
}

impl Denoiser for TerrainUnet {
    fn dim(&self) -> usize {
        TERRAIN_SIZE * TERRAIN_SIZE
    }

    fn load(&mut self, p: Precision) -> haagenti_adaptive_runtime::Result<()> {
        self.weights_mut()
            .into_iter()
            .try_for_each(|w| w.load(p))
            .map_err(runtime_error)
    }

    fn release(&mut self, p: Precision) {
        for w in self.weights_mut() {
            w.release(p);
        }
    }

    fn resident_bytes(&self) -> usize {
        self.weights().iter().map(|w| w.resident_bytes()).sum()
    }

    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        sigma: f64,
        p: Precision,
        out: &mut [f32],
    ) -> haagenti_adaptive_runtime::Result<()> {
        if out.len() != batch * self.dim() {
            return Err(RuntimeError::ShapeMismatch {
                what: "denoised output",
                expected: batch * self.dim(),
                actual: out.len(),
            });
        }
        let sigmas = vec![sigma as f32; batch];
        let difficulty = vec![self.difficulty; batch];
        let y = self
            .forward(x, &sigmas, &difficulty, p)
            .map_err(runtime_error)?;
        out.copy_from_slice(&y);
        Ok(())
    }
}
