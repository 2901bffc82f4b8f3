//! The terrain UNet against onnxruntime's output (fixtures written by
//! `tools/reference/terrain_reference.py`), and the weight accounting.
//!
//! These tests need the model file (`cargo xtask fetch-model terrain`); without it they print why
//! and pass, unless `HAAGENTI_EXPECT_MODELS=1` (set by CI), when they fail.

use std::path::PathBuf;
use std::sync::OnceLock;

use haagenti_adaptive_core::Precision;
use haagenti_adaptive_nn::graph::GraphReader;
use haagenti_adaptive_nn::onnx::{OnnxModel, TensorData};
use haagenti_adaptive_nn::{TERRAIN_SIZE, TerrainUnet, terrain_model_path};
use haagenti_adaptive_runtime::Denoiser;
use safetensors::SafeTensors;

fn model_file() -> Option<PathBuf> {
    let path = terrain_model_path().filter(|p| p.exists());
    if path.is_none() {
        let expect = std::env::var("HAAGENTI_EXPECT_MODELS").is_ok_and(|v| v == "1");
        assert!(
            !expect,
            "HAAGENTI_EXPECT_MODELS=1 but the terrain model is missing: run `cargo xtask fetch-model terrain`"
        );
        eprintln!("skipped: no terrain model (run `cargo xtask fetch-model terrain`)");
    }
    path
}

fn onnx() -> Option<&'static OnnxModel> {
    static MODEL: OnceLock<OnnxModel> = OnceLock::new();
    let path = model_file()?;
    Some(MODEL.get_or_init(|| OnnxModel::read(&path).expect("the fetched model decodes")))
}

struct Fixture {
    noisy: Vec<f32>,
    sigma: Vec<f32>,
    difficulty: Vec<f32>,
    denoised: Vec<f32>,
}

fn fixture() -> Fixture {
    let bytes = include_bytes!("fixtures/terrain_reference.safetensors");
    let st = SafeTensors::deserialize(bytes).expect("fixture parses");
    let get = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).expect("fixture tensor");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    Fixture {
        noisy: get("noisy"),
        sigma: get("sigma"),
        difficulty: get("difficulty"),
        denoised: get("denoised"),
    }
}

/// Max abs and rms error of each sample against the oracle.
fn errors(got: &[f32], want: &[f32]) -> Vec<(f32, f32)> {
    let px = TERRAIN_SIZE * TERRAIN_SIZE;
    got.chunks_exact(px)
        .zip(want.chunks_exact(px))
        .map(|(g, w)| {
            let max = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let ms = g
                .iter()
                .zip(w)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / px as f64;
            (max, ms.sqrt() as f32)
        })
        .collect()
}

#[test]
fn every_initializer_is_read_and_every_weight_once() {
    let Some(model) = onnx() else { return };
    let mut reader = GraphReader::new(model);
    let unet = TerrainUnet::build(&mut reader).unwrap();
    let uses = reader.uses();
    let mut unread = Vec::new();
    for (name, init) in &model.initializers {
        let n = uses.get(name).copied().unwrap_or(0);
        match &init.data {
            // Shapes and axes of the exporter's Reshape / Unsqueeze / Concat: the NHWC code
            // expresses them as loops (the group count is read from its reshape).
            TensorData::I64(_) => {}
            TensorData::F32(_) if n == 0 => unread.push(name.clone()),
            TensorData::F32(_) => {
                let per_layer = name.starts_with("network.") || init.dims.len() == 3;
                assert!(!per_layer || n == 1, "{name} read {n} times");
            }
        }
    }
    assert!(unread.is_empty(), "initializers never read: {unread:?}");
    // 196 Conv and 59 Gemm nodes, each with its own weight.
    assert_eq!(unet.weights().len(), 196 + 59);
    let edm = unet.edm();
    assert_eq!(
        (edm.sigma_min, edm.sigma_data, edm.noise_scale),
        (0.002, 0.5, 250.0)
    );
    assert_eq!((edm.clip_min, edm.clip_max), (-1.0, 1.0));
}

#[test]
fn promotions_are_the_layers_a_block_cannot_split() {
    let Some(model) = onnx() else { return };
    let unet = TerrainUnet::from_onnx(model).unwrap();
    let names = unet.promotions(Precision::INT8);
    assert_eq!(
        names,
        [
            ("network.label_emb.0.weight".to_owned(), Precision::BF16),
            (
                "network.input_blocks.0.0.weight".to_owned(),
                Precision::BF16
            ),
        ]
    );
    assert!(unet.promotions(Precision::FP16).is_empty());
    // Every ResBlock's scale-shift projection and output conv multiply refined activations.
    let refined = unet.refined_layers();
    let blocks = unet
        .weight_shapes()
        .iter()
        .filter(|(name, ..)| name.ends_with("emb_layers.1.weight"))
        .count();
    assert_eq!(refined.len(), 2 * blocks);
    assert!(
        refined
            .iter()
            .all(|name| name.ends_with("emb_layers.1.weight")
                || name.ends_with("out_layers.3.weight"))
    );
}

#[test]
fn fp32_and_every_precision_match_onnxruntime() {
    let Some(model) = onnx() else { return };
    let mut unet = TerrainUnet::from_onnx(model).unwrap();
    let f = fixture();
    // Bounds on the max abs and rms error against onnxruntime, per case (outputs in [-1, 1],
    // rms 0.20-0.43). Measured worst cases (max abs, rms): FP32 4.1e-6, 8.6e-7; FP16 4.0e-3,
    // 6.8e-4; BF16 1.9e-2, 4.0e-3; INT8 0.25, 1.28e-2 (sigma 80; 1.13e-2 at sigma 2, 3.6e-4 at
    // 0.02: the issue asks for rms < 0.02 at every sigma); INT4 1.17, 0.144. The float bounds
    // are about 2x that, the integer ones about 1.3x, so that a regression in the activation
    // refinement (without it INT8's rms is 0.12 at sigma 80) shows.
    for (p, max_bound, rms_bound) in [
        (Precision::FP32, 1e-3, 1e-5),
        (Precision::FP16, 1e-2, 1.5e-3),
        (Precision::BF16, 4e-2, 1e-2),
        (Precision::INT8, 0.35, 0.0165),
        (Precision::INT4, 1.5, 0.19),
    ] {
        // On the scalar oracle (CI's second pass) a call is ~7x slower: FP32 and one block
        // format cover both of its matmul families there.
        if haagenti_adaptive_kernels::dispatch::force_scalar()
            && !matches!(p, Precision::FP32 | Precision::INT8)
        {
            continue;
        }
        unet.load(p).unwrap();
        let got = unet.forward(&f.noisy, &f.sigma, &f.difficulty, p).unwrap();
        unet.release(p);
        let errs = errors(&got, &f.denoised);
        eprintln!("{p}: (max abs, rms) per case {errs:?}");
        for (i, (max, rms)) in errs.into_iter().enumerate() {
            assert!(
                max <= max_bound && rms <= rms_bound,
                "{p} case {i} (sigma {}, difficulty {}): max {max}, rms {rms}",
                f.sigma[i],
                f.difficulty[i]
            );
        }
    }
    assert_eq!(unet.resident_bytes(), 0);
}
