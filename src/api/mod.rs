//! The HTTP API (axum). Only this module knows HTTP and JSON bodies: handlers
//! validate requests into typed values, call the library, and map errors to
//! statuses in one place ([`ApiError`]); every error body, whatever answered
//! it, is JSON `{"error": ...}`. One file per resource; `layers.rs` holds what
//! the tower layers around them need. The router is three groups, [`open`]
//! (health, and `/metrics` unless `security.metrics_admin`), [`client`] and
//! [`admin`], each client and admin route behind the access control of
//! `auth.rs` (API keys, 401/403) and `rate_limit.rs` (429); `cors.rs` says
//! which browser origins may call; `access.rs` builds these from
//! `[security]`. SECURITY.md states the rules.

pub mod access;
pub mod auth;
pub mod catalog;
pub mod cors;
pub mod error;
pub mod events;
pub mod features;
pub mod health;
mod layers;
pub mod models;
pub mod rate_limit;
pub mod recommend;
pub mod rules;
pub mod storefront;
pub mod stream;
pub mod triggers;

use crate::change_feed::ChangeFeed;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::Decider;
use crate::features::store::FeatureStore;
use crate::features::FeatureSet;
use crate::ingest::order::SeqCheck;
use crate::ingest::producer::EventProducer;
use crate::keys::Role;
use crate::model::Registry;
use crate::rules::RuleSet;
use crate::triggers::Triggers;
pub use access::{Access, AccessError};
use arc_swap::ArcSwap;
use auth::{Credentials, Gate};
use axum::extract::{DefaultBodyLimit, State};
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
pub use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// How `POST /v1/events` and the catalog PUTs ingest.
#[derive(Clone)]
pub enum Ingest {
    /// Embedded: applied to the store in-process.
    InProcess,
    /// Produced to Kafka (`events.<type>`, `catalog.*`); the consumer applies them.
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
    /// Customers whose features changed (feeds `/v1/stream`) and items whose
    /// catalog fields were written (drops them from every item cache).
    pub changes: ChangeFeed,
    /// "Now" for reads and requests.
    pub clock: Clock,
    /// The rule files serving (listed by `GET /v1/rules`).
    pub rules: Arc<ArcSwap<RuleSet>>,
    /// The per-customer `seq` check of events applied in-process.
    pub seq_check: SeqCheck,
    /// API keys, rate limits and CORS, from `[security]`.
    pub access: Access,
    /// The trigger files running (`GET /v1/triggers`), their timers'
    /// hooks on the apply path and the recent fired actions (`GET /v1/actions`).
    pub triggers: Arc<Triggers>,
}

/// Builds the router: the [`open`], [`client`] and [`admin`] routes, then
/// the layers around every route, outermost first: CORS (`security.cors_origins`);
/// the request id (a valid client `x-request-id` is kept, anything else
/// replaced by a uuid; echoed on the response); the `http` span; the
/// request metrics; every error body made JSON; the body limit
/// (`http.max_body_bytes`).
pub fn router(state: Arc<AppState>) -> Router {
    let http = &state.cfg.http;
    let body_limit = http.max_body_bytes;
    let cors = state.access.cors.clone();
    Router::new()
        .merge(open(&state))
        .merge(client(&state))
        .merge(admin(&state))
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
                .layer(middleware::map_response(move |r| {
                    layers::json_error_body(r, body_limit)
                }))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .layer(cors)
        .with_state(state)
}

/// `routes` behind the access rule of `role`, outermost first: who the
/// caller is ([`auth::identify`]), their rate limit ([`rate_limit::limit`]),
/// whether they may ([`auth::require`]). Route layers, so an unknown path
/// stays 404 whoever asks.
fn guarded(
    routes: Router<Arc<AppState>>,
    state: &AppState,
    role: Role,
    credentials: Credentials,
) -> Router<Arc<AppState>> {
    let gate = Gate {
        keys: state.access.keys.clone(),
        role,
        credentials,
    };
    routes
        .route_layer(middleware::from_fn_with_state(gate.clone(), auth::require))
        .route_layer(middleware::from_fn_with_state(
            state.access.limits.clone(),
            rate_limit::limit,
        ))
        .route_layer(middleware::from_fn_with_state(gate, auth::identify))
}

