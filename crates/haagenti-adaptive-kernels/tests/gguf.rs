//! GGUF writer and reader: round trips, layout, atomic output, corrupt input.

use std::path::Path;

use haagenti_adaptive_kernels::gguf::{
    GGUF_DEFAULT_ALIGNMENT, GgufBuilder, GgufError, GgufFile, MetadataValue,
};
use haagenti_adaptive_kernels::{Format, QuantizedTensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + seed as f32 * 0.37) * 0.731).sin() * (1.0 + (i % 7) as f32))
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One tensor of every format and rank 1 to 4, and metadata of every type.
/// A named tensor with its row-major shape.
type Named = (String, Vec<usize>, QuantizedTensor);

fn sample() -> (Vec<Named>, Vec<(String, MetadataValue)>) {
    let specs: [(&str, &[usize], Format); 7] = [
        ("q8", &[3, 64], Format::Q8_0),
        ("q4_0", &[2, 2, 96], Format::Q4_0),
        ("q4_1", &[2, 1, 2, 32], Format::Q4_1),
        ("half", &[5, 7], Format::F16),
        ("brain", &[11], Format::BF16),
        ("full", &[1, 3], Format::F32),
        ("empty", &[0, 32], Format::Q8_0),
    ];
    let tensors = specs
        .iter()
        .enumerate()
        .map(|(i, (name, shape, format))| {
            let cols = *shape.last().unwrap();
            let n: usize = shape.iter().product();
            let rows = n.checked_div(cols).unwrap_or(0);
            let t = QuantizedTensor::quantize(*format, rows, cols, &values(n, i as u32)).unwrap();
            (name.to_string(), shape.to_vec(), t)
        })
        .collect();
    let metadata = vec![
        (
            "general.name".to_owned(),
            MetadataValue::String("sample ✓".into()),
        ),
        ("u8".to_owned(), MetadataValue::U8(7)),
        ("i8".to_owned(), MetadataValue::I8(-7)),
        ("u16".to_owned(), MetadataValue::U16(700)),
        ("i16".to_owned(), MetadataValue::I16(-700)),
        ("u32".to_owned(), MetadataValue::U32(70_000)),
        ("i32".to_owned(), MetadataValue::I32(-70_000)),
        ("f32".to_owned(), MetadataValue::F32(1.25)),
        ("bool".to_owned(), MetadataValue::Bool(true)),
        ("u64".to_owned(), MetadataValue::U64(1 << 40)),
        ("i64".to_owned(), MetadataValue::I64(-(1 << 40))),
        ("f64".to_owned(), MetadataValue::F64(-2.5e300)),
        (
            "strings".to_owned(),
            MetadataValue::Array(vec![
                MetadataValue::String("a".into()),
                MetadataValue::String(String::new()),
            ]),
        ),
        (
            "nested".to_owned(),
            MetadataValue::Array(vec![MetadataValue::Array(vec![MetadataValue::I32(1)])]),
        ),
        ("empty".to_owned(), MetadataValue::Array(vec![])),
    ];
    (tensors, metadata)
}

fn write_sample(path: &Path) -> Vec<Named> {
    let (tensors, metadata) = sample();
    let mut b = GgufBuilder::new();
    for (k, v) in &metadata {
        b.metadata(k, v.clone());
    }
    for (name, shape, t) in &tensors {
        b.add_tensor(name, shape, t.format()).unwrap();
    }
    let mut w = b.create(path).unwrap();
    for (_, _, t) in &tensors {
        w.write_tensor(t).unwrap();
    }
    w.finish().unwrap();
    tensors
}

#[test]
fn round_trip_keeps_bytes_shapes_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.gguf");
    let tensors = write_sample(&path);
    let (_, metadata) = sample();
    let file = GgufFile::open(&path).unwrap();

    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_offset() % 32, 0);
    assert_eq!(
        file.metadata_value("general.alignment"),
        Some(&MetadataValue::U32(GGUF_DEFAULT_ALIGNMENT))
    );
    // Our pairs follow general.alignment, in order.
    assert_eq!(&file.metadata()[1..], &metadata[..]);

    assert_eq!(file.tensor_infos().len(), tensors.len());
    for ((name, shape, t), info) in tensors.iter().zip(file.tensor_infos()) {
        assert_eq!(&info.name, name);
        assert_eq!(&info.shape(), shape);
        let mut ggml = shape.iter().map(|&d| d as u64).collect::<Vec<_>>();
        ggml.reverse();
        assert_eq!(info.ggml_dims, ggml, "{name}: ne[0] must be the row length");
        assert_eq!(info.ggml_type, t.format().ggml_type());
        assert_eq!(info.offset % 32, 0);
        assert_eq!(file.tensor_bytes(name).unwrap(), t.as_bytes());
        assert_eq!(&file.tensor(name).unwrap(), t);
    }
    // Only the target remains: the temporary file was renamed.
    assert_eq!(files_in(dir.path()), vec!["sample.gguf"]);
}

