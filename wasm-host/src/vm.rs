//! A [`Vm`]: one instance of a module (its own wasmtime `Store`), like one Envoy worker's VM.
//!
//! ```no_run
//! # use gatewarden_wasm_host::{Host, Profile, VmOptions};
//! # fn main() -> gatewarden_wasm_host::Result<()> {
//! # let wasm: Vec<u8> = Vec::new();
//! let host = Host::new(Profile::Envoy);
//! let mut vm = host.load_vm_bytes(&wasm, VmOptions::new("my_root_id").vm_config(b"vm".to_vec()))?;
//! assert!(vm.configure(b"{}")?);      // new root context: on_vm_start + on_configure
//! assert!(!vm.configure(b"bad")?);    // refused: Envoy keeps serving the previous config
//! vm.tick()?;                         // proxy_on_tick on roots that set a tick period
//! # Ok(()) }
//! ```
//!
//! Configuration follows proxy-wasm-cpp-host: each configuration is a new root context in the
//! same instance (statics survive, root fields do not), started with `proxy_on_context_create`,
//! `proxy_on_vm_start` and `proxy_on_configure`. The root it replaces gets `proxy_on_done` and
//! `proxy_on_delete`. A trap anywhere fails the VM for good.

use crate::abi::Flow;
use crate::context::{CallResponseState, RootState, VmCtx};
use crate::error::{Error, Result};
use crate::host::{Delivery, Host, Profile};
use crate::imports;
use crate::module::Module;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use wasmtime::{Instance, Linker, Store, WasmParams, WasmResults};

/// Fuel given to every VM: far more than any test uses, so fuel never traps; it only counts.
const FUEL: u64 = 1 << 62;

/// How to start a VM: the plugin's identity and the VM configuration.
#[derive(Clone, Debug, Default)]
pub struct VmOptions {
    /// The plugin's `root_id` (property `plugin_root_id`).
    pub root_id: String,
    /// The `vm_id`: VMs with the same one share shared data and queues (Envoy).
    pub vm_id: String,
    /// The plugin name (property `plugin_name`); the root id when empty.
    pub plugin_name: String,
    /// Bytes returned for the VM configuration buffer.
    pub vm_config: Vec<u8>,
    /// Extra properties for every context, by dotted path (`node.id`).
    pub properties: BTreeMap<String, Vec<u8>>,
}

impl VmOptions {
    /// Options with this root id, an empty `vm_id` and VM configuration.
    pub fn new(root_id: &str) -> VmOptions {
        VmOptions { root_id: root_id.to_string(), ..VmOptions::default() }
    }

    /// Sets the `vm_id`.
    pub fn vm_id(mut self, vm_id: &str) -> VmOptions {
        self.vm_id = vm_id.to_string();
        self
    }

    /// Sets the plugin name.
    pub fn plugin_name(mut self, name: &str) -> VmOptions {
        self.plugin_name = name.to_string();
        self
    }

    /// Sets the VM configuration.
    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> VmOptions {
        self.vm_config = config.into();
        self
    }

    /// Adds a VM-wide property.
    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> VmOptions {
        self.properties.insert(path.to_string(), value.into());
        self
    }
}

pub(crate) struct VmInner {
    pub(crate) store: Store<VmCtx>,
    instance: Instance,
    /// Why the VM failed (first trap), if it did.
    pub(crate) failure: Option<String>,
    /// The root context serving new requests; `None` before an accepted configuration, or
    /// after a refused one on Kong.
    pub(crate) serving_root: Option<u32>,
}

/// Stream callbacks ngx_wasm_module calls on every request without checking that the module
/// exports them (seen on ngx_wasm_module 3bed278: a missing one crashes the worker).
pub(crate) const KONG_UNCHECKED: &[&str] = &[
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_done",
    "proxy_on_log",
];

/// The result of calling an export.
pub(crate) enum Called<R> {
    Returned(R),
    Missing,
    Trapped(String),
}

