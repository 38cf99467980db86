//! The apply steps shared by the consumer and the in-process paths:
//! validated events → plans (with the triggers' timer changes) → one store
//! call → the triggers' checks ([`apply_events_with`]), and
//! validated catalog/profile writes → one store call ([`apply_catalog`]),
//! each with metrics and a span.

use crate::event::Event;
use crate::features::aggregate::plan_event;
use crate::features::store::{ApplyOutcome, FeatureStore, Group, GroupWrite, StoreError};
use crate::features::FeatureSet;
use crate::triggers::Triggers;
use std::time::Instant;

/// Errors applying events.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// Whether the store was unreachable for now ([`StoreError::is_transient`]):
    /// the same apply may succeed later. Otherwise the store refused it.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Store(e) => e.is_transient(),
        }
    }
}

/// Applies validated events to the store in one call, at the wall clock.
pub async fn apply_events(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
) -> Result<ApplyOutcome, ApplyError> {
    apply_events_at(set, store, events, crate::now_ms()).await
}

/// Applies validated events to the store in one call, written at `now`
/// (the writer's clock: windows and the dedupe memory are pruned relative
/// to it).
pub async fn apply_events_at(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
    now: i64,
) -> Result<ApplyOutcome, ApplyError> {
    apply_events_with(set, store, events, now, None).await
}

/// [`apply_events_at`] with the triggers: their timer changes written in
/// the same store call as the events' features, and the applied events
/// handed to their checks afterwards ([`Triggers`]).
#[tracing::instrument(name = "apply_events", skip_all, fields(events = events.len()))]
pub async fn apply_events_with(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
    now: i64,
    triggers: Option<&Triggers>,
) -> Result<ApplyOutcome, ApplyError> {
    let mut plans: Vec<_> = events.iter().map(|e| plan_event(set, e)).collect();
    if let Some(t) = triggers {
        t.plan_timers(events, &mut plans);
    }
    let t = Instant::now();
    let out = store.apply(&plans, now).await.inspect_err(|_| {
        metrics::counter!(crate::metrics::STORE_ERRORS, "op" => "apply").increment(1);
    })?;
    metrics::histogram!(crate::metrics::APPLY_SECONDS).record(t.elapsed().as_secs_f64());
    for (i, e) in events.iter().enumerate() {
        if out.duplicate.get(i).copied().unwrap_or(false) {
            metrics::counter!(crate::metrics::EVENTS_DUPLICATE, "type" => e.kind.as_str())
                .increment(1);
            continue;
        }
        metrics::counter!(crate::metrics::EVENTS_APPLIED, "type" => e.kind.as_str()).increment(1);
        metrics::histogram!(crate::metrics::EVENT_FRESHNESS)
            .record(((now - e.ts) as f64 / 1000.0).max(0.0));
    }
    if let Some(t) = triggers {
        t.after_apply(events, &plans, &out);
    }
    Ok(out)
}

/// Which path a catalog write came by (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogVia {
    /// `PUT /v1/items/{id}` or `PUT /v1/customers/{id}`, applied in-process.
    Http,
    /// A `catalog.*` message, applied by the consumer.
    Kafka,
}

impl CatalogVia {
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogVia::Http => "http",
            CatalogVia::Kafka => "kafka",
        }
    }
}

/// The entities whose static fields a catalog apply set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogOutcome {
    pub items: Vec<String>,
    pub customers: Vec<String>,
}

/// Applies validated catalog/profile writes (static fields only, no event
/// ids: each overwrites, so applying one twice is harmless) in one call.
#[tracing::instrument(name = "apply_catalog", skip_all, fields(writes = writes.len(), via = via.as_str()))]
pub async fn apply_catalog(
    store: &dyn FeatureStore,
    writes: &[GroupWrite],
    via: CatalogVia,
) -> Result<CatalogOutcome, ApplyError> {
    debug_assert!(
        writes.iter().all(|w| w.events.is_empty()),
        "catalog writes carry no event ids, so apply_groups never reports a conflict"
    );
    // static fields only: nothing depends on the writer's clock
    store
        .apply_groups(writes, crate::now_ms())
        .await
        .inspect_err(|_| {
            metrics::counter!(crate::metrics::STORE_ERRORS, "op" => "apply_catalog").increment(1);
        })?;
    let mut out = CatalogOutcome::default();
    for w in writes {
        let entity = match &w.group {
            Group::Item(id) => {
                out.items.push(id.clone());
                "item"
            }
            Group::Customer(id) => {
                out.customers.push(id.clone());
                "customer"
            }
        };
        metrics::counter!(crate::metrics::CATALOG_UPDATES, "entity" => entity, "via" => via.as_str())
            .increment(1);
    }
    Ok(out)
}
