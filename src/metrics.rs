//! Metric names, descriptions and the Prometheus recorder, in one place.
//! Labels stay bounded: routes, event types, model names, reasons; never
//! customer or item ids.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const HTTP_REQUESTS: &str = "nextbest_http_requests_total";
pub const HTTP_SECONDS: &str = "nextbest_http_request_duration_seconds";
pub const HTTP_RATE_LIMITED: &str = "nextbest_http_rate_limited_total";
pub const RECOMMEND_WAITING: &str = "nextbest_http_recommend_waiting";
pub const MODEL_SECONDS: &str = "nextbest_model_inference_seconds";
pub const MODEL_SCORES: &str = "nextbest_model_scores_total";
pub const MODEL_ERRORS: &str = "nextbest_model_errors_total";
pub const SHADOW_TOPK_OVERLAP: &str = "nextbest_shadow_topk_overlap";
pub const SHADOW_SKIPPED: &str = "nextbest_shadow_skipped_total";
pub const RECOMMEND_STAGE_SECONDS: &str = "nextbest_recommend_stage_seconds";
pub const CONSUMER_LAG: &str = "nextbest_consumer_lag";
pub const MODELS_SERVING: &str = "nextbest_models_serving";
pub const FALLBACKS: &str = "nextbest_recommend_fallbacks_total";
pub const EVENTS_CONSUMED: &str = "nextbest_events_consumed_total";
pub const EVENTS_APPLIED: &str = "nextbest_events_applied_total";
pub const EVENTS_DUPLICATE: &str = "nextbest_events_duplicate_total";
pub const EVENTS_ORDER: &str = "nextbest_event_sequence_total";
pub const EVENTS_DEAD_LETTERED: &str = "nextbest_events_dead_lettered_total";
pub const EVENTS_PRODUCED: &str = "nextbest_events_produced_total";
pub const EVENT_FRESHNESS: &str = "nextbest_event_freshness_seconds";
pub const STORE_ERRORS: &str = "nextbest_store_errors_total";
pub const APPLY_SECONDS: &str = "nextbest_store_apply_seconds";
pub const MEMORY_ENTITIES: &str = "nextbest_memory_store_entities";
pub const MEMORY_EVICTIONS: &str = "nextbest_memory_store_evictions_total";
pub const RULE_MATCHES: &str = "nextbest_rule_matches_total";
pub const RULE_ERRORS: &str = "nextbest_rule_errors_total";
pub const ACTIONS_OFFERED: &str = "nextbest_actions_offered_total";
pub const CONTACT_SUPPRESSED: &str = "nextbest_contact_suppressed_total";
pub const RULES_ACTIVE: &str = "nextbest_rules_active";
pub const RULE_FILES_REJECTED: &str = "nextbest_rule_files_rejected";
pub const CATALOG_UPDATES: &str = "nextbest_catalog_updates_total";
pub const CATALOG_REJECTED: &str = "nextbest_catalog_rejected_total";
pub const STREAM_CONNECTIONS: &str = "nextbest_stream_connections";
pub const STREAM_PUSHES: &str = "nextbest_stream_pushes_total";
pub const STREAM_DROPPED: &str = "nextbest_stream_clients_dropped_total";
pub const CHANGE_FEED_PUBLISHED: &str = "nextbest_change_feed_published_total";
pub const CHANGE_FEED_DROPPED: &str = "nextbest_change_feed_dropped_total";
pub const CHANGE_FEED_SUBSCRIBED: &str = "nextbest_change_feed_subscribed";
pub const TRIGGERS_ACTIVE: &str = "nextbest_triggers_active";
pub const TRIGGER_FILES_REJECTED: &str = "nextbest_trigger_files_rejected";
pub const TRIGGER_SCHEDULED: &str = "nextbest_trigger_scheduled_total";
pub const TRIGGER_CANCELLED: &str = "nextbest_trigger_cancelled_total";
pub const TRIGGER_FIRED: &str = "nextbest_trigger_fired_total";
pub const TRIGGER_SUPPRESSED: &str = "nextbest_trigger_suppressed_total";
pub const TRIGGER_DELIVERY_FAILED: &str = "nextbest_trigger_delivery_failed_total";
pub const TRIGGER_FIRE_LAG: &str = "nextbest_trigger_fire_lag_seconds";
pub const TRIGGER_TIMERS_PENDING: &str = "nextbest_trigger_timers_pending";
pub const TRIGGER_CHECKS_SKIPPED: &str = "nextbest_trigger_checks_skipped_total";
pub const TRIGGER_WEBHOOK_ATTEMPTS: &str = "nextbest_trigger_webhook_attempts_total";
pub const TRIGGER_WEBHOOK_DEAD_LETTERED: &str = "nextbest_trigger_webhook_dead_lettered_total";