impl VmInner {
    /// Calls export `name`; a trap marks the VM failed. The effective context must be set.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(&mut self, name: &str, params: P) -> Called<R> {
        if let Some(failure) = &self.failure {
            return Called::Trapped(failure.clone());
        }
        let func = match self.instance.get_func(&mut self.store, name) {
            Some(func) => func,
            None if self.store.data().host.profile == Profile::Kong && KONG_UNCHECKED.contains(&name) => {
                // ngx_wasm_module calls these without checking the export exists: the worker
                // dereferences a null funcref and dies (SIGSEGV, empty reply).
                let message = format!("{name} is not exported: ngx_wasm_module calls it unchecked and the worker crashes");
                self.failure = Some(message.clone());
                return Called::Trapped(message);
            }
            None => return Called::Missing,
        };
        let typed = match func.typed::<P, R>(&self.store) {
            Ok(typed) => typed,
            Err(error) => {
                let message = format!("export {name} has the wrong signature: {error}");
                self.failure = Some(message.clone());
                return Called::Trapped(message);
            }
        };
        self.store.data_mut().last_critical = None;
        match typed.call(&mut self.store, params) {
            Ok(value) => Called::Returned(value),
            Err(error) => {
                let trap = format!("{error:#}"); // with the cause a host function trapped with
                let message = match self.store.data_mut().last_critical.take() {
                    Some(panic) => format!("{name} trapped: {panic} ({trap})"),
                    None => format!("{name} trapped: {trap}"),
                };
                self.failure = Some(message.clone());
                Called::Trapped(message)
            }
        }
    }

    /// Calls a stream callback returning an action (`proxy_on_request_headers` …).
    pub(crate) fn call_action(&mut self, name: &str, context: u32, a: u32, b: Option<u32>) -> Result<Flow, String> {
        self.store.data_mut().effective = context;
        let called: Called<u32> = match b {
            Some(b) => self.call(name, (context, a, b)),
            None => self.call(name, (context, a)),
        };
        match called {
            Called::Returned(action) => Ok(Flow::from_code(action)),
            Called::Missing => Ok(Flow::Continue),
            Called::Trapped(message) => Err(message),
        }
    }

    /// Calls a callback without result on `context`; `Err` is the trap message.
    pub(crate) fn call_void(&mut self, name: &str, context: u32, extra: &[u32]) -> Result<(), String> {
        self.store.data_mut().effective = context;
        let called: Called<()> = match *extra {
            [] => self.call(name, context),
            [a] => self.call(name, (context, a)),
            [a, b, c, d] => self.call(name, (context, a, b, c, d)),
            _ => return Err(format!("host bug: {name} called with {} arguments", extra.len() + 1)),
        };
        match called {
            Called::Returned(()) | Called::Missing => Ok(()),
            Called::Trapped(message) => Err(message),
        }
    }

    /// Calls a callback without result with `argument` as its context id argument while
    /// `effective` is the context host calls act on (they differ on ngx_wasm_module, see
    /// [`Vm::deliver`]); `Err` is the trap message.
    pub(crate) fn call_void_on(&mut self, name: &str, effective: u32, argument: u32, extra: &[u32]) -> Result<(), String> {
        self.store.data_mut().effective = effective;
        let called: Called<()> = match *extra {
            [a, b] => self.call(name, (argument, a, b)),
            [a, b, c, d] => self.call(name, (argument, a, b, c, d)),
            _ => return Err(format!("host bug: {name} called with {} arguments", extra.len() + 1)),
        };
        match called {
            Called::Returned(()) | Called::Missing => Ok(()),
            Called::Trapped(message) => Err(message),
        }
    }

    /// Calls a callback returning a bool (`proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_done`).
    pub(crate) fn call_bool(&mut self, name: &str, context: u32, arg: Option<u32>) -> Result<bool, String> {
        self.store.data_mut().effective = context;
        let called: Called<u32> = match arg {
            Some(arg) => self.call(name, (context, arg)),
            None => self.call(name, context),
        };
        match called {
            Called::Returned(value) => Ok(value != 0),
            Called::Missing => Ok(true),
            Called::Trapped(message) => Err(message),
        }
    }

    /// `proxy_on_done` then `proxy_on_delete` on a root context, which is then forgotten.
    fn retire_root(&mut self, root: u32) -> Result<(), String> {
        self.call_bool("proxy_on_done", root, None)?;
        self.call_void("proxy_on_delete", root, &[])?;
        self.store.data_mut().roots.remove(&root);
        Ok(())
    }
}

