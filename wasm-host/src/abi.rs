//! Proxy-Wasm ABI 0.2.1 constants and the wire formats shared by host and module.
//!
//! The numbers are those of the spec (`abi-versions/v0.2.1`) and of the Rust SDK 0.2.5
//! `types.rs`; the header-map format is the one of the SDK's `serialize_map`:
//! `u32 count`, then `count` pairs of `u32 key_len, u32 value_len`, then each key and value
//! followed by a NUL byte. All integers are little-endian.

/// A status code returned by host functions (`proxy_status_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    Unimplemented = 12,
}

impl Status {
    /// The value returned to the module.
    pub(crate) fn code(self) -> u32 {
        self as u32
    }
}

/// Log levels of `proxy_log` and `proxy_get_log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// 0
    Trace,
    /// 1
    Debug,
    /// 2
    Info,
    /// 3
    Warn,
    /// 4
    Error,
    /// 5
    Critical,
}

impl LogLevel {
    pub(crate) fn from_code(code: u32) -> Option<LogLevel> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    pub(crate) fn code(self) -> u32 {
        match self {
            LogLevel::Trace => 0,
            LogLevel::Debug => 1,
            LogLevel::Info => 2,
            LogLevel::Warn => 3,
            LogLevel::Error => 4,
            LogLevel::Critical => 5,
        }
    }
}

/// Kinds of metric of `proxy_define_metric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// 0: only ever incremented.
    Counter,
    /// 1: set or incremented, may go down.
    Gauge,
    /// 2: each recorded value is kept as a sample.
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_code(code: u32) -> Option<MetricKind> {
        match code {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

/// `proxy_map_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    CallResponseHeaders,
    CallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_code(code: u32) -> Option<MapType> {
        Some(match code {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            6 => MapType::CallResponseHeaders,
            7 => MapType::CallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_buffer_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferType {
    RequestBody,
    ResponseBody,
    CallResponseBody,
    GrpcReceive,
    VmConfiguration,
    PluginConfiguration,
}

impl BufferType {
    pub(crate) fn from_code(code: u32) -> Option<BufferType> {
        Some(match code {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            4 => BufferType::CallResponseBody,
            5 => BufferType::GrpcReceive,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// `proxy_stream_type_t` of `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamType {
    HttpRequest,
    HttpResponse,
    Downstream,
    Upstream,
}

impl StreamType {
    pub(crate) fn from_code(code: u32) -> Option<StreamType> {
        Some(match code {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// `proxy_action_t` returned by the stream callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Pause,
}

impl Flow {
    /// Any value other than 0 stops iteration, as Envoy treats the `StopIteration*` family.
    pub(crate) fn from_code(code: u32) -> Flow {
        if code == 0 {
            Flow::Continue
        } else {
            Flow::Pause
        }
    }
}

/// Serializes header pairs into the ABI map format.
pub(crate) fn serialize_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut size = 4;
    for (key, value) in pairs {
        size += 8 + key.len() + value.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (key, value) in pairs {
        out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Parses the ABI map format; `None` when the bytes are truncated or inconsistent.
///
/// An empty input is an empty map (the SDK does the same). Non-UTF-8 bytes are replaced.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let key_len = read_u32(bytes, sizes_at)? as usize;
        let value_len = read_u32(bytes, sizes_at + 4)? as usize;
        sizes_at += 8;
        let key = bytes.get(data_at..data_at.checked_add(key_len)?)?;
        data_at = data_at.checked_add(key_len + 1)?;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at = data_at.checked_add(value_len + 1)?;
        pairs.push((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    Some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    let array: [u8; 4] = slice.try_into().ok()?;
    Some(u32::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_sdk_format() {
        let pairs = vec![(":method".to_string(), "GET".to_string()), ("x-a".to_string(), String::new())];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[4..12], &[7, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(deserialize_pairs(&bytes), Some(pairs));
    }

    #[test]
    fn truncated_pairs_are_rejected() {
        let bytes = serialize_pairs(&[("key".to_string(), "value".to_string())]);
        assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 3]), None);
        assert_eq!(deserialize_pairs(&[5, 0, 0, 0]), None);
        assert_eq!(deserialize_pairs(&[]), Some(Vec::new()));
    }
}
