//! The stored state of one entity ([`EntityState`]), in the shape of its
//! Redis keys: what [`apply_update`](super::apply_update) changes and
//! [`feature_value`](super::feature_value) reads. Plain data.

use serde::Serialize;
use std::collections::BTreeMap;

/// A resettable sum: contributions after the latest reset, by event time.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resettable {
    pub reset_ts: i64,
    pub parts: BTreeMap<i64, f64>,
}

/// A windowed count or sum: time buckets, and `lo`, the newest bucket
/// pruned so far: every bucket at or below it was dropped (or never kept),
/// because a read at the time of the pruning write or later no longer sees
/// it. Pruning follows the writer's clock, not the newest event, so an
/// event dated in the future can't push the window past the present.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windowed {
    pub lo: i64,
    pub buckets: BTreeMap<i64, f64>,
}

/// A `last` value with the `(ts, seq)` that set it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LastValue {
    pub ts: i64,
    pub seq: i64,
    pub value: String,
}

/// The stored state of one entity, in the same shape as its Redis keys
/// (feature-store/README.md): the main hash holds `nums`, `windows` and
/// `lasts`; recent lists are sorted sets; resettable sums are hashes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityState {
    /// Lifetime counts and sums; the max ts of `time_since_last`.
    pub nums: BTreeMap<String, f64>,
    pub windows: BTreeMap<String, Windowed>,
    pub lasts: BTreeMap<String, LastValue>,
    /// `distinct_recent` members with their latest ts, newest first.
    pub recent: BTreeMap<String, Vec<(String, i64)>>,
    pub resettable: BTreeMap<String, Resettable>,
}

impl EntityState {
    pub fn is_empty(&self) -> bool {
        self.nums.is_empty()
            && self.windows.is_empty()
            && self.lasts.is_empty()
            && self.recent.is_empty()
            && self.resettable.is_empty()
    }
}
