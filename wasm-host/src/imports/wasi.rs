//! The few `wasi_snapshot_preview1` functions a `wasm32-wasip1` filter imports, done by hand.
//!
//! Rust's standard library for `wasm32-wasip1` imports `fd_write` (stdout/stderr, used by
//! `println!` and the default panic message), `environ_*`, `clock_time_get`, `random_get`
//! (`HashMap` seeds) and `proc_exit`. Pulling `wasmtime-wasi` for these would add a large
//! dependency tree; instead: output goes to the host log, the clock is the host clock, random
//! bytes are deterministic per VM, the environment and arguments are empty, `proc_exit` traps.
//! Any other WASI import traps when called (see `Linker::define_unknown_imports_as_traps`).

use super::memory::{read, write, write_u32, write_u64};
use super::proxy::now_nanos;
use crate::abi::LogLevel;
use crate::context::VmCtx;
use crate::host::LogSource;
use wasmtime::{Caller, Linker};

type Ctx<'a> = Caller<'a, VmCtx>;

const MODULE: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: u32 = 0;
const ERRNO_BADF: u32 = 8;
const ERRNO_FAULT: u32 = 21;
const ERRNO_INVAL: u32 = 28;

fn enter(caller: &Ctx<'_>, name: &'static str) {
    let index = caller.data().index;
    caller.data().host_state().record_call(index, name);
}

/// Registers the WASI functions in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<VmCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Ctx<'_>, fd: u32, iovs: u32, iovs_len: u32, written_out: u32| -> wasmtime::Result<u32> {
            enter(&caller, "fd_write");
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            let mut bytes = Vec::new();
            for index in 0..iovs_len {
                let Some(iov) = read(&caller, iovs.wrapping_add(index.wrapping_mul(8)), 8)? else {
                    return Ok(ERRNO_FAULT);
                };
                let (ptr, len) = match (iov.get(0..4), iov.get(4..8)) {
                    (Some(ptr), Some(len)) => (le_u32(ptr), le_u32(len)),
                    _ => return Ok(ERRNO_FAULT),
                };
                let Some(chunk) = read(&caller, ptr, len)? else {
                    return Ok(ERRNO_FAULT);
                };
                bytes.extend_from_slice(&chunk);
            }
            let written = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            write_stream(&mut caller, fd, &bytes);
            if !write_u32(&mut caller, written_out, written)? {
                return Ok(ERRNO_FAULT);
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(MODULE, name, move |mut caller: Ctx<'_>, count_out: u32, size_out: u32| -> wasmtime::Result<u32> {
            enter(&caller, if name == "args_sizes_get" { "args_sizes_get" } else { "environ_sizes_get" });
            if !write_u32(&mut caller, count_out, 0)? || !write_u32(&mut caller, size_out, 0)? {
                return Ok(ERRNO_FAULT);
            }
            Ok(ERRNO_SUCCESS)
        })?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(MODULE, name, move |caller: Ctx<'_>, _list: u32, _buffer: u32| -> wasmtime::Result<u32> {
            enter(&caller, if name == "args_get" { "args_get" } else { "environ_get" });
            Ok(ERRNO_SUCCESS)
        })?;
    }
    linker.func_wrap(MODULE, "clock_time_get", |mut caller: Ctx<'_>, clock: u32, _precision: u64, out: u32| -> wasmtime::Result<u32> {
        enter(&caller, "clock_time_get");
        // 0 realtime, 1 monotonic: both read the host clock; process/thread CPU clocks do not exist.
        if clock > 1 {
            return Ok(ERRNO_INVAL);
        }
        let nanos = now_nanos(&caller);
        if !write_u64(&mut caller, out, nanos)? {
            return Ok(ERRNO_FAULT);
        }
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(MODULE, "random_get", |mut caller: Ctx<'_>, ptr: u32, len: u32| -> wasmtime::Result<u32> {
        enter(&caller, "random_get");
        let mut bytes = Vec::with_capacity(len as usize);
        while bytes.len() < len as usize {
            let next = caller.data_mut().next_random();
            bytes.extend_from_slice(&next.to_le_bytes());
        }
        bytes.truncate(len as usize);
        if !write(&mut caller, ptr, &bytes)? {
            return Ok(ERRNO_FAULT);
        }
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(MODULE, "sched_yield", |caller: Ctx<'_>| -> wasmtime::Result<u32> {
        enter(&caller, "sched_yield");
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(MODULE, "proc_exit", |caller: Ctx<'_>, code: u32| -> wasmtime::Result<()> {
        enter(&caller, "proc_exit");
        Err(wasmtime::format_err!("module called proc_exit({code})"))
    })?;
    Ok(())
}

fn le_u32(bytes: &[u8]) -> u32 {
    bytes.try_into().map(u32::from_le_bytes).unwrap_or(0)
}

/// Appends to the fd's pending line and logs every complete line.
fn write_stream(caller: &mut Ctx<'_>, fd: u32, bytes: &[u8]) {
    let data = caller.data_mut();
    let (buffer, level, source) = if fd == 1 {
        (&mut data.stdout, LogLevel::Info, LogSource::Stdout)
    } else {
        (&mut data.stderr, LogLevel::Error, LogSource::Stderr)
    };
    buffer.extend_from_slice(bytes);
    let mut lines = Vec::new();
    while let Some(newline) = buffer.iter().position(|byte| *byte == b'\n') {
        let line: Vec<u8> = buffer.drain(..=newline).collect();
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned();
        lines.push(text);
    }
    let index = data.index;
    let mut state = data.host_state();
    for line in lines {
        state.log(index, level, line, source);
    }
}
