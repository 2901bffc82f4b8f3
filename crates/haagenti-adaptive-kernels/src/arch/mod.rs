//! Architecture-specific kernels, each reached only through a safe wrapper that takes a token from
//! [`dispatch`](crate::dispatch) proving its CPU features are present.

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;
