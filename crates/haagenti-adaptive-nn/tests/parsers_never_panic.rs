//! The file readers, given any bytes, yield a value or an error, never a panic: the ONNX reader
//! (and the walks that build the terrain network from what it decoded) and the tensor-file
//! reader of `denoise` (the fuzz targets `onnx_read` and `tensor_file` do the same for longer).

use haagenti_adaptive_nn::TerrainUnet;
use haagenti_adaptive_nn::graph::GraphReader;
use haagenti_adaptive_nn::onnx::OnnxModel;
use haagenti_adaptive_nn::sampling::TerrainSpec;
use haagenti_adaptive_nn::tensor_file::{self, Format};
use proptest::prelude::*;

/// A protobuf field key.
fn key(field: u32, wire: u8) -> u8 {
    u8::try_from(field << 3).unwrap() | wire
}

/// A length-delimited protobuf field (lengths below 128 bytes here, so one varint byte).
fn delimited(field: u32, body: &[u8]) -> Vec<u8> {
    let mut b = vec![key(field, 2), u8::try_from(body.len()).unwrap()];
    b.extend_from_slice(body);
    b
}

/// An ONNX-looking model: a graph (field 7) of one initializer (field 5) with arbitrary dims,
/// data type and raw bytes, and one node (field 1) with arbitrary input and output names from a
/// small set, so cases reach the shape checks and the graph walks; plain bytes cover the rest.
fn onnx_bytes() -> impl Strategy<Value = Vec<u8>> {
    let names = prop_oneof![Just("sigma"), Just("x"), Just("w"), Just("")];
    let ops = prop_oneof![
        Just("Sub"),
        Just("Mul"),
        Just("Add"),
        Just("Conv"),
        Just("Clip")
    ];
    let headed = (
        proptest::collection::vec(
            any::<u64>().prop_map(|d| d % 5 + (d >> 62) * (u64::MAX / 4)),
            0..4,
        ),
        prop_oneof![Just(1u8), Just(7), any::<u8>()],
        proptest::collection::vec(any::<u8>(), 0..48),
        ops,
        proptest::collection::vec(names.clone(), 0..3),
        proptest::collection::vec(names, 0..2),
    )
        .prop_map(|(dims, data_type, raw, op, inputs, outputs)| {
            let mut tensor = Vec::new();
            for d in dims {
                tensor.push(key(1, 0));
                let mut v = d;
                loop {
                    let byte = (v & 0x7f) as u8;
                    v >>= 7;
                    if v == 0 {
                        tensor.push(byte);
                        break;
                    }
                    tensor.push(byte | 0x80);
                }
            }
            tensor.extend([key(2, 0), data_type & 0x7f]);
            tensor.extend(delimited(8, b"w"));
            tensor.extend(delimited(9, &raw));
            let mut node = Vec::new();
            for i in inputs {
                node.extend(delimited(1, i.as_bytes()));
            }
            for o in outputs {
                node.extend(delimited(2, o.as_bytes()));
            }
            node.extend(delimited(4, op.as_bytes()));
            let mut graph = delimited(1, &node);
            graph.extend(delimited(5, &tensor));
            delimited(7, &graph)
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..256), headed]
}

/// A `.npy`-looking file: the magic, a version, a header with an arbitrary dtype and shape (some
/// of whose products overflow), then arbitrary data.
fn npy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let headed = (
        prop_oneof![Just(1u8), Just(2), any::<u8>()],
        prop_oneof![Just("'<f4'"), Just("'<f8'"), Just("'|u1'"), Just("")],
        proptest::collection::vec(
            prop_oneof![0usize..6, Just(usize::MAX), Just(1 << 62)],
            0..4,
        ),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..128),
    )
        .prop_map(|(version, descr, shape, fortran, data)| {
            let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
            let header = format!(
                "{{'descr': {descr}, 'fortran_order': {}, 'shape': ({},), }}\n",
                if fortran { "True" } else { "False" },
                dims.join(", ")
            );
            let mut b = b"\x93NUMPY".to_vec();
            b.extend([version, 0]);
            if version == 1 {
                b.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
            } else {
                b.extend(u32::try_from(header.len()).unwrap().to_le_bytes());
            }
            b.extend(header.into_bytes());
            b.extend(data);
            b
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), headed]
}

/// A safetensors-looking file: one tensor with an arbitrary dtype, shape and offsets.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        prop_oneof![Just("F32"), Just("F16"), Just("BF16"), Just("I64"), Just("X")],
        proptest::collection::vec(prop_oneof![0usize..8, Just(usize::MAX)], 0..4),
        0usize..300,
        0usize..300,
    )
        .prop_map(|(dtype, shape, start, end)| {
            format!(
                "{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{end}]}}}}"
            )
        });
    let headed = (header, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(h, data)| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h.into_bytes());
        b.extend(data);
        b
    });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..128), headed]
}

