//! What every request goes through besides its handler: the request id rule,
//! the `http` span and the request metrics. The router (`api::router`)
//! stacks them from tower-http and tower; this file holds the parts those
//! crates leave to us. Nothing here reads a request body or knows a route's
//! logic.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tower_http::request_id::RequestId;

/// Largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 8 * 1024 * 1024;

/// The route label of a request: its route template or "unmatched", so
/// metric labels and span fields stay bounded.
fn route_of(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// Whether a client's request id is kept: non-empty, at most 128 printable
/// ASCII characters.
fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

/// Drops a client `x-request-id` that is not acceptable, so that
/// `SetRequestIdLayer` (which keeps any id it finds) generates one instead.
pub fn drop_invalid_request_id(mut req: Request) -> Request {
    if req
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !acceptable_request_id(v))
    {
        req.headers_mut().remove("x-request-id");
    }
    req
}

/// A request id as text. Accepted and generated ids are ASCII, so the
/// empty fallback is never taken.
pub fn request_id_str(id: &RequestId) -> &str {
    id.header_value().to_str().unwrap_or_default()
}

/// The `http` span of a request: method, route and request id.
pub fn http_span(req: &Request) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map_or("", request_id_str);
    tracing::info_span!("http", method = %req.method(), route = %route_of(req), request_id = %id)
}

/// Counts every request by route and status, and times it by route.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(&req).to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
