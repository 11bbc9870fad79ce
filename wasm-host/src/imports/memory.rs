//! Reading and writing the module's linear memory from host functions, bounds-checked.
//!
//! Returning data to the module follows proxy-wasm-cpp-host: the host asks the module for a
//! buffer through `proxy_on_memory_allocate` (or `malloc`), copies the bytes into it and writes
//! the pointer and size to the two out-pointers; empty data is returned as a NULL pointer and
//! size 0 without allocating.

use crate::abi::Status;
use crate::context::VmCtx;
use wasmtime::Caller;

/// Host-function result: `Ok(status)` goes back to the module, `Err` traps it.
pub(crate) type HostResult = wasmtime::Result<u32>;

fn memory(caller: &Caller<'_, VmCtx>) -> wasmtime::Result<wasmtime::Memory> {
    caller.data().memory.ok_or_else(|| wasmtime::format_err!("module exports no memory"))
}

/// Copies `len` bytes at `ptr` out of the module, `None` when out of bounds.
pub(crate) fn read(caller: &Caller<'_, VmCtx>, ptr: u32, len: u32) -> wasmtime::Result<Option<Vec<u8>>> {
    let memory = memory(caller)?;
    let data = memory.data(caller);
    let start = ptr as usize;
    let Some(end) = start.checked_add(len as usize) else {
        return Ok(None);
    };
    Ok(data.get(start..end).map(<[u8]>::to_vec))
}

/// Reads a UTF-8 string (lossy) at `ptr`.
pub(crate) fn read_string(caller: &Caller<'_, VmCtx>, ptr: u32, len: u32) -> wasmtime::Result<Option<String>> {
    Ok(read(caller, ptr, len)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Writes `bytes` at `ptr`; false when out of bounds.
pub(crate) fn write(caller: &mut Caller<'_, VmCtx>, ptr: u32, bytes: &[u8]) -> wasmtime::Result<bool> {
    let memory = memory(caller)?;
    let data = memory.data_mut(caller);
    let start = ptr as usize;
    let Some(end) = start.checked_add(bytes.len()) else {
        return Ok(false);
    };
    match data.get_mut(start..end) {
        Some(target) => {
            target.copy_from_slice(bytes);
            Ok(true)
        }
        None => Ok(false),
    }
}

pub(crate) fn write_u32(caller: &mut Caller<'_, VmCtx>, ptr: u32, value: u32) -> wasmtime::Result<bool> {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, VmCtx>, ptr: u32, value: u64) -> wasmtime::Result<bool> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the module: allocates in the module, copies, writes pointer and size.
pub(crate) fn return_bytes(caller: &mut Caller<'_, VmCtx>, bytes: &[u8], ptr_out: u32, size_out: u32) -> HostResult {
    let mut address = 0u32;
    if !bytes.is_empty() {
        let allocate = caller.data().allocate.clone().ok_or_else(|| wasmtime::format_err!("module exports no proxy_on_memory_allocate"))?;
        let size = u32::try_from(bytes.len()).map_err(|_| wasmtime::format_err!("value too large"))?;
        address = allocate.call(&mut *caller, size)?;
        if address == 0 || !write(caller, address, bytes)? {
            return Ok(Status::InvalidMemoryAccess.code());
        }
    }
    let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if !write_u32(caller, ptr_out, address)? || !write_u32(caller, size_out, size)? {
        return Ok(Status::InvalidMemoryAccess.code());
    }
    Ok(Status::Ok.code())
}
