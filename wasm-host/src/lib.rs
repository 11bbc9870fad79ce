//! A Proxy-Wasm host (ABI 0.2.1) on wasmtime, for testing filter modules without a proxy.
//!
//! It loads the release `.wasm` files of the filters and drives whole requests through them,
//! imitating Envoy or Kong's ngx_wasm_module ([`Profile`]) where they differ. It is the engine of
//! the wasm-level tests and of `gatewarden test`.
//!
//! ```no_run
//! use gatewarden_wasm_host::{Host, HttpResponse, Module, Profile, Request, VmOptions};
//! # fn main() -> gatewarden_wasm_host::Result<()> {
//! let host = Host::new(Profile::Envoy);
//! host.add_cluster("gatewarden_geo_db");
//! host.script_http_response("gatewarden_geo_db", "/lookup", HttpResponse::new(200).body("FR"));
//! let module = Module::from_file("filter.wasm")?; // compile once, start many VMs
//! let mut vm = host.load_vm(&module, VmOptions::new("ip_geo"))?;
//! assert!(vm.configure(br#"{"mode":"enforce"}"#)?);
//! let outcome = vm.http_request(Request::get("/").source("192.0.2.7:4242"))?;
//! assert_eq!(outcome.status, 403);
//! assert_eq!(host.metric_value("gatewarden_ip_geo_denied"), 1);
//! # Ok(()) }
//! ```
//!
//! Everything is per [`Host`] value: no global state, hosts can run in parallel threads.
//! A module's trap never panics the host: it fails the VM and shows in the [`Outcome`].

#![forbid(unsafe_code)]

mod abi;
mod context;
mod error;
mod host;
mod imports;
mod module;
mod request;
mod shared;
mod vm;

pub use abi::{LogLevel, MetricKind};
pub use error::{Error, Result};
pub use host::{
    GrpcCall, GrpcResponse, Host, HostCall, HttpCall, HttpResponse, LogLine, LogSource, Metric, Profile, Settle, DEFAULT_BODY_CHUNK_SIZE,
    DEFAULT_TIME_UNIX_SECONDS, GRPC_DEADLINE_EXCEEDED, GRPC_UNAVAILABLE,
};
pub use module::Module;
pub use request::{Failure, LocalResponse, Outcome, Phase, Progress, Request, RequestHandle, UpstreamRequest};
pub use shared::SharedValue;
pub use vm::{Vm, VmOptions};
