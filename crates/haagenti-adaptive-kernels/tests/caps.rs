//! Size caps of checkpoint quantization, hit with small or sparse files whose header or length
//! claims more than the cap: each is refused with its typed error before anything of the claimed
//! size is allocated.
//!
//! This binary counts allocations (`tests/support/counting_alloc.rs`, a wrapper around the system
//! allocator that records the largest single request), so "before allocating" is measured, not
//! assumed: on Linux a zero-filled `vec![0u8; 8 << 30]` would succeed lazily and a test without the
//! count could not tell.

use std::path::Path;

use haagenti_adaptive_kernels::Format;
use haagenti_adaptive_kernels::checkpoint::{
    CheckpointError, CheckpointReport, MAX_CHECKPOINT_BYTES, MAX_HEADER_BYTES, MAX_TENSOR_VALUES,
    quantize_checkpoint,
};
use haagenti_adaptive_kernels::io::IoError;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::measured;

/// Nothing here needs more than this in one piece: a header and some small bookkeeping.
const SMALL: usize = 4 << 20;

/// A file holding `header` as a safetensors header, then zeros (a hole) up to `len` bytes.
fn sparse_safetensors(path: &Path, header: &str, len: u64) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

/// Quantizes `input`, the only file in `dir`, to `format`; asserts that no single allocation
/// reached [`SMALL`] and that nothing was left beside the input, and returns the result.
fn quantize_small(
    dir: &Path,
    input: &Path,
    format: Format,
) -> Result<CheckpointReport, CheckpointError> {
    let output = dir.join("out.gguf");
    let (result, peak) = measured(|| quantize_checkpoint(input, &output, format, |_| {}));
    assert!(peak < SMALL, "allocated {peak} bytes at once");
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    result
}

#[test]
fn a_checkpoint_above_max_checkpoint_bytes_is_refused_by_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("huge.safetensors");
    // A sparse file of 1 TiB + 1 byte: no disk blocks behind the hole.
    sparse_safetensors(&input, "{}", MAX_CHECKPOINT_BYTES + 1);
    match quantize_small(dir.path(), &input, Format::Q8_0) {
        Err(CheckpointError::Path(IoError::TooLarge { len, limit, .. })) => {
            assert_eq!(
                (len, limit),
                (MAX_CHECKPOINT_BYTES + 1, MAX_CHECKPOINT_BYTES)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_tensor_above_max_tensor_values_is_refused_before_its_bytes_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide.safetensors");
    // 65537^2 = 2^32 + 2^17 + 1 F16 values: 8 GiB of data, all of it a hole in the file.
    let side = 65_537u64;
    let values = side * side;
    assert!(values > MAX_TENSOR_VALUES);
    let data = values * 2;
    let header = format!(
        r#"{{"embed.weight":{{"dtype":"F16","shape":[{side},{side}],"data_offsets":[0,{data}]}}}}"#
    );
    sparse_safetensors(&input, &header, 8 + header.len() as u64 + data);
    match quantize_small(dir.path(), &input, Format::Q4_0) {
        Err(CheckpointError::TensorTooLarge {
            name,
            values: v,
            limit,
        }) => {
            assert_eq!(name, "embed.weight");
            assert_eq!((v, limit), (values, MAX_TENSOR_VALUES));
        }
        other => panic!("expected TensorTooLarge, got {other:?}"),
    }
}

#[test]
fn a_header_length_above_max_header_bytes_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    for claimed in [MAX_HEADER_BYTES + 1, u64::MAX] {
        let input = dir.path().join("x.safetensors");
        let mut bytes = claimed.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&input, &bytes).unwrap();
        match quantize_small(dir.path(), &input, Format::Q8_0) {
            Err(CheckpointError::HeaderTooLarge { len, limit, .. }) => {
                assert_eq!((len, limit), (claimed, MAX_HEADER_BYTES));
            }
            other => panic!("expected HeaderTooLarge for {claimed}, got {other:?}"),
        }
    }
    // A header within the limit but longer than the file is refused before it is read, too.
    let input = dir.path().join("x.safetensors");
    let mut bytes = (MAX_HEADER_BYTES - 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&input, &bytes).unwrap();
    let result = quantize_small(dir.path(), &input, Format::Q8_0);
    assert!(
        matches!(result, Err(CheckpointError::Safetensors { .. })),
        "{result:?}"
    );
}

#[test]
fn a_header_describing_more_data_than_the_file_holds_is_a_length_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("short.safetensors");
    // The header describes 8 GiB of F32 data; the file ends right after the header.
    let data = 8u64 << 30;
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{},1024],"data_offsets":[0,{data}]}}}}"#,
        data / 4 / 1024
    );
    let file_len = 8 + header.len() as u64;
    sparse_safetensors(&input, &header, file_len);
    match quantize_small(dir.path(), &input, Format::Q8_0) {
        Err(CheckpointError::LengthMismatch {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (file_len + data, file_len)),
        other => panic!("expected LengthMismatch, got {other:?}"),
    }
}
