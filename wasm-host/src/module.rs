//! A compiled filter [`Module`], shareable between hosts, VMs and threads.
//!
//! Compiling is the slow step (seconds for a release filter when the host itself is built
//! without optimisation), so a test suite compiles each `.wasm` once and starts as many VMs from
//! it as it likes, in as many hosts as it likes.

use crate::error::{Error, Result};
use std::path::Path;

/// A compiled `.wasm` module with the engine that compiled it. Cheap to clone.
#[derive(Clone)]
pub struct Module {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) module: wasmtime::Module,
}

impl Module {
    /// Compiles module bytes (binary `.wasm`).
    pub fn new(wasm: &[u8]) -> Result<Module> {
        let mut config = wasmtime::Config::new();
        // Deep recursion in a module must trap, not overflow the test thread's stack.
        config.max_wasm_stack(512 * 1024);
        // Tests run few requests: compile fast rather than run fast.
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        // Fuel counts the Wasm instructions a VM executes (`Vm::fuel_used`): a deterministic
        // measure of a filter's own work per request, without the proxy around it.
        config.consume_fuel(true);
        let engine = wasmtime::Engine::new(&config).map_err(|source| Error::load("cannot configure the wasm engine", source))?;
        let module = wasmtime::Module::new(&engine, wasm).map_err(|source| Error::load("cannot compile module", source))?;
        Ok(Module { engine, module })
    }

    /// Reads and compiles a `.wasm` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Module> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::io(format!("cannot read {}", path.display()), source))?;
        Module::new(&bytes)
    }

    /// Names of the functions the module imports, as `module::name` (e.g. `env::proxy_log`).
    pub fn imports(&self) -> Vec<String> {
        self.module.imports().map(|import| format!("{}::{}", import.module(), import.name())).collect()
    }

    /// Names of the module's exports.
    pub fn exports(&self) -> Vec<String> {
        self.module.exports().map(|export| export.name().to_string()).collect()
    }
}
