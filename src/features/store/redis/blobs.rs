//! Item blobs for a store written before they existed. A read fetches an
//! item's hash fields as one string, its blob (`keys::blob_key`), which
//! every write of the hash rewrites; a store written by an earlier version
//! has hashes without blobs. On connecting, unless the layout marker
//! `{p}:layout` says blobs are kept, every item of `{p}:items` gets its
//! blob built from its hash (`blob.lua`, keeping the hash's expiry), then
//! the marker is set. Idempotent, so instances starting together may both
//! do it; writers of the earlier version should be stopped first, or the
//! items they write later read as they were (feature-store/README.md).

use super::keys::blob_key;
use super::{Lane, RedisStore};
use crate::features::store::StoreError;

pub(super) const BLOB_LUA: &str = include_str!("blob.lua");

/// What `{p}:layout` holds once every item has its blob.
const LAYOUT: &str = "blobs";

/// Items per `SSCAN` step and pipeline.
const BATCH: usize = 500;

impl RedisStore {
    /// Builds the missing blobs of a store written before blobs (see the
    /// module doc); the number of items rebuilt.
    pub(super) async fn ensure_blobs(&self) -> Result<usize, StoreError> {
        let mut conn = self.connection(Lane::Background);
        let marker = format!("{}:layout", self.settings.key_prefix);
        let have: Option<String> = redis::cmd("GET")
            .arg(&marker)
            .query_async(&mut conn)
            .await?;
        if have.as_deref() == Some(LAYOUT) {
            return Ok(0);
        }
        let sha = redis::Script::new(BLOB_LUA).get_hash().to_string();
        let mut cursor = 0u64;
        let mut built = 0;
        loop {
            let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.items_index())
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await?;
            if !ids.is_empty() {
                let mut pipe = redis::pipe();
                for id in &ids {
                    let base = self.item_key(id);
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(2)
                        .arg(&base)
                        .arg(blob_key(&base))
                        .ignore();
                }
                self.run_pipeline(&pipe, Lane::Background).await?;
                built += ids.len();
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let _: () = redis::cmd("SET")
            .arg(&marker)
            .arg(LAYOUT)
            .query_async(&mut conn)
            .await?;
        if built > 0 {
            tracing::info!(
                items = built,
                "built the item blobs of a store written before them"
            );
        }
        Ok(built)
    }
}
