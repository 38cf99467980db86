//! The apply step shared by the consumer and the embedded ingestion:
//! validated events → plans → one store call, with metrics and a span.

use crate::event::Event;
use crate::features::aggregate::plan_event;
use crate::features::store::{ApplyOutcome, FeatureStore, StoreError};
use crate::features::FeatureSet;
use std::time::Instant;

/// Errors applying events.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Applies validated events to the store in one call.
#[tracing::instrument(name = "apply_events", skip_all, fields(events = events.len()))]
pub async fn apply_events(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
) -> Result<ApplyOutcome, ApplyError> {
    let plans: Vec<_> = events.iter().map(|e| plan_event(set, e)).collect();
    let t = Instant::now();
    let out = store.apply(&plans).await.inspect_err(|_| {
        metrics::counter!(crate::metrics::STORE_ERRORS, "op" => "apply").increment(1);
    })?;
    metrics::histogram!(crate::metrics::APPLY_SECONDS).record(t.elapsed().as_secs_f64());
    let now = crate::now_ms();
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
    Ok(out)
}
