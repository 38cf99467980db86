//! The HTTP API (axum). Only this module knows HTTP and JSON bodies: handlers
//! validate requests into typed values, call the library, and map errors to
//! statuses in one place ([`ApiError`]). One file per resource.

pub mod error;
pub mod events;
pub mod features;
pub mod health;
mod layers;
pub mod models;
pub mod recommend;
pub mod stream;

use crate::change_feed::ChangeFeed;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::Decider;
use crate::features::store::FeatureStore;
use crate::features::FeatureSet;
use crate::ingest::producer::EventProducer;
use crate::model::Registry;
use arc_swap::ArcSwap;
use axum::extract::{DefaultBodyLimit, State};
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
pub use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tower::ServiceBuilder;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// How `POST /v1/events` ingests.
#[derive(Clone)]
pub enum Ingest {
    /// Embedded: applied to the store in-process.
    InProcess,
    /// Produced to Kafka; the consumer applies them.
    Kafka(EventProducer),
}

/// Shared, immutable handles of the running server.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub set: Arc<FeatureSet>,
    pub store: Arc<dyn FeatureStore>,
    pub decider: Arc<Decider>,
    pub registry: Arc<ArcSwap<Registry>>,
    pub ingest: Ingest,
    pub metrics: PrometheusHandle,
    /// Customers whose features changed (feeds `/v1/stream`).
    pub changes: ChangeFeed,
    /// "Now" for reads and requests.
    pub clock: Clock,
}

/// Builds the router. The layers around every route, outermost first: CORS,
/// the request id (a valid client one kept, else a uuid; echoed on the
/// response), the `http` span, the request metrics, the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/recommend", post(recommend::recommend))
        .route("/v1/events", post(events::post_events))
        .route("/v1/features/customer/{id}", get(features::customer))
        .route("/v1/features/item/{id}", get(features::item))
        .route("/v1/models", get(models::list))
        .route("/v1/stream", get(stream::stream))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(
            ServiceBuilder::new()
                .map_request(layers::drop_invalid_request_id)
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(layers::http_span)
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                )
                .layer(middleware::from_fn(layers::record_metrics))
                .layer(DefaultBodyLimit::max(layers::BODY_LIMIT_BYTES)),
        )
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Parses a JSON body, mapping syntax errors to a 400 that says where.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}"), None, None))
}

/// Extractor alias for the shared state.
pub type AppStateRef = State<Arc<AppState>>;
