//! An ONNX file reader for the fields the models here need: the graph's nodes, inputs, outputs and
//! initializers (weights stored inside the file).
//!
//! The message structs are written by hand with `prost`'s derive (field numbers from
//! `onnx/onnx.proto`), so there is no build script and no `protoc`; fields not listed are skipped
//! by the decoder.

use std::collections::HashMap;
use std::path::Path;

use crate::{NnError, Result};

/// `onnx.ModelProto`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `onnx.GraphProto`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// `onnx.ValueInfoProto`: only the name.
#[derive(Clone, PartialEq, prost::Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto`, scalar and list values.
#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(bytes = "vec", tag = "4")]
    s: Vec<u8>,
    #[prost(float, repeated, tag = "7")]
    floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

/// `onnx.TensorProto`, dense tensors stored in the file.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// ONNX `TensorProto.DataType` values read here.
const DATA_TYPE_FLOAT: i32 = 1;
const DATA_TYPE_INT64: i32 = 7;
/// `TensorProto.DataLocation.EXTERNAL`: weights in a side file, which this reader does not follow.
const DATA_LOCATION_EXTERNAL: i32 = 1;

/// The largest ONNX file [`OnnxModel::read`] reads: 2 GiB, protobuf's own limit for one message
/// (larger models keep their weights in external files, which this reader refuses anyway).
pub const MAX_ONNX_BYTES: u64 = 2 << 30;

/// The values of an initializer.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `float` values.
    F32(Vec<f32>),
    /// `int64` values (shapes and axes).
    I64(Vec<i64>),
}

/// A named constant tensor of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Initializer {
    /// The tensor's shape.
    pub dims: Vec<usize>,
    /// Its values, row-major.
    pub data: TensorData,
}

/// One attribute value of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Attribute {
    /// A float.
    Float(f32),
    /// An integer.
    Int(i64),
    /// Bytes (a string).
    Bytes(Vec<u8>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A list of integers.
    Ints(Vec<i64>),
}

/// One operator of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operator, e.g. `Conv`.
    pub op_type: String,
    /// The node's name (may be empty).
    pub name: String,
    /// Names of the input values (an empty string for an omitted optional input).
    pub inputs: Vec<String>,
    /// Names of the output values.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attributes: HashMap<String, Attribute>,
}

impl Node {
    /// The name of input `i`: a graph from a file may have fewer inputs than its operator needs.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] when the node has no input `i`.
    pub fn input(&self, i: usize) -> Result<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| self.missing("input", i))
    }

    /// The name of output `i`.
    ///
    /// # Errors
    ///
    /// [`NnError::Model`] when the node has no output `i`.
    pub fn output(&self, i: usize) -> Result<&str> {
        self.outputs
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| self.missing("output", i))
    }

    fn missing(&self, what: &str, i: usize) -> NnError {
        NnError::Model(format!("{} {} has no {what} {i}", self.op_type, self.name))
    }
}

/// A decoded ONNX model: the graph in file order and its initializers by name.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    /// The nodes in file order (a topological order).
    pub nodes: Vec<Node>,
    /// Names of the graph inputs that are not initializers.
    pub inputs: Vec<String>,
    /// Names of the graph outputs.
    pub outputs: Vec<String>,
    /// The initializers by name.
    pub initializers: HashMap<String, Initializer>,
}

impl OnnxModel {
    /// Reads and decodes an ONNX file.
    ///
    /// # Errors
    ///
    /// [`NnError::Io`] when the file cannot be read, is not a regular file (a FIFO would block,
    /// a device would read without end) or is larger than [`MAX_ONNX_BYTES`];
    /// [`NnError::Onnx`] when it is not a valid ONNX model with the tensor types read here.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            haagenti_adaptive_kernels::io::read_capped(path, MAX_ONNX_BYTES).map_err(|e| {
                NnError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        Self::decode(&bytes)
    }

    /// Decodes an ONNX model from bytes.
    ///
    /// # Errors
    ///
    /// [`NnError::Onnx`] for bytes that are not an ONNX model, an initializer whose type is not
    /// float or int64, whose shape's element count overflows, or whose length disagrees with its
    /// shape. Nothing is allocated for a shape before its values are known to be in the bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use haagenti_adaptive_nn::{NnError, onnx::OnnxModel};
    ///
    /// // Field 7 (the graph), length 0: an empty graph.
    /// let model = OnnxModel::decode(&[0x3a, 0x00])?;
    /// assert!(model.nodes.is_empty() && model.initializers.is_empty());
    /// assert!(matches!(OnnxModel::decode(&[0xff; 3]), Err(NnError::Onnx(_))));
    /// # Ok::<(), NnError>(())
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let model = <ModelProto as prost::Message>::decode(bytes)
            .map_err(|e| NnError::Onnx(format!("not an ONNX model: {e}")))?;
        let graph = model
            .graph
            .ok_or_else(|| NnError::Onnx("the model has no graph".into()))?;
        let mut initializers = HashMap::with_capacity(graph.initializer.len());
        for t in graph.initializer {
            let name = t.name.clone();
            initializers.insert(name, initializer(t)?);
        }
        let nodes = graph
            .node
            .into_iter()
            .map(|n| Node {
                op_type: n.op_type,
                name: n.name,
                inputs: n.input,
                outputs: n.output,
                attributes: n
                    .attribute
                    .into_iter()
                    .map(|a| {
                        let value = if !a.ints.is_empty() {
                            Attribute::Ints(a.ints)
                        } else if !a.floats.is_empty() {
                            Attribute::Floats(a.floats)
                        } else if !a.s.is_empty() {
                            Attribute::Bytes(a.s)
                        } else if a.f != 0.0 {
                            Attribute::Float(a.f)
                        } else {
                            Attribute::Int(a.i)
                        };
                        (a.name, value)
                    })
                    .collect(),
            })
            .collect();
        let inputs = graph
            .input
            .into_iter()
            .map(|v| v.name)
            .filter(|n| !initializers.contains_key(n))
            .collect();
        let outputs = graph.output.into_iter().map(|v| v.name).collect();
        Ok(Self {
            nodes,
            inputs,
            outputs,
            initializers,
        })
    }
}

