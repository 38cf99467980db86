//! A short-lived, per-instance cache of item states for the request path.
//!
//! Item features (popularity, conversion, price) are shared by every customer
//! and move slowly next to a request rate, while reading 100 item hashes is
//! most of a request's Redis time. Items read within the last `ttl` are
//! served from memory; the rest are read in the same round trip as the
//! customer. Customer and session features are never cached.

use crate::features::aggregate::EntityState;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Most items held; past this the cache starts over.
const MAX_ENTRIES: usize = 200_000;

pub struct ItemCache {
    ttl: Duration,
    map: RwLock<HashMap<String, (Instant, Arc<EntityState>)>>,
}

impl ItemCache {
    pub fn new(ttl: Duration) -> Self {
        ItemCache {
            ttl,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// Fresh entries for `ids` (None where missing or stale).
    pub fn get_many(&self, ids: &[String]) -> Vec<Option<Arc<EntityState>>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ids.iter()
            .map(|id| {
                map.get(id)
                    .filter(|(at, _)| now.duration_since(*at) < self.ttl)
                    .map(|(_, s)| s.clone())
            })
            .collect()
    }

    /// Stores freshly read states.
    pub fn put_many(&self, entries: impl IntoIterator<Item = (String, Arc<EntityState>)>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() > MAX_ENTRIES {
            map.clear();
        }
        let now = Instant::now();
        for (id, st) in entries {
            map.insert(id, (now, st));
        }
    }
}
