//! candle-core reads the GGUF files we write, and dequantizes them to exactly our values.
//!
//! Built only with `--features candle` (see `benches/Cargo.toml`), so CI never compiles candle:
//! `cargo test -p haagenti-adaptive-benches --features candle --test candle_gguf`.

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use haagenti_adaptive_kernels::gguf::{GgufBuilder, MetadataValue};
use haagenti_adaptive_kernels::{Format, QuantizedTensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.618 + seed as f32) * 1.3).sin() * (1.0 + (i % 11) as f32 * 0.3))
        .collect()
}

#[test]
fn candle_reads_every_format_and_shape_bit_exactly() -> anyhow::Result<()> {
    let specs: [(&str, &[usize], Format, GgmlDType); 7] = [
        ("blk.0.q8", &[8, 64], Format::Q8_0, GgmlDType::Q8_0),
        ("blk.0.q4_0", &[3, 4, 96], Format::Q4_0, GgmlDType::Q4_0),
        ("blk.0.q4_1", &[2, 3, 2, 32], Format::Q4_1, GgmlDType::Q4_1),
        ("blk.0.f16", &[5, 7], Format::F16, GgmlDType::F16),
        ("blk.0.bf16", &[4, 9], Format::BF16, GgmlDType::BF16),
        ("blk.0.f32", &[13], Format::F32, GgmlDType::F32),
        (
            "a.rather.long.tensor.name.as.diffusion.checkpoints.use.model.diffusion_model.out.0",
            &[2, 32],
            Format::Q8_0,
            GgmlDType::Q8_0,
        ),
    ];
    let dir = tempfile_dir()?;
    let path = dir.join("candle.gguf");
    let mut builder = GgufBuilder::new();
    builder.metadata(
        "general.quantized_by",
        MetadataValue::String("haagenti-adaptive".into()),
    );
    let mut tensors = Vec::new();
    for (i, (name, shape, format, _)) in specs.iter().enumerate() {
        let cols = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let t = QuantizedTensor::quantize(*format, n / cols, cols, &values(n, i as u32))?;
        builder.add_tensor(name, shape, *format)?;
        tensors.push(t);
    }
    let mut writer = builder.create(&path)?;
    for t in &tensors {
        writer.write_tensor(t)?;
    }
    writer.finish()?;

    let mut file = std::fs::File::open(&path)?;
    let content = Content::read(&mut file)?;
    assert_eq!(
        content.metadata["general.quantized_by"].to_string()?,
        "haagenti-adaptive"
    );
    assert_eq!(content.tensor_infos.len(), specs.len());
    for ((name, shape, _, dtype), ours) in specs.iter().zip(&tensors) {
        let q = content.tensor(&mut file, name, &Device::Cpu)?;
        assert_eq!(q.dtype(), *dtype, "{name}");
        assert_eq!(q.shape().dims(), *shape, "{name}");
        let theirs = q
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let ours = ours.to_f32();
        assert_eq!(theirs.len(), ours.len(), "{name}");
        let differing = theirs
            .iter()
            .zip(&ours)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differing, 0, "{name}: candle and we dequantize differently");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A fresh directory under the system temporary directory (tempfile is not a bench dependency).
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("haagenti-candle-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
