//! Wire compatibility of the rate limit service codec: protobuf bytes checked against encodings computed by
//! hand from the field numbers of Envoy's rls.proto / ratelimit.proto (tag byte = field number << 3 | wire
//! type: 0 varint, 2 length-delimited), and JSON checked against the shapes envoyproxy/ratelimit's `/json`
//! endpoint reads and writes (its `server_impl.go` comment and `server_impl_test.go` cases).

use gatewarden_rate_limit_policy::rls::{self, json, Code, DescriptorStatus, Duration, Entry, HeaderValue, RateLimit, RateLimitDescriptor};
use gatewarden_rate_limit_policy::rls::{RateLimitOverride, RateLimitRequest, RateLimitResponse, Unit};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(" ")
}

fn one_entry_request(hits_addend: u32) -> RateLimitRequest {
    RateLimitRequest { domain: "d".into(), descriptors: vec![RateLimitDescriptor::from_entries([("k", "v")])], hits_addend }
}

// ---- protobuf: request ----

#[test]
fn request_encodes_domain_descriptors_and_hits_addend_with_the_proto_field_numbers() {
    let expected = [
        0x0a, 0x01, b'd', // domain = 1, LEN 1, "d"
        0x12, 0x08, // descriptors = 2, LEN 8
        0x0a, 0x06, // RateLimitDescriptor.entries = 1, LEN 6
        0x0a, 0x01, b'k', // Entry.key = 1
        0x12, 0x01, b'v', // Entry.value = 2
        0x18, 0x03, // hits_addend = 3, varint 3
    ];
    let encoded = rls::encode_request(&one_entry_request(3));
    assert_eq!(hex(&encoded), hex(&expected));
}

#[test]
fn zero_hits_addend_is_not_sent_and_large_ones_are_multi_byte_varints() {
    let encoded = rls::encode_request(&one_entry_request(0));
    assert_eq!(hex(&encoded), "0a 01 64 12 08 0a 06 0a 01 6b 12 01 76", "hits_addend 0 is the proto3 default, omitted");
    let encoded = rls::encode_request(&one_entry_request(300));
    assert!(hex(&encoded).ends_with("18 ac 02"), "300 = varint ac 02, got {}", hex(&encoded));
}

#[test]
fn descriptor_limit_override_is_field_2_with_requests_per_unit_1_and_unit_2() {
    let mut request = one_entry_request(0);
    request.domain.clear();
    request.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 10, unit: Unit::Minute as i32 });
    let expected = [
        0x12, 0x0e, // descriptors = 2, LEN 14
        0x0a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // entries
        0x12, 0x04, // limit = 2, LEN 4
        0x08, 0x0a, // requests_per_unit = 1, 10
        0x10, 0x02, // unit = 2, MINUTE = 2
    ];
    assert_eq!(hex(&rls::encode_request(&request)), hex(&expected));
}

#[test]
fn several_descriptors_and_entries_keep_their_order_and_round_trip() {
    let request = RateLimitRequest {
        domain: "gatewarden".into(),
        descriptors: vec![
            RateLimitDescriptor::from_entries([("rule", "api"), ("remote_address", "10.0.0.1")]),
            RateLimitDescriptor {
                entries: vec![Entry { key: "tenant".into(), value: "ü-é".into() }],
                limit: Some(RateLimitOverride { requests_per_unit: 1000, unit: Unit::Hour as i32 }),
            },
        ],
        hits_addend: u32::MAX,
    };
    let decoded = rls::decode_request(&rls::encode_request(&request)).expect("own encoding decodes");
    assert_eq!(decoded, request);
}

// ---- protobuf: response ----

/// OVER_LIMIT with one status {OVER_LIMIT, {100/MINUTE "n"}, remaining 5, reset 42 s}, one response header,
/// raw body "hi".
const RESPONSE_BYTES: [u8; 31] = [
    0x08, 0x02, // overall_code = 1, OVER_LIMIT = 2
    0x12, 0x11, // statuses = 2, LEN 17
    0x08, 0x02, //   code = 1, OVER_LIMIT
    0x12, 0x07, //   current_limit = 2, LEN 7
    0x08, 0x64, //     requests_per_unit = 1, 100
    0x10, 0x02, //     unit = 2, MINUTE
    0x1a, 0x01, b'n', //     name = 3, "n"
    0x18, 0x05, //   limit_remaining = 3, 5
    0x22, 0x02, 0x08, 0x2a, //   duration_until_reset = 4, LEN 2, Duration.seconds = 1, 42
    0x1a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b', // response_headers_to_add = 3, HeaderValue{key "a", value "b"}
    0x2a, 0x02, // raw_body = 5, LEN 2 ...
];

