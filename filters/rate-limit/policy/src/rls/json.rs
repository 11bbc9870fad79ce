//! The JSON shape of envoyproxy/ratelimit's HTTP/1.1 `POST /json` endpoint, for hosts without gRPC.
//!
//! The server (`src/server/server_impl.go`, `NewJsonHandler`) reads the body with `protojson.Unmarshal` into a
//! `RateLimitRequest` and writes the answer with `protojson.Marshal`, so the shape is the proto3 JSON mapping:
//!
//! ```text
//! POST /json  {"domain":"gatewarden","descriptors":[{"entries":[{"key":"rule","value":"api"}]}],"hitsAddend":3}
//! 200 application/json  {"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"requestsPerUnit":100,
//!                        "unit":"MINUTE"},"limitRemaining":97,"durationUntilReset":"42s"}]}
//! 429 application/json  {"overallCode":"OVER_LIMIT", ...}
//! 500 application/json  {}                                   (overall code UNKNOWN)
//! 400/500 text/plain    "Bad Request\n" / "Internal Server Error\n"  (unreadable request, service error)
//! ```
//!
//! Mapping rules followed on output (what protojson writes): lowerCamelCase names, fields at their zero value
//! omitted, enums by value name, `uint32` as a JSON number, `Duration` as `"<seconds>[.<3|6|9 digits>]s"`,
//! `bytes` as standard padded base64. On input, as protojson reads: the original snake_case names too, `null`
//! for "absent", enums by name or number, `uint32` as a number or a decimal string, base64 standard or URL-safe,
//! padded or not, and unknown fields ignored (a newer server may add fields; protojson itself rejects them, we
//! are lenient on purpose because rejecting would turn every answer into a failure).
//!
//! Not mapped: `dynamicMetadata` and `quota` (ignored on input, never written): nothing here reads them, Envoy
//! marks `quota` not implemented and envoyproxy/ratelimit does not set it. An unknown `code` name is an error
//! (an answer we cannot read must go to `failure_mode`); an unknown unit name reads as `UNKNOWN` (the unit is
//! informational).

use super::{Code, DescriptorStatus, Duration, Entry, HeaderValue, RateLimit, RateLimitDescriptor, RateLimitOverride, RateLimitRequest};
use super::{RateLimitResponse, RlsError, Unit};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The request as the JSON body of `POST /json`.
pub fn request_to_json(request: &RateLimitRequest) -> String {
    let json = JsonRequest {
        domain: request.domain.clone(),
        descriptors: request.descriptors.iter().map(JsonDescriptor::from).collect(),
        hits_addend: request.hits_addend,
    };
    // Serializing these plain structs (strings, numbers, vectors) cannot fail; an empty object is the
    // harmless answer should it ever do so.
    serde_json::to_string(&json).unwrap_or_else(|_| String::from("{}"))
}

/// Reads a JSON request body (the server side, and tests).
pub fn request_from_json(body: &[u8]) -> Result<RateLimitRequest, RlsError> {
    let ObjectOnly(json) = serde_json::from_slice::<ObjectOnly<JsonRequest>>(body).map_err(RlsError::json)?;
    Ok(RateLimitRequest {
        domain: json.domain,
        descriptors: json.descriptors.into_iter().map(RateLimitDescriptor::from).collect(),
        hits_addend: json.hits_addend,
    })
}

/// The response as the JSON body the endpoint writes (the server side, and tests).
pub fn response_to_json(response: &RateLimitResponse) -> String {
    let json = JsonResponse {
        overall_code: JsonCode(response.overall_code),
        statuses: response.statuses.iter().map(JsonStatus::from).collect(),
        response_headers_to_add: response.response_headers_to_add.iter().map(JsonHeader::from).collect(),
        request_headers_to_add: response.request_headers_to_add.iter().map(JsonHeader::from).collect(),
        raw_body: response.raw_body.clone(),
    };
    serde_json::to_string(&json).unwrap_or_else(|_| String::from("{}"))
}

