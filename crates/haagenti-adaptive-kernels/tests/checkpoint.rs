//! Checkpoint quantization: safetensors in, GGUF out, reports that match what was written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use haagenti_adaptive_kernels::checkpoint::{CheckpointError, Fallback, quantize_checkpoint};
use haagenti_adaptive_kernels::gguf::GgufFile;
use haagenti_adaptive_kernels::{Format, KernelError, QuantizedTensor, error_stats};
use safetensors::tensor::{Dtype, TensorView};

/// Deterministic weights with some outliers, like trained ones.
fn weights(n: usize, seed: u32) -> Vec<f32> {
    let mut state = 0x9E37_79B9u32 ^ seed.wrapping_mul(0x85EB_CA6B);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let u = (state as f32 / u32::MAX as f32) * 2.0 - 1.0;
            u * u * u * 0.5 + u * 0.05
        })
        .collect()
}

struct Source {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl Source {
    fn new(name: &'static str, dtype: Dtype, shape: &[usize], seed: u32) -> Self {
        let n = shape.iter().product();
        let mut values = weights(n, seed);
        // Make the stored values exactly representable in the source dtype.
        for v in &mut values {
            *v = match dtype {
                Dtype::F16 => half::f16::from_f32(*v).to_f32(),
                Dtype::BF16 => half::bf16::from_f32(*v).to_f32(),
                _ => *v,
            };
        }
        Self {
            name,
            dtype,
            shape: shape.to_vec(),
            values,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self.dtype {
            Dtype::F32 => self.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => self
                .values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::BF16 => self
                .values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            other => panic!("test sources are floats, not {other}"),
        }
    }
}

fn write_safetensors(path: &Path, sources: &[Source]) {
    let bytes: Vec<Vec<u8>> = sources.iter().map(Source::bytes).collect();
    let views: HashMap<&str, TensorView<'_>> = sources
        .iter()
        .zip(&bytes)
        .map(|(s, b)| {
            (
                s.name,
                TensorView::new(s.dtype, s.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mixed_sources() -> Vec<Source> {
    vec![
        Source::new("attn.q.weight", Dtype::F32, &[64, 128], 1),
        Source::new("attn.k.weight", Dtype::F16, &[32, 64], 2),
        Source::new("attn.v.weight", Dtype::BF16, &[16, 96], 3),
        Source::new("attn.q.bias", Dtype::F32, &[64], 4),
        Source::new("odd.weight", Dtype::F32, &[8, 33], 5),
        Source::new("conv.weight", Dtype::F16, &[4, 2, 3, 32], 6),
        Source::new("deep.weight", Dtype::F32, &[2, 3, 2, 2, 32], 7),
        // Two parallel chunks and a partial third.
        Source::new("big.weight", Dtype::F32, &[2100, 256], 8),
    ]
}

fn setup(sources: &[Source]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    write_safetensors(&input, sources);
    let output = dir.path().join("model.gguf");
    (dir, input, output)
}

#[test]
fn every_block_format_round_trips_exactly_as_one_shot_quantization() {
    let sources = mixed_sources();
    for format in [Format::Q8_0, Format::Q4_0, Format::Q4_1] {
        let (dir, input, output) = setup(&sources);
        let report = quantize_checkpoint(&input, &output, format, |_| {}).unwrap();
        assert_eq!(
            files_in(dir.path()),
            vec!["model.gguf", "model.safetensors"]
        );
        let file = GgufFile::open(&output).unwrap();
        assert_eq!(
            file.metadata_value("general.quantized_by")
                .and_then(|v| v.as_str()),
            Some("haagenti-adaptive")
        );
        assert_eq!(
            file.metadata_value("general.name").and_then(|v| v.as_str()),
            Some("model")
        );
        assert_eq!(report.tensors.len(), sources.len());
        for src in &sources {
            let t = report.tensors.iter().find(|t| t.name == src.name).unwrap();
            let expected_fallback = match src.name {
                "attn.q.bias" => Some(Fallback::Vector),
                "odd.weight" => Some(Fallback::RowLength),
                _ => None,
            };
            assert_eq!(t.fallback, expected_fallback, "{}", src.name);
            let expected_format = if expected_fallback.is_some() {
                Format::F16
            } else {
                format
            };
            assert_eq!(t.format, expected_format, "{}", src.name);
            assert_eq!(t.shape, src.shape);
            assert_eq!(t.dtype, src.dtype.to_string());
            assert_eq!(t.bytes_before as usize, src.bytes().len());

            // The file holds exactly what one-shot quantization of the whole tensor gives.
            let cols = *src.shape.last().unwrap();
            let rows = src.values.len() / cols;
            let expected = QuantizedTensor::quantize(t.format, rows, cols, &src.values).unwrap();
            let stored = file.tensor(src.name).unwrap();
            assert_eq!(stored, expected, "{}", src.name);
            assert_eq!(t.bytes as usize, expected.byte_len());

            // The report's statistics are those of the stored tensor.
            let stats = error_stats(&src.values, &stored.to_f32()).unwrap();
            assert_eq!(t.stats, stats, "{}", src.name);
        }
        // Rank 5 is folded to rank 4 in the file.
        assert_eq!(
            file.tensor_info("deep.weight").unwrap().shape(),
            vec![6, 2, 2, 32]
        );
        assert_eq!(
            file.tensor_info("conv.weight").unwrap().shape(),
            vec![4, 2, 3, 32]
        );
        assert_eq!(report.fallbacks, 2);
        assert_eq!(report.converted, sources.len() - 2);
        assert_eq!(
            report.total_bytes,
            report.tensors.iter().map(|t| t.bytes).sum::<u64>()
        );
        assert_eq!(report.file_bytes, std::fs::metadata(&output).unwrap().len());
        assert!(report.total_bytes < report.total_bytes_before);
    }
}

#[test]
fn more_bits_give_less_error() {
    let sources = vec![Source::new("w", Dtype::F32, &[256, 512], 11)];
    let sqnr = |format| {
        let (_dir, input, output) = setup(&sources);
        let report = quantize_checkpoint(&input, &output, format, |_| {}).unwrap();
        report.tensors[0].stats.sqnr_db
    };
    let (q4_0, q4_1, q8_0, f16) = (
        sqnr(Format::Q4_0),
        sqnr(Format::Q4_1),
        sqnr(Format::Q8_0),
        sqnr(Format::F16),
    );
    // Roughly 6 dB a bit: Q4 near 20 dB, Q8 near 40 dB, F16 far above.
    assert!(q4_0 > 12.0 && q4_1 > 12.0, "{q4_0} {q4_1}");
    assert!(
        q8_0 > q4_0 + 15.0 && q8_0 > q4_1 + 15.0,
        "{q8_0} {q4_0} {q4_1}"
    );
    assert!(f16 > q8_0 + 15.0, "{f16} {q8_0}");
}

#[test]
fn float_targets_convert_everything_and_keep_out_of_range_values_as_f32() {
    let mut big = Source::new("big", Dtype::F32, &[2, 32], 1);
    big.values[5] = 1.0e6;
    let sources = vec![
        Source::new("w", Dtype::F32, &[4, 33], 2),
        Source::new("b", Dtype::BF16, &[7], 3),
        big,
    ];
    let (_dir, input, output) = setup(&sources);
    let report = quantize_checkpoint(&input, &output, Format::F16, |_| {}).unwrap();
    let by_name = |n: &str| report.tensors.iter().find(|t| t.name == n).unwrap();
    assert_eq!(
        (by_name("w").format, by_name("w").fallback),
        (Format::F16, None)
    );
    assert_eq!(
        (by_name("b").format, by_name("b").fallback),
        (Format::F16, None)
    );
    assert_eq!(
        (by_name("big").format, by_name("big").fallback),
        (Format::F32, Some(Fallback::OutOfF16Range))
    );
    assert_eq!(by_name("big").stats.sqnr_db, f64::INFINITY);
    // BF16 values that f16 holds exactly convert losslessly.
    assert!(by_name("b").stats.max_abs < 1e-3);

    let report = quantize_checkpoint(&input, &output, Format::BF16, |_| {}).unwrap();
    assert!(report.tensors.iter().all(|t| t.format == Format::BF16));
    assert_eq!(report.fallbacks, 0);
}

#[test]
fn progress_reports_every_tensor_once_in_order() {
    let sources = mixed_sources();
    let (_dir, input, output) = setup(&sources);
    let mut seen = Vec::new();
    let report = quantize_checkpoint(&input, &output, Format::Q8_0, |p| {
        seen.push((
            p.name.to_owned(),
            p.done,
            p.count,
            p.bytes_done,
            p.bytes_total,
        ));
    })
    .unwrap();
    assert_eq!(seen.len(), sources.len());
    for (i, (name, done, count, _, total)) in seen.iter().enumerate() {
        assert_eq!(name, &report.tensors[i].name);
        assert_eq!((*done, *count), (i + 1, sources.len()));
        assert_eq!(*total, report.total_bytes_before);
    }
    assert!(seen.windows(2).all(|w| w[0].3 < w[1].3));
    assert_eq!(seen.last().unwrap().3, report.total_bytes_before);
}

#[test]
fn integer_tensors_are_carried_and_types_without_a_gguf_type_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ints.safetensors");
    let good: Vec<u8> = weights(64, 1)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let ints: Vec<u8> = (0..4i32).flat_map(|v| v.to_le_bytes()).collect();
    let doubles: Vec<u8> = [0.5f64, -1.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let unsigned = [7u8; 3];
    let views = HashMap::from([
        (
            "a.weight",
            TensorView::new(Dtype::F32, vec![2, 32], &good).unwrap(),
        ),
        (
            "steps",
            TensorView::new(Dtype::I32, vec![4], &ints).unwrap(),
        ),
        (
            "scale",
            TensorView::new(Dtype::F64, vec![2], &doubles).unwrap(),
        ),
        (
            "bytes",
            TensorView::new(Dtype::U8, vec![3], &unsigned).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let output = dir.path().join("ints.gguf");
    let report = quantize_checkpoint(&input, &output, Format::Q4_0, |_| {}).unwrap();
    assert_eq!(report.tensors.len(), 1);
    let carried: Vec<(&str, &str)> = report
        .carried
        .iter()
        .map(|c| (c.name.as_str(), c.ggml_type))
        .collect();
    assert_eq!(carried.len(), 2);
    assert!(carried.contains(&("steps", "i32")) && carried.contains(&("scale", "f64")));
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].name, "bytes");
    assert_eq!(report.skipped[0].dtype, "U8");
    let file = GgufFile::open(&output).unwrap();
    assert_eq!(file.tensor_bytes("steps").unwrap(), &ints[..]);
    assert_eq!(file.tensor_bytes("scale").unwrap(), &doubles[..]);
    assert_eq!(file.tensor_info("scale").unwrap().ggml_type, 28);
    assert!(file.tensor_info("bytes").is_none());
}

#[test]
fn non_finite_weights_name_the_tensor_and_index_and_leave_no_file() {
    let mut bad = Source::new("bad.weight", Dtype::F32, &[2100, 256], 1);
    let index = 300_000; // in the second parallel chunk
    bad.values[index] = f32::NAN;
    let sources = vec![Source::new("good.weight", Dtype::F32, &[4, 32], 2), bad];
    let (dir, input, output) = setup(&sources);
    std::fs::write(&output, b"previous").unwrap();
    let err = quantize_checkpoint(&input, &output, Format::Q8_0, |_| {}).unwrap_err();
    match &err {
        CheckpointError::Tensor {
            name,
            source: KernelError::NonFinite { index: i, .. },
        } => {
            assert_eq!(name, "bad.weight");
            assert_eq!(*i, index);
        }
        other => panic!("unexpected error {other:?}"),
    }
    // The earlier file is untouched and no temporary remains.
    assert_eq!(std::fs::read(&output).unwrap(), b"previous");
    assert_eq!(
        files_in(dir.path()),
        vec!["model.gguf", "model.safetensors"]
    );
}

#[test]
fn missing_and_corrupt_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("x.gguf");
    let err = quantize_checkpoint(
        &dir.path().join("nope.safetensors"),
        &output,
        Format::Q8_0,
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Path(_)), "{err:?}");

    for garbage in [&b""[..], &b"\x05\0\0\0\0\0\0\0{oops"[..], &[0xFFu8; 64][..]] {
        let input = dir.path().join("corrupt.safetensors");
        std::fs::write(&input, garbage).unwrap();
        let err = quantize_checkpoint(&input, &output, Format::Q8_0, |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::Safetensors { .. }
                    | CheckpointError::HeaderTooLarge { .. }
                    | CheckpointError::LengthMismatch { .. }
            ),
            "{err:?}"
        );
    }
    assert_eq!(files_in(dir.path()), vec!["corrupt.safetensors"]);
}

#[test]
fn empty_checkpoints_and_tensors_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.safetensors");
    let views: HashMap<&str, TensorView<'_>> = HashMap::from([(
        "nothing",
        TensorView::new(Dtype::F32, vec![0, 64], &[]).unwrap(),
    )]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let output = dir.path().join("empty.gguf");
    let report = quantize_checkpoint(&input, &output, Format::Q4_0, |_| {}).unwrap();
    assert_eq!(report.tensors[0].format, Format::Q4_0);
    assert_eq!(report.tensors[0].bytes, 0);
    let file = GgufFile::open(&output).unwrap();
    assert_eq!(file.tensor_info("nothing").unwrap().shape(), vec![0, 64]);
}

#[test]
fn an_input_truncated_while_it_is_read_is_a_truncated_error_not_sigbus() {
    // Two tensors; once the first is written, another handle cuts the file back to the end of
    // the first tensor's bytes, after the header was checked against the full length. A
    // memory-mapped reader would die of SIGBUS touching the second tensor; positioned reads
    // see a short read.
    let sources = vec![
        Source::new("a.weight", Dtype::F32, &[64, 64], 1),
        Source::new("b.weight", Dtype::F32, &[64, 64], 2),
    ];
    let (dir, input, output) = setup(&sources);
    let full = std::fs::metadata(&input).unwrap().len();
    let second = (64 * 64 * 4) as u64;
    let mut cut = false;
    let err = quantize_checkpoint(&input, &output, Format::Q8_0, |p| {
        if p.done == 1 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&input)
                .unwrap();
            file.set_len(full - second).unwrap();
            cut = true;
        }
    })
    .unwrap_err();
    assert!(cut, "the progress callback never ran");
    match &err {
        CheckpointError::Truncated { path } => assert_eq!(path, &input),
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(err.to_string().contains("became shorter while it was read"));
    // No output and no temporary are left.
    assert_eq!(files_in(dir.path()), vec!["model.safetensors"]);
}

#[test]
fn i8_and_i16_tensors_come_out_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("small_ints.safetensors");
    // Odd byte lengths (15 and 14), so the tensors after them need alignment padding, and the
    // extremes of each type.
    let i8s: Vec<u8> = [
        -128i8, -1, 0, 1, 127, 5, -7, 9, 11, -13, 15, 17, -19, 21, 23,
    ]
    .iter()
    .flat_map(|v| v.to_le_bytes())
    .collect();
    let i16s: Vec<u8> = [i16::MIN, -1, 0, 1, i16::MAX, 300, -300]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w: Vec<u8> = weights(64, 3)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = HashMap::from([
        (
            "codes",
            TensorView::new(Dtype::I8, vec![3, 5], &i8s).unwrap(),
        ),
        ("ids", TensorView::new(Dtype::I16, vec![7], &i16s).unwrap()),
        (
            "w.weight",
            TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let output = dir.path().join("small_ints.gguf");
    let report = quantize_checkpoint(&input, &output, Format::Q4_1, |_| {}).unwrap();
    // In file order, which safetensors sorts by alignment: the I16 tensor comes first.
    let carried: Vec<(&str, &str, u64)> = report
        .carried
        .iter()
        .map(|c| (c.name.as_str(), c.ggml_type, c.bytes))
        .collect();
    assert_eq!(carried, vec![("ids", "i16", 14), ("codes", "i8", 15)]);
    assert!(report.skipped.is_empty());
    let file = GgufFile::open(&output).unwrap();
    assert_eq!(file.tensor_bytes("codes").unwrap(), &i8s[..]);
    assert_eq!(file.tensor_bytes("ids").unwrap(), &i16s[..]);
    let codes = file.tensor_info("codes").unwrap();
    assert_eq!((codes.ggml_type, codes.shape()), (24, vec![3, 5]));
    let ids = file.tensor_info("ids").unwrap();
    assert_eq!((ids.ggml_type, ids.shape()), (25, vec![7]));
    // The float tensor after them is intact too.
    assert_eq!(file.tensor_info("w.weight").unwrap().shape(), vec![2, 32]);
}
