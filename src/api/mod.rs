//! The HTTP API (axum). Only this module knows HTTP and JSON bodies: handlers
//! validate requests into typed values, call the library, and map errors to
//! statuses in one place ([`ApiError`]). One file per resource.

pub mod error;
pub mod events;
pub mod features;
pub mod health;
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
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
pub use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Instant;
use tower_http::cors::CorsLayer;

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

/// The request id of a request (from `x-request-id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Builds the router.
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
        .layer(middleware::from_fn(observe))
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Request id, metrics and a span for every request.
async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("http", method = %req.method(), route = %route, request_id = %id);
    let mut resp = {
        let _enter = span.enter();
        tracing::debug!("request");
        drop(_enter);
        tracing::Instrument::instrument(next.run(req), span.clone()).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Parses a JSON body, mapping syntax errors to a 400 that says where.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}"), None, None))
}

/// Extractor alias for the shared state.
pub type AppStateRef = State<Arc<AppState>>;
