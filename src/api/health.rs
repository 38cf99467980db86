//! `/healthz` (the process answers), `/readyz` (a model serves and the store
//! answers) and `/metrics` (Prometheus text).

use super::AppStateRef;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(state: AppStateRef) -> (StatusCode, Json<Value>) {
    let model = state.registry.load().any_serving();
    let store = match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("store did not answer within 1 s".to_string()),
    };
    let ready = model && store.is_ok();
    let body = json!({
        "ready": ready,
        "model_loaded": model,
        "store": state.store.describe(),
        "store_ok": store.is_ok(),
        "store_error": store.err(),
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

pub async fn metrics(state: AppStateRef) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