/// Buckets of the fire lag: a timer should fire within 2 s of its deadline.
const FIRE_LAG_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(TRIGGER_FIRE_LAG.to_string()),
                        &FIRE_LAG_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(r) => {
                    let handle = r.handle();
                    if metrics::set_global_recorder(r).is_err() {
                        tracing::debug!("a metrics recorder was already installed");
                    }
                    describe();
                    handle
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets rejected; using defaults");
                    let r = PrometheusBuilder::new().build_recorder();
                    let handle = r.handle();
                    let _ = metrics::set_global_recorder(r);
                    handle
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    describe_histogram!(HTTP_SECONDS, Unit::Seconds, "HTTP request latency by route");
    describe_gauge!(
        RECOMMEND_WAITING,
        "/v1/recommend requests waiting for a slot (http.recommend_concurrency, up to http.recommend_queue_ms)"
    );
    describe_counter!(
        HTTP_RATE_LIMITED,
        "requests answered 429 by the rate limit, by route and caller (key name, or peer)"
    );
    describe_histogram!(
        MODEL_SECONDS,
        Unit::Seconds,
        "ONNX inference time per request by model, version and role (primary/shadow)"
    );
    describe_counter!(MODEL_SCORES, "rows scored by model, version and role");
    describe_counter!(MODEL_ERRORS, "failed inferences by model, version and role");
    describe_histogram!(
        SHADOW_TOPK_OVERLAP,
        "share of the primary model's top k also in a shadow model's top k"
    );
    describe_counter!(
        SHADOW_SKIPPED,
        "requests whose shadow scoring was skipped because all shadow slots were busy"
    );
    describe_histogram!(
        RECOMMEND_STAGE_SECONDS,
        Unit::Seconds,
        "time per recommend stage (features, matrix, model, rules)"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "messages behind the high watermark, by topic and partition"
    );
    describe_gauge!(
        MODELS_SERVING,
        "1 for each model version currently serving, by model and version"
    );
    describe_counter!(
        FALLBACKS,
        "recommendations answered with the fallback list, by reason"
    );
    describe_counter!(EVENTS_CONSUMED, "Kafka messages consumed, by event type");
    describe_counter!(EVENTS_APPLIED, "events applied to the store, by event type");
    describe_counter!(
        EVENTS_ORDER,
        "applied events with a `seq`, by what it says of the customer's sequence (in_order, gap: per missing number, reordered, duplicate, regression)"
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "events skipped as duplicates (same event_id)"
    );
    describe_counter!(
        EVENTS_DEAD_LETTERED,
        "messages sent to the dead-letter topic, by reason"
    );
    describe_counter!(
        EVENTS_PRODUCED,
        "events produced by POST /v1/events, by event type"
    );
    describe_histogram!(
        EVENT_FRESHNESS,
        Unit::Seconds,
        "apply time minus event time"
    );
    describe_counter!(STORE_ERRORS, "failed store calls, by operation");
    describe_counter!(
        RULE_MATCHES,
        "items a rule matched (its conditions held), by rule"
    );
    describe_counter!(
        RULE_ERRORS,
        "rule skips because a condition failed at run time, by rule: an item_when once per item it failed on, a when once per request"
    );
    describe_counter!(ACTIONS_OFFERED, "items returned, by action");
    describe_counter!(
        CONTACT_SUPPRESSED,
        "answers in which a rule was left out because the customer reached its action's contact cap (counted once per answer, when its `when` held), by rule"
    );
    describe_gauge!(RULES_ACTIVE, "rules serving");
    describe_gauge!(RULE_FILES_REJECTED, "rule files rejected by the last load");
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "time to apply one batch to the store"
    );
    describe_gauge!(
        MEMORY_ENTITIES,
        "entities held by the embedded store, by entity (customer/item)"
    );
    describe_counter!(
        MEMORY_EVICTIONS,
        "entities the embedded store dropped to stay within its limits (store.memory_max_entities, store.memory_max_sessions), least recently written first, by entity (customer/item/session)"
    );
    describe_counter!(
        CATALOG_UPDATES,
        "catalog/profile writes applied to the store, by entity (item/customer) and via (http/kafka)"
    );
    describe_counter!(
        CATALOG_REJECTED,
        "catalog/profile updates refused as invalid (a 400, or a dead letter), by entity and via"
    );
    describe_gauge!(STREAM_CONNECTIONS, "open /v1/stream WebSockets");
    describe_counter!(STREAM_PUSHES, "recommendations pushed over /v1/stream");
    describe_counter!(
        STREAM_DROPPED,
        "/v1/stream sockets closed by the server, by reason (slow: a push not taken within stream.send_timeout_ms)"
    );
    describe_counter!(
        CHANGE_FEED_PUBLISHED,
        "messages of change notices published to the cross-instance change feed (Redis), by kind (customers, items)"
    );
    describe_counter!(
        CHANGE_FEED_DROPPED,
        "batches of change notices not published (queue full or Redis unreachable), by kind (customers, items)"
    );
    describe_gauge!(
        CHANGE_FEED_SUBSCRIBED,
        "1 while this instance is subscribed to the cross-instance change feed"
    );
    describe_gauge!(TRIGGERS_ACTIVE, "triggers running");
    describe_gauge!(
        TRIGGER_FILES_REJECTED,
        "trigger files rejected by the last load"
    );
    describe_counter!(
        TRIGGER_SCHEDULED,
        "applied events that start (or restart) an inactivity trigger's episode, by trigger"
    );
    describe_counter!(
        TRIGGER_CANCELLED,
        "inactivity episodes cancelled, by trigger and by (event: a cancel_on event applied; condition: cancel_when held when due)"
    );
    describe_counter!(
        TRIGGER_FIRED,
        "trigger actions delivered (the broker acknowledged), by trigger"
    );
    describe_counter!(
        TRIGGER_SUPPRESSED,
        "trigger firings not sent, by trigger and reason (when, capped, error)"
    );
    describe_counter!(
        TRIGGER_DELIVERY_FAILED,
        "trigger actions not delivered (store or broker failed; timers are tried again), by trigger"
    );
    describe_histogram!(
        TRIGGER_FIRE_LAG,
        Unit::Seconds,
        "time from a trigger's deadline to its action's delivery, by kind"
    );
    describe_gauge!(
        TRIGGER_TIMERS_PENDING,
        "inactivity timers pending in the store's index (all instances)"
    );
    describe_counter!(
        TRIGGER_WEBHOOK_ATTEMPTS,
        "webhook attempts of trigger actions, by result (ok: answered 2xx; error: no connection, timeout or another status)"
    );
    describe_counter!(
        TRIGGER_WEBHOOK_DEAD_LETTERED,
        "trigger actions the webhook never took after all its attempts (sent to the dead-letter topic with Kafka)"
    );
    describe_counter!(
        TRIGGER_CHECKS_SKIPPED,
        "applied events not checked by threshold/sequence triggers because the checks' queue was full"
    );
}
