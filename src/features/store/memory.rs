//! The embedded in-memory store: the default when no Redis is configured,
//! and the engine of the training export. No persistence: a restart starts
//! empty.
//!
//! Features follow the same rules as Redis (both apply
//! `aggregate::apply_update`), and so does dedupe ([`Seen`] mirrors
//! `update.lua`): each write to an entity group takes a cutoff, the newest
//! event time among its events but no later than the writer's clock, minus
//! `dedupe_window`; ids of events older than the cutoff are not recorded,
//! and recorded ids older than it are forgotten. So a redelivery counts
//! again only once its event is a window older than what the group has
//! since been written with, in both stores; a future-dated event cannot
//! clear the memory, as the clock bounds the cutoff.
//!
//! Bounds ([`MemoryLimits`], the `[store]` keys `memory_max_entities` and
//! `memory_max_sessions`): past `max_entities` customers and items held
//! together, the least recently written are dropped whole (a customer with
//! its sessions and dedupe memory), in O(log n) per write ([`WriteOrder`]);
//! a customer keeps its `max_sessions` most recently written sessions. Any
//! event for an entity (a redelivery too) and any catalog write counts as a
//! write. A dropped entity starts over if it comes back (its features from
//! zero, and a redelivery of one of its old events counts again). The
//! training export's [`MemoryState::new`] is unbounded.
//!
//! Trigger timers ([`super::timers`]) are kept as Redis keeps them: the
//! records in the customer group (written with its event, dropped with the
//! customer by the bound), the deadline index beside the entities; all
//! lost on restart.
//!
//! Popularity ([`super::popularity`]) is kept by [`MemoryStore`] as Redis
//! keeps it: after each chunk, every item it added to a live bucket of
//! (duplicates too) is filed once from its state. An item dropped by the bound keeps what it
//! filed until its buckets leave the window.
//!
//! Co-visitation ([`super::covisit`]) likewise: each chunk's new events
//! file their co-visits, summed per item, into the items' neighbour lists
//! (kept in the item group, dropped with it by the bound).
//!
//! [`MemoryStore`] applies a batch in chunks of [`APPLY_CHUNK`] events,
//! taking the write lock (a fair one: a waiting reader goes before the next
//! chunk) once per chunk and yielding between chunks, so a read waits for
//! one chunk, not for a 10,000-event `POST /v1/events`. Each event's dedupe
//! and updates happen under one hold, so every event still counts once; a
//! read may see a batch partly applied (as on Redis).

use super::covisit::{self, Neighbours};
use super::popularity::{Book, PopularLists, PopularitySpec};
use super::timers::{self, Claim, MemoryIndex, TimerOp, TimerRecord, TimerStore};
use super::{
    session_feature, ApplyOutcome, FeatureStore, Group, GroupOutcome, GroupWrite, OfferKey,
    ReadQuery, ReadResult, StoreError,
};
use crate::config::StoreConfig;
use crate::features::aggregate::{apply_update, EntityState, Plan};
use crate::features::definition::FeatureSet;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::RwLock;

/// Dedupe memory of one entity group: event id → event time, and the
/// same pairs ordered by time for pruning.
#[derive(Debug, Default, Clone)]
struct Seen {
    ids: HashMap<Arc<str>, i64>,
    by_ts: BTreeSet<(i64, Arc<str>)>,
}

impl Seen {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Records the ids of one write (none of them seen before) at the
    /// writer's time `now`, as `update.lua` does: the cutoff is the newest
    /// event time, at most `now`, minus the window; older ids are neither
    /// recorded nor kept.
    fn record(&mut self, events: &[(&str, i64)], now: i64, window_ms: i64) {
        let Some(newest) = events.iter().map(|(_, t)| *t).max() else {
            return;
        };
        let cutoff = newest.min(now).saturating_sub(window_ms);
        for &(id, ts) in events.iter().filter(|(_, t)| *t >= cutoff) {
            let id: Arc<str> = Arc::from(id);
            if let Some(old) = self.ids.insert(id.clone(), ts) {
                self.by_ts.remove(&(old, id.clone()));
            }
            self.by_ts.insert((ts, id));
        }
        while let Some((t, _)) = self.by_ts.first() {
            if *t >= cutoff {
                break;
            }
            if let Some((_, id)) = self.by_ts.pop_first() {
                self.ids.remove(&id);
            }
        }
    }
}

/// How much the store holds (the `[store]` keys `memory_max_entities` and
/// `memory_max_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Most customers and items held together; past it the least recently
    /// written are dropped.
    pub max_entities: usize,
    /// Most sessions kept per customer; a new one past it drops the
    /// customer's least recently written session.
    pub max_sessions: usize,
}

impl MemoryLimits {
    /// No bounds (the training export replays a whole history).
    pub const UNBOUNDED: MemoryLimits = MemoryLimits {
        max_entities: usize::MAX,
        max_sessions: usize::MAX,
    };

    /// The limits `[store]` sets: `memory_max_entities = 0` is no limit,
    /// `memory_max_sessions` is at least 1.
    pub fn of(cfg: &StoreConfig) -> MemoryLimits {
        MemoryLimits {
            max_entities: match cfg.memory_max_entities {
                0 => usize::MAX,
                n => n,
            },
            max_sessions: cfg.memory_max_sessions.max(1),
        }
    }
}

impl Default for MemoryLimits {
    /// The config's defaults.
    fn default() -> Self {
        MemoryLimits::of(&StoreConfig::default())
    }
}

/// An entity as [`WriteOrder`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntityKey {
    Customer(String),
    Item(String),
}

