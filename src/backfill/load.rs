//! `nextbest backfill`: history and enrichment into the online store.
//!
//! 1. Everything is read and validated first (`input`); a bad file fails
//!    the job before anything is written.
//! 2. Events after `as_of` are dropped; each event id is kept once (the
//!    first occurrence), like the stream's dedupe.
//! 3. [`aggregate_each`]: every event goes through `visit_event_with` (the
//!    code `plan_event` runs for the stream, reading the props from a
//!    `PropTable` resolved in one pass) and its changes are folded per
//!    entity group (`features::merge`), each core owning a hash shard of
//!    the customers and items.
//! 4. [`aggregate_and_write`] runs 3 and 5 at once: each group goes to the
//!    writer as soon as it is folded, through a channel of a few batches,
//!    so the fold's output is never all held (its memory is reused) and the
//!    fold's CPU work overlaps the store's.
//! 5. [`write_stream`]: one `apply_groups` call per batch of groups, several
//!    batches in flight (in Redis, an entity with no keys yet gets its final
//!    state by `RESTORE`, `features::store::dump`). Each group write
//!    carries the ids of its events and is all-or-nothing: if the live
//!    consumer already applied some of them, the group is re-merged without
//!    those events and written again. So an event counts exactly once
//!    whether it arrived by stream, by backfill, or both, and because every
//!    update commutes (counts add, `last` keeps the greatest event time,
//!    ...) a backfill never overwrites newer streaming state: the newest
//!    *event time* wins, not the newest write. The same backfill twice finds
//!    every id already seen and changes nothing, for the events within the
//!    dedupe window of their group's newest event (older ones are counted
//!    in the summary: `beyond_dedupe_window`).
//!
//! Static enrichment (`--items`, `--customers`) writes the `static` features
//! of features.toml; a load overwrites the previous value, so loading the
//! same file twice is also a no-op.

use super::input::{self, InputError, Record};
use super::progress::Progress;
use super::props::PropTable;
use crate::event::{check_id, Event};
use crate::features::aggregate::{visit_event_with, Update};
use crate::features::definition::{Aggregation, Entity, FeatureSet};
use crate::features::merge::{FoldLayout, Folded};
use crate::features::store::{EventIds, FeatureStore, Group, GroupWrite, StoreError};
use futures::{StreamExt, TryStreamExt};
use rustc_hash::FxBuildHasher;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
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
    fn batching(&self) -> (usize, usize) {
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
        statics.extend(read_static(set, Entity::Item, p)?);
    }
    if let Some(p) = &job.customers {
        statics.extend(read_static(set, Entity::Customer, p)?);
    }
    Ok(LoadedInput {
        files: files.len(),
        events,
        statics,
    })
}

/// Reads a catalog/profile file into static group writes.
pub fn read_static(
    set: &FeatureSet,
    entity: Entity,
    path: &Path,
) -> Result<Vec<GroupWrite>, InputError> {
    let p = path.display().to_string();
    let id_col = match entity {
        Entity::Item => "item_id",
        _ => "customer_id",
    };
    let defs: Vec<(String, String, bool)> = set
        .statics(entity)
        .filter_map(|f| match &f.aggregation {
            Aggregation::Static { column, numeric } => {
                Some((f.name.clone(), column.clone(), *numeric))
            }
            _ => None,
        })
        .collect();
    let (columns, records) = input::read_records(path, Some(&[id_col]))?;
    let required = std::iter::once(id_col).chain(defs.iter().map(|(_, c, _)| c.as_str()));
    input::require_columns(&p, &columns, required)?;
    records
        .into_iter()
        .map(|r| static_row(&p, id_col, &defs, entity, r))
        .collect()
}