/// The HTTP status `POST /json` answers `response` with, as envoyproxy/ratelimit's `NewJsonHandler` does: 200 for
/// OK, 429 for OVER_LIMIT, 500 for anything else (UNKNOWN). The body is [`response_to_json`] in each case.
pub fn http_status(response: &RateLimitResponse) -> u16 {
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => 200,
        Ok(Code::OverLimit) => 429,
        _ => 500,
    }
}

/// Reads a JSON response body.
pub fn response_from_json(body: &[u8]) -> Result<RateLimitResponse, RlsError> {
    let ObjectOnly(json) = serde_json::from_slice::<ObjectOnly<JsonResponse>>(body).map_err(RlsError::json)?;
    Ok(RateLimitResponse {
        overall_code: json.overall_code.0,
        statuses: json.statuses.into_iter().map(DescriptorStatus::from).collect(),
        response_headers_to_add: json.response_headers_to_add.into_iter().map(HeaderValue::from).collect(),
        request_headers_to_add: json.request_headers_to_add.into_iter().map(HeaderValue::from).collect(),
        raw_body: json.raw_body,
        quota: None,
    })
}

/// The HTTP answer of `POST /json`: 200 and 429 carry a JSON response (the body's code decides, not the
/// status), 500 carries `{}` (code UNKNOWN) when the service answered UNKNOWN and text when it failed; any
/// other status, or a 500 that is not JSON, is an error carrying that status.
pub fn response_from_http(status: u16, body: &[u8]) -> Result<RateLimitResponse, RlsError> {
    match status {
        200 | 429 => response_from_json(body),
        500 => response_from_json(body).map_err(|_| RlsError::http_status(status)),
        _ => Err(RlsError::http_status(status)),
    }
}

/// A body must be a JSON object: serde's derived structs also accept an array of the fields in order, which
/// protojson does not, so the top level is read as a map explicitly.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ObjectOnly<T>, D::Error> {
        struct ObjectVisitor<T>(core::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for ObjectVisitor<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ObjectOnly<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(core::marker::PhantomData))
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// protojson reads `null` as "field absent": the zero value.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A `uint32`: a JSON number, or a decimal string as protojson also accepts; `null` is 0.
fn uint32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(u32),
        String(String),
    }
    match Option::<NumberOrString>::deserialize(deserializer)? {
        None => Ok(0),
        Some(NumberOrString::Number(number)) => Ok(number),
        Some(NumberOrString::String(text)) => text.parse().map_err(|_| de::Error::custom(format_args!("invalid uint32 {text:?}"))),
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonRequest {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    domain: String,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, alias = "hits_addend", deserialize_with = "uint32", skip_serializing_if = "is_zero")]
    hits_addend: u32,
}

#[derive(Serialize, Deserialize, Default)]
struct JsonDescriptor {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    entries: Vec<JsonEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<JsonLimit>,
}

#[derive(Serialize, Deserialize, Default)]
struct JsonEntry {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    key: String,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    value: String,
}

