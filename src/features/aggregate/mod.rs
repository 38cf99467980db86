//! The pure aggregation code: an event becomes a [`Plan`] of updates, updates
//! change an [`EntityState`], and a state read at a time gives feature values.
//!
//! Shared by the streaming consumer, the embedded store, the Redis store (whose
//! Lua script mirrors [`apply_update`] exactly), the backfill and the training
//! export. It knows nothing of Redis, Kafka or HTTP, and never reads a clock:
//! "now" is always an argument.
//!
//! Every update commutes: counts and sums add into time buckets, `last` keeps
//! the value with the greatest `(ts, seq)`, recent lists keep the `cap`
//! members with the latest times, resets win by time. Applying the same set
//! of events in any order gives the same state (up to float rounding of sums),
//! which is what lets stream and backfill agree on out-of-order histories.
//! Idempotence against redelivery comes from event-id dedupe in the stores.
//!
//! One step a file: `plan` ([`plan_event`]: event → [`Plan`] of [`Update`]s,
//! and the unnamed [`Change`]s the backfill folds), `state` ([`EntityState`]:
//! what an entity holds), `update` ([`apply_update`]: update → state) and
//! `read` ([`feature_value`]: state and now → value). Everything public is
//! re-exported here: callers name `aggregate::…`, not the files.

mod plan;
mod read;
mod state;
mod update;

pub(crate) use plan::PropVal;
pub use plan::{
    plan_event, visit_event, visit_event_with, Change, FeatureName, Plan, Props, Text, Update,
    MAX_CONTRIBUTION,
};
pub use read::{entity_values, feature_value, numeric_value, FeatureValue};
pub use state::{EntityState, LastValue, Resettable, Windowed};
pub use update::{apply_update, last_text_wins, last_wins, push_recent, sort_newest_first};

/// The shipped definitions and a small history, for the tests of every part.
#[cfg(test)]
mod fixtures {
    use super::{apply_update, plan_event, EntityState};
    use crate::event::Event;
    use crate::features::definition::FeatureSet;
    use serde_json::json;

    pub(super) fn set() -> FeatureSet {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        FeatureSet::load(&path).expect("shipped definitions load")
    }

    pub(super) fn ev(
        id: &str,
        kind: &str,
        ts: i64,
        item: Option<&str>,
        props: serde_json::Value,
    ) -> Event {
        let mut v = json!({"event_id": id, "type": kind, "customer_id": "c1", "ts": ts, "session_id": "s1", "props": props});
        if let Some(i) = item {
            v["item_id"] = json!(i);
        }
        Event::from_value(v).expect("test event is valid")
    }

    pub(super) fn apply_all(set: &FeatureSet, events: &[Event]) -> (EntityState, EntityState) {
        let now = crate::event::newest_ts(events).unwrap_or(T0);
        let mut c = EntityState::default();
        let mut i = EntityState::default();
        for e in events {
            let p = plan_event(set, e);
            p.customer.iter().for_each(|u| apply_update(&mut c, u, now));
            p.item.iter().for_each(|u| apply_update(&mut i, u, now));
        }
        (c, i)
    }

    pub(super) const T0: i64 = 1_764_355_200_000;

    pub(super) fn history() -> Vec<Event> {
        vec![
            ev(
                "1",
                "page_view",
                T0,
                Some("p1"),
                json!({"category":"shoes","price":10.0}),
            ),
            ev(
                "2",
                "add_to_cart",
                T0 + 1000,
                Some("p1"),
                json!({"category":"shoes","price":10.0,"quantity":2}),
            ),
            ev(
                "3",
                "add_to_cart",
                T0 + 2000,
                Some("p2"),
                json!({"category":"hats","price":5.0}),
            ),
            ev(
                "4",
                "purchase",
                T0 + 3000,
                Some("p1"),
                json!({"price":10.0,"quantity":2}),
            ),
            ev(
                "5",
                "add_to_cart",
                T0 + 4000,
                Some("p3"),
                json!({"category":"bags","price":7.5}),
            ),
            ev(
                "6",
                "page_view",
                T0 - 2 * 3_600_000,
                Some("p9"),
                json!({"category":"old"}),
            ),
        ]
    }
}
