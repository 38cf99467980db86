//! The `{p}:items` index: the ids of the items that have keys, which
//! [`FeatureStore::item_ids`](crate::features::store::FeatureStore::item_ids)
//! lists (for tests and benches: popularity is kept apart, `popular.rs`).
//! Every item write adds its id (`encode`,
//! `bulk`); nothing removes one when the item's keys expire (`ttl_secs`
//! after its last write) or Redis evicts them, so the listing sweeps the
//! index at most once per [`SWEEP_EVERY`]: ids none of whose keys exist
//! are removed. The index so holds the items written within `ttl_secs`,
//! plus at most one sweep period's worth of expired ones.
//!
//! The sweep loses no concurrent first write: a write runs `update.lua`
//! (creating the item's keys) before its `SADD`, in one pipeline on one
//! connection, and the sweep's pipeline `SREM`s the ids it found without
//! keys, then looks at their keys again and puts back the ids that have
//! some by now. Either that second look sees the write's keys, or the
//! write's `SADD` runs after the `SREM`. (One Redis server, as the store's
//! connection is: on a cluster the index and an item live in different
//! slots, which a pipeline does not order.)

use super::keys::blob_key;
use super::RedisStore;
use crate::features::store::StoreError;
use std::time::{Duration, Instant};

/// Least time between two sweeps of the index.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Ids looked at per pipeline while sweeping.
const SWEEP_CHUNK: usize = 500;

impl RedisStore {
    /// Every id in the index, swept first when a sweep is due (the first
    /// listing, then every [`SWEEP_EVERY`]).
    pub(super) async fn list_items(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.background.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.items_index())
            .query_async(&mut conn)
            .await?;
        if !self.sweep_due() {
            return Ok(ids);
        }
        self.sweep_items(ids).await
    }

    /// Whether a sweep is due; if it is, it counts as started now.
    fn sweep_due(&self) -> bool {
        let mut last = self
            .items_swept_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Removes from the index the ids of `ids` whose item has no key left;
    /// returns the others.
    async fn sweep_items(&self, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        let mut live = Vec::with_capacity(ids.len());
        let mut removed = 0;
        for chunk in ids.chunks(SWEEP_CHUNK) {
            let exists = self.items_exist(chunk).await?;
            let mut gone = Vec::new();
            for (id, e) in chunk.iter().zip(exists) {
                if e {
                    live.push(id.clone());
                } else {
                    gone.push(id.clone());
                }
            }
            if gone.is_empty() {
                continue;
            }
            let back = self.remove_items(&gone).await?;
            removed += gone.len() - back.len();
            live.extend(back);
        }
        if removed > 0 {
            tracing::info!(
                removed,
                kept = live.len(),
                "item index: ids of items without keys (expired) removed"
            );
        }
        Ok(live)
    }

    /// Per id, whether any of the item's keys exists.
    async fn items_exist(&self, ids: &[String]) -> Result<Vec<bool>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(self.item_keys(id));
        }
        let mut conn = self.background.clone();
        let n: Vec<i64> = pipe.query_async(&mut conn).await?;
        Ok(n.into_iter().map(|n| n > 0).collect())
    }

    /// `SREM`s `gone`, then puts back (and returns) those whose item got
    /// keys meanwhile (a first write racing the sweep).
    async fn remove_items(&self, gone: &[String]) -> Result<Vec<String>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SREM").arg(self.items_index()).arg(gone).ignore();
        for id in gone {
            pipe.cmd("EXISTS").arg(self.item_keys(id));
        }
        let mut conn = self.background.clone();
        let n: Vec<i64> = pipe.query_async(&mut conn).await?;
        let back: Vec<String> = gone
            .iter()
            .zip(n)
            .filter(|(_, n)| *n > 0)
            .map(|(id, _)| id.clone())
            .collect();
        if !back.is_empty() {
            let _: () = redis::cmd("SADD")
                .arg(self.items_index())
                .arg(&back)
                .query_async(&mut conn)
                .await?;
        }
        Ok(back)
    }

    /// Every key an item may have: its hash, its dedupe set, its blob, its
    /// `:r:` and `:x:` keys (one slot: they share the item's hash tag).
    fn item_keys(&self, id: &str) -> Vec<String> {
        let base = self.item_key(id);
        let mut keys = Vec::with_capacity(3 + self.item.recent.len() + self.item.resettable.len());
        keys.push(format!("{base}:seen"));
        keys.push(blob_key(&base));
        keys.extend(self.item.recent.iter().map(|f| format!("{base}:r:{f}")));
        keys.extend(self.item.resettable.iter().map(|f| format!("{base}:x:{f}")));
        keys.push(base);
        keys
    }
}
