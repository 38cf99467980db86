//! `GET /v1/features/customer/{id}` and `GET /v1/features/item/{id}`: the
//! current online features of one entity, as the model would see them now
//! (for a customer also the contact counters of the rules' capped actions).

use super::{ApiError, AppState, AppStateRef};
use crate::event::check_id;
use crate::features::aggregate::entity_values;
use crate::features::store::ReadQuery;
use crate::features::Entity;
use axum::extract::{Path, Query};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

pub async fn customer(
    state: AppStateRef,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_id("customer_id", &id)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("customer_id"), None))?;
    let session_id = q.get("session_id").map(String::as_str);
    customer_features(&state, &id, session_id).await.map(Json)
}

/// The body of `GET /v1/features/customer/{id}` (also the answer of an
/// applied `PUT /v1/customers/{id}`, with the latest session), with the
/// contact counters of the rules' capped actions.
pub(super) async fn customer_features(
    state: &AppState,
    id: &str,
    session_id: Option<&str>,
) -> Result<Value, ApiError> {
    let now = state.clock.now_ms();
    let keys = state.rules.load().cap_keys();
    let (read, counts) = state
        .store
        .read_with_offers(
            &ReadQuery {
                customer_id: id,
                session_id,
                item_ids: &[],
            },
            &keys,
            now,
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("feature store: {e}")))?;
    let offers: Vec<Value> = keys
        .iter()
        .zip(counts)
        .map(|(k, n)| json!({"action": k.action, "period_ms": k.period_ms, "count": n}))
        .collect();
    Ok(json!({
        "customer_id": id,
        "known": !read.customer.is_empty(),
        "as_of": now,
        "features": entity_values(&state.set, Entity::Customer, &read.customer, now),
        "session_id": read.session_id,
        "session": entity_values(&state.set, Entity::Session, &read.session, now),
        "offers": offers,
    }))
}

pub async fn item(state: AppStateRef, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    check_id("item_id", &id)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("item_id"), None))?;
    item_features(&state, &id).await.map(Json)
}

/// The body of `GET /v1/features/item/{id}` (also the answer of an applied
/// `PUT /v1/items/{id}`).
pub(super) async fn item_features(state: &AppState, id: &str) -> Result<Value, ApiError> {
    let items = state
        .store
        .read_items(&[id.to_string()])
        .await
        .map_err(|e| ApiError::Unavailable(format!("feature store: {e}")))?;
    let st = items.into_iter().next().unwrap_or_default();
    let now = state.clock.now_ms();
    Ok(json!({
        "item_id": id,
        "known": !st.is_empty(),
        "as_of": now,
        "features": entity_values(&state.set, Entity::Item, &st, now),
    }))
}
