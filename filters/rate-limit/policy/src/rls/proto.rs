//! The protobuf messages of `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, declared by hand
//! with `prost` derive. Field numbers and types are those of Envoy's
//! `api/envoy/service/ratelimit/v3/rls.proto` and `api/envoy/extensions/common/ratelimit/v3/ratelimit.proto`;
//! `tests/rls_wire.rs` checks them against hand-computed encodings.
//!
//! ```text
//! RateLimitRequest     { domain = 1: string, descriptors = 2: repeated RateLimitDescriptor, hits_addend = 3: uint32 }
//! RateLimitDescriptor  { entries = 1: repeated Entry, limit = 2: RateLimitOverride }
//! Entry                { key = 1: string, value = 2: string }
//! RateLimitOverride    { requests_per_unit = 1: uint32, unit = 2: envoy.type.v3.RateLimitUnit }
//! RateLimitResponse    { overall_code = 1: Code, statuses = 2: repeated DescriptorStatus,
//!                        response_headers_to_add = 3 / request_headers_to_add = 4: repeated HeaderValue,
//!                        raw_body = 5: bytes, dynamic_metadata = 6: Struct (not declared), quota = 7: Quota }
//! DescriptorStatus     { code = 1, current_limit = 2: RateLimit, limit_remaining = 3: uint32,
//!                        duration_until_reset = 4: Duration, quota = 5: Quota }
//! RateLimit            { requests_per_unit = 1: uint32, unit = 2: Unit, name = 3: string }
//! HeaderValue          { key = 1: string, value = 2: string, raw_value = 3: bytes }   (envoy.config.core.v3)
//! Quota                { requests = 1: uint32, valid_until = 2: Timestamp (oneof), id = 3: string }
//! ```
//!
//! Skipped on purpose: `RateLimitResponse.dynamic_metadata` (field 6, a `google.protobuf.Struct`): nothing in
//! Gatewarden reads it, and a proto3 decoder skips a field it does not declare, so a server that sends it is
//! still decoded correctly (tested). Enums are kept as `i32` as prost does for proto3 (open enums): a value
//! added by a newer server decodes as its number instead of failing.

use prost::alloc::string::String;
use prost::alloc::vec::Vec;

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    /// Selects the server's configuration (e.g. `"envoy"`).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// The server limits on all of them; one over limit makes the whole request over limit.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// Units this request adds to each matched limit; 0 (the proto3 default, not sent) means 1.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`: hierarchical key/value entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// A limit the client asks the server to apply instead of its configured one.
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitOverride {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// An [`Unit`] (`envoy.type.v3.RateLimitUnit`, which defines only UNKNOWN..DAY).
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// A [`Code`]: OVER_LIMIT if any descriptor is over limit.
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    /// One per request descriptor, in request order.
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
    /// A body for the downstream client when the code is not OK.
    #[prost(bytes = "vec", tag = "5")]
    pub raw_body: Vec<u8>,
    // tag 6, dynamic_metadata (google.protobuf.Struct): not declared, skipped when decoding.
    #[prost(message, optional, tag = "7")]
    pub quota: Option<Quota>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    /// A [`Code`].
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
    #[prost(message, optional, tag = "5")]
    pub quota: Option<Quota>,
}

/// `RateLimitResponse.RateLimit`: the limit as configured on the server. Note the field order of the
/// proto: `name` is field 3, after `requests_per_unit` = 1 and `unit` = 2.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// A [`Unit`].
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `envoy.config.core.v3.HeaderValue`. A server may set `raw_value` instead of `value`; [`HeaderValue::value_bytes`]
/// gives whichever is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

impl HeaderValue {
    /// `raw_value` when it is set, else `value` (Envoy's rule for the two fields).
    pub fn value_bytes(&self) -> &[u8] {
        if self.raw_value.is_empty() {
            self.value.as_bytes()
        } else {
            &self.raw_value
        }
    }
}

/// `RateLimitResponse.Quota` (hidden as not implemented in Envoy; declared because a lease of units is what
/// the lease mode needs, and a server may send it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Quota {
    #[prost(uint32, tag = "1")]
    pub requests: u32,
    /// The `expiration_specifier` oneof has a single member, `valid_until = 2`.
    #[prost(message, optional, tag = "2")]
    pub valid_until: Option<Timestamp>,
    #[prost(string, tag = "3")]
    pub id: String,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// `RateLimitResponse.RateLimit.Unit`, a superset of `envoy.type.v3.RateLimitUnit` (same numbers for
/// UNKNOWN..DAY; the response adds MONTH and YEAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    Unknown = 0,
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
}

impl Code {
    /// The proto enum value name, as protojson writes it.
    pub fn proto_name(self) -> &'static str {
        match self {
            Code::Unknown => "UNKNOWN",
            Code::Ok => "OK",
            Code::OverLimit => "OVER_LIMIT",
        }
    }

    /// The inverse of [`Code::proto_name`].
    pub fn from_proto_name(name: &str) -> Option<Code> {
        match name {
            "UNKNOWN" => Some(Code::Unknown),
            "OK" => Some(Code::Ok),
            "OVER_LIMIT" => Some(Code::OverLimit),
            _ => None,
        }
    }
}

impl Unit {
    /// The proto enum value name, as protojson writes it.
    pub fn proto_name(self) -> &'static str {
        match self {
            Unit::Unknown => "UNKNOWN",
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Month => "MONTH",
            Unit::Year => "YEAR",
        }
    }

    /// The inverse of [`Unit::proto_name`].
    pub fn from_proto_name(name: &str) -> Option<Unit> {
        match name {
            "UNKNOWN" => Some(Unit::Unknown),
            "SECOND" => Some(Unit::Second),
            "MINUTE" => Some(Unit::Minute),
            "HOUR" => Some(Unit::Hour),
            "DAY" => Some(Unit::Day),
            "MONTH" => Some(Unit::Month),
            "YEAR" => Some(Unit::Year),
            _ => None,
        }
    }
}
