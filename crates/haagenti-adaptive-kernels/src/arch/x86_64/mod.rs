//! x86_64 kernels: AVX2 + FMA + F16C, and AVX-512 VNNI micro-kernels for block formats.

pub(crate) mod matmul_avx2;
pub(crate) mod matmul_avx512;
pub(crate) mod quant_avx2;