/// One VM of a [`Host`]. Clones share the same instance (a handle, like [`Host`]).
#[derive(Clone)]
pub struct Vm {
    host: Host,
    inner: Arc<Mutex<VmInner>>,
    index: usize,
}

impl Vm {
    pub(crate) fn start(host: Host, compiled: &Module, options: VmOptions, index: usize) -> Result<Vm> {
        let shared = host.shared().clone();
        let module = &compiled.module;
        let mut linker: Linker<VmCtx> = Linker::new(&compiled.engine);
        imports::proxy::add_to_linker(&mut linker)
            .and_then(|()| imports::wasi::add_to_linker(&mut linker))
            .and_then(|()| linker.define_unknown_imports_as_traps(module))
            .map_err(|source| Error::load("cannot link host functions", source))?;

        let plugin_name = if options.plugin_name.is_empty() { options.root_id.clone() } else { options.plugin_name.clone() };
        let mut properties: HashMap<String, Vec<u8>> = options.properties.into_iter().collect();
        properties.insert("plugin_name".to_string(), plugin_name.into_bytes());
        // ngx_wasm_module answers "0" in a root context, whatever the filter is called.
        let root_id = match shared.profile {
            Profile::Envoy => options.root_id.into_bytes(),
            Profile::Kong => b"0".to_vec(),
        };
        properties.insert("plugin_root_id".to_string(), root_id);
        properties.insert("plugin_vm_id".to_string(), options.vm_id.clone().into_bytes());
        let ctx = VmCtx {
            host: shared.clone(),
            index,
            vm_id: options.vm_id,
            vm_config: options.vm_config,
            plugin_config: Vec::new(),
            properties,
            effective: 0,
            next_context_id: 1,
            roots: BTreeMap::new(),
            streams: HashMap::new(),
            call_response: None,
            memory: None,
            allocate: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            last_critical: None,
            random_state: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1),
        };
        let mut store = Store::new(&compiled.engine, ctx);
        store.set_fuel(FUEL).map_err(|source| Error::load("cannot set the VM's fuel", source))?;
        let instance = linker.instantiate(&mut store, module).map_err(|source| Error::load("cannot instantiate module", source))?;