/// Customers and items in the order of their last write: write number →
/// entity. Each entity keeps the number of its last write (`written`), so
/// a write moves it to the end in O(log n) and the least recently written
/// is the first entry. Off (nothing recorded) when the store is unbounded.
#[derive(Debug, Clone)]
struct WriteOrder {
    on: bool,
    last: u64,
    entities: BTreeMap<u64, EntityKey>,
}

impl WriteOrder {
    fn new(on: bool) -> Self {
        WriteOrder {
            on,
            last: 0,
            entities: BTreeMap::new(),
        }
    }

    /// Records a write of the entity last written at `*written` (0: a new
    /// entity, named by `key`) and sets `*written` to this write.
    fn touch(&mut self, written: &mut u64, key: impl FnOnce() -> EntityKey) {
        if !self.on || (*written != 0 && *written == self.last) {
            return;
        }
        let key = match *written {
            0 => key(),
            w => self.entities.remove(&w).unwrap_or_else(key),
        };
        self.last += 1;
        *written = self.last;
        self.entities.insert(self.last, key);
    }

    /// The least recently written entity, taken out of the order.
    fn pop_oldest(&mut self) -> Option<EntityKey> {
        self.entities.pop_first().map(|(_, k)| k)
    }
}

/// A customer's sessions, each with the number of its last write (per
/// customer), so the least recently written can be dropped when a new one
/// would exceed the limit (a scan of the few sessions kept, on new sessions
/// only).
#[derive(Debug, Default, Clone)]
struct Sessions {
    by_id: HashMap<String, (u64, EntityState)>,
    writes: u64,
}

impl Sessions {
    fn get(&self, id: &str) -> Option<&EntityState> {
        self.by_id.get(id).map(|(_, s)| s)
    }

    /// The state of session `id` to write to, made the most recently
    /// written; a new session beyond `max` drops the least recently written.
    fn write(&mut self, id: &str, max: usize) -> &mut EntityState {
        if self.by_id.len() >= max && !self.by_id.contains_key(id) {
            self.drop_oldest();
        }
        self.writes += 1;
        let s = self.by_id.entry(id.to_string()).or_default();
        s.0 = self.writes;
        &mut s.1
    }

    fn drop_oldest(&mut self) {
        let oldest = self
            .by_id
            .iter()
            .min_by_key(|(_, (w, _))| *w)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.by_id.remove(&id);
            metrics::counter!(crate::metrics::MEMORY_EVICTIONS, "entity" => "session").increment(1);
        }
    }
}

#[derive(Debug, Default, Clone)]
struct CustomerGroup {
    state: EntityState,
    sessions: Sessions,
    seen: Seen,
    /// Pending trigger episodes, by trigger (`timers::TimerRecord`).
    timers: BTreeMap<String, TimerRecord>,
    /// The number of its last write in [`WriteOrder`].
    written: u64,
}

#[derive(Debug, Default, Clone)]
struct ItemGroup {
    state: EntityState,
    seen: Seen,
    /// The items co-visited with it (`covisit`).
    neighbours: Neighbours,
    /// The number of its last write in [`WriteOrder`].
    written: u64,
}

/// The state of every entity, without locking: used directly by the
/// training export, and behind a lock by [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryState {
    set: Arc<FeatureSet>,
    session_feature: Option<String>,
    dedupe_window_ms: i64,
    limits: MemoryLimits,
    customers: HashMap<String, CustomerGroup>,
    items: HashMap<String, ItemGroup>,
    order: WriteOrder,
    /// The popularity lists, when kept ([`MemoryState::keep_popularity`]).
    popularity: Option<(PopularitySpec, Book)>,
    /// Whether events file co-visits (`covisit::kept`, and the store's
    /// own choice: the training export keeps none).
    covisit: bool,
    /// The trigger timers' deadline index (`timers`).
    timer_index: MemoryIndex,
}

static EMPTY: std::sync::LazyLock<EntityState> = std::sync::LazyLock::new(EntityState::default);

impl MemoryState {
    /// An unbounded state (the training export).
    pub fn new(set: Arc<FeatureSet>, dedupe_window_ms: i64) -> Self {
        MemoryState::with_limits(set, dedupe_window_ms, MemoryLimits::UNBOUNDED)
    }

    /// A state holding at most what `limits` allow.
    pub fn with_limits(set: Arc<FeatureSet>, dedupe_window_ms: i64, limits: MemoryLimits) -> Self {
        MemoryState {
            session_feature: session_feature(&set),
            set,
            dedupe_window_ms,
            limits,
            customers: HashMap::new(),
            items: HashMap::new(),
            order: WriteOrder::new(limits.max_entities != usize::MAX),
            popularity: None,
            covisit: false,
            timer_index: MemoryIndex::default(),
        }
    }

    /// Keeps the popularity lists (`store::popularity`) and co-visitation
    /// (`store::covisit`) from now on (the store does; the training export
    /// does not need them).
    pub fn keep_popularity(mut self) -> Self {
        self.popularity = PopularitySpec::of(&self.set).map(|s| (s, Book::default()));
        self.covisit = covisit::kept(&self.set);
        self
    }

    /// Keeps co-visitation (`store::covisit`) from now on, without the
    /// popularity lists (the training export: its `cross.covisit_score`).
    pub fn keep_covisits(mut self) -> Self {
        self.covisit = covisit::kept(&self.set);
        self
    }

    /// The best `top` neighbours of `item` (`covisit`).
    pub fn neighbours(&self, item: &str, top: usize) -> Vec<(String, f64)> {
        self.items
            .get(item)
            .map(|g| g.neighbours.top(top))
            .unwrap_or_default()
    }

