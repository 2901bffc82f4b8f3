//! Quantization kernels (skeleton; filled in by issue 3).

pub mod blocks;
