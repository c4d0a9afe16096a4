//! Canned simulator responses in the body shapes Customer.io uses (see customerio-api.md §3, §4,
//! §8): v1 `{"meta":{"errors":[…]}}`, v2 `{"errors":[{reason, field, message}]}`, App
//! `{"errors":[{detail, status}]}`.
//!
//! Owns only response construction; must not look at state or requests.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Api;

pub(crate) fn json(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// Track success: `200 {}`.
pub(crate) fn ok_empty() -> Response {
    json(200, json!({}))
}

/// v1 error: `{"meta":{"errors":["…"]}}`.
pub(crate) fn v1_error(status: u16, message: impl Into<String>) -> Response {
    json(status, json!({"meta": {"errors": [message.into()]}}))
}

/// v2 whole-request error: `{"errors":[{"reason","field","message"}]}`.
pub(crate) fn v2_error(
    status: u16,
    reason: &str,
    field: &str,
    message: impl Into<String>,
) -> Response {
    json(
        status,
        json!({"errors": [{"reason": reason, "field": field, "message": message.into()}]}),
    )
}

/// App API error: `{"errors":[{"detail","status"}]}` (status is a string, as in Customer.io).
pub(crate) fn app_error(status: u16, detail: impl Into<String>) -> Response {
    json(
        status,
        json!({"errors": [{"detail": detail.into(), "status": status.to_string()}]}),
    )
}

pub(crate) fn unauthorized(api: Api) -> Response {
    match api {
        Api::Track => json(401, json!({"meta": {"error": "Unauthorized request"}})),
        Api::App => app_error(401, "Unauthorized request"),
    }
}

pub(crate) fn rate_limited(detail: String, retry_after: Option<u64>) -> Response {
    with_retry_after(app_error(429, detail), retry_after)
}

/// The answer to a `fail_next` / `app_fault` / random 5xx: a realistic body for each status.
pub(crate) fn canned(api: Api, status: u16, retry_after: Option<u64>) -> Response {
    let response = match status {
        401 => unauthorized(api),
        429 => app_error(429, "rate limited (simulated)"),
        // Cloudflare-style HTML, so clients must cope with non-JSON error bodies.
        502 => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
        )
            .into_response(),
        s if s >= 500 => app_error(s, "internal error (simulated)"),
        s => match api {
            Api::Track => v1_error(s, "simulated failure"),
            Api::App => app_error(s, "simulated failure"),
        },
    };
    with_retry_after(response, retry_after)
}

fn with_retry_after(mut response: Response, retry_after: Option<u64>) -> Response {
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
