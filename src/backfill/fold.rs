//! The backfill's fold: the selected events, grouped by entity (customer
//! with its sessions, item), each group's changes folded into a few merged
//! updates (`features::merge`) and handed on as a [`PendingGroup`] as soon
//! as it is done ([`aggregate_each`]). Every event goes through
//! `visit_event_with`, the code `plan_event` runs for the stream, reading
//! its props from a [`PropTable`] resolved in one pass; each core owns a
//! hash shard of the customers and items. [`refold`] folds one group again
//! without the events the store had already seen.

use super::props::PropTable;
use crate::event::Event;
use crate::features::aggregate::visit_event_with;
use crate::features::definition::{Entity, FeatureSet};
use crate::features::merge::{FoldLayout, Folded};
use crate::features::store::{EventIds, Group, GroupWrite};
use rustc_hash::FxBuildHasher;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

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
/// `update.lua`).
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
        // the backfill writes as of `as_of`, never before its newest event
        let cutoff = self.write.events.dedupe_cutoff(window_ms, i64::MAX);
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
pub(super) fn refold(
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