proptest! {
    #[test]
    fn any_terrain_spec_parses_or_fails(
        text in "\\PC{0,32}|terrain(:[a-z ]{0,12}=?[0-9.eE+-]{0,8}(,[a-z]{0,10}=[0-9.naNif]{0,6}){0,2})?"
    ) {
        if let Ok(spec) = text.parse::<TerrainSpec>() {
            prop_assert!((0.0..=1.0).contains(&spec.difficulty), "{text:?} gave {spec:?}");
        }
    }

    #[test]
    fn terrain_specs_round_trip(d in 0.0f32..=1.0, spaced in any::<bool>()) {
        let text = if spaced {
            format!(" terrain: difficulty = {d} ")
        } else {
            format!("terrain:difficulty={d}")
        };
        prop_assert_eq!(text.parse::<TerrainSpec>().unwrap(), TerrainSpec { difficulty: d });
    }

    #[test]
    fn terrain_difficulties_outside_the_unit_interval_are_refused(
        d in prop_oneof![-1e30f32..-1e-30, 1.000_001f32..1e30]
    ) {
        let err = format!("terrain:difficulty={d}").parse::<TerrainSpec>().unwrap_err();
        prop_assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    }

    #[test]
    fn onnx_bytes_decode_or_fail(bytes in onnx_bytes()) {
        if let Ok(model) = OnnxModel::decode(&bytes) {
            let mut reader = GraphReader::new(&model);
            let names: Vec<String> = model.initializers.keys().cloned().collect();
            for name in &names {
                let _ = reader.take(name);
            }
            prop_assert!(TerrainUnet::from_onnx(&model).is_err());
        }
    }

    #[test]
    fn npy_bytes_decode_or_fail(bytes in npy_bytes()) {
        if let Ok(t) = tensor_file::decode(&bytes, Format::Npy, None) {
            prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }

    #[test]
    fn safetensors_bytes_decode_or_fail(bytes in safetensors_bytes(), named in any::<bool>()) {
        let name = named.then_some("t");
        if let Ok(t) = tensor_file::decode(&bytes, Format::Safetensors, name) {
            prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }
}

#[test]
fn onnx_shapes_that_overflow_or_exceed_the_bytes_are_refused() {
    // dims [2^62, 4] (product wraps to 0 in 64 bits) and no values.
    let mut tensor = vec![key(1, 0)];
    tensor.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    tensor.extend([key(1, 0), 4, key(2, 0), 1]);
    tensor.extend(delimited(8, b"w"));
    let model = delimited(7, &delimited(5, &tensor));
    let err = OnnxModel::decode(&model).unwrap_err().to_string();
    assert!(err.contains("overflows"), "{err}");
    // dims [3] and 11 raw bytes: not 4 bytes a value.
    let mut tensor = vec![key(1, 0), 3, key(2, 0), 1];
    tensor.extend(delimited(8, b"w"));
    tensor.extend(delimited(9, &[0; 11]));
    let err = OnnxModel::decode(&delimited(7, &delimited(5, &tensor)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("11 raw bytes"), "{err}");
}

#[test]
fn a_graph_with_missing_node_inputs_is_an_error() {
    // A `Sub` reading `sigma` with no output: the EDM walk needs its output 0.
    let mut node = delimited(1, b"sigma");
    node.extend(delimited(4, b"Sub"));
    let mut tensor = vec![key(2, 0), 1];
    tensor.extend(delimited(8, b"c"));
    tensor.extend(delimited(9, &1f32.to_le_bytes()));
    let mut node_with_constant = node.clone();
    node_with_constant.extend(delimited(1, b"c"));
    let mut graph = delimited(1, &node_with_constant);
    graph.extend(delimited(5, &tensor));
    let model = OnnxModel::decode(&delimited(7, &graph)).unwrap();
    let err = TerrainUnet::from_onnx(&model).unwrap_err().to_string();
    assert!(err.contains("has no output 0"), "{err}");
}

#[test]
fn npy_headers_above_the_limit_and_overflowing_shapes_are_refused() {
    let mut big = b"\x93NUMPY\x02\x00".to_vec();
    big.extend(u32::MAX.to_le_bytes());
    let err = tensor_file::decode(&big, Format::Npy, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("limit"), "{err}");
    // (2^62, 4) would wrap 4 * 2^62 * 4 bytes to 0 and match an empty body.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }\n";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
    npy.extend(header.as_bytes());
    let err = tensor_file::decode(&npy, Format::Npy, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("overflows"), "{err}");
}

#[cfg(unix)]
#[test]
fn non_regular_inputs_are_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.npy");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    // Opening a FIFO would block until a writer came; the check refuses it first.
    let err = tensor_file::read(&fifo, None).unwrap_err().to_string();
    assert!(err.contains("FIFO"), "{err}");
    let err = OnnxModel::read(&fifo).unwrap_err().to_string();
    assert!(err.contains("FIFO"), "{err}");
    let err = tensor_file::read(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("directory"), "{err}");
    let err = OnnxModel::read(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("device"), "{err}");
}
