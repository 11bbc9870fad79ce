//! Host functions imported by modules: the Proxy-Wasm `env` ABI and a minimal WASI.

pub(crate) mod memory;
pub(crate) mod proxy;
pub(crate) mod wasi;