fn static_row(
    path: &str,
    id_col: &str,
    defs: &[(String, String, bool)],
    entity: Entity,
    r: Record,
) -> Result<GroupWrite, InputError> {
    let err = |column: &str, message: String| InputError::Row {
        path: path.to_string(),
        at: r.at.clone(),
        column: Some(column.to_string()),
        message,
    };
    let id = match r.fields.get(id_col) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(err(id_col, "missing or not text".into())),
    };
    check_id(id_col, &id).map_err(|e| err(id_col, e.to_string()))?;
    let mut updates = Vec::new();
    for (name, column, numeric) in defs {
        let value = match (r.fields.get(column), numeric) {
            (None | Some(Value::Null), _) => continue,
            (Some(Value::Bool(b)), true) => u8::from(*b).to_string(),
            (Some(Value::Number(n)), true) => match n.as_f64() {
                Some(x) if x.is_finite() => format!("{x}"),
                _ => return Err(err(column, "must be a finite number".into())),
            },
            (Some(Value::String(s)), true) => match s.trim() {
                "true" => "1".into(),
                "false" => "0".into(),
                t => match t.parse::<f64>() {
                    Ok(x) if x.is_finite() => format!("{x}"),
                    _ => return Err(err(column, format!("`{s}` is not a number"))),
                },
            },
            (Some(Value::String(s)), false) => s.clone(),
            (Some(v @ (Value::Number(_) | Value::Bool(_))), false) => v.to_string(),
            (Some(other), _) => {
                return Err(err(
                    column,
                    format!("must be a number or text, got {other}"),
                ))
            }
        };
        updates.push(Update::SetStatic {
            feature: name.as_str().into(),
            value,
        });
    }
    Ok(GroupWrite {
        group: match entity {
            Entity::Item => Group::Item(id),
            _ => Group::Customer(id),
        },
        events: EventIds::default(),
        updates,
        sessions: Vec::new(),
    })
}

/// Indices of the events to load: `ts <= as_of`, first occurrence of each id.
/// Returns them with the counts of events dropped for each reason. On
/// `threads` threads, each owning a hash shard of the ids (so each holds a
/// smaller set, and their fresh memory is faulted in side by side).
pub fn select(events: &[Event], as_of: i64, threads: usize) -> (Vec<u32>, usize, usize) {
    let shards = if events.len() < 4096 {
        1
    } else {
        threads.max(1)
    };
    let shard = |k: usize| {
        let mut seen: HashSet<&str, FxBuildHasher> =
            HashSet::with_capacity_and_hasher(events.len() / shards + 1024, FxBuildHasher);
        let (mut late, mut dups) = (0, 0);
        let mut keep = Vec::with_capacity(events.len() / shards + 1024);
        for (i, e) in events.iter().enumerate() {
            let id = e.event_id.as_str();
            if shards > 1 && FxBuildHasher.hash_one(id) % shards as u64 != k as u64 {
                continue;
            }
            if e.ts > as_of {
                late += 1;
            } else if !seen.insert(id) {
                dups += 1;
            } else {
                keep.push(i as u32);
            }
        }
        (keep, late, dups)
    };
    let parts: Vec<(Vec<u32>, usize, usize)> = if shards == 1 {
        vec![shard(0)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..shards).map(|k| s.spawn(move || shard(k))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let (late, dups) = parts.iter().fold((0, 0), |(l, d), p| (l + p.1, d + p.2));
    if parts.len() == 1 {
        let keep = parts.into_iter().next().map(|p| p.0).unwrap_or_default();
        return (keep, late, dups);
    }
    // back into input order (the shards' indices are disjoint)
    let mut kept = vec![false; events.len()];
    for p in &parts {
        p.0.iter().for_each(|&i| kept[i as usize] = true);
    }
    let keep = (0..events.len() as u32)
        .filter(|&i| kept[i as usize])
        .collect();
    (keep, late, dups)
}

/// The fold of one entity group's events, borrowing from them.
struct GroupAcc<'e> {
    events: Vec<u32>,
    main: Folded<'e>,
    sessions: HashMap<&'e str, Folded<'e>, FxBuildHasher>,
}

/// Which entity group of an event a fold is about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    /// The customer and its session.
    Customer,
    Item,
}

fn group_id(e: &Event, side: Side) -> Option<&str> {
    match side {
        Side::Customer => Some(e.customer_id.as_str()),
        Side::Item => e.item_id.as_deref(),
    }
}

/// What every fold of one backfill shares.
#[derive(Clone, Copy)]
struct Fold<'a, 'e> {
    set: &'a FeatureSet,
    layout: &'a FoldLayout,
    events: &'e [Event],
    props: &'a PropTable<'a, 'e>,
}