/// `RateLimitOverride` and `RateLimit` share this shape (`name` is absent from the override).
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonLimit {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, alias = "requests_per_unit", deserialize_with = "uint32", skip_serializing_if = "is_zero")]
    requests_per_unit: u32,
    #[serde(default, skip_serializing_if = "JsonUnit::is_zero")]
    unit: JsonUnit,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonResponse {
    #[serde(default, alias = "overall_code", skip_serializing_if = "JsonCode::is_zero")]
    overall_code: JsonCode,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    statuses: Vec<JsonStatus>,
    #[serde(default, alias = "response_headers_to_add", deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    response_headers_to_add: Vec<JsonHeader>,
    #[serde(default, alias = "request_headers_to_add", deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    request_headers_to_add: Vec<JsonHeader>,
    #[serde(default, alias = "raw_body", with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    raw_body: Vec<u8>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonStatus {
    #[serde(default, skip_serializing_if = "JsonCode::is_zero")]
    code: JsonCode,
    #[serde(default, alias = "current_limit", skip_serializing_if = "Option::is_none")]
    current_limit: Option<JsonLimit>,
    #[serde(default, alias = "limit_remaining", deserialize_with = "uint32", skip_serializing_if = "is_zero")]
    limit_remaining: u32,
    #[serde(default, alias = "duration_until_reset", skip_serializing_if = "Option::is_none")]
    duration_until_reset: Option<JsonDuration>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonHeader {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    key: String,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    value: String,
    #[serde(default, alias = "raw_value", with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    raw_value: Vec<u8>,
}

/// A `Code` by name (`"OVER_LIMIT"`) or number; an unknown name is an error, an unknown number is kept.
#[derive(Default, Clone, Copy)]
struct JsonCode(i32);

impl JsonCode {
    fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl Serialize for JsonCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match Code::try_from(self.0) {
            Ok(code) => serializer.serialize_str(code.proto_name()),
            Err(_) => serializer.serialize_i32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for JsonCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonCode, D::Error> {
        match Option::<NameOrNumber>::deserialize(deserializer)? {
            None => Ok(JsonCode(0)),
            Some(NameOrNumber::Number(number)) => Ok(JsonCode(number)),
            Some(NameOrNumber::Name(name)) => Code::from_proto_name(&name)
                .map(|code| JsonCode(code as i32))
                .ok_or_else(|| de::Error::custom(format_args!("unknown code {name:?}"))),
        }
    }
}

/// A `Unit` by name or number; an unknown name reads as UNKNOWN.
#[derive(Default, Clone, Copy)]
struct JsonUnit(i32);

impl JsonUnit {
    fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl Serialize for JsonUnit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match Unit::try_from(self.0) {
            Ok(unit) => serializer.serialize_str(unit.proto_name()),
            Err(_) => serializer.serialize_i32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for JsonUnit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonUnit, D::Error> {
        Ok(match Option::<NameOrNumber>::deserialize(deserializer)? {
            None => JsonUnit(0),
            Some(NameOrNumber::Number(number)) => JsonUnit(number),
            Some(NameOrNumber::Name(name)) => JsonUnit(Unit::from_proto_name(&name).map_or(0, |unit| unit as i32)),
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NameOrNumber {
    Number(i32),
    Name(String),
}

/// A `google.protobuf.Duration` in its JSON form, `"1.500s"`.
#[derive(Default, Clone, Copy)]
struct JsonDuration(Duration);

impl Serialize for JsonDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for JsonDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonDuration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(JsonDuration).ok_or_else(|| de::Error::custom(format_args!("invalid duration {text:?}")))
    }
}

/// protojson's form: seconds, then 0, 3, 6 or 9 fraction digits, then `s`; negative with a leading `-`.
fn format_duration(duration: Duration) -> String {
    let negative = duration.seconds < 0 || duration.nanos < 0;
    let seconds = duration.seconds.unsigned_abs();
    let nanos = duration.nanos.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    if nanos == 0 {
        return format!("{sign}{seconds}s");
    }
    // Nine digits, then whole groups of three trailing zeros dropped: 3, 6 or 9 digits remain.
    let digits = format!("{nanos:09}");
    format!("{sign}{seconds}.{}s", digits.trim_end_matches("000"))
}

/// Reads `[-]<digits>[.<1 to 9 digits>]s`; anything else is `None`.
fn parse_duration(text: &str) -> Option<Duration> {
    let body = text.strip_suffix('s')?;
    let (negative, body) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (whole, fraction) = match body.split_once('.') {
        Some((_, "")) => return None,
        Some((whole, fraction)) => (whole, fraction),
        None => (body, ""),
    };
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let mut nanos: i32 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    for _ in fraction.len()..9 {
        nanos = nanos.checked_mul(10)?;
    }
    Some(if negative { Duration { seconds: -seconds, nanos: -nanos } } else { Duration { seconds, nanos } })
}

/// `bytes` fields: standard padded base64 out; standard or URL-safe, padded or not, in; `null` is empty.
mod base64_bytes {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use serde::de::{self, Deserializer};
    use serde::{Deserialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(Vec::new());
        };
        let unpadded = text.trim_end_matches('=');
        let engine = if unpadded.contains(['-', '_']) { &URL_SAFE_NO_PAD } else { &STANDARD_NO_PAD };
        engine.decode(unpadded).map_err(|_| de::Error::custom("invalid base64"))
    }
}

impl From<&RateLimitDescriptor> for JsonDescriptor {
    fn from(descriptor: &RateLimitDescriptor) -> JsonDescriptor {
        JsonDescriptor {
            entries: descriptor.entries.iter().map(|entry| JsonEntry { key: entry.key.clone(), value: entry.value.clone() }).collect(),
            limit: descriptor.limit.as_ref().map(|limit| JsonLimit {
                name: String::new(),
                requests_per_unit: limit.requests_per_unit,
                unit: JsonUnit(limit.unit),
            }),
        }
    }
}

impl From<JsonDescriptor> for RateLimitDescriptor {
    fn from(json: JsonDescriptor) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: json.entries.into_iter().map(|entry| Entry { key: entry.key, value: entry.value }).collect(),
            limit: json.limit.map(|limit| RateLimitOverride { requests_per_unit: limit.requests_per_unit, unit: limit.unit.0 }),
        }
    }
}

impl From<&DescriptorStatus> for JsonStatus {
    fn from(status: &DescriptorStatus) -> JsonStatus {
        JsonStatus {
            code: JsonCode(status.code),
            current_limit: status.current_limit.as_ref().map(|limit| JsonLimit {
                name: limit.name.clone(),
                requests_per_unit: limit.requests_per_unit,
                unit: JsonUnit(limit.unit),
            }),
            limit_remaining: status.limit_remaining,
            duration_until_reset: status.duration_until_reset.map(JsonDuration),
        }
    }
}

impl From<JsonStatus> for DescriptorStatus {
    fn from(json: JsonStatus) -> DescriptorStatus {
        DescriptorStatus {
            code: json.code.0,
            current_limit: json.current_limit.map(|limit| RateLimit {
                name: limit.name,
                requests_per_unit: limit.requests_per_unit,
                unit: limit.unit.0,
            }),
            limit_remaining: json.limit_remaining,
            duration_until_reset: json.duration_until_reset.map(|duration| duration.0),
            quota: None,
        }
    }
}

impl From<&HeaderValue> for JsonHeader {
    fn from(header: &HeaderValue) -> JsonHeader {
        JsonHeader { key: header.key.clone(), value: header.value.clone(), raw_value: header.raw_value.clone() }
    }
}

impl From<JsonHeader> for HeaderValue {
    fn from(json: JsonHeader) -> HeaderValue {
        HeaderValue { key: json.key, value: json.value, raw_value: json.raw_value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_follows_the_overall_code_and_round_trips_through_response_from_http() {
        for (code, status) in [(Code::Ok, 200), (Code::OverLimit, 429), (Code::Unknown, 500)] {
            let response = RateLimitResponse { overall_code: code as i32, ..Default::default() };
            assert_eq!(http_status(&response), status, "{code:?}");
            let read = response_from_http(status, response_to_json(&response).as_bytes()).unwrap();
            assert_eq!(read.overall_code, code as i32, "{code:?} read back");
        }
        assert_eq!(http_status(&RateLimitResponse { overall_code: 7, ..Default::default() }), 500, "an unknown code");
    }

    #[test]
    fn durations_use_protojson_fraction_widths() {
        let cases = [
            (Duration { seconds: 42, nanos: 0 }, "42s"),
            (Duration { seconds: 1, nanos: 500_000_000 }, "1.500s"),
            (Duration { seconds: 0, nanos: 1_000 }, "0.000001s"),
            (Duration { seconds: 0, nanos: 1 }, "0.000000001s"),
            (Duration { seconds: -3, nanos: -250_000_000 }, "-3.250s"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text, "format {duration:?}");
            assert_eq!(parse_duration(text), Some(duration), "parse {text}");
        }
        assert_eq!(parse_duration("1.5s"), Some(Duration { seconds: 1, nanos: 500_000_000 }));
        for bad in ["", "s", "1", "1.s", ".5s", "1.0000000001s", "a1s", "1e3s", "--1s", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?} must be rejected");
        }
    }
}