    /// Files items for popularity as `redis/popular.rs` does: each item of
    /// `items` once, with the `buckets` given (`None`: all live ones).
    fn file_popularity<'a>(
        &mut self,
        items: impl Iterator<Item = (&'a str, Option<Vec<i64>>)>,
        now: i64,
    ) {
        let Some((spec, book)) = &mut self.popularity else {
            return;
        };
        let filings: Vec<_> = items
            .map(|(id, buckets)| {
                let buckets = buckets.unwrap_or_else(|| spec.live(now).collect());
                let st = self.items.get(id).map(|g| &g.state).unwrap_or(&EMPTY);
                spec.filing(id, st, &buckets)
            })
            .filter(|f| !f.totals.is_empty())
            .collect();
        book.file(spec, &filings, now);
    }

    /// The popularity lists at `now` (empty when not kept).
    pub fn popular(&self, now: i64, top: usize, top_per_category: usize) -> PopularLists {
        match &self.popularity {
            Some((spec, book)) => book.popular(spec, now, top, top_per_category),
            None => PopularLists::default(),
        }
    }

    /// The customer group `id`, created if new, made the most recently written.
    fn customer_mut(&mut self, id: &str) -> &mut CustomerGroup {
        let c = self.customers.entry(id.to_string()).or_default();
        self.order
            .touch(&mut c.written, || EntityKey::Customer(id.to_string()));
        c
    }

    /// The item group `id`, created if new, made the most recently written.
    fn item_mut(&mut self, id: &str) -> &mut ItemGroup {
        let g = self.items.entry(id.to_string()).or_default();
        self.order
            .touch(&mut g.written, || EntityKey::Item(id.to_string()));
        g
    }

    /// Drops the least recently written customers and items while more
    /// than `max_entities` are held.
    fn evict_over_limit(&mut self) {
        let (mut customers, mut items) = (0u64, 0u64);
        while self.customers.len() + self.items.len() > self.limits.max_entities {
            debug_assert_eq!(
                self.order.entities.len(),
                self.customers.len() + self.items.len(),
                "a bounded store orders every entity it holds"
            );
            match self.order.pop_oldest() {
                Some(EntityKey::Customer(id)) => {
                    self.customers.remove(&id);
                    customers += 1;
                }
                Some(EntityKey::Item(id)) => {
                    self.items.remove(&id);
                    items += 1;
                }
                None => break,
            }
        }
        if customers + items > 0 {
            use crate::metrics::MEMORY_EVICTIONS;
            metrics::counter!(MEMORY_EVICTIONS, "entity" => "customer").increment(customers);
            metrics::counter!(MEMORY_EVICTIONS, "entity" => "item").increment(items);
            tracing::debug!(
                customers,
                items,
                limit = self.limits.max_entities,
                "memory store full: least recently written entities dropped"
            );
        }
    }

    /// Applies plans at the writer's time `now` (see [`FeatureStore::apply`]).
    pub fn apply(&mut self, plans: &[Plan], now: i64) -> ApplyOutcome {
        let mut out = ApplyOutcome::default();
        let window = self.dedupe_window_ms;
        let max_sessions = self.limits.max_sessions;
        let covisits = self.covisit;
        // (item, neighbour, weight) of the new events, in order
        let mut pairs: Vec<(String, String, f64)> = Vec::new();
        for p in plans {
            let mut dup = true;
            let one = [(p.event_id.as_str(), p.ts)];
            // the index entry first, as Redis writes it (`timers`)
            for op in &p.timers {
                if let TimerOp::Start { trigger, deadline } = op {
                    self.timer_index
                        .hint(&timers::member(trigger, &p.customer_id), *deadline);
                }
            }
            let c = self.customer_mut(&p.customer_id);
            if !c.seen.contains(&p.event_id) {
                c.seen.record(&one, now, window);
                dup = false;
                if covisits {
                    pairs.extend(
                        covisit::pairs_of(p, covisit::list_of(&c.state))
                            .into_iter()
                            .map(|(i, n, w)| (i.to_string(), n.to_string(), w)),
                    );
                }
                p.customer
                    .iter()
                    .for_each(|u| apply_update(&mut c.state, u, now));
                for op in &p.timers {
                    let mut rec = c.timers.remove(op.trigger());
                    TimerRecord::apply(&mut rec, op, &p.event_id, p.ts);
                    if let Some(r) = rec {
                        c.timers.insert(op.trigger().to_string(), r);
                    }
                }
                if let Some(sid) = &p.session_id {
                    if !p.session.is_empty() {
                        let s = c.sessions.write(sid, max_sessions);
                        p.session.iter().for_each(|u| apply_update(s, u, now));
                    }
                }
                out.applied += 1;
                out.changed_customers.push(p.customer_id.clone());
            }
            if let Some(item) = &p.item_id {
                let g = self.item_mut(item);
                if !g.seen.contains(&p.event_id) {
                    g.seen.record(&one, now, window);
                    dup = false;
                    p.item
                        .iter()
                        .for_each(|u| apply_update(&mut g.state, u, now));
                    out.applied += 1;
                }
            }
            if dup {
                out.duplicates += 1;
            }
            out.duplicate.push(dup);
        }
        out.changed_customers.sort();
        out.changed_customers.dedup();
        for f in covisit::merge(pairs.iter().map(|(i, n, w)| (i.as_str(), n.as_str(), *w))) {
            self.item_mut(f.item).neighbours.file(&f.add);
        }
        if let Some((spec, _)) = &self.popularity {
            // every item written (duplicates too) that adds to a live
            // bucket, each once, with those buckets
            let mut touched: Vec<(&str, Option<Vec<i64>>)> = Vec::new();
            let mut at: HashMap<&str, usize> = HashMap::new();
            for p in plans {
                let Some(item) = &p.item_id else { continue };
                let k = *at.entry(item).or_insert_with(|| {
                    touched.push((item, Some(Vec::new())));
                    touched.len() - 1
                });
                if let Some(b) = &mut touched[k].1 {
                    spec.touched(&p.item, now, b);
                }
            }
            // (as Redis: a write adding to no live bucket files nothing)
            touched.retain(|(_, b)| b.as_ref().is_some_and(|b| !b.is_empty()));
            self.file_popularity(touched.into_iter(), now);
        }
        self.evict_over_limit();
        out
    }

