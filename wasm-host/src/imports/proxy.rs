//! The `env` imports of Proxy-Wasm ABI 0.2.1: what a module can ask of the host.
//!
//! Statuses follow Envoy (proxy-wasm-cpp-host) unless the [`Profile`] says otherwise; where the
//! SDK 0.2.5 panics on a status (most helpers do), the module traps, as it would in the proxy.
//! Every call is recorded by name in the host's call log before it runs.

use super::memory::{read, read_string, return_bytes, write_u32, write_u64, HostResult};
use crate::abi::{deserialize_pairs, serialize_pairs, BufferType, LogLevel, MapType, MetricKind, Status, StreamType};
use crate::context::{Pairs, VmCtx};
use crate::host::{GrpcCall, HttpCall, LogSource, Metric, PendingCall, PendingGrpc, Profile};
use crate::request::LocalResponse;
use std::time::{Duration, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

type Ctx<'a> = Caller<'a, VmCtx>;

fn enter(caller: &Ctx<'_>, name: &'static str) {
    let index = caller.data().index;
    caller.data().host_state().record_call(index, name);
}

/// The status the test told host function `name` to fail with, if any.
fn injected_fault(caller: &Ctx<'_>, name: &str) -> Option<u32> {
    caller.data().host_state().faults.get(name).copied()
}

fn status(status: Status) -> HostResult {
    Ok(status.code())
}

/// Registers every `env` function of the ABI in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    add_logging_and_time(linker)?;
    add_buffers(linker)?;
    add_header_maps(linker)?;
    add_properties(linker)?;
    add_stream_control(linker)?;
    add_shared_data(linker)?;
    add_shared_queues(linker)?;
    add_http_call(linker)?;
    add_grpc_call(linker)?;
    add_metrics(linker)?;
    add_unsupported(linker)?;
    Ok(())
}

fn add_logging_and_time(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", |mut caller: Ctx<'_>, level: u32, ptr: u32, len: u32| -> HostResult {
        enter(&caller, "proxy_log");
        let Some(level) = LogLevel::from_code(level) else {
            return status(Status::BadArgument);
        };
        let Some(message) = read_string(&caller, ptr, len)? else {
            return status(Status::InvalidMemoryAccess);
        };
        let data = caller.data_mut();
        let index = data.index;
        data.host_state().log(index, level, message.clone(), LogSource::ProxyLog);
        if level == LogLevel::Critical {
            // The SDK's panic hook logs the panic at critical level just before the trap.
            data.last_critical = Some(message);
        }
        status(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_get_log_level", |mut caller: Ctx<'_>, out: u32| -> HostResult {
        enter(&caller, "proxy_get_log_level");
        let level = caller.data().host_state().log_level.code();
        if !write_u32(&mut caller, out, level)? {
            return status(Status::InvalidMemoryAccess);
        }
        status(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut caller: Ctx<'_>, out: u32| -> HostResult {
        enter(&caller, "proxy_get_current_time_nanoseconds");
        let nanos = now_nanos(&caller);
        if !write_u64(&mut caller, out, nanos)? {
            return status(Status::InvalidMemoryAccess);
        }
        status(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut caller: Ctx<'_>, period: u32| -> HostResult {
        enter(&caller, "proxy_set_tick_period_milliseconds");
        let data = caller.data_mut();
        let Some(root) = data.effective_root() else {
            return status(Status::BadArgument);
        };
        let kong = data.host.profile == Profile::Kong;
        if let Some(root) = data.roots.get_mut(&root) {
            // ngx_wasm_module: a root context sets its tick period once; a second non-zero
            // period traps ("tick_period already set"), which fails on_configure.
            if kong && root.tick_period_ms != 0 && period != 0 {
                return Err(wasmtime::Error::msg("tick_period already set"));
            }
            root.tick_period_ms = period;
        }
        status(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_set_effective_context", |mut caller: Ctx<'_>, context: u32| -> HostResult {
        enter(&caller, "proxy_set_effective_context");
        let data = caller.data_mut();
        if data.roots.contains_key(&context) || data.streams.contains_key(&context) {
            data.effective = context;
            return status(Status::Ok);
        }
        status(Status::BadArgument)
    })?;
    linker.func_wrap("env", "proxy_done", |caller: Ctx<'_>| -> HostResult {
        enter(&caller, "proxy_done");
        status(Status::Ok)
    })?;
    Ok(())
}

/// Nanoseconds since the Unix epoch on the host clock.
pub(crate) fn now_nanos(caller: &Ctx<'_>) -> u64 {
    let now = caller.data().host_state().now;
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

fn add_buffers(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Ctx<'_>, kind: u32, start: u32, max: u32, ptr_out: u32, size_out: u32| -> HostResult {
            enter(&caller, "proxy_get_buffer_bytes");
            let Some(kind) = BufferType::from_code(kind) else {
                return status(Status::BadArgument);
            };
            let Some(buffer) = caller.data_mut().buffer_mut(kind) else {
                return status(Status::NotFound);
            };
            let start = start as usize;
            if start > buffer.len() {
                return status(Status::BadArgument);
            }
            let end = start.saturating_add(max as usize).min(buffer.len());
            let bytes = buffer.get(start..end).unwrap_or_default().to_vec();
            return_bytes(&mut caller, &bytes, ptr_out, size_out)
        },
    )?;
    linker.func_wrap("env", "proxy_get_buffer_status", |mut caller: Ctx<'_>, kind: u32, size_out: u32, flags_out: u32| -> HostResult {
        enter(&caller, "proxy_get_buffer_status");
        let Some(kind) = BufferType::from_code(kind) else {
            return status(Status::BadArgument);
        };
        let Some(buffer) = caller.data_mut().buffer_mut(kind) else {
            return status(Status::NotFound);
        };
        let size = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
        if !write_u32(&mut caller, size_out, size)? || !write_u32(&mut caller, flags_out, 0)? {
            return status(Status::InvalidMemoryAccess);
        }
        status(Status::Ok)
    })?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Ctx<'_>, kind: u32, start: u32, size: u32, ptr: u32, len: u32| -> HostResult {
            enter(&caller, "proxy_set_buffer_bytes");
            let Some(kind) = BufferType::from_code(kind) else {
                return status(Status::BadArgument);
            };
            let Some(bytes) = read(&caller, ptr, len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            if matches!(kind, BufferType::VmConfiguration | BufferType::PluginConfiguration) {
                return status(Status::BadArgument);
            }
            let Some(buffer) = caller.data_mut().buffer_mut(kind) else {
                return status(Status::NotFound);
            };
            // Replace [start, start + size) clamped to the buffer; past the end appends.
            let start = (start as usize).min(buffer.len());
            let end = start.saturating_add(size as usize).min(buffer.len());
            buffer.splice(start..end, bytes);
            status(Status::Ok)
        },
    )?;
    Ok(())
}

