//! `nextbest backfill`: history and enrichment into the online store. This
//! file holds the job, its summary and the order of the steps ([`run`]);
//! each step has a file of its own.
//!
//! 1. Everything is read and validated first (`input`); a bad file fails
//!    the job before anything is written.
//! 2. `select`: events after `as_of` are dropped; each event id is kept
//!    once (the first occurrence), like the stream's dedupe.
//! 3. `fold` ([`aggregate_each`]): every event goes through
//!    `visit_event_with` (the code `plan_event` runs for the stream, reading
//!    the props from a `PropTable` resolved in one pass, `props`) and its
//!    changes are folded per entity group (`features::merge`), each core
//!    owning a hash shard of the customers and items.
//! 4. [`aggregate_and_write`] runs 3 and 5 at once: each group goes to the
//!    writer as soon as it is folded, through a channel of a few batches,
//!    so the fold's output is never all held (its memory is reused) and the
//!    fold's CPU work overlaps the store's.
//! 5. `write` ([`write_stream`]): one `apply_groups` call per batch of
//!    groups, several batches in flight (in Redis, an entity with no keys
//!    yet gets its final state by `RESTORE`, `features::store::dump`). Each
//!    group write carries the ids of its events and is all-or-nothing: if
//!    the live consumer already applied some of them, the group is
//!    re-merged without those events and written again. So an event counts
//!    exactly once whether it arrived by stream, by backfill, or both, and
//!    because every update commutes (counts add, `last` keeps the greatest
//!    event time, ...) a backfill never overwrites newer streaming state:
//!    the newest *event time* wins, not the newest write. The same backfill
//!    twice finds every id already seen and changes nothing, for the events
//!    within the dedupe window of their group's newest event (older ones
//!    are counted in the summary: `beyond_dedupe_window`).
//!
//! 6. `covisit`: the events' co-visits, replayed in event-time order
//!    against each customer's recent items, filed into the items'
//!    neighbour lists (the events a customer had applied before file none).
//!
//! Static enrichment (`--items`, `--customers`) writes the `static` features
//! of features.toml; a load overwrites the previous value, so loading the
//! same file twice is also a no-op.

use super::fold::{aggregate_each, PendingGroup};
use super::input::{self, InputError};
use super::progress::Progress;
use super::select::select;
use super::write::{write_stream, WriteTotals};
use crate::event::Event;
use crate::features::definition::{Entity, FeatureSet};
use crate::features::store::{FeatureStore, GroupWrite, StoreError};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Errors of a backfill.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct BackfillJob {
    /// Event files or glob patterns.
    pub events: Vec<String>,
    /// Item catalog file (column `item_id` + the item `static` features).
    pub items: Option<PathBuf>,
    /// Customer profile file (column `customer_id` + the customer `static` features).
    pub customers: Option<PathBuf>,
    /// Only events with `ts <= as_of` are loaded.
    pub as_of: i64,
    /// Groups per store call (default 256).
    pub batch: usize,
    /// Store calls in flight (default 4).
    pub in_flight: usize,
    /// The store's dedupe window (`store.dedupe_window_secs`), to count the
    /// events whose ids it will not remember; 0: not counted.
    pub dedupe_window_ms: i64,
}

