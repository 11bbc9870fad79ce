//! `gatewarden-ratelimit`: a rate limit service for users who run none.
//!
//! ```text
//! Envoy (native ratelimit filter, or our filter's fleet mode) ─ gRPC ShouldRateLimit ─┐
//! Kong engine (our filter over HTTP/1.1) ─────────────────────── POST /json ──────────┤
//!                                                                                      ▼
//!                 RateLimiter ─ plan (limits from the policy file) ─ one Lua GCRA script ─ Redis
//! ```
//!
//! [`limits`] reads the policy file, [`check`] turns a request into Redis keys and back into an answer,
//! [`store`] talks to Redis, [`service`] is the check both protocols share, [`grpc`] and [`http`] serve it.

#![forbid(unsafe_code)]

pub mod check;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod service;
pub mod store;