fn add_header_maps(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_header_map_pairs", |mut caller: Ctx<'_>, map: u32, ptr_out: u32, size_out: u32| -> HostResult {
        enter(&caller, "proxy_get_header_map_pairs");
        if let Some(code) = injected_fault(&caller, "proxy_get_header_map_pairs") {
            return Ok(code);
        }
        let Some(pairs) = MapType::from_code(map).and_then(|m| caller.data_mut().map_mut(m)) else {
            return status(Status::BadArgument);
        };
        let bytes = serialize_pairs(pairs);
        return_bytes(&mut caller, &bytes, ptr_out, size_out)
    })?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", |mut caller: Ctx<'_>, map: u32, ptr: u32, len: u32| -> HostResult {
        enter(&caller, "proxy_set_header_map_pairs");
        let Some(bytes) = read(&caller, ptr, len)? else {
            return status(Status::InvalidMemoryAccess);
        };
        let Some(new_pairs) = deserialize_pairs(&bytes) else {
            return status(Status::SerializationFailure);
        };
        let Some(pairs) = MapType::from_code(map).and_then(|m| caller.data_mut().writable_map_mut(m)) else {
            return status(Status::BadArgument);
        };
        *pairs = new_pairs.into_iter().map(|(key, value)| (key.to_ascii_lowercase(), value)).collect();
        status(Status::Ok)
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Ctx<'_>, map: u32, key_ptr: u32, key_len: u32, ptr_out: u32, size_out: u32| -> HostResult {
            enter(&caller, "proxy_get_header_map_value");
            if let Some(code) = injected_fault(&caller, "proxy_get_header_map_value") {
                return Ok(code);
            }
            let Some(key) = read_string(&caller, key_ptr, key_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(pairs) = MapType::from_code(map).and_then(|m| caller.data_mut().map_mut(m)) else {
                return status(Status::BadArgument);
            };
            // Envoy returns the first value of a repeated header.
            let Some(value) = crate::host::header_value(pairs, &key).map(str::to_string) else {
                return status(Status::NotFound);
            };
            return_bytes(&mut caller, value.as_bytes(), ptr_out, size_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut caller: Ctx<'_>, map: u32, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32| -> HostResult {
            enter(&caller, "proxy_add_header_map_value");
            let (Some(key), Some(value)) = (read_string(&caller, key_ptr, key_len)?, read_string(&caller, value_ptr, value_len)?) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(pairs) = MapType::from_code(map).and_then(|m| caller.data_mut().writable_map_mut(m)) else {
                return status(Status::BadArgument);
            };
            pairs.push((key.to_ascii_lowercase(), value));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut caller: Ctx<'_>, map: u32, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32| -> HostResult {
            enter(&caller, "proxy_replace_header_map_value");
            if let Some(code) = injected_fault(&caller, "proxy_replace_header_map_value") {
                return Ok(code);
            }
            let (Some(key), Some(value)) = (read_string(&caller, key_ptr, key_len)?, read_string(&caller, value_ptr, value_len)?) else {
                return status(Status::InvalidMemoryAccess);
            };
            let map = MapType::from_code(map);
            let data = caller.data_mut();
            let kong = data.host.profile == Profile::Kong;
            let Some(pairs) = map.and_then(|m| data.writable_map_mut(m)) else {
                return status(Status::BadArgument);
            };
            let key = key.to_ascii_lowercase();
            let mut dropped: Pairs = Vec::new();
            match pairs.iter().position(|(name, _)| name.eq_ignore_ascii_case(&key)) {
                Some(first) => {
                    let mut index = 0;
                    pairs.retain(|(name, v)| {
                        let keep = index <= first || !name.eq_ignore_ascii_case(&key);
                        if !keep {
                            dropped.push((name.clone(), v.clone()));
                        }
                        index += 1;
                        keep
                    });
                    if let Some(entry) = pairs.get_mut(first) {
                        entry.1 = value;
                    }
                }
                None => pairs.push((key, value)),
            }
            if kong && map == Some(MapType::RequestHeaders) {
                // ngx_wasm_module updates the first copy and marks the others deleted, which
                // nginx's proxy_pass forwards anyway (see proxy_remove_header_map_value).
                if let Some(stream) = data.stream() {
                    stream.removed_but_forwarded.extend(dropped);
                }
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Ctx<'_>, map: u32, key_ptr: u32, key_len: u32| -> HostResult {
            enter(&caller, "proxy_remove_header_map_value");
            if let Some(code) = injected_fault(&caller, "proxy_remove_header_map_value") {
                return Ok(code);
            }
            let Some(key) = read_string(&caller, key_ptr, key_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let map = MapType::from_code(map);
            let data = caller.data_mut();
            let kong = data.host.profile == Profile::Kong;
            let Some(pairs) = map.and_then(|m| data.writable_map_mut(m)) else {
                return status(Status::BadArgument);
            };
            let removed: Pairs = pairs.iter().filter(|(name, _)| name.eq_ignore_ascii_case(&key)).cloned().collect();
            pairs.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
            if kong && map == Some(MapType::RequestHeaders) {
                // ngx_wasm_module 3bed278 only marks a removed request header deleted (hash 0),
                // and nginx's proxy_pass forwards it anyway, with its value.
                if let Some(stream) = data.stream() {
                    stream.removed_but_forwarded.extend(removed);
                }
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}

fn add_properties(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Ctx<'_>, path_ptr: u32, path_len: u32, ptr_out: u32, size_out: u32| -> HostResult {
            enter(&caller, "proxy_get_property");
            let Some(path) = read(&caller, path_ptr, path_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let path = property_path(&path);
            let data = caller.data_mut();
            if data.host.profile == Profile::Kong && data.stream().is_none() && matches!(path.as_str(), "plugin_name" | "plugin_vm_id") {
                // ngx_wasm_module 3bed278 crashes the worker (SIGSEGV) on these in a root context.
                return Err(wasmtime::Error::msg(format!("property {path} read in a root context: ngx_wasm_module crashes the worker")));
            }
            let from_stream = data.stream().and_then(|stream| stream.properties.get(&path).cloned());
            let Some(value) = from_stream.or_else(|| data.properties.get(&path).cloned()) else {
                return status(Status::NotFound);
            };
            return_bytes(&mut caller, &value, ptr_out, size_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Ctx<'_>, path_ptr: u32, path_len: u32, value_ptr: u32, value_len: u32| -> HostResult {
            enter(&caller, "proxy_set_property");
            let (Some(path), Some(value)) = (read(&caller, path_ptr, path_len)?, read(&caller, value_ptr, value_len)?) else {
                return status(Status::InvalidMemoryAccess);
            };
            let path = property_path(&path);
            let data = caller.data_mut();
            match data.stream() {
                Some(stream) => {
                    stream.properties.insert(path, value);
                }
                None => {
                    data.properties.insert(path, value);
                }
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// `source\0address` → `source.address`.
fn property_path(raw: &[u8]) -> String {
    raw.split(|byte| *byte == 0).map(String::from_utf8_lossy).collect::<Vec<_>>().join(".")
}

fn add_stream_control(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Ctx<'_>,
         code: u32,
         details_ptr: u32,
         details_len: u32,
         body_ptr: u32,
         body_len: u32,
         headers_ptr: u32,
         headers_len: u32,
         grpc_status: i32|
         -> HostResult {
            enter(&caller, "proxy_send_local_response");
            let (Some(details), Some(body), Some(headers)) = (
                read_string(&caller, details_ptr, details_len)?,
                read(&caller, body_ptr, body_len)?,
                read(&caller, headers_ptr, headers_len)?,
            ) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(headers) = deserialize_pairs(&headers) else {
                return status(Status::SerializationFailure);
            };
            let Ok(code) = u16::try_from(code) else {
                return status(Status::BadArgument);
            };
            let Some(stream) = caller.data_mut().stream() else {
                return status(Status::BadArgument);
            };
            stream.local_response = Some(LocalResponse {
                status: code,
                headers: headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
                body,
                details,
                grpc_status: (grpc_status >= 0).then_some(grpc_status),
            });
            let data = caller.data();
            if data.host.profile == Profile::Kong {
                // ngx_wasm_module cancels the request's pending callouts when a local response
                // is stashed ("local response produced, cancelling pending dispatch
                // operations", ngx_proxy_wasm_host.c, 3bed278): their answers never come.
                let (vm, context) = (data.index, data.effective);
                data.host_state().pending.retain(|p| !(p.call.vm == vm && p.context_id == context));
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap("env", "proxy_continue_stream", |mut caller: Ctx<'_>, kind: u32| -> HostResult {
        enter(&caller, "proxy_continue_stream");
        let Some(stream) = caller.data_mut().stream() else {
            return status(Status::BadArgument);
        };
        match StreamType::from_code(kind) {
            Some(StreamType::HttpRequest) => stream.continue_request = true,
            Some(StreamType::HttpResponse) => stream.continue_response = true,
            _ => return status(Status::BadArgument),
        }
        status(Status::Ok)
    })?;
    // ABI 0.1.0 names, still exported by some SDKs.
    linker.func_wrap("env", "proxy_continue_request", |mut caller: Ctx<'_>| -> HostResult {
        enter(&caller, "proxy_continue_request");
        match caller.data_mut().stream() {
            Some(stream) => {
                stream.continue_request = true;
                status(Status::Ok)
            }
            None => status(Status::BadArgument),
        }
    })?;
    linker.func_wrap("env", "proxy_continue_response", |mut caller: Ctx<'_>| -> HostResult {
        enter(&caller, "proxy_continue_response");
        match caller.data_mut().stream() {
            Some(stream) => {
                stream.continue_response = true;
                status(Status::Ok)
            }
            None => status(Status::BadArgument),
        }
    })?;
    linker.func_wrap("env", "proxy_close_stream", |mut caller: Ctx<'_>, kind: u32| -> HostResult {
        enter(&caller, "proxy_close_stream");
        let Some(stream) = caller.data_mut().stream() else {
            return status(Status::BadArgument);
        };
        match StreamType::from_code(kind) {
            Some(StreamType::HttpRequest | StreamType::HttpResponse) => stream.reset = true,
            _ => return status(Status::BadArgument),
        }
        status(Status::Ok)
    })?;
    Ok(())
}

fn add_shared_data(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Ctx<'_>, key_ptr: u32, key_len: u32, ptr_out: u32, size_out: u32, cas_out: u32| -> HostResult {
            enter(&caller, "proxy_get_shared_data");
            let Some(key) = read_string(&caller, key_ptr, key_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let data = caller.data();
            let entry = data.host_state().shared.get(&data.vm_id, &key);
            let Some(entry) = entry else {
                return status(Status::NotFound);
            };
            if !write_u32(&mut caller, cas_out, entry.cas)? {
                return status(Status::InvalidMemoryAccess);
            }
            return_bytes(&mut caller, &entry.value, ptr_out, size_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |caller: Ctx<'_>, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32, cas: u32| -> HostResult {
            enter(&caller, "proxy_set_shared_data");
            let Some(key) = read_string(&caller, key_ptr, key_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let value = if value_ptr == 0 {
                None
            } else {
                match read(&caller, value_ptr, value_len)? {
                    Some(value) => Some(value),
                    None => return status(Status::InvalidMemoryAccess),
                }
            };
            let data = caller.data();
            let result = data.host_state().shared.set(&data.vm_id, &key, value.as_deref(), cas);
            status(result)
        },
    )?;
    Ok(())
}

fn add_shared_queues(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Ctx<'_>, name_ptr: u32, name_len: u32, id_out: u32| -> HostResult {
            enter(&caller, "proxy_register_shared_queue");
            if caller.data().host.profile == Profile::Kong {
                return status(Status::Unimplemented);
            }
            let Some(name) = read_string(&caller, name_ptr, name_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let data = caller.data();
            let Some(root) = data.effective_root() else {
                return status(Status::BadArgument);
            };
            let id = data.host_state().shared.register_queue(&data.vm_id, &name, (data.index, root));
            if !write_u32(&mut caller, id_out, id)? {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Ctx<'_>, vm_ptr: u32, vm_len: u32, name_ptr: u32, name_len: u32, id_out: u32| -> HostResult {
            enter(&caller, "proxy_resolve_shared_queue");
            if caller.data().host.profile == Profile::Kong {
                return status(Status::Unimplemented);
            }
            let (Some(vm_id), Some(name)) = (read_string(&caller, vm_ptr, vm_len)?, read_string(&caller, name_ptr, name_len)?) else {
                return status(Status::InvalidMemoryAccess);
            };
            let data = caller.data();
            let vm_id = if vm_id.is_empty() { data.vm_id.clone() } else { vm_id };
            let id = data.host_state().shared.resolve_queue(&vm_id, &name);
            let Some(id) = id else {
                return status(Status::NotFound);
            };
            if !write_u32(&mut caller, id_out, id)? {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", |caller: Ctx<'_>, id: u32, value_ptr: u32, value_len: u32| -> HostResult {
        enter(&caller, "proxy_enqueue_shared_queue");
        if caller.data().host.profile == Profile::Kong {
            return status(Status::Unimplemented);
        }
        let Some(value) = read(&caller, value_ptr, value_len)? else {
            return status(Status::InvalidMemoryAccess);
        };
        let mut state = caller.data().host_state();
        match state.shared.enqueue(id, value) {
            Some((vm, root)) => {
                state.queue_ready.push((vm, root, id));
                status(Status::Ok)
            }
            None => status(Status::NotFound),
        }
    })?;
    linker.func_wrap("env", "proxy_dequeue_shared_queue", |mut caller: Ctx<'_>, id: u32, ptr_out: u32, size_out: u32| -> HostResult {
        enter(&caller, "proxy_dequeue_shared_queue");
        if caller.data().host.profile == Profile::Kong {
            return status(Status::Unimplemented);
        }
        let item = caller.data().host_state().shared.dequeue(id);
        match item {
            Ok(Some(value)) => return_bytes(&mut caller, &value, ptr_out, size_out),
            Ok(None) => status(Status::Empty),
            Err(error) => status(error),
        }
    })?;
    Ok(())
}

fn add_http_call(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Ctx<'_>,
         upstream_ptr: u32,
         upstream_len: u32,
         headers_ptr: u32,
         headers_len: u32,
         body_ptr: u32,
         body_len: u32,
         trailers_ptr: u32,
         trailers_len: u32,
         timeout_ms: u32,
         token_out: u32|
         -> HostResult {
            enter(&caller, "proxy_http_call");
            let (Some(upstream), Some(headers), Some(body), Some(trailers)) = (
                read_string(&caller, upstream_ptr, upstream_len)?,
                read(&caller, headers_ptr, headers_len)?,
                read(&caller, body_ptr, body_len)?,
                read(&caller, trailers_ptr, trailers_len)?,
            ) else {
                return status(Status::InvalidMemoryAccess);
            };
            let (Some(headers), Some(trailers)) = (deserialize_pairs(&headers), deserialize_pairs(&trailers)) else {
                return status(Status::SerializationFailure);
            };
            let data = caller.data();
            let context_id = data.effective;
            let vm = data.index;
            let mut state = data.host_state();
            let valid = match data.host.profile {
                Profile::Envoy => {
                    state.clusters.contains(&upstream)
                        && [":method", ":path", ":authority"].iter().all(|name| crate::host::header_value(&headers, name).is_some())
                }
                Profile::Kong => is_host_port(&upstream),
            };
            if !valid {
                return status(Status::BadArgument);
            }
            let token = state.next_token;
            state.next_token = state.next_token.wrapping_add(1).max(1);
            let call = HttpCall { vm, token, upstream, headers, body, trailers, timeout: Duration::from_millis(u64::from(timeout_ms)) };
            state.dispatched.push(call.clone());
            state.pending.push(PendingCall { call, context_id });
            drop(state);
            if !write_u32(&mut caller, token_out, token)? {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// ngx_wasm_module registers every gRPC import as "not yet implemented": calling one traps the
/// instance ("host trap (function not yet implemented)", ngx_wavm_host.c, 3bed278).
fn kong_has_no_grpc(caller: &Ctx<'_>, name: &str) -> wasmtime::Result<()> {
    if caller.data().host.profile == Profile::Kong {
        return Err(wasmtime::Error::msg(format!("{name}: host trap (function not yet implemented)")));
    }
    Ok(())
}

fn add_grpc_call(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Ctx<'_>,
         upstream_ptr: u32,
         upstream_len: u32,
         service_ptr: u32,
         service_len: u32,
         method_ptr: u32,
         method_len: u32,
         metadata_ptr: u32,
         metadata_len: u32,
         message_ptr: u32,
         message_len: u32,
         timeout_ms: u32,
         token_out: u32|
         -> HostResult {
            enter(&caller, "proxy_grpc_call");
            kong_has_no_grpc(&caller, "proxy_grpc_call")?;
            let (Some(upstream), Some(service), Some(method), Some(metadata), Some(message)) = (
                read_string(&caller, upstream_ptr, upstream_len)?,
                read_string(&caller, service_ptr, service_len)?,
                read_string(&caller, method_ptr, method_len)?,
                read(&caller, metadata_ptr, metadata_len)?,
                read(&caller, message_ptr, message_len)?,
            ) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(metadata) = deserialize_pairs(&metadata) else {
                return status(Status::SerializationFailure);
            };
            let data = caller.data();
            let context_id = data.effective;
            let vm = data.index;
            let mut state = data.host_state();
            // Envoy: the service is a cluster name (or a serialized GrpcService naming one).
            if !state.clusters.contains(&upstream) {
                return status(Status::BadArgument);
            }
            let token = state.next_token;
            state.next_token = state.next_token.wrapping_add(1).max(1);
            let call =
                GrpcCall { vm, token, upstream, service, method, metadata, message, timeout: Duration::from_millis(u64::from(timeout_ms)) };
            state.dispatched_grpc.push(call.clone());
            state.pending_grpc.push(PendingGrpc { call, context_id });
            drop(state);
            if !write_u32(&mut caller, token_out, token)? {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        },
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap("env", name, move |caller: Ctx<'_>, token: u32| -> HostResult {
            enter(&caller, name);
            kong_has_no_grpc(&caller, name)?;
            let vm = caller.data().index;
            let mut state = caller.data().host_state();
            let before = state.pending_grpc.len();
            state.pending_grpc.retain(|p| !(p.call.vm == vm && p.call.token == token));
            if state.pending_grpc.len() == before {
                return status(Status::NotFound);
            }
            status(Status::Ok)
        })?;
    }
    Ok(())
}

/// ngx_wasm_module's callout target: `host:port`, port 1..=65535, host not empty.
fn is_host_port(upstream: &str) -> bool {
    match upstream.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0),
        None => false,
    }
}

fn add_metrics(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Ctx<'_>, kind: u32, name_ptr: u32, name_len: u32, id_out: u32| -> HostResult {
            enter(&caller, "proxy_define_metric");
            let Some(kind) = MetricKind::from_code(kind) else {
                return status(Status::BadArgument);
            };
            let Some(name) = read_string(&caller, name_ptr, name_len)? else {
                return status(Status::InvalidMemoryAccess);
            };
            let id = {
                let mut state = caller.data().host_state();
                let index = match state.metrics.iter().position(|metric| metric.name == name) {
                    Some(index) => index,
                    None => {
                        state.metrics.push(Metric { name, kind, value: 0, samples: Vec::new() });
                        state.metrics.len() - 1
                    }
                };
                u32::try_from(index + 1).unwrap_or(u32::MAX)
            };
            if !write_u32(&mut caller, id_out, id)? {
                return status(Status::InvalidMemoryAccess);
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap("env", "proxy_increment_metric", |caller: Ctx<'_>, id: u32, offset: i64| -> HostResult {
        enter(&caller, "proxy_increment_metric");
        let mut state = caller.data().host_state();
        let Some(metric) = metric_mut(&mut state.metrics, id) else {
            return status(Status::NotFound);
        };
        match metric.kind {
            MetricKind::Counter if offset > 0 => metric.value = metric.value.saturating_add(offset.unsigned_abs()),
            MetricKind::Gauge if offset >= 0 => metric.value = metric.value.saturating_add(offset.unsigned_abs()),
            MetricKind::Gauge => metric.value = metric.value.saturating_sub(offset.unsigned_abs()),
            MetricKind::Counter | MetricKind::Histogram => return status(Status::BadArgument),
        }
        status(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_record_metric", |caller: Ctx<'_>, id: u32, value: u64| -> HostResult {
        enter(&caller, "proxy_record_metric");
        let mut state = caller.data().host_state();
        let Some(metric) = metric_mut(&mut state.metrics, id) else {
            return status(Status::NotFound);
        };
        match metric.kind {
            MetricKind::Counter => metric.value = metric.value.saturating_add(value),
            MetricKind::Gauge => metric.value = value,
            MetricKind::Histogram => {
                metric.value = value;
                metric.samples.push(value);
            }
        }
        status(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_get_metric", |mut caller: Ctx<'_>, id: u32, out: u32| -> HostResult {
        enter(&caller, "proxy_get_metric");
        let value = {
            let mut state = caller.data().host_state();
            match metric_mut(&mut state.metrics, id) {
                None => return status(Status::NotFound),
                Some(metric) if metric.kind == MetricKind::Histogram => return status(Status::BadArgument),
                Some(metric) => metric.value,
            }
        };
        if !write_u64(&mut caller, out, value)? {
            return status(Status::InvalidMemoryAccess);
        }
        status(Status::Ok)
    })?;
    Ok(())
}

fn metric_mut(metrics: &mut [Metric], id: u32) -> Option<&mut Metric> {
    metrics.get_mut((id as usize).checked_sub(1)?)
}

/// gRPC streams, foreign functions and `proxy_get_status` are not implemented by this host: they
/// answer `Unimplemented` (`NotFound` for a foreign function, as Envoy does for an unknown name).
fn add_unsupported(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |caller: Ctx<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> HostResult {
            enter(&caller, "proxy_grpc_stream");
            kong_has_no_grpc(&caller, "proxy_grpc_stream")?;
            status(Status::Unimplemented)
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_send", |caller: Ctx<'_>, _: u32, _: u32, _: u32, _: u32| -> HostResult {
        enter(&caller, "proxy_grpc_send");
        kong_has_no_grpc(&caller, "proxy_grpc_send")?;
        status(Status::Unimplemented)
    })?;
    linker.func_wrap("env", "proxy_get_status", |caller: Ctx<'_>, _: u32, _: u32, _: u32| -> HostResult {
        enter(&caller, "proxy_get_status");
        status(Status::Unimplemented)
    })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |caller: Ctx<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> HostResult {
            enter(&caller, "proxy_call_foreign_function");
            status(Status::NotFound)
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_upstream_must_be_host_and_port() {
        assert!(is_host_port("geo.internal:8080"));
        assert!(is_host_port("127.0.0.1:80"));
        assert!(!is_host_port("gatewarden_geo_db"));
        assert!(!is_host_port(":80"));
        assert!(!is_host_port("host:0"));
        assert!(!is_host_port("host:http"));
    }

    #[test]
    fn property_path_joins_segments_with_dots() {
        assert_eq!(property_path(b"source\0address"), "source.address");
        assert_eq!(property_path(b"plugin_name"), "plugin_name");
    }
}
