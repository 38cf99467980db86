//! A short-lived, per-instance cache of item states for the request path.
//!
//! Item features (popularity, conversion, price) are shared by every customer
//! and move slowly next to a request rate, while reading 100 item hashes is
//! most of a request's Redis time. Items read within the last `ttl` are
//! served from memory; the rest are read in the same round trip as the
//! customer. Customer and session features are never cached.
//!
//! A `moka` cache holds at most [`MAX_ENTRIES`] items, each for `ttl` after
//! it was stored. Past the bound it evicts entries one by one (by its
//! TinyLFU admission and LRU order), so a full cache keeps serving the items
//! it holds instead of every request missing at once.
//!
//! A catalog write (`PUT /v1/items/{id}`, or a `catalog.items` message a
//! consumer applied) is announced on the change feed
//! (`ChangeFeed::publish_items`, `change_feed.rs`), which
//! [`ItemCache::invalidate`]s the item on the instance that applied it at
//! once and, with Redis, on every other instance as its notice arrives, so
//! their next requests read it fresh. When the feed's subscription
//! (re)starts, notices may have been missed, and the whole cache is
//! [`ItemCache::clear`]ed. A notice lost on its way (queue full, Redis
//! unreachable) leaves a copy until its `ttl` runs out; and a request whose
//! store read raced the write may put the old state back, again for at
//! most one `ttl`.

use crate::features::aggregate::EntityState;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::Duration;

/// Most items held; past this the cache evicts entries one at a time.
const MAX_ENTRIES: u64 = 200_000;

/// Longest time-to-live honoured (moka refuses more than 1000 years; an item
/// state kept for a year is already far beyond any sensible setting).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct ItemCache {
    cache: Cache<String, Arc<EntityState>>,
}

impl std::fmt::Debug for ItemCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the states themselves are too many to print
        f.debug_struct("ItemCache")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl ItemCache {
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, MAX_ENTRIES)
    }

    fn with_capacity(ttl: Duration, max_entries: u64) -> Self {
        ItemCache {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl.min(MAX_TTL))
                .build(),
        }
    }

    /// Fresh entries for `ids` (None where missing or stale).
    pub fn get_many(&self, ids: &[String]) -> Vec<Option<Arc<EntityState>>> {
        ids.iter().map(|id| self.cache.get(id.as_str())).collect()
    }

    /// Forgets `ids`, so the next request reads them from the store.
    pub fn invalidate<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.cache.invalidate(id);
        }
    }

    /// Forgets every item (notices of catalog writes may have been missed).
    /// Entries stored before the call are never served after it.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Stores freshly read states.
    pub fn put_many(&self, entries: impl IntoIterator<Item = (String, Arc<EntityState>)>) {
        for (id, st) in entries {
            self.cache.insert(id, st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ids(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("item-{i}")).collect()
    }

    fn put(cache: &ItemCache, ids: &[String]) {
        cache.put_many(
            ids.iter()
                .map(|id| (id.clone(), Arc::new(EntityState::default()))),
        );
    }

    #[test]
    fn an_entry_is_served_within_ttl_and_expires_after_it() {
        let ttl = Duration::from_millis(200);
        let cache = ItemCache::new(ttl);
        let a = ids(0..3);
        let stored = Instant::now();
        put(&cache, &a[..2]);
        let got = cache.get_many(&a);
        // the positive control: a fresh entry is served, a missing one is not
        if stored.elapsed() < ttl {
            assert!(got[0].is_some() && got[1].is_some(), "fresh entries served");
        }
        assert!(got[2].is_none(), "never stored");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get_many(&a[..2]).iter().any(Option::is_some) {
            assert!(
                Instant::now() < deadline,
                "entries still served 5 s after a 200 ms ttl"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(stored.elapsed() >= ttl, "expired before its ttl");
    }

    #[test]
    fn an_invalidated_entry_is_read_again_and_the_others_stay() {
        let cache = ItemCache::new(Duration::from_secs(60));
        let a = ids(0..3);
        put(&cache, &a);
        assert!(cache.get_many(&a).iter().all(Option::is_some), "all cached");
        cache.invalidate(["item-1"]);
        let got = cache.get_many(&a);
        assert!(got[1].is_none(), "the invalidated item is missing");
        assert!(got[0].is_some() && got[2].is_some(), "the others are kept");
    }

    #[test]
    fn a_cleared_cache_serves_nothing_stored_before_and_caches_again() {
        let cache = ItemCache::new(Duration::from_secs(60));
        let a = ids(0..3);
        put(&cache, &a);
        assert!(cache.get_many(&a).iter().all(Option::is_some), "all cached");
        cache.clear();
        assert!(cache.get_many(&a).iter().all(Option::is_none), "all gone");
        // an entry stored after the clear is served: one stored within the
        // clear's clock tick counts as before it, so store until one is
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            put(&cache, &a[..1]);
            if cache.get_many(&a[..1])[0].is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "nothing cached after a clear");
        }
        let got = cache.get_many(&a);
        assert!(got[1].is_none() && got[2].is_none(), "the others stay gone");
    }

    #[test]
    fn inserting_past_capacity_evicts_gradually() {
        let cap = 1_000;
        let cache = ItemCache::with_capacity(Duration::from_secs(60), cap);
        let first = ids(0..1_000);
        put(&cache, &first);
        cache.cache.run_pending_tasks();
        assert_eq!(cache.cache.entry_count(), cap, "filled to capacity");
        // reads make the first batch popular, as the request path would
        assert!(cache.get_many(&first).iter().all(Option::is_some));
        put(&cache, &ids(1_000..1_500));
        cache.cache.run_pending_tasks();
        let count = cache.cache.entry_count();
        assert!(count <= cap, "over capacity: {count}");
        let still = cache
            .get_many(&first)
            .iter()
            .filter(|s| s.is_some())
            .count();
        assert!(
            still >= 500,
            "only {still} of 1000 earlier entries kept after 500 more inserts"
        );
    }
}