/// The events `idx` of one side whose group falls in hash shard `k` of
/// `shards`, as (group id hash, event index), sorted so each group's events
/// are together (by hash, then input order: no string compares while
/// sorting). Should two ids share a hash, their events interleave and a
/// group is folded in several runs; each run is still a correct write of
/// that group's events (updates commute, the later runs merge through
/// `apply.lua`).
fn keyed_side(
    events: &[Event],
    idx: &[u32],
    side: Side,
    k: usize,
    shards: usize,
) -> Vec<(u64, u32)> {
    // room for every event up front: only the pages filled are ever
    // touched, while growing by doubling copies (and faults in) the vector
    // several times over (40 % of the fold's page faults)
    let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(idx.len());
    keyed.extend(idx.iter().filter_map(|&i| {
        let g = group_id(&events[i as usize], side)?;
        let h = FxBuildHasher.hash_one(g);
        (shards == 1 || h % shards as u64 == k as u64).then_some((h, i))
    }));
    keyed.sort_unstable();
    keyed
}

/// How many groups a sorted [`keyed_side`] holds (distinct hashes: exact
/// unless two ids share a 64-bit hash; only the progress bar uses it).
fn count_groups(keyed: &[(u64, u32)]) -> u64 {
    keyed.chunk_by(|a, b| a.0 == b.0).count() as u64
}

/// Folds the events of one side, sorted by [`keyed_side`], group by group,
/// handing each group to `sink` as soon as it is folded (in cache, and its
/// memory reused once the sink is done with it). Stops when `sink` returns
/// false; returns whether it went through.
fn fold_keyed(
    fold: Fold<'_, '_>,
    keyed: &[(u64, u32)],
    side: Side,
    sink: &(dyn Fn(PendingGroup) -> bool + Sync),
) -> bool {
    let Fold {
        set,
        layout,
        events,
        props,
    } = fold;
    let id = |i: u32| group_id(&events[i as usize], side).unwrap_or_default();
    let (customer_side, item_side) = (side == Side::Customer, side == Side::Item);
    let mut warm = Warmer::default();
    let mut at = 0;
    for run in keyed.chunk_by(|a, b| a.0 == b.0 && id(a.1) == id(b.1)) {
        warm.ahead(events, props, keyed, at);
        at += run.len();
        let entity = match side {
            Side::Customer => Entity::Customer,
            Side::Item => Entity::Item,
        };
        let mut acc = GroupAcc {
            events: run.iter().map(|(_, i)| *i).collect(),
            main: layout.empty(entity),
            sessions: HashMap::default(),
        };
        for &(_, i) in run {
            let e = &events[i as usize];
            let row = props.row(i as usize);
            visit_event_with(set, e, &row, customer_side, item_side, |f, change| {
                match (set.features[f].entity, e.session_id.as_deref()) {
                    (Entity::Session, Some(sid)) => {
                        let s = acc
                            .sessions
                            .entry(sid)
                            .or_insert_with(|| layout.empty(Entity::Session));
                        layout.push(s, f, change);
                    }
                    _ => layout.push(&mut acc.main, f, change),
                }
            });
        }
        let gid = id(run[0].1).to_string();
        let group = match side {
            Side::Customer => Group::Customer(gid),
            Side::Item => Group::Item(gid),
        };
        if !sink(to_pending(layout, group, acc, events)) {
            return false;
        }
    }
    true
}

/// Brings the events the fold is about to visit into the cache, a block
/// ahead. The fold visits events in group order, i.e. at random places in
/// memory; done one by one inside the fold, each of the ~5 places an event
/// touches (the event, its id, session and item strings, its prop row) is a
/// cache miss waited for in turn. This loop only loads, so the CPU overlaps
/// the misses of many events. (Measured: benches/RESULTS.md.)
#[derive(Default)]
struct Warmer {
    /// `keyed` is warmed up to here.
    to: usize,
}

impl Warmer {
    const BLOCK: usize = 256;