#[test]
fn streamed_pieces_equal_a_whole_write() {
    let dir = tempfile::tempdir().unwrap();
    let t = QuantizedTensor::quantize(Format::Q4_1, 8, 64, &values(8 * 64, 3)).unwrap();
    let write = |path: &Path, pieces: bool| {
        let mut b = GgufBuilder::new();
        b.add_tensor("a", &[8, 64], Format::Q4_1).unwrap();
        b.add_tensor("b", &[8, 64], Format::Q4_1).unwrap();
        let mut w = b.create(path).unwrap();
        if pieces {
            for chunk in t.as_bytes().chunks(40) {
                w.write_tensor_data(chunk).unwrap();
            }
            w.write_tensor_data(t.as_bytes()).unwrap();
        } else {
            w.write_tensor(&t).unwrap();
            w.write_tensor(&t).unwrap();
        }
        w.finish().unwrap();
    };
    write(&dir.path().join("whole.gguf"), false);
    write(&dir.path().join("pieces.gguf"), true);
    let whole = std::fs::read(dir.path().join("whole.gguf")).unwrap();
    let pieces = std::fs::read(dir.path().join("pieces.gguf")).unwrap();
    assert_eq!(whole, pieces);
}

#[test]
fn unfinished_or_failed_writes_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    std::fs::write(&path, b"old").unwrap();
    let t = QuantizedTensor::quantize(Format::Q8_0, 1, 32, &values(32, 1)).unwrap();

    // Dropped before finish: the old file is untouched and the temporary is gone.
    {
        let mut b = GgufBuilder::new();
        b.add_tensor("w", &[1, 32], Format::Q8_0).unwrap();
        let mut w = b.create(&path).unwrap();
        assert_eq!(
            files_in(dir.path()).len(),
            2,
            "the temporary exists while writing"
        );
        w.write_tensor(&t).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(files_in(dir.path()), vec!["out.gguf"]);

    // finish with a tensor missing.
    let mut b = GgufBuilder::new();
    b.add_tensor("w", &[1, 32], Format::Q8_0).unwrap();
    b.add_tensor("v", &[1, 32], Format::Q8_0).unwrap();
    let mut w = b.create(&path).unwrap();
    w.write_tensor(&t).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(&err, GgufError::InvalidTensor { name, .. } if name == "v"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(files_in(dir.path()), vec!["out.gguf"]);
}

#[test]
fn tensors_that_differ_from_their_declaration_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = GgufBuilder::new();
    b.add_tensor("w", &[2, 32], Format::Q8_0).unwrap();
    let mut w = b.create(&dir.path().join("x.gguf")).unwrap();
    let wrong_format = QuantizedTensor::quantize(Format::Q4_0, 2, 32, &values(64, 0)).unwrap();
    let wrong_shape = QuantizedTensor::quantize(Format::Q8_0, 1, 64, &values(64, 0)).unwrap();
    let right = QuantizedTensor::quantize(Format::Q8_0, 2, 32, &values(64, 0)).unwrap();
    for bad in [&wrong_format, &wrong_shape] {
        let err = w.write_tensor(bad).unwrap_err();
        assert!(matches!(err, GgufError::InvalidTensor { .. }), "{err}");
    }
    let err = w.write_tensor_data(&[0; 69]).unwrap_err();
    assert!(matches!(err, GgufError::InvalidTensor { .. }), "{err}");
    w.write_tensor(&right).unwrap();
    let err = w.write_tensor(&right).unwrap_err();
    assert!(matches!(err, GgufError::InvalidTensor { .. }), "{err}");
    w.finish().unwrap();
}

#[test]
fn truncated_and_corrupt_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.gguf");
    write_sample(&path);
    let bytes = std::fs::read(&path).unwrap();
    let last_tensor_end = {
        let file = GgufFile::parse(bytes.clone()).unwrap();
        let info = file.tensor_infos().iter().max_by_key(|t| t.offset).unwrap();
        file.data_offset() + info.offset as usize + file.tensor_bytes(&info.name).unwrap().len()
    };
    for len in 0..last_tensor_end {
        let result = GgufFile::parse(bytes[..len].to_vec());
        assert!(result.is_err(), "a file cut to {len} bytes parsed");
    }

    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(
        GgufFile::parse(bad),
        Err(GgufError::BadMagic { .. })
    ));
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert!(matches!(
        GgufFile::parse(v2),
        Err(GgufError::UnsupportedVersion(2))
    ));
    // An absurd tensor count.
    let mut huge = bytes.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(GgufFile::parse(huge), Err(GgufError::Corrupt(_))));
    // Flip every header byte in turn: never a panic.
    let header_len = GgufFile::parse(bytes.clone()).unwrap().data_offset();
    for i in 0..header_len {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0xA5;
        let _ = GgufFile::parse(flipped);
    }
    assert!(matches!(
        GgufFile::open(&dir.path().join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
}

#[test]
fn missing_tensors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.gguf");
    write_sample(&path);
    let file = GgufFile::open(&path).unwrap();
    assert!(matches!(
        file.tensor("nope"),
        Err(GgufError::TensorNotFound(_))
    ));
}
