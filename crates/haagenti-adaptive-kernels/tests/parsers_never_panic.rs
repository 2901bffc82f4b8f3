//! The file readers, given any bytes, yield a value or an error, never a panic: the GGUF reader,
//! and safetensors reading and quantizing (the fuzz targets `gguf_read` and
//! `safetensors_quantize` do the same for longer).

use haagenti_adaptive_kernels::Format;
use haagenti_adaptive_kernels::checkpoint::quantize_checkpoint;
use haagenti_adaptive_kernels::gguf::GgufFile;
use proptest::prelude::*;

/// A GGUF-looking prefix (magic, a version, small counts) followed by arbitrary bytes, so cases
/// reach past the magic; plain arbitrary bytes cover the rest.
fn gguf_bytes() -> impl Strategy<Value = Vec<u8>> {
    let headed = (
        0u32..5,
        0u64..4,
        0u64..4,
        proptest::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(version, tensors, kvs, tail)| {
            let mut b = b"GGUF".to_vec();
            b.extend(version.to_le_bytes());
            b.extend(tensors.to_le_bytes());
            b.extend(kvs.to_le_bytes());
            b.extend(tail);
            b
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..256), headed]
}

/// A safetensors-looking file: a header length, a JSON header of one tensor with arbitrary
/// dtype, shape and offsets, then arbitrary data.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        prop_oneof![Just("F32"), Just("F16"), Just("BF16"), Just("I64"), Just("U8"), Just("X")],
        proptest::collection::vec(0usize..80, 0..4),
        0usize..600,
        0usize..600,
    )
        .prop_map(|(dtype, shape, start, end)| {
            format!(
                "{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{end}]}}}}"
            )
        });
    let headed = (header, proptest::collection::vec(any::<u8>(), 0..600)).prop_map(|(h, data)| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h.into_bytes());
        b.extend(data);
        b
    });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..128), headed]
}

proptest! {
    #[test]
    fn gguf_bytes_parse_or_fail(bytes in gguf_bytes()) {
        let len = bytes.len();
        if let Ok(file) = GgufFile::parse(bytes) {
            for info in file.tensor_infos() {
                if let Ok(data) = file.tensor_bytes(&info.name) {
                    prop_assert!(data.len() <= len);
                }
                let _ = file.tensor(&info.name);
            }
        }
    }
}

proptest! {
    // Each case writes two files; fewer cases keep `cargo test` quick.
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn safetensors_bytes_quantize_or_fail(bytes in safetensors_bytes(), format in 0usize..5) {
        let format = [Format::Q8_0, Format::Q4_0, Format::Q4_1, Format::F16, Format::F32][format];
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        let output = dir.path().join("model.gguf");
        std::fs::write(&input, &bytes).unwrap();
        match quantize_checkpoint(&input, &output, format, |_| {}) {
            Ok(report) => {
                let file = GgufFile::open(&output).unwrap();
                prop_assert_eq!(file.tensor_infos().len(), report.tensors.len());
            }
            Err(_) => prop_assert!(!output.exists(), "a failed quantization left its output"),
        }
    }
}
