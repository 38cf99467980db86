//! `GET /v1/stream?customer_id=..[&k=..]`: a WebSocket that pushes a fresh
//! recommendation (the body `POST /v1/recommend` would answer, rules and
//! actions included) right after connecting and whenever that customer's
//! features change, on this instance or, with the Redis change feed, on any
//! (`change_feed.rs`).
//!
//! Bounded per socket: a burst of changes is one push at most every
//! `stream.coalesce_ms`; the socket holds at most one pending "changed"
//! mark, never a queue of notices; a push the client does not take within
//! `stream.send_timeout_ms` (with at most `stream.max_write_buffer_bytes`
//! queued past the OS buffers) closes the socket, so a slow client is
//! dropped, never buffered for. Clients are not expected to send anything
//! but close and ping frames: a message or frame over
//! `http.ws_max_message_bytes` closes the socket. Access (a client key, in
//! a header or the `token` query parameter) is checked before the upgrade
//! by `auth.rs`.

use super::{ApiError, AppState, AppStateRef};
use crate::change_feed::CustomerWatch;
use crate::decide::RecommendRequest;
use crate::event::check_id;
use crate::features::vector::ContextValues;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Query;
use axum::response::Response;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub async fn stream(
    state: AppStateRef,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let customer = q.get("customer_id").cloned().ok_or_else(|| {
        ApiError::bad_request(
            "query parameter `customer_id` is required",
            Some("customer_id"),
            None,
        )
    })?;
    check_id("customer_id", &customer)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("customer_id"), None))?;
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!("expected a WebSocket upgrade: {e}"), None, None)
    })?;
    let k = q
        .get("k")
        .and_then(|k| k.parse::<usize>().ok())
        .unwrap_or(state.cfg.recommend.default_k)
        .clamp(1, state.cfg.recommend.max_k);
    let max = state.cfg.http.ws_max_message_bytes.max(1024);
    // tungstenite wants its write buffer below the most it may hold
    let max_queued = state.cfg.stream.max_write_buffer_bytes.max(16 * 1024);
    let st = state.0.clone();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .write_buffer_size(max_queued / 4)
        .max_write_buffer_size(max_queued)
        .on_upgrade(move |socket| serve_socket(st, socket, customer, k)))
}

/// Why a socket ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed it or the connection broke.
    Client,
    /// The client did not take a push in time.
    Slow,
    /// The server is stopping (the feed is gone) or a push failed to encode.
    Server,
}

async fn serve_socket(state: Arc<AppState>, socket: WebSocket, customer: String, k: usize) {
    metrics::gauge!(crate::metrics::STREAM_CONNECTIONS).increment(1.0);
    let end = push_loop(&state, socket, &customer, k).await;
    metrics::gauge!(crate::metrics::STREAM_CONNECTIONS).decrement(1.0);
    if end == End::Slow {
        metrics::counter!(crate::metrics::STREAM_DROPPED, "reason" => "slow").increment(1);
        tracing::debug!("stream: slow client dropped");
    }
}

async fn push_loop(state: &AppState, mut socket: WebSocket, customer: &str, k: usize) -> End {
    let mut watch = state.changes.watch(customer);
    let coalesce = Duration::from_millis(state.cfg.stream.coalesce_ms);
    let send_timeout = Duration::from_millis(state.cfg.stream.send_timeout_ms.max(1));
    loop {
        // what changes after this mark gets another push
        watch.mark_seen();
        let text = match recommendation(state, customer, k).await {
            Some(t) => t,
            None => return End::Server,
        };
        match tokio::time::timeout(send_timeout, socket.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => metrics::counter!(crate::metrics::STREAM_PUSHES).increment(1),
            Ok(Err(_)) => return End::Client,
            Err(_) => return End::Slow,
        }
        let pushed = Instant::now();
        if let Some(end) = next_change(&mut socket, &mut watch).await {
            return end;
        }
        // at most one push per `coalesce`: later changes join this one
        if let Some(end) = read_until(&mut socket, pushed + coalesce).await {
            return end;
        }
    }
}

/// The customer's recommendation as the JSON of `/v1/recommend`.
async fn recommendation(state: &AppState, customer: &str, k: usize) -> Option<String> {
    let req = RecommendRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        customer_id: customer.to_string(),
        session_id: None,
        k,
        context: ContextValues::defaults(&state.set),
        candidates: None,
        budget_ms: state.cfg.recommend.default_budget_ms,
        queued: std::time::Duration::ZERO,
        model: None,
        now_ms: state.clock.now_ms(),
        explain: false,
    };
    let rec = state.decider.recommend(&req).await;
    serde_json::to_string(&rec).ok()
}

/// Waits for a change of the customer's features, answering the client's
/// frames meanwhile; `Some` if the socket should end instead.
async fn next_change(socket: &mut WebSocket, watch: &mut CustomerWatch) -> Option<End> {
    loop {
        tokio::select! {
            changed = watch.changed() => return (!changed).then_some(End::Server),
            msg = socket.recv() => if let Some(end) = client_frame(msg) {
                return Some(end);
            },
        }
    }
}

/// Reads the client's frames until `deadline`; `Some` if the socket should end.
async fn read_until(socket: &mut WebSocket, deadline: Instant) -> Option<End> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return None,
            msg = socket.recv() => if let Some(end) = client_frame(msg) {
                return Some(end);
            },
        }
    }
}

/// What a frame from the client means: close and errors end the socket;
/// anything else (pings are answered by axum) is ignored.
fn client_frame(msg: Option<Result<Message, axum::Error>>) -> Option<End> {
    match msg {
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Some(End::Client),
        Some(Ok(_)) => None,
    }
}
