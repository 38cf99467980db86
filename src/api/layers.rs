//! What requests go through besides their handler: the request id rule, the
//! `http` span, the request metrics, the request timeout, the admission gate
//! of `/v1/recommend` ([`InFlight`]: a bounded wait for a slot, then 503),
//! and the rewrite of any error response not yet JSON into the
//! contract's `{"error": ...}` body. The router (`api::router`) stacks these
//! with tower-http's and tower's layers; this file holds the parts those
//! crates leave to us. Nothing here reads a request body or knows a route's
//! logic.

use super::ApiError;
use axum::extract::State;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower_http::request_id::RequestId;
use tower_http::timeout::TimeoutLayer;

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

/// tower-http's request timeout. It answers 408, which no handler does, so
/// [`json_error_body`] can say what happened.
pub fn request_timeout(after: Duration) -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, after)
}

/// How long a request waited for its slot at the gate ([`InFlight`]); the
/// handler counts it against the request's budget.
#[derive(Debug, Clone, Copy)]
pub struct Queued(pub Duration);

/// The admission gate of `/v1/recommend`: at most `limit` requests in
/// flight; one more waits its turn (first come, first served) for up to
/// `wait`, and past that is answered 503 with `Retry-After`
/// (`http.recommend_concurrency`, `http.recommend_queue_ms`). A short wait
/// keeps a burst, or more clients than slots, served at the peak rate
/// instead of turning most of them away to retry at once.
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
}

impl InFlight {
    pub fn new(limit: usize, wait: Duration) -> Self {
        let limit = limit.max(1);
        InFlight {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            wait,
        }
    }
}

/// Counts a request waiting at the gate (`nextbest_http_recommend_waiting`)
/// until it is dropped, also when its client goes away meanwhile.
struct Waiting(metrics::Gauge);

impl Waiting {
    fn new() -> Self {
        let g = metrics::gauge!(crate::metrics::RECOMMEND_WAITING);
        g.increment(1.0);
        Waiting(g)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Runs the request once [`InFlight`] gives it a slot (held until its
/// response is built), with the time it waited, if it had to, as a
/// [`Queued`] extension.
pub async fn admit(State(gate): State<InFlight>, mut req: Request, next: Next) -> Response {
    let mut waited = None;
    let slot = match gate.slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) if gate.wait.is_zero() => None,
        Err(_) => {
            let _waiting = Waiting::new();
            let arrived = Instant::now();
            let slot = tokio::time::timeout(gate.wait, gate.slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok);
            waited = Some(arrived.elapsed());
            slot
        }
    };
    let Some(_slot) = slot else {
        return ApiError::Overloaded(format!(
            "overloaded: {} requests to this route are in flight \
             (http.recommend_concurrency) and none finished within {} ms \
             (http.recommend_queue_ms); retry shortly",
            gate.limit,
            gate.wait.as_millis()
        ))
        .into_response();
    };
    if let Some(w) = waited {
        req.extensions_mut().insert(Queued(w));
    }
    next.run(req).await
}

/// Makes every error response a JSON `{"error": ...}` body. Handlers answer
/// with [`ApiError`] already; this catches what the HTTP layer answers
/// itself (405 from routing, 413 from the body limit, 408 from the timeout,
/// any other axum rejection), keeping its status and headers (e.g. `Allow`).
/// `body_limit` is the body limit the 413 names.
pub async fn json_error_body(resp: Response, body_limit: usize) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // axum's rejection texts are one short line; anything longer is dropped
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = layer_message(status, String::from_utf8_lossy(&text).trim(), body_limit);
    let (json_parts, json_body) = ApiError::Http { status, message }
        .into_response()
        .into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}

/// The message of an error the HTTP layer answered itself.
fn layer_message(status: StatusCode, text: &str, body_limit: usize) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!(
                "request body is larger than the limit of {body_limit} bytes (http.max_body_bytes)"
            )
        }
        // axum adds `Allow` after this layer has run, so it is not seen here
        StatusCode::METHOD_NOT_ALLOWED => {
            "method not allowed on this route (see the Allow header)".into()
        }
        StatusCode::REQUEST_TIMEOUT => {
            "request did not complete within the request timeout (http.request_timeout_ms)".into()
        }
        _ if !text.is_empty() => lowercase_first(text),
        _ => lowercase_first(status.canonical_reason().unwrap_or("error")),
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