/// Routes anyone may call: liveness, readiness, (unless
/// `security.metrics_admin`) the metrics and (with `http.storefront`) the
/// demo storefront and the SDK's files.
fn open(state: &AppState) -> Router<Arc<AppState>> {
    let mut routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if !state.access.metrics_admin {
        routes = routes.route("/metrics", get(health::metrics));
    }
    if state.cfg.http.storefront {
        routes = routes.merge(storefront::routes());
    }
    routes.layer(layers::request_timeout(state.cfg.http.request_timeout()))
}

/// Routes for the storefront and apps (a client or admin key once client
/// keys are configured): recommendations, events, the change stream (the
/// key may come as `?token=`) and item features.
fn client(state: &AppState) -> Router<Arc<AppState>> {
    let http = &state.cfg.http;
    let timed = Router::new()
        .route("/v1/events", post(events::post_events))
        .route("/v1/features/item/{id}", get(features::item))
        .layer(layers::request_timeout(http.request_timeout()));
    // its budget (at most 60 s) bounds a recommendation, so the timeout is a
    // backstop past it; past `recommend_concurrency` in flight, one more
    // waits up to `recommend_queue_ms` for a slot, then is answered 503
    // (Retry-After); the wait counts against its budget
    let gate = layers::InFlight::new(
        http.recommend_concurrency,
        Duration::from_millis(http.recommend_queue_ms),
    );
    let limit = ServiceBuilder::new()
        .layer(layers::request_timeout(
            http.request_timeout()
                .max(Duration::from_millis(recommend::MAX_BUDGET_MS + 1000)),
        ))
        .layer(middleware::from_fn_with_state(gate, layers::admit));
    // a route layer wraps the whole method router, so its 405 keeps `Allow`
    let recommend = Router::new()
        .route("/v1/recommend", post(recommend::recommend))
        .route_layer(limit);
    // a WebSocket stays open as long as its client wants: no timeout
    let stream = Router::new().route("/v1/stream", get(stream::stream));
    let http_routes = Router::new().merge(timed).merge(recommend);
    guarded(http_routes, state, Role::Client, Credentials::Headers).merge(guarded(
        stream,
        state,
        Role::Client,
        Credentials::HeadersOrQuery,
    ))
}

/// Routes for operators (an admin key once any key is configured): what
/// serves now (`/v1/models`, `/v1/rules`, `/v1/triggers`), the recent
/// fired trigger actions (`/v1/actions`: personal data), catalog and profile writes
/// (`PUT /v1/items/{id}`, `PUT /v1/customers/{id}`), a named customer's
/// features and offer counts (`GET /v1/features/customer/{id}`: personal
/// data, so not a client route) and, with `security.metrics_admin`,
/// `/metrics`.
fn admin(state: &AppState) -> Router<Arc<AppState>> {
    let mut routes = Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/rules", get(rules::list))
        .route("/v1/triggers", get(triggers::list))
        .route("/v1/actions", get(triggers::actions))
        .route("/v1/items/{id}", put(catalog::put_item))
        .route("/v1/customers/{id}", put(catalog::put_customer))
        .route("/v1/features/customer/{id}", get(features::customer));
    if state.access.metrics_admin {
        routes = routes.route("/metrics", get(health::metrics));
    }
    let routes = routes.layer(layers::request_timeout(state.cfg.http.request_timeout()));
    guarded(routes, state, Role::Admin, Credentials::Headers)
}

/// Parses a JSON body, mapping syntax errors to a 400 that says where.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}"), None, None))
}

/// Extractor alias for the shared state.
pub type AppStateRef = State<Arc<AppState>>;