    fn ahead(
        &mut self,
        events: &[Event],
        props: &PropTable<'_, '_>,
        keyed: &[(u64, u32)],
        at: usize,
    ) {
        if self.to > at + Self::BLOCK / 2 {
            return;
        }
        let from = self.to.max(at);
        let to = (at + 2 * Self::BLOCK).min(keyed.len());
        let first = |s: &str| s.as_bytes().first().copied().unwrap_or(0) as u64;
        let mut sum = 0u64;
        for &(_, i) in &keyed[from..to] {
            let e = &events[i as usize];
            sum = sum
                .wrapping_add(e.ts as u64)
                .wrapping_add(first(&e.event_id))
                .wrapping_add(e.session_id.as_deref().map_or(0, first))
                .wrapping_add(e.item_id.as_deref().map_or(0, first))
                .wrapping_add(props.row(i as usize).warm());
        }
        std::hint::black_box(sum);
        self.to = to;
    }
}

fn to_pending(
    layout: &FoldLayout,
    group: Group,
    acc: GroupAcc<'_>,
    events: &[Event],
) -> PendingGroup {
    let bytes = acc
        .events
        .iter()
        .map(|&i| events[i as usize].event_id.len())
        .sum();
    let mut ids = EventIds::with_capacity(acc.events.len(), bytes);
    for &i in &acc.events {
        let e = &events[i as usize];
        ids.push(&e.event_id, e.ts);
    }
    PendingGroup {
        write: GroupWrite {
            group,
            events: ids,
            updates: layout.updates(acc.main),
            sessions: acc
                .sessions
                .into_iter()
                .filter(|(_, f)| !f.is_empty())
                .map(|(sid, f)| (sid.to_string(), layout.updates(f)))
                .collect(),
        },
        events: acc.events,
    }
}

/// A group ready to write, with the events it holds (to re-fold it without
/// some of them).
#[derive(Debug, Clone)]
pub struct PendingGroup {
    pub write: GroupWrite,
    pub events: Vec<u32>,
}

impl PendingGroup {
    /// How many of its events are older than its newest by more than `window_ms`.
    pub fn beyond_window(&self, window_ms: i64) -> usize {
        if window_ms <= 0 {
            return 0;
        }
        let cutoff = self.write.events.dedupe_cutoff(window_ms);
        self.write
            .events
            .iter()
            .filter(|(_, t)| *t < cutoff)
            .count()
    }
}

impl PendingGroup {
    /// A static row (no events).
    pub fn fixed(write: GroupWrite) -> PendingGroup {
        PendingGroup {
            write,
            events: Vec::new(),
        }
    }
}

/// Folds the selected events per entity group, on `threads` threads (each
/// owns a hash shard of the customers and items), handing each group to
/// `sink` as soon as it is folded; `sink` returning false stops the fold.
/// Each thread first sorts its shard and reports how many groups it holds
/// (`groups`, for the progress bar).
pub fn aggregate_each(
    set: &FeatureSet,
    events: &[Event],
    idx: &[u32],
    threads: usize,
    groups: &(dyn Fn(u64) + Sync),
    sink: &(dyn Fn(PendingGroup) -> bool + Sync),
) {
    let layout = FoldLayout::new(set);
    let shards = if idx.len() < 512 { 1 } else { threads.max(1) };
    let props = PropTable::build(set, events, shards);
    let fold = Fold {
        set,
        layout: &layout,
        events,
        props: &props,
    };
    std::thread::scope(|s| {
        for k in 0..shards {
            s.spawn(move || {
                let customers = keyed_side(events, idx, Side::Customer, k, shards);
                let items = keyed_side(events, idx, Side::Item, k, shards);
                groups(count_groups(&customers) + count_groups(&items));
                let _ = fold_keyed(fold, &customers, Side::Customer, sink)
                    && fold_keyed(fold, &items, Side::Item, sink);
            });
        }
    });
}

