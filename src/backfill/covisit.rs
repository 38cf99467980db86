//! The backfill's co-visitation (`features::store::covisit`): the history's
//! visits replayed in event-time order against each customer's
//! `recent_items` as the stream would have kept it, so a backfilled history
//! files the same co-visits as the same events streamed in that order.
//! Events the store had already applied (the conflicts the write step
//! reported for the customers) are replayed into the lists but file
//! nothing, as a redelivery files nothing on the stream.

use crate::event::Event;
use crate::features::aggregate::{apply_update, EntityState, Update};
use crate::features::definition::{Aggregation, FeatureSet};
use crate::features::store::{covisit, FeatureStore, StoreError};
use std::collections::{HashMap, HashSet};

/// Co-visits filed per store call at most (the sums are filed as they
/// go, so a long history is never held as pairs).
const CHUNK: usize = 50_000;

/// Files the co-visits of the selected events `idx` of `events`, in
/// event-time order, leaving out the events in `applied_before`; returns
/// how many pairs were filed.
pub async fn file(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
    idx: &[u32],
    applied_before: &HashSet<String>,
) -> Result<usize, StoreError> {
    let Some(def) = covisit::list_def(set) else {
        return Ok(0);
    };
    let Aggregation::DistinctRecent { cap, .. } = def.aggregation else {
        return Ok(0);
    };
    let mut order: Vec<u32> = idx
        .iter()
        .copied()
        .filter(|&i| {
            let e = &events[i as usize];
            e.item_id.is_some() && def.events.contains(&e.kind)
        })
        .collect();
    // event time, then file order: the order the stream applies them in
    order.sort_by_key(|&i| (events[i as usize].ts, i));
    let mut lists: HashMap<&str, EntityState> = HashMap::new();
    let mut pairs: Vec<(String, String, f64)> = Vec::new();
    let mut filed = 0;
    for i in order {
        let e = &events[i as usize];
        let Some(item) = e.item_id.as_deref() else {
            continue;
        };
        let state = lists.entry(e.customer_id.as_str()).or_default();
        if !applied_before.contains(&e.event_id) {
            let before = covisit::previous(item, e.ts, covisit::list_of(state));
            pairs.extend(
                covisit::pairs(item, e.ts, &before)
                    .into_iter()
                    .map(|(a, b, w)| (a.to_string(), b.to_string(), w)),
            );
        }
        let push = Update::PushRecent {
            feature: covisit::LIST.into(),
            member: item.to_string(),
            ts: e.ts,
            cap,
        };
        apply_update(state, &push, e.ts);
        if pairs.len() >= CHUNK {
            filed += flush(store, &mut pairs).await?;
        }
    }
    filed += flush(store, &mut pairs).await?;
    Ok(filed)
}

/// Files and empties `pairs`; how many there were.
async fn flush(
    store: &dyn FeatureStore,
    pairs: &mut Vec<(String, String, f64)>,
) -> Result<usize, StoreError> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let filings = covisit::merge(pairs.iter().map(|(a, b, w)| (a.as_str(), b.as_str(), *w)));
    store.file_covisits(&filings).await?;
    let n = pairs.len();
    pairs.clear();
    Ok(n)
}
