//! `GET /v1/stream?customer_id=..`: a WebSocket that pushes a fresh
//! recommendation whenever that customer's features change on this instance
//! (and one right after connecting). Clients are not expected to send
//! anything but close and ping frames: a message or frame over
//! `http.ws_max_message_bytes` closes the socket. Access (a client key, in
//! a header or the `token` query parameter) is checked before the upgrade
//! by `auth.rs`.

use super::{ApiError, AppState, AppStateRef};
use crate::change_feed::Change;
use crate::decide::RecommendRequest;
use crate::event::check_id;
use crate::features::vector::ContextValues;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Query;
use axum::response::Response;
use std::collections::HashMap;
use std::sync::Arc;

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
    let st = state.0.clone();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| push_loop(st, socket, customer, k)))
}

async fn push_loop(state: Arc<AppState>, mut socket: WebSocket, customer: String, k: usize) {
    let mut changes = state.changes.subscribe();
    loop {
        let req = RecommendRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            customer_id: customer.clone(),
            session_id: None,
            k,
            context: ContextValues::defaults(&state.set),
            candidates: None,
            budget_ms: state.cfg.recommend.default_budget_ms,
            model: None,
            now_ms: state.clock.now_ms(),
            explain: false,
        };
        let rec = state.decider.recommend(&req).await;
        let Ok(text) = serde_json::to_string(&rec) else {
            return;
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = changes.next() => match changed {
                    Some(Change::Customer(c)) if c == customer => break,
                    Some(Change::Customer(_)) => continue,
                    Some(Change::Lagged) => break,
                    None => return,
                },
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                },
            }
        }
    }
}
