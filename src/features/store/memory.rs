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

use super::{
    session_feature, ApplyOutcome, FeatureStore, Group, GroupOutcome, GroupWrite, OfferKey,
    ReadQuery, ReadResult, StoreError,
};
use crate::features::aggregate::{apply_update, EntityState, Plan};
use crate::features::definition::FeatureSet;
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

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

#[derive(Debug, Default, Clone)]
struct CustomerGroup {
    state: EntityState,
    sessions: HashMap<String, EntityState>,
    seen: Seen,
}

#[derive(Debug, Default, Clone)]
struct ItemGroup {
    state: EntityState,
    seen: Seen,
}

/// The state of every entity, without locking: used directly by the
/// training export, and behind a lock by [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryState {
    set: Arc<FeatureSet>,
    session_feature: Option<String>,
    dedupe_window_ms: i64,
    customers: HashMap<String, CustomerGroup>,
    items: HashMap<String, ItemGroup>,
}

static EMPTY: std::sync::LazyLock<EntityState> = std::sync::LazyLock::new(EntityState::default);

impl MemoryState {
    pub fn new(set: Arc<FeatureSet>, dedupe_window_ms: i64) -> Self {
        MemoryState {
            session_feature: session_feature(&set),
            set,
            dedupe_window_ms,
            customers: HashMap::new(),
            items: HashMap::new(),
        }
    }

    /// Applies plans at the writer's time `now` (see [`FeatureStore::apply`]).
    pub fn apply(&mut self, plans: &[Plan], now: i64) -> ApplyOutcome {
        let mut out = ApplyOutcome::default();
        let window = self.dedupe_window_ms;
        for p in plans {
            let mut dup = true;
            let one = [(p.event_id.as_str(), p.ts)];
            let c = self.customers.entry(p.customer_id.clone()).or_default();
            if !c.seen.contains(&p.event_id) {
                c.seen.record(&one, now, window);
                dup = false;
                p.customer
                    .iter()
                    .for_each(|u| apply_update(&mut c.state, u, now));
                if let Some(sid) = &p.session_id {
                    if !p.session.is_empty() {
                        let s = c.sessions.entry(sid.clone()).or_default();
                        p.session.iter().for_each(|u| apply_update(s, u, now));
                    }
                }
                out.applied += 1;
                out.changed_customers.push(p.customer_id.clone());
            }
            if let Some(item) = &p.item_id {
                let g = self.items.entry(item.clone()).or_default();
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
        out
    }

    /// Applies merged group writes at the writer's time `now` (see
    /// [`FeatureStore::apply_groups`]).
    pub fn apply_groups(&mut self, groups: &[GroupWrite], now: i64) -> GroupOutcome {
        let mut out = GroupOutcome::default();
        let window = self.dedupe_window_ms;
        for (i, g) in groups.iter().enumerate() {
            let (state, seen, sessions) = match &g.group {
                Group::Customer(id) => {
                    let c = self.customers.entry(id.clone()).or_default();
                    (&mut c.state, &mut c.seen, Some(&mut c.sessions))
                }
                Group::Item(id) => {
                    let it = self.items.entry(id.clone()).or_default();
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
                        let s = sessions.entry(sid.clone()).or_default();
                        updates.iter().for_each(|u| apply_update(s, u, now));
                        out.keys += 1;
                    }
                }
            }
            out.applied += 1;
        }
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

/// [`MemoryState`] behind a lock, as a [`FeatureStore`].
pub struct MemoryStore {
    state: RwLock<MemoryState>,
    offers: std::sync::Mutex<Offers>,
}

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
    pub fn new(set: Arc<FeatureSet>, dedupe_window_ms: i64) -> Self {
        MemoryStore {
            state: RwLock::new(MemoryState::new(set, dedupe_window_ms)),
            offers: Default::default(),
        }
    }

    fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.offers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way reads care about, so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl FeatureStore for MemoryStore {
    async fn apply(&self, plans: &[Plan], now_ms: i64) -> Result<ApplyOutcome, StoreError> {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        Ok(st.apply(plans, now_ms))
    }

    async fn apply_groups(
        &self,
        groups: &[GroupWrite],
        now_ms: i64,
    ) -> Result<GroupOutcome, StoreError> {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        Ok(st.apply_groups(groups, now_ms))
    }

    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError> {
        let st = self.read_state();
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
        Ok(self.read_state().item_ids())
    }

    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError> {
        let st = self.read_state();
        Ok(ids.iter().map(|i| st.item(i).clone()).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offer_counters_expire_and_expired_ones_are_swept() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = Arc::new(FeatureSet::load(&path).expect("definitions"));
        let store = MemoryStore::new(set, 1000);
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
}
