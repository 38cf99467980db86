//! The backfill's write: groups to the store in batches of
//! `FeatureStore::apply_groups` calls, several in flight ([`write_stream`]).
//! Each group write carries the ids of its events and is all-or-nothing;
//! a group some of whose events the live consumer already applied is
//! re-folded without them and written again, until none is left.

use super::fold::{refold, PendingGroup};
use super::load::{BackfillError, BackfillJob};
use super::progress::Progress;
use crate::event::Event;
use crate::features::definition::FeatureSet;
use crate::features::merge::FoldLayout;
use crate::features::store::{FeatureStore, Group, GroupWrite, StoreError};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashSet;

/// A group not written: the group, its events, the ids already applied.
type Conflict = (Group, Vec<u32>, Vec<String>);

/// Totals of [`write`].
#[derive(Debug, Clone, Default)]
pub struct WriteTotals {
    pub entities: usize,
    pub keys: usize,
    pub conflicts: usize,
    pub already_applied: usize,
    /// Ids of the events a customer group had applied before (they file no
    /// co-visits, `backfill::covisit`).
    pub customer_applied_before: HashSet<String>,
}

/// Writes the aggregated groups (and static rows) to the store, batched and
/// pipelined, re-merging groups that conflict with the live consumer.
pub async fn write(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
    pending: Vec<PendingGroup>,
    job: &BackfillJob,
    progress: &Progress,
) -> Result<WriteTotals, BackfillError> {
    write_stream(
        set,
        store,
        events,
        futures::stream::iter(pending),
        job,
        progress,
    )
    .await
}

/// [`write`] for groups as they come (from the fold,
/// [`aggregate_and_write`](super::load::aggregate_and_write)).
pub async fn write_stream(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    events: &[Event],
    groups: impl futures::Stream<Item = PendingGroup>,
    job: &BackfillJob,
    progress: &Progress,
) -> Result<WriteTotals, BackfillError> {
    let (batch, in_flight) = job.batching();
    let mut totals = WriteTotals::default();
    let now = job.as_of; // windows pruned as of the backfill's time
    let mut conflicts = write_round(
        store,
        groups,
        (batch, in_flight, now),
        progress,
        &mut totals,
    )
    .await?;
    let layout = FoldLayout::new(set);
    // each round strictly shrinks the conflicting groups, so this ends
    while !conflicts.is_empty() {
        let mut retry = Vec::new();
        for (group, idx, seen) in conflicts {
            totals.conflicts += 1;
            totals.already_applied += seen.len();
            if matches!(group, Group::Customer(_)) {
                totals.customer_applied_before.extend(seen.iter().cloned());
            }
            if let Some(again) = refold(set, &layout, events, &group, idx, &seen) {
                retry.push(again);
            }
        }
        conflicts = write_round(
            store,
            futures::stream::iter(retry),
            (batch, in_flight, now),
            progress,
            &mut totals,
        )
        .await?;
    }
    Ok(totals)
}

/// One pass of [`write_stream`]: `apply_groups` per batch (written at
/// `now`), `in_flight` batches at once. Returns the groups not written
/// because some of their events were already applied.
async fn write_round(
    store: &dyn FeatureStore,
    groups: impl futures::Stream<Item = PendingGroup>,
    (batch, in_flight, now): (usize, usize, i64),
    progress: &Progress,
    totals: &mut WriteTotals,
) -> Result<Vec<Conflict>, BackfillError> {
    let conflicts: Vec<Vec<Conflict>> = groups
        .chunks(batch)
        .map(|chunk| async move {
            let (writes, mut idx): (Vec<GroupWrite>, Vec<Vec<u32>>) =
                chunk.into_iter().map(|p| (p.write, p.events)).unzip();
            let out = store.apply_groups(&writes, now).await?;
            progress.advance(out.applied as u64, out.keys as u64);
            let conflicts = out
                .conflicts
                .into_iter()
                .map(|(i, seen)| (writes[i].group.clone(), std::mem::take(&mut idx[i]), seen))
                .collect::<Vec<_>>();
            Ok::<_, StoreError>((out.applied, out.keys, conflicts))
        })
        .buffer_unordered(in_flight)
        .map_ok(|(applied, keys, conflicts)| {
            totals.entities += applied;
            totals.keys += keys;
            conflicts
        })
        .try_collect()
        .await?;
    Ok(conflicts.into_iter().flatten().collect())
}
