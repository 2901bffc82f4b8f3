//! aarch64 kernels: NEON (and `sdot` where present).

pub(crate) mod matmul_neon;
pub(crate) mod quant_neon;
pub(crate) mod stream_neon;
