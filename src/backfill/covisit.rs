//! The backfill's co-visitation (`features::store::covisit`): the history's
//! visits replayed in event-time order against each customer's
//! `recent_items` as the stream would have kept it, so a backfilled history
//! files the same co-visits as the same events streamed in that order.
//! Events the store had already applied (the conflicts the write step
//! reported for the customers) are replayed into the lists but file
//! nothing, as a redelivery files nothing on the stream.
//!
//! The pairs are summed per item and neighbour (up to [`CHUNK`] pairs
//! held), then filed one call per item, not one per pair. The lists are the
//! stream's as long as an item has at most [`covisit::KEEP`] neighbours;
//! past that the stream cuts after every batch (a neighbour dropped starts
//! again from zero), the backfill after its sums.

use crate::event::Event;
use crate::features::aggregate::push_recent;
use crate::features::definition::{Aggregation, FeatureSet};
use crate::features::store::{covisit, FeatureStore, StoreError};
use rustc_hash::FxHashMap;
use std::collections::HashSet;

/// Co-visits held at most before they are summed and filed (16 bytes
/// each, 128 MB at most): a history's co-visits are summed whole up to
/// this, so an item's neighbours are filed in one go, not once per event.
const CHUNK: usize = 8_000_000;

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
    // each customer's list as `push_recent` keeps it (`apply_update`'s own
    // rule), borrowing the events' ids
    let mut lists: FxHashMap<&str, Vec<(&str, i64)>> = FxHashMap::default();
    let mut sums = Sums::default();
    let mut filed = 0;
    for i in order {
        let e = &events[i as usize];
        let Some(item) = e.item_id.as_deref() else {
            continue;
        };
        let list = lists.entry(e.customer_id.as_str()).or_default();
        if !applied_before.contains(&e.event_id) {
            let before: Vec<&str> = covisit::previous_of(item, e.ts, list).copied().collect();
            for (a, b, w) in covisit::pairs(item, e.ts, &before) {
                let (a, b) = (sums.id(a), sums.id(b));
                sums.add(a, b, w);
            }
        }
        push_recent(list, item, || item, e.ts, cap);
        if sums.held() >= CHUNK {
            filed += sums.flush(store).await?;
        }
    }
    filed += sums.flush(store).await?;
    Ok(filed)
}

/// Co-visits held as `(item, neighbour, weight)`, in event order, ids
/// interned; summed per `(item, neighbour)` when filed, each sum in event
/// order (the order the stream adds them in).
#[derive(Default)]
struct Sums<'e> {
    ids: FxHashMap<&'e str, u32>,
    names: Vec<&'e str>,
    pairs: Vec<(u32, u32, f64)>,
}

impl<'e> Sums<'e> {
    fn id(&mut self, s: &'e str) -> u32 {
        let next = self.names.len() as u32;
        let id = *self.ids.entry(s).or_insert(next);
        if id == next {
            self.names.push(s);
        }
        id
    }

    fn add(&mut self, item: u32, neighbour: u32, w: f64) {
        self.pairs.push((item, neighbour, w));
    }

    fn held(&self) -> usize {
        self.pairs.len()
    }

    /// Sums, files (one filing per item) and empties the pairs; how many
    /// there were.
    async fn flush(&mut self, store: &dyn FeatureStore) -> Result<usize, StoreError> {
        if self.pairs.is_empty() {
            return Ok(0);
        }
        // stable: equal pairs stay in event order
        self.pairs.sort_by_key(|&(a, b, _)| (a, b));
        let mut filings: Vec<covisit::Filing<'e>> = Vec::new();
        for run in self.pairs.chunk_by(|x, y| x.0 == y.0) {
            let mut add: Vec<(&'e str, f64)> = Vec::new();
            for same in run.chunk_by(|x, y| x.1 == y.1) {
                let sum = same.iter().fold(0.0, |s, p| s + p.2);
                add.push((self.names[same[0].1 as usize], sum));
            }
            filings.push(covisit::Filing {
                item: self.names[run[0].0 as usize],
                add,
            });
        }
        store.file_covisits(&filings).await?;
        let n = self.pairs.len();
        self.pairs.clear();
        Ok(n)
    }
}