    /// Applies merged group writes at the writer's time `now` (see
    /// [`FeatureStore::apply_groups`]).
    pub fn apply_groups(&mut self, groups: &[GroupWrite], now: i64) -> GroupOutcome {
        let mut out = GroupOutcome::default();
        let window = self.dedupe_window_ms;
        let max_sessions = self.limits.max_sessions;
        let mut filed: Vec<&String> = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let (state, seen, sessions) = match &g.group {
                Group::Customer(id) => {
                    let c = self.customer_mut(id);
                    (&mut c.state, &mut c.seen, Some(&mut c.sessions))
                }
                Group::Item(id) => {
                    let it = self.item_mut(id);
                    (&mut it.state, &mut it.seen, None)
                }
            };
            let dups: Vec<String> = g
                .events
                .iter()
                .filter(|(id, _)| seen.contains(id))
                .map(|(id, _)| id.to_string())
                .collect();
            if !dups.is_empty() {
                out.conflicts.push((i, dups));
                continue;
            }
            let ids: Vec<(&str, i64)> = g.events.iter().collect();
            seen.record(&ids, now, window);
            g.updates.iter().for_each(|u| apply_update(state, u, now));
            out.keys += 1;
            if let Some(sessions) = sessions {
                for (sid, updates) in &g.sessions {
                    if !updates.is_empty() {
                        let s = sessions.write(sid, max_sessions);
                        updates.iter().for_each(|u| apply_update(s, u, now));
                        out.keys += 1;
                    }
                }
            }
            out.applied += 1;
            if let Group::Item(id) = &g.group {
                if !g.events.is_empty() {
                    filed.push(id);
                }
            }
        }
        self.file_popularity(filed.into_iter().map(|id| (id.as_str(), None)), now);
        self.evict_over_limit();
        out
    }

    /// The customer's state (empty if unknown).
    pub fn customer(&self, id: &str) -> &EntityState {
        self.customers.get(id).map(|c| &c.state).unwrap_or(&EMPTY)
    }

    /// A session's state, by id or (None) the customer's latest session.
    pub fn session(&self, customer: &str, session: Option<&str>) -> (Option<String>, &EntityState) {
        let Some(c) = self.customers.get(customer) else {
            return (session.map(str::to_string), &EMPTY);
        };
        let sid = session.map(str::to_string).or_else(|| {
            self.session_feature
                .as_ref()
                .and_then(|f| c.state.lasts.get(f))
                .map(|l| l.value.clone())
        });
        let state = sid
            .as_ref()
            .and_then(|s| c.sessions.get(s))
            .unwrap_or(&EMPTY);
        (sid, state)
    }

    /// An item's state (empty if unknown).
    pub fn item(&self, id: &str) -> &EntityState {
        self.items.get(id).map(|g| &g.state).unwrap_or(&EMPTY)
    }

    pub fn item_ids(&self) -> Vec<String> {
        self.items.keys().cloned().collect()
    }

    pub fn features(&self) -> &FeatureSet {
        &self.set
    }

    /// Number of customers and items held.
    pub fn len(&self) -> (usize, usize) {
        (self.customers.len(), self.items.len())
    }
}

/// Most plans (or group writes) applied per hold of [`MemoryStore`]'s
/// write lock: about half a millisecond at ~4 µs an event
/// (benches/RESULTS.md), so neither a read nor the async worker applying
/// is held much longer.
pub const APPLY_CHUNK: usize = 128;

/// [`MemoryState`] behind a lock, as a [`FeatureStore`]. The lock is
/// tokio's: fair (a reader queued while a chunk is applied goes before the
/// next chunk), and never poisoned.
pub struct MemoryStore {
    state: RwLock<MemoryState>,
    offers: std::sync::Mutex<Offers>,
    /// Once-per-session trigger markers: (customer, trigger, session) →
    /// expires at ms; expired ones swept as the offers are.
    markers: std::sync::Mutex<Markers>,
}

/// Once-per-session markers: (customer, trigger, session) → expires at
/// ms, and the size at which expired ones are swept next.
type Markers = (HashMap<(String, String, String), i64>, usize);

/// Contact counters: (customer, key) → (count, expires at ms). Expired
/// ones are dropped whenever the map has doubled since the last sweep, so
/// it stays within twice the live counters (at least [`OFFERS_SWEEP_MIN`]).
#[derive(Default)]
struct Offers {
    counts: HashMap<(String, OfferKey), (u64, i64)>,
    sweep_at: usize,
}

const OFFERS_SWEEP_MIN: usize = 1024;

impl MemoryStore {
    /// A store with the default [`MemoryLimits`].
    pub fn new(set: Arc<FeatureSet>, dedupe_window_ms: i64) -> Self {
        MemoryStore::with_limits(set, dedupe_window_ms, MemoryLimits::default())
    }

    pub fn with_limits(set: Arc<FeatureSet>, dedupe_window_ms: i64, limits: MemoryLimits) -> Self {
        MemoryStore {
            state: RwLock::new(
                MemoryState::with_limits(set, dedupe_window_ms, limits).keep_popularity(),
            ),
            offers: Default::default(),
            markers: Default::default(),
        }
    }

    fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one chunk's write under the write lock, then updates the
    /// gauges of what the store holds.
    async fn write_chunk<T>(&self, write: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut st = self.state.write().await;
        let out = write(&mut st);
        let (customers, items) = st.len();
        drop(st);
        use crate::metrics::MEMORY_ENTITIES;
        metrics::gauge!(MEMORY_ENTITIES, "entity" => "customer").set(customers as f64);
        metrics::gauge!(MEMORY_ENTITIES, "entity" => "item").set(items as f64);
        out
    }
}

/// Adds one chunk's [`ApplyOutcome`] to the batch's (the caller sorts and
/// dedups `changed_customers` at the end).
fn append_outcome(out: &mut ApplyOutcome, part: ApplyOutcome) {
    out.applied += part.applied;
    out.duplicates += part.duplicates;
    out.duplicate.extend(part.duplicate);
    out.changed_customers.extend(part.changed_customers);
}

/// Adds the [`GroupOutcome`] of the chunk starting at input index `offset`
/// to the batch's.
fn append_groups_outcome(out: &mut GroupOutcome, part: GroupOutcome, offset: usize) {
    out.applied += part.applied;
    out.keys += part.keys;
    out.conflicts
        .extend(part.conflicts.into_iter().map(|(i, ids)| (i + offset, ids)));
}

#[async_trait]
impl FeatureStore for MemoryStore {
    async fn apply(&self, plans: &[Plan], now_ms: i64) -> Result<ApplyOutcome, StoreError> {
        let mut out = ApplyOutcome::default();
        for (k, chunk) in plans.chunks(APPLY_CHUNK).enumerate() {
            if k > 0 {
                tokio::task::yield_now().await;
            }
            let part = self.write_chunk(|st| st.apply(chunk, now_ms)).await;
            append_outcome(&mut out, part);
        }
        out.changed_customers.sort();
        out.changed_customers.dedup();
        Ok(out)
    }

    async fn apply_groups(
        &self,
        groups: &[GroupWrite],
        now_ms: i64,
    ) -> Result<GroupOutcome, StoreError> {
        let mut out = GroupOutcome::default();
        for (k, chunk) in groups.chunks(APPLY_CHUNK).enumerate() {
            if k > 0 {
                tokio::task::yield_now().await;
            }
            let part = self.write_chunk(|st| st.apply_groups(chunk, now_ms)).await;
            append_groups_outcome(&mut out, part, k * APPLY_CHUNK);
        }
        Ok(out)
    }

    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError> {
        let st = self.state.read().await;
        let (session_id, session) = st.session(q.customer_id, q.session_id);
        Ok(ReadResult {
            customer: st.customer(q.customer_id).clone(),
            session_id,
            session: session.clone(),
            items: q.item_ids.iter().map(|i| st.item(i).clone()).collect(),
        })
    }

