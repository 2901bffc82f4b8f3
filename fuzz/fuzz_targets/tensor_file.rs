//! The tensor-file reader of `denoise`: any byte string, read as `.npy` or as safetensors (the
//! first byte picks which, and whether a tensor is named), gives a tensor whose values fill its
//! shape, or an error.
#![no_main]

use haagenti_adaptive_nn::tensor_file::{Format, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let (format, name) = match selector % 3 {
        0 => (Format::Npy, None),
        1 => (Format::Safetensors, None),
        _ => (Format::Safetensors, Some("t")),
    };
    if let Ok(tensor) = decode(bytes, format, name) {
        assert_eq!(tensor.shape.iter().product::<usize>(), tensor.data.len());
    }
});