impl BackfillJob {
    /// Groups per store call and calls in flight, defaults for 0.
    pub(super) fn batching(&self) -> (usize, usize) {
        let batch = if self.batch == 0 { 256 } else { self.batch };
        let in_flight = if self.in_flight == 0 {
            4
        } else {
            self.in_flight
        };
        (batch, in_flight)
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct BackfillSummary {
    pub files: usize,
    /// Event rows read.
    pub rows: usize,
    /// Events loaded (read, minus after `as_of`, minus repeated ids).
    pub selected: usize,
    /// Events after `as_of`, not loaded.
    pub after_as_of: usize,
    /// Repeated event ids in the input, loaded once.
    pub duplicate_ids: usize,
    /// Entity groups (customers, items) written, including static rows.
    pub entities: usize,
    /// Store keys written.
    pub keys: usize,
    /// Groups re-merged because the live consumer had applied some events.
    pub conflicts: usize,
    /// Events already applied before (by the stream or an earlier backfill).
    pub already_applied: usize,
    /// Events older than their group's newest event by more than the dedupe
    /// window: their ids are not remembered, so loading them again would
    /// count them again (feature-store/README.md).
    pub beyond_dedupe_window: usize,
    pub static_rows: usize,
    pub read_secs: f64,
    /// Until the fold was done (it runs alongside the write).
    pub aggregate_secs: f64,
    /// Aggregating and writing, from the fold's start to the last write.
    pub write_secs: f64,
}

/// The input, read and validated.
pub struct LoadedInput {
    pub files: usize,
    pub events: Vec<Event>,
    pub statics: Vec<GroupWrite>,
}

/// Reads and validates every input file (nothing is written).
pub fn read_input(set: &FeatureSet, job: &BackfillJob) -> Result<LoadedInput, BackfillError> {
    let files = input::expand(&job.events)?;
    let mut events = Vec::new();
    for f in &files {
        events.extend(input::read_events(f)?);
    }
    let mut statics = Vec::new();
    if let Some(p) = &job.items {
        statics.extend(input::read_static(set, Entity::Item, p)?);
    }
    if let Some(p) = &job.customers {
        statics.extend(input::read_static(set, Entity::Customer, p)?);
    }
    Ok(LoadedInput {
        files: files.len(),
        events,
        statics,
    })
}

/// What [`aggregate_and_write`] did.
#[derive(Debug, Clone, Default)]
pub struct Pipelined {
    pub totals: WriteTotals,
    /// Events beyond their group's dedupe window ([`PendingGroup::beyond_window`]).
    pub beyond_dedupe_window: usize,
    /// Seconds until the fold was done (it runs alongside the write).
    pub aggregate_secs: f64,
    /// Seconds until everything was written.
    pub secs: f64,
}

/// Groups handed from the fold to the writer at most (a few batches each
/// way), so the fold's output is written and its memory reused while the
/// fold goes on, instead of all of it held at once (~1.7 GB for 5M events,
/// new memory the kernel must zero: benches/RESULTS.md).
const HANDOFF_BATCHES: usize = 2;

/// Folds the selected events `idx` on all cores and writes each group as
/// soon as it is folded, then the static rows; the fold runs on blocking
/// threads, the writes here. The progress bar learns the number of groups
/// from the fold.
pub async fn aggregate_and_write(
    set: Arc<FeatureSet>,
    store: &dyn FeatureStore,
    events: Arc<Vec<Event>>,
    idx: Vec<u32>,
    statics: Vec<GroupWrite>,
    job: &BackfillJob,
    progress: Arc<Progress>,
) -> Result<Pipelined, BackfillError> {
    let t = Instant::now();
    let (batch, in_flight) = job.batching();
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<PendingGroup>(batch * in_flight * HANDOFF_BATCHES);
    progress.add_total(statics.len() as u64);
    let selected = idx.clone();
    let fold = {
        let (set, events, progress) = (set.clone(), events.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            aggregate_each(
                &set,
                &events,
                &idx,
                super::cores(),
                &|n| progress.add_total(n),
                // false once the writer is gone (it failed): stop
                &|g| tx.blocking_send(g).is_ok(),
            );
            t.elapsed().as_secs_f64()
        })
    };
    let window = job.dedupe_window_ms;
    let mut beyond = 0;
    let groups = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .chain(futures::stream::iter(
            statics.into_iter().map(PendingGroup::fixed),
        ))
        .inspect(|g| beyond += g.beyond_window(window));
    // the stream owns the receiver: when the write ends, failed or not, it
    // is dropped, and a fold still running (or waiting to hand over) stops
    let written = write_stream(&set, store, &events, groups, job, &progress).await;
    let aggregate_secs = fold
        .await
        .map_err(|e| BackfillError::Invalid(format!("aggregation failed: {e}")))?;
    let totals = written?;
    let applied_before = &totals.customer_applied_before;
    super::covisit::file(&set, store, &events, &selected, applied_before).await?;
    Ok(Pipelined {
        totals,
        beyond_dedupe_window: beyond,
        aggregate_secs,
        secs: t.elapsed().as_secs_f64(),
    })
}

/// Runs a whole backfill: read and validate, then aggregate and write at
/// once ([`aggregate_and_write`]). The CPU work runs on the blocking pool.
pub async fn run(
    set: Arc<FeatureSet>,
    store: &dyn FeatureStore,
    job: &BackfillJob,
) -> Result<BackfillSummary, BackfillError> {
    let t = Instant::now();
    let input = {
        let (set, job) = (set.clone(), job.clone());
        tokio::task::spawn_blocking(move || read_input(&set, &job))
            .await
            .map_err(|e| BackfillError::Invalid(format!("reader failed: {e}")))??
    };
    let read_secs = t.elapsed().as_secs_f64();
    let events = Arc::new(input.events);
    let (idx, after_as_of, duplicate_ids) = {
        let (events, as_of) = (events.clone(), job.as_of);
        tokio::task::spawn_blocking(move || select(&events, as_of, super::cores()))
            .await
            .map_err(|e| BackfillError::Invalid(format!("aggregation failed: {e}")))?
    };
    let selected = idx.len();
    let static_rows = input.statics.len();
    let progress = Arc::new(Progress::new("backfill", 0));
    let done = aggregate_and_write(
        set,
        store,
        events.clone(),
        idx,
        input.statics,
        job,
        progress.clone(),
    )
    .await?;
    progress.finish();
    Ok(BackfillSummary {
        files: input.files,
        rows: events.len(),
        selected,
        after_as_of,
        duplicate_ids,
        entities: done.totals.entities,
        keys: done.totals.keys,
        conflicts: done.totals.conflicts,
        already_applied: done.totals.already_applied,
        beyond_dedupe_window: done.beyond_dedupe_window,
        static_rows,
        read_secs,
        aggregate_secs: done.aggregate_secs,
        write_secs: done.secs,
    })
}
