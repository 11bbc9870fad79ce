//! HTTP/1.1: envoyproxy/ratelimit's `POST /json` (for hosts without gRPC), `GET /healthcheck` (200 `OK` when
//! Redis answers a `PING`, 500 otherwise) and `GET /metrics` (Prometheus text).
//!
//! `/json` answers 200 (OK) or 429 (OVER_LIMIT) with the protojson response, 400 `Bad Request` for a body
//! that is not a request, 500 `Internal Server Error` when Redis is unavailable (the client applies its
//! failure mode). Public bodies are fixed; the reason goes to the log.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gatewarden_rate_limit_policy::rls::{json, JSON_PATH};

use crate::service::{CheckError, RateLimiter};

/// Request bodies above this are refused (413) before they are read whole.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(limiter: Arc<RateLimiter>) -> Router {
    Router::new()
        .route(JSON_PATH, post(check_json))
        .route("/healthcheck", get(healthcheck))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(limiter)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn check_json(State(limiter): State<Arc<RateLimiter>>, body: Bytes) -> Response {
    let request = match json::request_from_json(&body) {
        Ok(request) => request,
        Err(error) => {
            limiter.counters.invalid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::warn!("invalid /json body: {error}");
            return text(StatusCode::BAD_REQUEST, "Bad Request\n");
        }
    };
    match limiter.should_rate_limit(&request).await {
        Ok(response) => {
            let status = StatusCode::from_u16(json::http_status(&response)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, "application/json")], json::response_to_json(&response)).into_response()
        }
        Err(CheckError::BadRequest(_)) => text(StatusCode::BAD_REQUEST, "Bad Request\n"),
        Err(CheckError::Unavailable(_)) => text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"),
    }
}

async fn healthcheck(State(limiter): State<Arc<RateLimiter>>) -> Response {
    match limiter.healthy().await {
        Ok(()) => text(StatusCode::OK, "OK"),
        Err(error) => {
            log::warn!("healthcheck: {error}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "redis unavailable\n")
        }
    }
}

async fn metrics(State(limiter): State<Arc<RateLimiter>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], limiter.counters.render()).into_response()
}
