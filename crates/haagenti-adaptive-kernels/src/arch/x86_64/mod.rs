//! x86_64 kernels: AVX2 + FMA + F16C.

pub(crate) mod matmul_avx2;
pub(crate) mod quant_avx2;