/// [`aggregate_each`] into one vector of every group write.
pub fn aggregate(
    set: &FeatureSet,
    events: &[Event],
    idx: &[u32],
    threads: usize,
) -> Vec<PendingGroup> {
    let out = std::sync::Mutex::new(Vec::new());
    aggregate_each(set, events, idx, threads, &|_| {}, &|g| {
        out.lock().unwrap_or_else(|p| p.into_inner()).push(g);
        true
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Re-folds one group from its events, leaving out the ids already applied.
fn refold(
    set: &FeatureSet,
    layout: &FoldLayout,
    events: &[Event],
    group: &Group,
    idx: Vec<u32>,
    seen: &[String],
) -> Option<PendingGroup> {
    let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
    let keep: Vec<u32> = idx
        .into_iter()
        .filter(|&i| !seen.contains(events[i as usize].event_id.as_str()))
        .collect();
    if keep.is_empty() {
        return None;
    }
    let side = match group {
        Group::Customer(_) => Side::Customer,
        Group::Item(_) => Side::Item,
    };
    let props = PropTable::build_for(set, events, &keep);
    let fold = Fold {
        set,
        layout,
        events,
        props: &props,
    };
    let found = std::sync::Mutex::new(None);
    fold_keyed(fold, &keyed_side(events, &keep, side, 0, 1), side, &|g| {
        if g.write.group == *group {
            *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
        }
        true
    });
    found.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// A group not written: the group, its events, the ids already applied.
type Conflict = (Group, Vec<u32>, Vec<String>);

/// Totals of [`write`].
#[derive(Debug, Clone, Default)]
pub struct WriteTotals {
    pub entities: usize,
    pub keys: usize,
    pub conflicts: usize,
    pub already_applied: usize,
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

/// [`write`] for groups as they come (from the fold, [`aggregate_and_write`]).
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
    let mut conflicts = write_round(store, groups, batch, in_flight, progress, &mut totals).await?;
    let layout = FoldLayout::new(set);
    // each round strictly shrinks the conflicting groups, so this ends
    while !conflicts.is_empty() {
        let mut retry = Vec::new();
        for (group, idx, seen) in conflicts {
            totals.conflicts += 1;
            totals.already_applied += seen.len();
            if let Some(again) = refold(set, &layout, events, &group, idx, &seen) {
                retry.push(again);
            }
        }
        conflicts = write_round(
            store,
            futures::stream::iter(retry),
            batch,
            in_flight,
            progress,
            &mut totals,
        )
        .await?;
    }
    Ok(totals)
}

/// One pass of [`write_stream`]: `apply_groups` per batch, `in_flight`
/// batches at once. Returns the groups not written because some of their
/// events were already applied.
async fn write_round(
    store: &dyn FeatureStore,
    groups: impl futures::Stream<Item = PendingGroup>,
    batch: usize,
    in_flight: usize,
    progress: &Progress,
    totals: &mut WriteTotals,
) -> Result<Vec<Conflict>, BackfillError> {
    let conflicts: Vec<Vec<Conflict>> = groups
        .chunks(batch)
        .map(|chunk| async move {
            let (writes, mut idx): (Vec<GroupWrite>, Vec<Vec<u32>>) =
                chunk.into_iter().map(|p| (p.write, p.events)).unzip();
            let out = store.apply_groups(&writes).await?;
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
/// fresh memory the kernel must zero: benches/RESULTS.md).
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
    Ok(Pipelined {
        totals: written?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn event(id: String, ts: i64) -> Event {
        Event {
            event_id: id,
            kind: EventType::PageView,
            customer_id: "c".into(),
            ts,
            session_id: None,
            item_id: None,
            seq: None,
            props: Default::default(),
        }
    }

    /// Sharded by id hash on several threads, `select` still keeps the first
    /// occurrence of each id, in input order, and counts the same drops.
    #[test]
    fn select_on_shards_keeps_the_first_of_each_id_in_input_order() {
        let events: Vec<Event> = (0..20_000u64)
            .map(|i| event(format!("e{}", (i * 7919) % 12_000), (i % 100) as i64))
            .collect();
        let as_of = 90;
        let mut seen = HashSet::new();
        let (mut late, mut dups, mut keep) = (0, 0, Vec::new());
        for (i, e) in events.iter().enumerate() {
            if e.ts > as_of {
                late += 1;
            } else if !seen.insert(e.event_id.as_str()) {
                dups += 1;
            } else {
                keep.push(i as u32);
            }
        }
        assert!(late > 0 && dups > 0);
        for threads in [1, 2, 3] {
            assert_eq!(
                select(&events, as_of, threads),
                (keep.clone(), late, dups),
                "{threads} threads"
            );
        }
    }
}
