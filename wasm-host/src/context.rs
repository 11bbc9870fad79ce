//! Per-VM state kept in the wasmtime `Store`: contexts, their header maps and buffers, and
//! what host functions need to reach (memory, the allocator export, the shared host).

use crate::abi::{BufferType, MapType};
use crate::host::{HostShared, HostState};
use crate::request::LocalResponse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, MutexGuard};

/// Headers as ordered `(name, value)` pairs; names are stored lower-case, as Envoy does.
pub(crate) type Pairs = Vec<(String, String)>;

/// Where a stream is in its life: decides which maps and buffers exist (Envoy answers
/// `BadArgument` for a map that does not exist yet, and the SDK then panics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StreamPhase {
    Request,
    Response,
}

/// One HTTP stream (an http context).
pub(crate) struct StreamState {
    pub(crate) root: u32,
    pub(crate) phase: StreamPhase,
    pub(crate) request_headers: Pairs,
    /// Kong: request headers the module removed that nginx's proxy_pass still sends upstream
    /// (ngx_wasm_module marks them deleted; proxy_pass does not look).
    pub(crate) removed_but_forwarded: Pairs,
    /// The request body as the module sees it: on Envoy the chunks delivered so far.
    pub(crate) request_body: Vec<u8>,
    /// Kong: nginx spilled the body to a temp file; the module cannot read it.
    pub(crate) body_spilled: bool,
    pub(crate) request_trailers: Pairs,
    pub(crate) response_headers: Pairs,
    pub(crate) response_body: Vec<u8>,
    pub(crate) response_trailers: Pairs,
    /// Properties by dotted path (`source.address`), built-ins and the test's.
    pub(crate) properties: HashMap<String, Vec<u8>>,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) continue_request: bool,
    pub(crate) continue_response: bool,
    pub(crate) reset: bool,
    /// The request headers went on to the upstream (Continue on request headers, or resumed).
    pub(crate) request_headers_sent: bool,
}

/// One root context.
#[derive(Default)]
pub(crate) struct RootState {
    pub(crate) tick_period_ms: u32,
}

/// The response of a callout, readable only during `proxy_on_http_call_response` (or the
/// message of a gRPC answer, during `proxy_on_grpc_receive`).
pub(crate) struct CallResponseState {
    pub(crate) headers: Pairs,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Pairs,
}

/// The data of a VM's `Store`.
pub(crate) struct VmCtx {
    pub(crate) host: Arc<HostShared>,
    pub(crate) index: usize,
    pub(crate) vm_id: String,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    /// VM-wide properties (`plugin_name`, `plugin_root_id`, `plugin_vm_id`, test-provided ones).
    pub(crate) properties: HashMap<String, Vec<u8>>,
    pub(crate) effective: u32,
    pub(crate) next_context_id: u32,
    pub(crate) roots: BTreeMap<u32, RootState>,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) call_response: Option<CallResponseState>,
    pub(crate) memory: Option<wasmtime::Memory>,
    pub(crate) allocate: Option<wasmtime::TypedFunc<u32, u32>>,
    /// Incomplete lines written to fd 1 and 2.
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// The message of the last critical log line (the SDK's panic hook), to explain a trap.
    pub(crate) last_critical: Option<String>,
    pub(crate) random_state: u64,
}

impl VmCtx {
    pub(crate) fn host_state(&self) -> MutexGuard<'_, HostState> {
        self.host.state()
    }

    pub(crate) fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(1);
        id
    }

    pub(crate) fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective)
    }

    /// The root context of the effective context (itself if it is a root).
    pub(crate) fn effective_root(&self) -> Option<u32> {
        if self.roots.contains_key(&self.effective) {
            return Some(self.effective);
        }
        self.streams.get(&self.effective).map(|stream| stream.root)
    }

    /// The map `map` of the effective context for a change, `None` where it cannot be changed:
    /// Envoy's request headers once the module let them go on (Continue on request headers:
    /// Envoy forgets its pointer to them, and a change answers BadArgument). Reading them stays
    /// possible here (Envoy refuses that too outside the headers and log callbacks; this host
    /// does not model it).
    pub(crate) fn writable_map_mut(&mut self, map: MapType) -> Option<&mut Pairs> {
        if map == MapType::RequestHeaders
            && self.host.profile == crate::host::Profile::Envoy
            && self.stream().is_some_and(|s| s.request_headers_sent)
        {
            return None;
        }
        self.map_mut(map)
    }

    /// The map `map` of the effective context, `None` where it does not exist.
    pub(crate) fn map_mut(&mut self, map: MapType) -> Option<&mut Pairs> {
        match map {
            MapType::CallResponseHeaders => return self.call_response.as_mut().map(|c| &mut c.headers),
            MapType::CallResponseTrailers => return self.call_response.as_mut().map(|c| &mut c.trailers),
            _ => {}
        }
        let stream = self.streams.get_mut(&self.effective)?;
        match map {
            MapType::RequestHeaders => Some(&mut stream.request_headers),
            MapType::RequestTrailers => Some(&mut stream.request_trailers),
            MapType::ResponseHeaders if stream.phase >= StreamPhase::Response => Some(&mut stream.response_headers),
            MapType::ResponseTrailers if stream.phase >= StreamPhase::Response => Some(&mut stream.response_trailers),
            _ => None,
        }
    }

    /// The buffer `buffer` as seen by the effective context, `None` where it does not exist.
    pub(crate) fn buffer_mut(&mut self, buffer: BufferType) -> Option<&mut Vec<u8>> {
        match buffer {
            BufferType::VmConfiguration => Some(&mut self.vm_config),
            BufferType::PluginConfiguration => Some(&mut self.plugin_config),
            BufferType::CallResponseBody | BufferType::GrpcReceive => self.call_response.as_mut().map(|c| &mut c.body),
            BufferType::RequestBody => {
                let stream = self.stream()?;
                (!stream.body_spilled).then_some(&mut stream.request_body)
            }
            BufferType::ResponseBody => {
                let stream = self.stream()?;
                (stream.phase >= StreamPhase::Response).then_some(&mut stream.response_body)
            }
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64*), seeded per VM.
    pub(crate) fn next_random(&mut self) -> u64 {
        let mut x = self.random_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random_state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
