//! The ONNX reader: any byte string decodes or gives an error; a decoded model's initializers
//! hold as many values as their shapes say, each reads through the graph reader, and building
//! the terrain network from the graph (which walks it node by node) gives an error, never a
//! panic, since no fuzzed graph is the real model.
#![no_main]

use haagenti_adaptive_nn::TerrainUnet;
use haagenti_adaptive_nn::graph::GraphReader;
use haagenti_adaptive_nn::onnx::{OnnxModel, TensorData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = OnnxModel::decode(data) else {
        return;
    };
    for init in model.initializers.values() {
        let len = match &init.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        assert_eq!(init.dims.iter().product::<usize>(), len);
    }
    let mut reader = GraphReader::new(&model);
    let names: Vec<&String> = model.initializers.keys().collect();
    for name in names {
        let _ = reader.take(name);
    }
    let _ = TerrainUnet::from_onnx(&model);
});