        check_abi_version(module)?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| Error::abi("module exports no memory named \"memory\""))?;
        let allocate = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .map_err(|_| Error::abi("module exports neither proxy_on_memory_allocate nor malloc (i32) -> i32"))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);

        let mut inner = VmInner { store, instance, failure: None, serving_root: None };
        // A reactor exports _initialize (the SDK's main! macro); a command exports _start.
        for entry in ["_initialize", "_start"] {
            match inner.call::<(), ()>(entry, ()) {
                Called::Returned(()) => break,
                Called::Missing => continue,
                Called::Trapped(message) => return Err(Error::trap(message)),
            }
        }
        Ok(Vm { host, inner: Arc::new(Mutex::new(inner)), index })
    }

    pub(crate) fn from_inner(host: Host, inner: Arc<Mutex<VmInner>>) -> Vm {
        let index = inner.lock().map(|guard| guard.store.data().index).unwrap_or_else(|poisoned| poisoned.into_inner().store.data().index);
        Vm { host, inner, index }
    }

    pub(crate) fn downgrade(&self) -> Weak<Mutex<VmInner>> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, VmInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The host this VM belongs to.
    /// Wasm instructions (wasmtime fuel units: about one per instruction) this VM has executed
    /// since it was created.
    pub fn fuel_used(&self) -> u64 {
        let inner = self.lock();
        FUEL.saturating_sub(inner.store.get_fuel().unwrap_or(FUEL))
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The VM's number in its host (0, 1, …), as in [`crate::LogLine::vm`] and [`crate::HostCall::vm`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The profile of the host.
    pub fn profile(&self) -> Profile {
        self.host.profile()
    }

    /// Why the VM failed (the first trap), if it did. A failed VM runs nothing more.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Whether the VM has failed.
    pub fn is_failed(&self) -> bool {
        self.lock().failure.is_some()
    }

    /// The context id of the root context serving new requests, if any.
    pub fn serving_root(&self) -> Option<u32> {
        self.lock().serving_root
    }

    /// Pushes a plugin configuration: creates a new root context, calls `proxy_on_vm_start` and
    /// `proxy_on_configure` on it. Returns whether the configuration was accepted.
    ///
    /// Accepted: the new root serves new requests, the previous one is retired. Refused (either
    /// callback returned false): the new root is retired; on Envoy the previous root keeps serving,
    /// on Kong requests fail with 500 until a configuration is accepted. A trap is an error and
    /// fails the VM.
    pub fn configure(&mut self, config: &[u8]) -> Result<bool> {
        let profile = self.profile();
        let mut inner = self.lock();
        if let Some(failure) = &inner.failure {
            return Err(Error::vm_failed(format!("vm failed earlier: {failure}")));
        }
        let size = u32::try_from(config.len()).map_err(|_| Error::internal("configuration larger than 4 GiB"))?;
        let vm_config_size = u32::try_from(inner.store.data().vm_config.len()).unwrap_or(u32::MAX);
        let root = {
            let data = inner.store.data_mut();
            data.plugin_config = config.to_vec();
            let root = data.new_context_id();
            data.roots.insert(root, RootState::default());
            root
        };
        let accepted = (|| -> Result<bool, String> {
            inner.call_void("proxy_on_context_create", root, &[0])?;
            if !inner.call_bool("proxy_on_vm_start", root, Some(vm_config_size))? {
                return Ok(false);
            }
            inner.call_bool("proxy_on_configure", root, Some(size))
        })()
        .map_err(Error::trap)?;
        if accepted {
            if let Some(previous) = inner.serving_root.replace(root) {
                inner.retire_root(previous).map_err(Error::trap)?;
            }
        } else {
            inner.retire_root(root).map_err(Error::trap)?;
            if profile == Profile::Kong {
                if let Some(previous) = inner.serving_root.take() {
                    inner.retire_root(previous).map_err(Error::trap)?;
                }
            }
        }
        Ok(accepted)
    }

    /// Fires `proxy_on_tick` on every root context of this VM that set a tick period.
    pub fn tick(&self) -> Result<()> {
        let mut inner = self.lock();
        if let Some(failure) = &inner.failure {
            return Err(Error::vm_failed(format!("vm failed earlier: {failure}")));
        }
        let roots: Vec<u32> = inner.store.data().roots.iter().filter(|(_, root)| root.tick_period_ms > 0).map(|(id, _)| *id).collect();
        for root in roots {
            inner.call_void("proxy_on_tick", root, &[]).map_err(Error::trap)?;
        }
        Ok(())
    }

    /// The tick period each root context asked for, in milliseconds (0: none), by context id.
    pub fn tick_periods(&self) -> BTreeMap<u32, u32> {
        self.lock().store.data().roots.iter().map(|(id, root)| (*id, root.tick_period_ms)).collect()
    }

    /// Delivers one callout's result to the context that made it; false when the context is
    /// gone or the VM failed.
    ///
    /// The context id passed to `proxy_on_http_call_response`: Envoy passes the context that
    /// made the call; ngx_wasm_module passes its filter id, i.e. the **root** context, for a
    /// request's call too (ngx_http_proxy_wasm.c, 3bed278), while the request stays the context
    /// host calls act on. A gRPC answer (Envoy only) is `proxy_on_grpc_receive` with the message
    /// when the status is 0 (no close follows, as in Envoy's wasm context for a unary call),
    /// else `proxy_on_grpc_close` with the status.
    pub(crate) fn deliver(&self, context: u32, token: u32, delivery: Delivery) -> Result<bool> {
        let mut inner = self.lock();
        let late = inner.store.data().host.state().late_answers;
        let data = inner.store.data();
        let known = data.roots.contains_key(&context) || data.streams.contains_key(&context);
        let context = match (known, late, inner.serving_root) {
            (true, _, _) => context,
            (false, true, Some(root)) => root, // a late answer, on the root context
            _ => return Ok(false),
        };
        if inner.failure.is_some() {
            return Ok(false);
        }
        let data = inner.store.data();
        let argument = match (self.profile(), data.streams.get(&context)) {
            (Profile::Kong, Some(stream)) => stream.root,
            _ => context,
        };
        match delivery {
            Delivery::Http(response) => {
                let state = match response {
                    Some(response) => {
                        let mut headers = vec![(":status".to_string(), response.status.to_string())];
                        headers.extend(response.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
                        CallResponseState { headers, body: response.body, trailers: response.trailers }
                    }
                    None => CallResponseState { headers: Vec::new(), body: Vec::new(), trailers: Vec::new() },
                };
                let counts = [token, len_u32(state.headers.len()), len_u32(state.body.len()), len_u32(state.trailers.len())];
                inner.store.data_mut().call_response = Some(state);
                // A trap fails the VM; the request or the test sees it through `failure()`.
                let _ = inner.call_void_on("proxy_on_http_call_response", context, argument, &counts);
                inner.store.data_mut().call_response = None;
            }
            // A unary call (Envoy's wasm context): success is one receive, no close after it;
            // a failure is one close with the status.
            Delivery::Grpc(response) if response.status == 0 => {
                let size = len_u32(response.message.len());
                inner.store.data_mut().call_response =
                    Some(CallResponseState { headers: Vec::new(), body: response.message, trailers: Vec::new() });
                let _ = inner.call_void_on("proxy_on_grpc_receive", context, argument, &[token, size]);
                inner.store.data_mut().call_response = None;
            }
            Delivery::Grpc(response) => {
                let _ = inner.call_void_on("proxy_on_grpc_close", context, argument, &[token, response.status]);
            }
        }
        Ok(true)
    }

    /// Calls an export `() -> i32` of the module (a test module's probe), `None` when it is
    /// missing or traps.
    pub fn call_export_u32(&self, name: &str) -> Option<u32> {
        let mut inner = self.lock();
        match inner.call::<(), u32>(name, ()) {
            Called::Returned(value) => Some(value),
            Called::Missing | Called::Trapped(_) => None,
        }
    }

    /// Delivers `proxy_on_queue_ready` to this VM's root `root`.
    pub(crate) fn deliver_queue_ready(&self, root: u32, queue: u32) -> bool {
        let mut inner = self.lock();
        if inner.failure.is_some() || !inner.store.data().roots.contains_key(&root) {
            return false;
        }
        let _ = inner.call_void("proxy_on_queue_ready", root, &[queue]);
        true
    }
}

pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The module must export `proxy_abi_version_0_2_1`; older ABIs are named in the error.
fn check_abi_version(module: &wasmtime::Module) -> Result<()> {
    let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
    if exports.contains(&"proxy_abi_version_0_2_1") {
        return Ok(());
    }
    let other = exports
        .iter()
        .find(|name| name.starts_with("proxy_abi_version_"))
        .map(|name| name.trim_start_matches("proxy_abi_version_").replace('_', "."));
    Err(Error::abi(match other {
        Some(version) => format!("module speaks proxy-wasm ABI {version}, this host only 0.2.1"),
        None => "module exports no proxy_abi_version_* function: not a proxy-wasm module".to_string(),
    }))
}
