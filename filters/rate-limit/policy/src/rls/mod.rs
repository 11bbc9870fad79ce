//! The rate limit service protocol (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`): the
//! messages, their protobuf encoding for Envoy's `dispatch_grpc_call`, and the JSON shape of envoyproxy/ratelimit's
//! HTTP/1.1 `POST /json` endpoint for hosts without gRPC (the Kong engine). No host calls here: the glue sends
//! the bytes and hands back the answer.
//!
//! ```text
//! let request = RateLimitRequest { domain: "gatewarden".into(), hits_addend: cost,
//!     descriptors: vec![RateLimitDescriptor::from_entries([("rule", "api"), ("remote_address", "10.0.0.1")])] };
//! // Envoy: dispatch_grpc_call(cluster, GRPC_SERVICE, GRPC_METHOD, [], &encode_request(&request), timeout)
//! //        on_grpc_call_response(.., status 0, body) => decode_response(&body)?
//! // Kong:  dispatch_http_call(cluster, [(":method","POST"),(":path", JSON_PATH),("content-type","application/json")],
//! //        json::request_to_json(&request)), then json::response_from_http(status, &body)?
//! ```
//!
//! # gRPC framing
//! `dispatch_grpc_call` takes the **bare serialized message**, without gRPC's 5-byte length-prefix (flag byte +
//! big-endian u32 length): Envoy's Wasm `Context::grpcCall` hands the bytes to `RawAsyncClient::sendRaw`, whose
//! stream `sendMessageRaw` calls `Grpc::Common::prependGrpcFrameHeader` itself, and the response body given to
//! `proxy_on_grpc_receive` is the message with the frame header already removed by Envoy's gRPC decoder (Envoy
//! source `source/extensions/common/wasm/context.cc` and `source/common/grpc/async_client_impl.cc`). So
//! [`encode_request`] returns the plain protobuf and [`decode_response`] expects it; a frame header in front
//! of a response would be a malformed message here. The service and method names are [`GRPC_SERVICE`] and
//! [`GRPC_METHOD`].
//!
//! # JSON
//! See [`json`]: protojson field names (lowerCamelCase, snake_case accepted on input), enums by name, zero
//! values omitted, as envoyproxy/ratelimit's `NewJsonHandler` reads and writes them.
//!
//! Decoding never panics: any byte string gives a message or an [`RlsError`]; unknown fields are skipped.
//! prost's derived getters read the enums: `response.overall_code()` and `status.code()` give [`Code::Unknown`]
//! for a number this crate does not know, which the caller treats like any unusable answer (`failure_mode`).

pub mod json;
mod proto;

pub use proto::{
    Code, DescriptorStatus, Duration, Entry, HeaderValue, Quota, RateLimit, RateLimitDescriptor, RateLimitOverride, RateLimitRequest,
    RateLimitResponse, Timestamp, Unit,
};

use core::fmt;
use prost::Message;

/// The gRPC service name for `dispatch_grpc_call`.
pub const GRPC_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The gRPC method name for `dispatch_grpc_call`.
pub const GRPC_METHOD: &str = "ShouldRateLimit";
/// The path of envoyproxy/ratelimit's HTTP/1.1 JSON endpoint (method `POST`).
pub const JSON_PATH: &str = "/json";

/// The request as protobuf bytes, for `dispatch_grpc_call` (no gRPC frame header, see the module doc).
pub fn encode_request(request: &RateLimitRequest) -> Vec<u8> {
    request.encode_to_vec()
}

/// Decodes a `RateLimitRequest` (the server side, and tests).
pub fn decode_request(bytes: &[u8]) -> Result<RateLimitRequest, RlsError> {
    RateLimitRequest::decode(bytes).map_err(RlsError::protobuf)
}

/// The response as protobuf bytes (the server side, and tests).
pub fn encode_response(response: &RateLimitResponse) -> Vec<u8> {
    response.encode_to_vec()
}

/// Decodes the body of a `ShouldRateLimit` answer (no gRPC frame header, see the module doc).
pub fn decode_response(bytes: &[u8]) -> Result<RateLimitResponse, RlsError> {
    RateLimitResponse::decode(bytes).map_err(RlsError::protobuf)
}

impl RateLimitDescriptor {
    /// A descriptor of `(key, value)` entries, in order, without a limit override.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries.into_iter().map(|(key, value)| Entry { key: key.into(), value: value.into() }).collect(),
            limit: None,
        }
    }
}

/// Why a rate limit service answer (or request) could not be read. The message is for the log, never for the
/// client.
#[derive(Debug)]
pub struct RlsError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    /// Not a valid protobuf encoding of the message.
    Protobuf(prost::DecodeError),
    /// Not JSON, or JSON of the wrong shape (serde_json's message names the field and position).
    Json(serde_json::Error),
    /// The JSON endpoint answered with a status that carries no rate limit answer.
    HttpStatus(u16),
}

impl RlsError {
    fn protobuf(error: prost::DecodeError) -> RlsError {
        RlsError { kind: ErrorKind::Protobuf(error) }
    }

    fn json(error: serde_json::Error) -> RlsError {
        RlsError { kind: ErrorKind::Json(error) }
    }

    fn http_status(status: u16) -> RlsError {
        RlsError { kind: ErrorKind::HttpStatus(status) }
    }

    /// The bytes were not a valid protobuf message.
    pub fn is_protobuf(&self) -> bool {
        matches!(self.kind, ErrorKind::Protobuf(_))
    }

    /// The body was not JSON of the expected shape.
    pub fn is_json(&self) -> bool {
        matches!(self.kind, ErrorKind::Json(_))
    }

    /// The HTTP status of the JSON endpoint's answer, when that status is what made the answer unusable.
    pub fn http_status_code(&self) -> Option<u16> {
        match self.kind {
            ErrorKind::HttpStatus(status) => Some(status),
            _ => None,
        }
    }
}

impl fmt::Display for RlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Protobuf(error) => write!(f, "rate limit service: malformed protobuf: {error}"),
            ErrorKind::Json(error) => write!(f, "rate limit service: malformed json: {error}"),
            ErrorKind::HttpStatus(status) => write!(f, "rate limit service: http status {status} without a rate limit answer"),
        }
    }
}

impl std::error::Error for RlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Protobuf(error) => Some(error),
            ErrorKind::Json(error) => Some(error),
            ErrorKind::HttpStatus(_) => None,
        }
    }
}