fn expected_response() -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit { name: "n".into(), requests_per_unit: 100, unit: Unit::Minute as i32 }),
            limit_remaining: 5,
            duration_until_reset: Some(Duration { seconds: 42, nanos: 0 }),
            quota: None,
        }],
        response_headers_to_add: vec![HeaderValue { key: "a".into(), value: "b".into(), raw_value: vec![] }],
        request_headers_to_add: vec![],
        raw_body: b"hi".to_vec(),
        quota: None,
    }
}

fn response_bytes() -> Vec<u8> {
    let mut bytes = RESPONSE_BYTES.to_vec();
    bytes.extend_from_slice(b"hi");
    bytes
}

#[test]
fn response_decodes_from_hand_computed_bytes() {
    let decoded = rls::decode_response(&response_bytes()).expect("valid response");
    assert_eq!(decoded, expected_response());
    assert_eq!(decoded.overall_code(), Code::OverLimit);
    assert_eq!(decoded.statuses[0].current_limit.as_ref().map(|limit| limit.unit()), Some(Unit::Minute));
}

#[test]
fn response_encodes_to_the_same_bytes_fields_in_tag_order() {
    assert_eq!(hex(&rls::encode_response(&expected_response())), hex(&response_bytes()));
}

#[test]
fn request_headers_raw_value_and_quota_use_fields_4_3_and_7() {
    let bytes = [
        0x22, 0x07, 0x0a, 0x01, b'x', 0x1a, 0x02, 0xff, 0x00, // request_headers_to_add = 4, {key "x", raw_value = 3: ff 00}
        0x3a, 0x07, // quota = 7, LEN 7
        0x08, 0x0a, // requests = 1, 10
        0x12, 0x03, 0x08, 0x96, 0x01, // valid_until = 2, Timestamp.seconds = 150
    ];
    let decoded = rls::decode_response(&bytes).expect("valid response");
    assert_eq!(decoded.request_headers_to_add[0].key, "x");
    assert_eq!(decoded.request_headers_to_add[0].value_bytes(), &[0xff, 0x00]);
    let quota = decoded.quota.expect("quota decoded");
    assert_eq!((quota.requests, quota.valid_until.map(|t| t.seconds)), (10, Some(150)));
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let mut bytes = response_bytes();
    // dynamic_metadata = 6 (not declared): Struct{fields = 1: {key "x" -> Value{string_value = 3: "y"}}}
    bytes.extend_from_slice(&[0x32, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'x', 0x12, 0x03, 0x1a, 0x01, b'y']);
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]); // field 99, varint
    bytes.extend_from_slice(&[0xa1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // field 100, fixed64
    bytes.extend_from_slice(&[0xad, 0x06, 1, 2, 3, 4]); // field 101, fixed32
    bytes.extend_from_slice(&[0xb2, 0x06, 0x02, 0xde, 0xad]); // field 102, LEN

    // an unknown field inside a nested message: DescriptorStatus field 9 varint, in a second status
    bytes.extend_from_slice(&[0x12, 0x04, 0x08, 0x01, 0x48, 0x07]);
    let decoded = rls::decode_response(&bytes).expect("unknown fields skipped");
    let mut expected = expected_response();
    expected.statuses.push(DescriptorStatus { code: Code::Ok as i32, ..Default::default() });
    assert_eq!(decoded, expected);
}

#[test]
fn unknown_enum_numbers_are_kept_and_read_as_unknown() {
    let decoded = rls::decode_response(&[0x08, 0x07]).expect("open enum");
    assert_eq!(decoded.overall_code, 7);
    assert_eq!(decoded.overall_code(), Code::Unknown);
}

#[test]
fn empty_body_is_the_all_default_response_with_code_unknown() {
    let decoded = rls::decode_response(&[]).expect("empty is a valid proto3 message");
    assert_eq!(decoded.overall_code(), Code::Unknown);
}

#[test]
fn a_grpc_frame_header_in_front_is_rejected_not_misread() {
    // dispatch_grpc_call answers carry the bare message; a 5-byte frame header starts with tag byte 0.
    let mut framed = vec![0x00, 0x00, 0x00, 0x00, 0x21];
    framed.extend_from_slice(&response_bytes());
    let error = rls::decode_response(&framed).expect_err("field number 0 is invalid");
    assert!(error.is_protobuf(), "{error}");
}

#[test]
fn malformed_protobuf_is_an_error() {
    let cases: [(&str, &[u8]); 8] = [
        ("truncated length-delimited", &[0x0a, 0x05, b'a']),
        ("truncated varint", &[0x08, 0x80]),
        ("varint longer than 10 bytes", &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("wire type 7", &[0x0f, 0x00]),
        ("field number 0", &[0x00, 0x00]),
        ("known message field with varint wire type", &[0x2a, 0x00, 0x10, 0x01, 0x12, 0x02, 0x08]),
        ("length past the end", &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ("invalid utf-8 in a string", &[0x1a, 0x03, 0x0a, 0x01, 0xff]),
    ];
    for (what, bytes) in cases {
        let error = rls::decode_response(bytes).expect_err(what);
        assert!(error.is_protobuf() && error.to_string().starts_with("rate limit service: malformed protobuf"), "{what}: {error}");
    }
    let error = rls::decode_request(&[0x0a, 0x02, 0xc3, 0x28]).expect_err("invalid utf-8 domain");
    assert!(error.is_protobuf(), "{error}");
}

#[test]
fn every_prefix_and_arbitrary_bytes_decode_or_fail_without_panic() {
    let bytes = response_bytes();
    let mut failures = 0;
    for end in 0..bytes.len() {
        failures += usize::from(rls::decode_response(&bytes[..end]).is_err());
    }
    assert!(failures > 0, "cutting inside a field must fail somewhere");
    // Deterministic pseudo-random inputs (xorshift), including ones starting with valid tags.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20_000 {
        let mut input = Vec::new();
        let len = (round % 64) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            input.push(state as u8);
        }
        let _ = rls::decode_response(&input);
        let _ = rls::decode_request(&input);
        let _ = json::response_from_http(200, &input);
        let _ = json::request_from_json(&input);
    }
}

// ---- JSON ----

#[test]
fn json_request_uses_protojson_names_and_omits_zero_values() {
    let text = json::request_to_json(&one_entry_request(3));
    assert_eq!(text, r#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}]}],"hitsAddend":3}"#);
    assert_eq!(json::request_to_json(&one_entry_request(0)), r#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#);
    let mut with_limit = one_entry_request(0);
    with_limit.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 10, unit: Unit::Second as i32 });
    assert_eq!(
        json::request_to_json(&with_limit),
        r#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}],"limit":{"requestsPerUnit":10,"unit":"SECOND"}}]}"#
    );
}

#[test]
fn json_request_example_from_envoyproxy_ratelimit_parses() {
    // The curl example in server_impl.go: an entry without a value.
    let body = br#"{"domain": "dummy", "descriptors": [{"entries": [{"key": "perday"}]}]}"#;
    let request = json::request_from_json(body).expect("example parses");
    assert_eq!(request.domain, "dummy");
    assert_eq!(request.descriptors[0].entries, vec![Entry { key: "perday".into(), value: String::new() }]);
    assert_eq!(request.hits_addend, 0);
}

#[test]
fn json_request_accepts_snake_case_string_numbers_nulls_and_round_trips() {
    let body = br#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}],"limit":{"requests_per_unit":"10","unit":2}}],
                   "hits_addend":"7","extra":{"ignored":true}}"#;
    let request = json::request_from_json(body).expect("lenient input");
    assert_eq!(request.hits_addend, 7);
    assert_eq!(request.descriptors[0].limit, Some(RateLimitOverride { requests_per_unit: 10, unit: Unit::Minute as i32 }));
    assert_eq!(json::request_from_json(br#"{"domain":null,"descriptors":null,"hitsAddend":null}"#).expect("nulls").domain, "");
    let again = json::request_from_json(json::request_to_json(&request).as_bytes()).expect("own output parses");
    assert_eq!(again, request);
}

#[test]
fn json_answers_of_envoyproxy_ratelimit_test_suite_map_to_codes_and_errors() {
    // server_impl_test.go TestJsonHandler: (status, body) the handler writes.
    let ok = json::response_from_http(200, br#"{"overallCode":"OK"}"#).expect("200");
    assert_eq!(ok.overall_code(), Code::Ok);
    let over = json::response_from_http(429, br#"{"overallCode":"OVER_LIMIT"}"#).expect("429");
    assert_eq!(over.overall_code(), Code::OverLimit);
    let unknown = json::response_from_http(500, b"{}").expect("500 with {} is an UNKNOWN answer");
    assert_eq!(unknown.overall_code(), Code::Unknown);
    for (status, body) in [(400, &b"Bad Request\n"[..]), (500, b"Internal Server Error\n"), (503, b"{}"), (404, b"")] {
        let error = json::response_from_http(status, body).expect_err("no answer");
        assert_eq!(error.http_status_code(), Some(status), "{error}");
    }
}

#[test]
fn json_response_writes_what_envoyproxy_ratelimit_writes() {
    let over = RateLimitResponse { overall_code: Code::OverLimit as i32, ..Default::default() };
    assert_eq!(json::response_to_json(&over), r#"{"overallCode":"OVER_LIMIT"}"#);
    assert_eq!(json::response_to_json(&RateLimitResponse::default()), "{}");
    assert_eq!(
        json::response_to_json(&expected_response()),
        concat!(
            r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"name":"n","requestsPerUnit":100,"unit":"MINUTE"},"#,
            r#""limitRemaining":5,"durationUntilReset":"42s"}],"responseHeadersToAdd":[{"key":"a","value":"b"}],"rawBody":"aGk="}"#
        )
    );
}

#[test]
fn json_response_with_every_read_field_and_unknown_ones_parses() {
    // protojson output also inserts random spaces; dynamicMetadata and quota are ignored.
    let body = br#"{ "overallCode": "OVER_LIMIT",
        "statuses": [ {"code": "OK", "currentLimit": {"requestsPerUnit": 100, "unit": "MINUTE"}, "limitRemaining": 97,
                       "durationUntilReset": "1.500s"},
                      {"code": 2, "current_limit": {"name": "per-ip", "requests_per_unit": "5", "unit": "FORTNIGHT"},
                       "duration_until_reset": "0.000001s", "quota": {"requests": 3}} ],
        "responseHeadersToAdd": [{"key": "x-ratelimit-limit", "value": "100"}],
        "requestHeadersToAdd": [{"key": "x-raw", "rawValue": "_-8"}],
        "rawBody": "aGk", "dynamicMetadata": {"a": {"b": [1, null]}}, "quota": {"requests": 1, "validUntil": "2026-12-03T13:00:00Z"},
        "futureField": 1 }"#;
    let response = json::response_from_json(body).expect("parses");
    assert_eq!(response.overall_code(), Code::OverLimit);
    let first = &response.statuses[0];
    assert_eq!((first.code(), first.limit_remaining), (Code::Ok, 97));
    assert_eq!(first.duration_until_reset, Some(Duration { seconds: 1, nanos: 500_000_000 }));
    let second = &response.statuses[1];
    assert_eq!(second.code(), Code::OverLimit);
    assert_eq!(second.current_limit, Some(RateLimit { name: "per-ip".into(), requests_per_unit: 5, unit: Unit::Unknown as i32 }));
    assert_eq!(second.duration_until_reset, Some(Duration { seconds: 0, nanos: 1_000 }));
    assert_eq!(response.response_headers_to_add[0].value_bytes(), b"100");
    assert_eq!(response.request_headers_to_add[0].value_bytes(), &[0xff, 0xef], "URL-safe unpadded base64");
    assert_eq!(response.raw_body, b"hi", "unpadded standard base64");
    assert_eq!(response.quota, None);
}

#[test]
fn json_response_round_trips_through_protobuf() {
    let from_json = json::response_from_json(json::response_to_json(&expected_response()).as_bytes()).expect("own output");
    assert_eq!(from_json, expected_response());
    assert_eq!(rls::decode_response(&rls::encode_response(&from_json)).expect("protobuf"), from_json);
}

#[test]
fn malformed_json_is_an_error_naming_the_problem() {
    let cases: [(&[u8], &str); 10] = [
        (b"", "EOF"),
        (b"}", "expected value"),
        (b"[]", "expected a JSON object"),
        (br#"{"overallCode":"MAYBE"}"#, "unknown code \"MAYBE\""),
        (br#"{"statuses":[{"durationUntilReset":"soon"}]}"#, "invalid duration \"soon\""),
        (br#"{"statuses":[{"durationUntilReset":42}]}"#, "invalid type"),
        (br#"{"statuses":[{"limitRemaining":-1}]}"#, "did not match any variant"),
        (br#"{"statuses":[{"limitRemaining":"4294967296"}]}"#, "invalid uint32 \"4294967296\""),
        (br#"{"rawBody":"!!"}"#, "invalid base64"),
        (br#"{"overallCode":"OK"} trailing"#, "trailing characters"),
    ];
    for (body, needle) in cases {
        let error = json::response_from_json(body).expect_err(needle);
        assert!(error.is_json() && error.to_string().contains(needle), "{:?}: {error}", String::from_utf8_lossy(body));
    }
}
