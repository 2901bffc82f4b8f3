//! Size caps of the ONNX and tensor-file readers, hit with sparse files longer than the cap and
//! with small byte strings whose lengths or shapes claim more than they hold: each is refused
//! with its typed error before anything of the claimed size is allocated.
//!
//! This binary counts allocations (the kernels crate's `tests/support/counting_alloc.rs`, a wrapper
//! around the system allocator that records the largest single request), so "before allocating" is
//! measured: on Linux a lazily zeroed multi-GiB allocation would succeed and a test without the
//! count could not tell.

use std::path::Path;

use haagenti_adaptive_nn::NnError;
use haagenti_adaptive_nn::onnx::{MAX_ONNX_BYTES, OnnxModel};
use haagenti_adaptive_nn::tensor_file::{self, Format, MAX_TENSOR_FILE_BYTES};

#[path = "../../haagenti-adaptive-kernels/tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::measured;

/// Nothing here needs more than this in one piece.
const SMALL: usize = 1 << 20;

/// A file of `len` bytes: `head`, then a hole.
fn sparse(path: &Path, head: &[u8], len: u64) {
    std::fs::write(path, head).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

/// A protobuf varint.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

#[test]
fn an_onnx_file_above_max_onnx_bytes_is_refused_by_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    sparse(&path, &[0x3a, 0x00], MAX_ONNX_BYTES + 1);
    let (result, peak) = measured(|| OnnxModel::read(&path));
    match result {
        Err(NnError::Io { message, .. }) => {
            let want = format!(
                "is {} bytes, more than the limit of {MAX_ONNX_BYTES} bytes",
                MAX_ONNX_BYTES + 1
            );
            assert!(message.contains(&want), "{message}");
        }
        other => panic!("expected an Io error naming the limit, got {other:?}"),
    }
    assert!(peak < SMALL, "allocated {peak} bytes at once");
}

#[test]
fn onnx_lengths_claiming_more_than_the_bytes_are_refused_without_allocating() {
    // The graph (field 7) claims 2^40 bytes; so does an initializer's raw data inside a graph.
    let mut graph_claim = vec![0x3a];
    graph_claim.extend(varint(1 << 40));
    graph_claim.extend([0u8; 16]);
    let mut raw_claim = vec![0x4a]; // field 9 (raw_data), length-delimited
    raw_claim.extend(varint(1 << 40));
    raw_claim.extend([0u8; 16]);
    let mut tensor = vec![0x2a]; // field 5 (initializer)
    tensor.extend(varint(raw_claim.len() as u64));
    tensor.extend(&raw_claim);
    let mut in_graph = vec![0x3a];
    in_graph.extend(varint(tensor.len() as u64));
    in_graph.extend(&tensor);
    for bytes in [graph_claim, in_graph] {
        let (result, peak) = measured(|| OnnxModel::decode(&bytes));
        assert!(matches!(result, Err(NnError::Onnx(_))), "{result:?}");
        assert!(peak < SMALL, "allocated {peak} bytes at once");
    }
}

#[test]
fn a_tensor_file_above_max_tensor_file_bytes_is_refused_by_its_length() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["x.npy", "x.safetensors"] {
        let path = dir.path().join(name);
        sparse(&path, b"\x93NUMPY\x01\x00", MAX_TENSOR_FILE_BYTES + 1);
        let (result, peak) = measured(|| tensor_file::read(&path, None));
        match result {
            Err(NnError::TensorFile { message, .. }) => {
                let want = format!("more than the limit of {MAX_TENSOR_FILE_BYTES} bytes");
                assert!(message.contains(&want), "{message}");
            }
            other => panic!("expected a TensorFile error naming the limit, got {other:?}"),
        }
        assert!(peak < SMALL, "allocated {peak} bytes at once");
    }
}

#[test]
fn tensor_headers_claiming_more_data_than_the_bytes_are_refused_without_allocating() {
    // A .npy header for 2^40 values (4 TiB) over 8 bytes of data.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }\n";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend([0u8; 8]);
    let (result, peak) = measured(|| tensor_file::decode(&npy, Format::Npy, None));
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("8 data bytes for shape [1099511627776]"),
        "{err}"
    );
    assert!(peak < SMALL, "allocated {peak} bytes at once");

    // A safetensors header for 8 GiB of F32 over no data.
    let header = r#"{"x":{"dtype":"F32","shape":[2147483648],"data_offsets":[0,8589934592]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend(header.as_bytes());
    let (result, peak) = measured(|| tensor_file::decode(&st, Format::Safetensors, None));
    assert!(
        matches!(result, Err(NnError::TensorFile { .. })),
        "{result:?}"
    );
    assert!(peak < SMALL, "allocated {peak} bytes at once");
    // And a header length claiming 2^40 bytes.
    let mut st = (1u64 << 40).to_le_bytes().to_vec();
    st.extend(b"{}");
    let (result, peak) = measured(|| tensor_file::decode(&st, Format::Safetensors, None));
    assert!(
        matches!(result, Err(NnError::TensorFile { .. })),
        "{result:?}"
    );
    assert!(peak < SMALL, "allocated {peak} bytes at once");
}