fn initializer(t: TensorProto) -> Result<Initializer> {
    if t.data_location == DATA_LOCATION_EXTERNAL {
        return Err(NnError::Onnx(format!(
            "initializer {} is stored in an external file, which is not supported",
            t.name
        )));
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| NnError::Onnx(format!("initializer {} has a negative dimension", t.name)))?;
    // Checked: the dims are the file's, and a wrapped product could match a short buffer.
    let len = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            NnError::Onnx(format!(
                "initializer {} has shape {dims:?}, whose element count overflows",
                t.name
            ))
        })?;
    // The stored length is compared with the shape before any conversion allocates.
    let mismatch = |actual: usize| {
        NnError::Onnx(format!(
            "initializer {} has {actual} values for shape {dims:?}",
            t.name
        ))
    };
    let data = match t.data_type {
        DATA_TYPE_FLOAT if t.raw_data.is_empty() => {
            if t.float_data.len() != len {
                return Err(mismatch(t.float_data.len()));
            }
            TensorData::F32(t.float_data)
        }
        DATA_TYPE_FLOAT => {
            if !t.raw_data.len().is_multiple_of(4) || t.raw_data.len() / 4 != len {
                return Err(raw_mismatch(&t.name, t.raw_data.len(), 4, &dims));
            }
            TensorData::F32(
                t.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        }
        DATA_TYPE_INT64 if t.raw_data.is_empty() => {
            if t.int64_data.len() != len {
                return Err(mismatch(t.int64_data.len()));
            }
            TensorData::I64(t.int64_data)
        }
        DATA_TYPE_INT64 => {
            if !t.raw_data.len().is_multiple_of(8) || t.raw_data.len() / 8 != len {
                return Err(raw_mismatch(&t.name, t.raw_data.len(), 8, &dims));
            }
            TensorData::I64(
                t.raw_data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            )
        }
        other => {
            return Err(NnError::Onnx(format!(
                "initializer {} has data type {other}; only float (1) and int64 (7) are read",
                t.name
            )));
        }
    };
    Ok(Initializer { dims, data })
}

fn raw_mismatch(name: &str, bytes: usize, size: usize, dims: &[usize]) -> NnError {
    NnError::Onnx(format!(
        "initializer {name} has {bytes} raw bytes, not {size} for each value of shape {dims:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn decodes_a_hand_built_graph() {
        let model = ModelProto {
            ir_version: 10,
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec!["x".into(), "w".into()],
                    output: vec!["y".into()],
                    name: "mm".into(),
                    op_type: "Gemm".into(),
                    attribute: vec![AttributeProto {
                        name: "transB".into(),
                        i: 1,
                        ..Default::default()
                    }],
                }],
                initializer: vec![TensorProto {
                    dims: vec![2, 1],
                    data_type: DATA_TYPE_FLOAT,
                    name: "w".into(),
                    raw_data: [1.5f32, -2.0]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                    ..Default::default()
                }],
                input: vec![
                    ValueInfoProto { name: "x".into() },
                    ValueInfoProto { name: "w".into() },
                ],
                output: vec![ValueInfoProto { name: "y".into() }],
            }),
        };
        let decoded = OnnxModel::decode(&model.encode_to_vec()).unwrap();
        assert_eq!(decoded.inputs, ["x"]);
        assert_eq!(decoded.outputs, ["y"]);
        assert_eq!(decoded.nodes[0].attributes["transB"], Attribute::Int(1));
        assert_eq!(
            decoded.initializers["w"],
            Initializer {
                dims: vec![2, 1],
                data: TensorData::F32(vec![1.5, -2.0])
            }
        );
    }

    #[test]
    fn rejects_garbage_and_bad_lengths() {
        assert!(matches!(
            OnnxModel::decode(&[0xff, 0xff, 0xff]),
            Err(NnError::Onnx(_))
        ));
        let model = ModelProto {
            ir_version: 10,
            graph: Some(GraphProto {
                initializer: vec![TensorProto {
                    dims: vec![3],
                    data_type: DATA_TYPE_FLOAT,
                    name: "w".into(),
                    float_data: vec![1.0],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        assert!(matches!(
            OnnxModel::decode(&model.encode_to_vec()),
            Err(NnError::Onnx(_))
        ));
    }
}
