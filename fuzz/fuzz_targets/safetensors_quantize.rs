//! Safetensors reading and quantizing: any byte string, written as a checkpoint, is quantized to
//! a GGUF file that reads back or gives an error.
#![no_main]

use std::io::Write;

use haagenti_adaptive_kernels::Format;
use haagenti_adaptive_kernels::checkpoint::quantize_checkpoint;
use haagenti_adaptive_kernels::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

// Which format a run quantizes to comes from the first byte, so every format's path is reached.
const FORMATS: [Format; 5] = [
    Format::Q8_0,
    Format::Q4_0,
    Format::Q4_1,
    Format::F16,
    Format::F32,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, checkpoint)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(selector) % FORMATS.len()];
    // tmpfs when the machine has it: the target runs once per input.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::tempdir_in(base).expect("a temporary directory");
    let input = dir.path().join("model.safetensors");
    let output = dir.path().join("model.gguf");
    let mut file = std::fs::File::create(&input).expect("a temporary file");
    file.write_all(checkpoint)
        .expect("writing the temporary file");
    drop(file);
    if quantize_checkpoint(&input, &output, format, |_| {}).is_ok() {
        let written = GgufFile::open(&output).expect("a quantized checkpoint reads back");
        for info in written.tensor_infos() {
            written
                .tensor(&info.name)
                .expect("every written tensor reads back");
        }
    }
});
