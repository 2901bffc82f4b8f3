//! The GGUF reader: any byte string parses or gives an error, and every tensor a parsed file
//! declares reads back or gives an error.
#![no_main]

use haagenti_adaptive_kernels::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse(data.to_vec()) else {
        return;
    };
    let names: Vec<String> = file.tensor_infos().iter().map(|t| t.name.clone()).collect();
    for name in names {
        if let Ok(bytes) = file.tensor_bytes(&name) {
            assert!(bytes.len() <= data.len());
        }
        let _ = file.tensor(&name);
    }
});