    async fn read_with_offers(
        &self,
        q: &ReadQuery<'_>,
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<(ReadResult, Vec<u64>), StoreError> {
        let read = self.read(q).await?;
        let state = self.offers();
        let n: Vec<u64> = offers
            .iter()
            .map(
                |k| match state.counts.get(&(q.customer_id.to_string(), k.clone())) {
                    Some((n, expires)) if *expires > now_ms => *n,
                    _ => 0,
                },
            )
            .collect();
        Ok((read, n))
    }

    async fn record_offers(
        &self,
        customer_id: &str,
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut state = self.offers();
        if state.counts.len() >= state.sweep_at.max(OFFERS_SWEEP_MIN) {
            state.counts.retain(|_, (_, expires)| *expires > now_ms);
            state.sweep_at = 2 * state.counts.len();
        }
        let counts = &mut state.counts;
        for k in offers {
            let fresh = (0, now_ms.saturating_add(k.period_ms));
            let e = counts
                .entry((customer_id.to_string(), k.clone()))
                .or_insert(fresh);
            if e.1 <= now_ms {
                *e = fresh;
            }
            e.0 += 1;
        }
        Ok(())
    }

    async fn item_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.state.read().await.item_ids())
    }

    async fn popular(
        &self,
        now_ms: i64,
        top: usize,
        top_per_category: usize,
    ) -> Result<PopularLists, StoreError> {
        Ok(self
            .state
            .read()
            .await
            .popular(now_ms, top, top_per_category))
    }

    async fn neighbours(
        &self,
        item_ids: &[String],
        top: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, StoreError> {
        let st = self.state.read().await;
        Ok(item_ids.iter().map(|i| st.neighbours(i, top)).collect())
    }

    async fn file_covisits(&self, filings: &[covisit::Filing<'_>]) -> Result<(), StoreError> {
        let mut st = self.state.write().await;
        for f in filings {
            st.item_mut(f.item).neighbours.file(&f.add);
        }
        st.evict_over_limit();
        Ok(())
    }

    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError> {
        let st = self.state.read().await;
        Ok(ids.iter().map(|i| st.item(i).clone()).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn timers(&self) -> Option<&dyn TimerStore> {
        Some(self)
    }
}

/// The memory store's timers: the same records and index as Redis keeps
/// (`timers`), under the store's lock; lost on restart.
#[async_trait]
impl TimerStore for MemoryStore {
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut st = self.state.write().await;
        let claimed = st
            .timer_index
            .claim(now_ms, now_ms.saturating_add(lease_ms), limit);
        Ok(claimed
            .into_iter()
            .filter_map(|(m, due, gen)| {
                let (trigger, customer) = timers::parse_member(&m)?;
                Some(Claim {
                    trigger: trigger.to_string(),
                    customer_id: customer.to_string(),
                    due,
                    gen,
                })
            })
            .collect())
    }

    async fn record(
        &self,
        customer_id: &str,
        trigger: &str,
    ) -> Result<Option<TimerRecord>, StoreError> {
        let st = self.state.read().await;
        Ok(st
            .customers
            .get(customer_id)
            .and_then(|c| c.timers.get(trigger))
            .cloned())
    }

    async fn finish(
        &self,
        customer_id: &str,
        trigger: &str,
        episode: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut st = self.state.write().await;
        let Some(c) = st.customers.get_mut(customer_id) else {
            return Ok(None);
        };
        match c.timers.get(trigger) {
            Some(r) if r.episode == episode => {
                c.timers.remove(trigger);
                Ok(None)
            }
            Some(r) => Ok(Some(r.deadline)),
            None => Ok(None),
        }
    }

    async fn settle(
        &self,
        claim: &Claim,
        next: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut st = self.state.write().await;
        let m = timers::member(&claim.trigger, &claim.customer_id);
        st.timer_index.settle(&m, claim.gen, next, now_ms);
        Ok(())
    }

    async fn pending(&self) -> Result<u64, StoreError> {
        Ok(self.state.read().await.timer_index.len() as u64)
    }

    async fn mark_once(
        &self,
        customer_id: &str,
        session: &str,
        trigger: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut guard = self.markers.lock().unwrap_or_else(|p| p.into_inner());
        let (markers, sweep_at) = &mut *guard;
        if markers.len() >= (*sweep_at).max(OFFERS_SWEEP_MIN) {
            markers.retain(|_, expires| *expires > now_ms);
            *sweep_at = 2 * markers.len();
        }
        let key = (
            customer_id.to_string(),
            trigger.to_string(),
            session.to_string(),
        );
        match markers.get(&key) {
            Some(expires) if *expires > now_ms => Ok(false),
            _ => {
                markers.insert(key, now_ms.saturating_add(ttl_ms));
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::features::aggregate::plan_event;
    use crate::features::store::EventIds;

    const T0: i64 = 1_764_355_200_000;
    const DAY: i64 = 86_400_000;

    fn set() -> Arc<FeatureSet> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        Arc::new(FeatureSet::load(&path).expect("definitions"))
    }

    /// A page view `id` by `customer`, in `session`, of `item`.
    fn view(
        set: &FeatureSet,
        id: &str,
        customer: &str,
        session: Option<&str>,
        item: Option<&str>,
    ) -> Plan {
        let e = Event::from_value(serde_json::json!({
            "event_id": id, "type": "page_view", "customer_id": customer, "ts": T0,
            "session_id": session, "item_id": item,
        }))
        .expect("test event is valid");
        plan_event(set, &e)
    }

    fn held(st: &MemoryState) -> (Vec<&str>, Vec<&str>) {
        let mut c: Vec<&str> = st.customers.keys().map(String::as_str).collect();
        let mut i: Vec<&str> = st.items.keys().map(String::as_str).collect();
        c.sort();
        i.sort();
        (c, i)
    }

    #[test]
    fn least_recently_written_entities_are_dropped_past_the_limit() {
        let set = set();
        let limits = MemoryLimits {
            max_entities: 4,
            max_sessions: 16,
        };
        let mut st = MemoryState::with_limits(set.clone(), DAY, limits);
        let v = |id: &str, c: &str, i: Option<&str>| view(&set, id, c, None, i);
        st.apply(&[v("e1", "c1", Some("p1")), v("e2", "c2", None)], T0);
        st.apply(&[v("e3", "c3", None), v("e4", "c1", None)], T0);
        assert_eq!(held(&st), (vec!["c1", "c2", "c3"], vec!["p1"]));
        // c4 is the fifth entity: p1 goes, the least recently written (c1
        // was written again since); then c5 pushes c2 out
        st.apply(&[v("e5", "c4", None)], T0);
        assert_eq!(held(&st), (vec!["c1", "c2", "c3", "c4"], vec![]));
        st.apply(&[v("e6", "c5", None)], T0);
        assert_eq!(held(&st), (vec!["c1", "c3", "c4", "c5"], vec![]));
        // the held keep their dedupe memory; a dropped one starts over
        let out = st.apply(&[v("e4", "c1", None), v("e2", "c2", None)], T0);
        assert_eq!(out.duplicate, [true, false]);
        assert_eq!(held(&st), (vec!["c1", "c2", "c4", "c5"], vec![]));
        assert_eq!(st.order.entities.len(), 4, "one order entry per entity");

        // group writes count as writes too
        let mut ids = EventIds::default();
        ids.push("g1", T0);
        let write = GroupWrite {
            group: Group::Item("p9".into()),
            events: ids,
            updates: Vec::new(),
            sessions: Vec::new(),
        };
        st.apply_groups(&[write], T0);
        assert_eq!(held(&st), (vec!["c1", "c2", "c5"], vec!["p9"]));

        let mut unbounded = MemoryState::new(set.clone(), DAY);
        unbounded.apply(&[v("e1", "c1", Some("p1"))], T0);
        assert!(unbounded.order.entities.is_empty(), "nothing ordered");
    }

    #[test]
    fn a_customer_keeps_its_most_recently_written_sessions() {
        let set = set();
        let limits = MemoryLimits {
            max_entities: 100,
            max_sessions: 2,
        };
        let mut st = MemoryState::with_limits(set.clone(), DAY, limits);
        let v = |id: &str, s: &str| view(&set, id, "c", Some(s), None);
        let sessions = |st: &MemoryState| {
            let mut s: Vec<String> = st.customers["c"].sessions.by_id.keys().cloned().collect();
            s.sort();
            s
        };
        st.apply(&[v("e1", "s1"), v("e2", "s2"), v("e3", "s3")], T0);
        assert_eq!(sessions(&st), ["s2", "s3"]);
        st.apply(&[v("e4", "s2"), v("e5", "s4")], T0);
        assert_eq!(sessions(&st), ["s2", "s4"]);
        assert!(!st.session("c", Some("s4")).1.nums.is_empty(), "s4 is read");
        assert!(st.session("c", Some("s3")).1.nums.is_empty(), "s3 is gone");
    }

    /// Plans of `n` page views, each by its own customer `c<i>`.
    fn views(set: &FeatureSet, n: usize) -> Vec<Plan> {
        (0..n)
            .map(|i| view(set, &format!("e{i}"), &format!("c{i}"), None, None))
            .collect()
    }

    #[tokio::test]
    async fn reads_are_served_between_the_chunks_of_a_large_batch() {
        // current-thread runtime: the reader below runs only when the
        // apply yields, so a read seeing the batch's first customer and not
        // its last one was served in the middle of the batch
        let set = set();
        let n = 10 * APPLY_CHUNK;
        let plans = views(&set, n);
        let store = Arc::new(MemoryStore::new(set, DAY));
        let writer = tokio::spawn({
            let store = store.clone();
            async move { store.apply(&plans, T0).await }
        });
        let last = format!("c{}", n - 1);
        let read = |c: &str| {
            let c = c.to_string();
            let store = store.clone();
            async move {
                let q = ReadQuery {
                    customer_id: &c,
                    session_id: None,
                    item_ids: &[],
                };
                !store.read(&q).await.expect("read").customer.nums.is_empty()
            }
        };
        let mut mid_batch = 0;
        while !writer.is_finished() {
            // first, then last: the batch writes c0 first and `last` last
            let first_written = read("c0").await;
            let last_written = read(&last).await;
            if first_written && !last_written {
                mid_batch += 1;
            }
            tokio::task::yield_now().await;
        }
        let out = writer.await.expect("apply task").expect("apply");
        assert_eq!(out.applied, n);
        assert!(
            mid_batch >= 1,
            "no read was served while the batch was being applied"
        );
        assert!(read(&last).await, "the whole batch is applied");
    }

    #[tokio::test]
    async fn a_batch_in_chunks_counts_as_one_apply() {
        let set = set();
        let n = 3 * APPLY_CHUNK + 5;
        // redeliveries within a chunk and across chunks
        let mut plans = views(&set, n);
        for (from, to) in [(1, 2), (3, APPLY_CHUNK + 1), (5, 2 * APPLY_CHUNK + 7)] {
            plans[to] = plans[from].clone();
        }
        let store = MemoryStore::new(set.clone(), DAY);
        let chunked = store.apply(&plans, T0).await.expect("apply");
        let whole = MemoryState::new(set.clone(), DAY).apply(&plans, T0);
        assert_eq!(chunked, whole);
        assert_eq!(chunked.duplicates, 3);

        // group writes: a conflict's index is into the whole input
        let group = |c: String, id: &str| {
            let mut events = EventIds::default();
            events.push(id, T0);
            GroupWrite {
                group: Group::Customer(c),
                events,
                updates: Vec::new(),
                sessions: Vec::new(),
            }
        };
        let mut groups: Vec<GroupWrite> = (0..n).map(|i| group(format!("g{i}"), "x")).collect();
        groups[APPLY_CHUNK + 3] = group("c0".into(), "e0");
        let out = store.apply_groups(&groups, T0).await.expect("apply");
        assert_eq!(out.conflicts, [(APPLY_CHUNK + 3, vec!["e0".to_string()])]);
        assert_eq!(out.applied, n - 1);
    }

    /// Not a check: what an entity costs, for sizing `memory_max_entities`
    /// (benches/RESULTS.md). `cargo test --release --lib -- --ignored
    /// memory_per_entity --nocapture`
    #[test]
    #[ignore]
    fn memory_per_entity() {
        let rss = || {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let pages: f64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0.0);
            pages * 4096.0
        };
        let set = set();
        let kinds = [
            "page_view",
            "click",
            "add_to_cart",
            "page_view",
            "page_view",
        ];
        let mut kept = Vec::new(); // so the next one's memory is fresh
        for per in [1, 10] {
            let (customers, items) = (100_000, 10_000);
            let before = rss();
            let mut st = MemoryState::with_limits(set.clone(), 7 * DAY, MemoryLimits::default());
            for c in 0..customers {
                let plans: Vec<Plan> = (0..per)
                    .map(|j| {
                        let e = Event::from_value(serde_json::json!({
                            "event_id": format!("e{c}-{j}"), "type": kinds[j % kinds.len()],
                            "customer_id": format!("c{c}"), "ts": T0 + j as i64 * 1000,
                            "session_id": format!("s{c}-{}", j / 5),
                            "item_id": format!("p{}", (c * 7 + j) % items),
                            "props": {"price": 19.9, "quantity": 1, "category": format!("cat{}", j % 30),
                                      "page": "/p/1", "dwell_ms": 1000}
                        }))
                        .expect("valid");
                        plan_event(&set, &e)
                    })
                    .collect();
                st.apply(&plans, T0 + 60_000);
            }
            let (c, i) = st.len();
            let bytes = rss() - before;
            println!(
                "{c} customers ({per} events each), {i} items: {:.0} MB, {:.1} KB per entity",
                bytes / 1e6,
                bytes / 1e3 / (c + i) as f64
            );
            kept.push(st);
        }
    }

    #[tokio::test]
    async fn offer_counters_expire_and_expired_ones_are_swept() {
        let store = MemoryStore::new(set(), 1000);
        let key = OfferKey {
            action: "a".into(),
            period_ms: 100,
        };
        let q = ReadQuery {
            customer_id: "c",
            session_id: None,
            item_ids: &[],
        };
        let keys = std::slice::from_ref(&key);
        for _ in 0..2 {
            store.record_offers("c", keys, 0).await.expect("record");
        }
        let count = |now| store.read_with_offers(&q, keys, now);
        assert_eq!(count(99).await.expect("read").1, [2]);
        assert_eq!(count(100).await.expect("read").1, [0], "the window is over");
        // a new window starts at the next offer
        store.record_offers("c", keys, 150).await.expect("record");
        assert_eq!(count(200).await.expect("read").1, [1]);
        // many customers, each window long over: the map never holds more
        // than twice the sweep minimum
        for i in 0..(5 * OFFERS_SWEEP_MIN) {
            let now = 1_000 + i as i64 * 200;
            store
                .record_offers(&format!("c{i}"), keys, now)
                .await
                .expect("record");
            assert!(store.offers().counts.len() <= 2 * OFFERS_SWEEP_MIN + 1);
        }
    }

    #[tokio::test]
    async fn timers_are_written_with_the_event_claimed_once_and_cancelled_by_a_later_one() {
        let set = set();
        let store = MemoryStore::new(set.clone(), DAY);
        let timers = store.timers().expect("the memory store keeps timers");
        let with = |id: &str, ts: i64, op: TimerOp| {
            let mut p = view(&set, id, "c", Some("s"), None);
            p.ts = ts;
            p.timers = vec![op];
            p
        };
        let start = |deadline| TimerOp::Start {
            trigger: "cart".into(),
            deadline,
        };
        store
            .apply(&[with("e1", T0, start(T0 + 1_000))], T0)
            .await
            .expect("apply");
        // a redelivery writes the index again but not the record
        store
            .apply(&[with("e1", T0, start(T0 + 500))], T0)
            .await
            .expect("apply");
        let rec = timers.record("c", "cart").await.expect("record");
        assert_eq!(
            rec,
            Some(TimerRecord {
                episode: "e1".into(),
                started: T0,
                deadline: T0 + 1_000
            })
        );
        assert_eq!(timers.pending().await.expect("pending"), 1);
        assert!(timers
            .claim_due(T0 + 499, 10_000, 10)
            .await
            .expect("claim")
            .is_empty());
        let c = timers.claim_due(T0 + 500, 10_000, 10).await.expect("claim");
        assert_eq!(
            c.len(),
            1,
            "due early (the index is never later than the record)"
        );
        assert_eq!(
            (c[0].trigger.as_str(), c[0].customer_id.as_str()),
            ("cart", "c")
        );
        assert!(
            timers
                .claim_due(T0 + 5_000, 10_000, 10)
                .await
                .expect("claim")
                .is_empty(),
            "claimed: leased until T0 + 10500"
        );
        // not due by its record yet: deferred to the record's deadline
        timers
            .settle(&c[0], Some(T0 + 1_000), T0 + 500)
            .await
            .expect("settle");
        let c = timers
            .claim_due(T0 + 1_000, 10_000, 10)
            .await
            .expect("claim");
        assert_eq!(c.len(), 1);
        assert_eq!(
            timers.finish("c", "cart", "e1").await.expect("finish"),
            None
        );
        timers
            .settle(&c[0], None, T0 + 1_000)
            .await
            .expect("settle");
        assert_eq!(timers.pending().await.expect("pending"), 0);
        assert_eq!(timers.record("c", "cart").await.expect("record"), None);
        // a new episode, then a purchase older than it (late) and a later one
        store
            .apply(&[with("e2", T0 + 2_000, start(T0 + 3_000))], T0)
            .await
            .expect("apply");
        let cancel = || TimerOp::Cancel {
            trigger: "cart".into(),
        };
        store
            .apply(&[with("e3", T0 + 1_500, cancel())], T0)
            .await
            .expect("apply");
        assert!(timers.record("c", "cart").await.expect("record").is_some());
        store
            .apply(&[with("e4", T0 + 2_500, cancel())], T0)
            .await
            .expect("apply");
        assert_eq!(timers.record("c", "cart").await.expect("record"), None);
        // its index entry is claimed and finds nothing to fire
        let c = timers
            .claim_due(T0 + 3_000, 10_000, 10)
            .await
            .expect("claim");
        assert_eq!(c.len(), 1);
        timers
            .settle(&c[0], None, T0 + 3_000)
            .await
            .expect("settle");
        assert_eq!(timers.pending().await.expect("pending"), 0);
    }

    #[tokio::test]
    async fn a_session_marker_is_set_once_until_it_expires() {
        let store = MemoryStore::new(set(), DAY);
        let timers = store.timers().expect("timers");
        assert!(timers
            .mark_once("c", "s1", "t", 1_000, 0)
            .await
            .expect("mark"));
        assert!(!timers
            .mark_once("c", "s1", "t", 1_000, 500)
            .await
            .expect("mark"));
        assert!(
            timers
                .mark_once("c", "s2", "t", 1_000, 500)
                .await
                .expect("mark"),
            "another session"
        );
        assert!(
            timers
                .mark_once("c", "s1", "u", 1_000, 500)
                .await
                .expect("mark"),
            "another trigger"
        );
        assert!(
            timers
                .mark_once("c", "s1", "t", 1_000, 1_000)
                .await
                .expect("mark"),
            "expired"
        );
    }
}
