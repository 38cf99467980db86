//! `PUT /v1/items/{id}` and `PUT /v1/customers/{id}` (admin routes): change
//! an item's catalog fields or a customer's profile while serving.
//!
//! The body is a JSON object of `static` fields keyed by their file column,
//! as `nextbest backfill --items/--customers` reads them (`{"price": 59.9,
//! "in_stock": 0}`), converted by `features::catalog`, the backfill's own
//! conversion. It is a partial update: only the fields present (and not
//! `null`) are set. An unknown field, a value of the wrong type or a bad id
//! is a 400 naming the field; an object that sets nothing is a 400.
//!
//! Where it goes:
//! - no Kafka configured: applied to the store in-process, then `200` with
//!   the entity's current features (the body of `GET /v1/features/...`);
//!   the item is dropped from this instance's item cache at once, and from
//!   the other instances' as the change feed's notice reaches them
//!   (`ChangeFeed::publish_items`);
//! - Kafka configured: produced to `catalog.items` / `catalog.customers`
//!   (key = id, value = the body) and `202 {"accepted": 1, "topic": ...}`
//!   once the broker acknowledged it; the consumer group applies it like
//!   any catalog message. One writer path, so a PUT and a feed message for
//!   the same id are applied in the order the broker took them.

use super::features::{customer_features, item_features};
use super::{ApiError, AppState, AppStateRef, Ingest};
use crate::features::catalog::StaticColumns;
use crate::features::Entity;
use crate::ingest::catalog::CatalogTopics;
use crate::ingest::{apply_catalog, CatalogVia};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

pub async fn put_item(
    state: AppStateRef,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    put(&state, Entity::Item, &id, &body).await
}

pub async fn put_customer(
    state: AppStateRef,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    put(&state, Entity::Customer, &id, &body).await
}

#[tracing::instrument(name = "catalog_put", skip_all, fields(entity = ?entity))]
async fn put(
    state: &AppState,
    entity: Entity,
    id: &str,
    body: &[u8],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let cols = StaticColumns::of(&state.set, entity);
    let write = cols.parse_update(id, body).map_err(|e| {
        metrics::counter!(crate::metrics::CATALOG_REJECTED, "entity" => cols.entity_name(), "via" => CatalogVia::Http.as_str())
            .increment(1);
        ApiError::bad_request(e.to_string(), e.column(), None)
    })?;
    match &state.ingest {
        Ingest::InProcess => {
            let out = apply_catalog(state.store.as_ref(), &[write], CatalogVia::Http)
                .await
                .map_err(|e| ApiError::Unavailable(format!("update not stored: {e}")))?;
            // drops the items from every instance's item cache
            state.changes.publish_items(&out.items);
            state.changes.publish(&out.customers);
            let current = match entity {
                Entity::Item => item_features(state, id).await?,
                _ => customer_features(state, id, None).await?,
            };
            Ok((StatusCode::OK, Json(current)))
        }
        Ingest::Kafka(p) => {
            let topic = CatalogTopics::topic(entity);
            p.send_catalog(topic, id, body)
                .await
                .map_err(|e| ApiError::Unavailable(format!("update not accepted: {e}")))?;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "accepted": 1, "topic": topic })),
            ))
        }
    }
}
