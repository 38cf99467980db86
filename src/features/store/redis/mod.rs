//! The Redis online store: [`RedisStore`], connecting and loading its Lua
//! scripts, and its [`FeatureStore`] implementation, which only builds
//! the calls (`encode`), runs them in one pipeline and decodes the replies
//! (`decode`).
//!
//! - `update.lua` applies updates to one entity group (one cluster slot,
//!   `keys`), deduping by event id; it mirrors `aggregate::apply_update`.
//!   The stream sends one call per event and group ([`FeatureStore::apply`]),
//!   the backfill the merged updates of many events per group (`bulk`).
//! - `restore.lua` writes a group that has no keys yet as its final state,
//!   one `RESTORE` per key (`bulk`, with payloads from [`dump`]).
//! - `read.lua` reads a customer and its session in one call; items are
//!   a `GET` of each item's blob (its hash's fields packed, kept by
//!   `update.lua` and the restores; `blobs` builds them for a store
//!   written before them) and `ZRANGE`s in the same pipeline.
//! - `items` keeps the `{p}:items` index of item ids bounded: ids of
//!   items whose keys expired are swept out when it is listed.
//! - `timers` keeps the trigger timers (`store::timers`): records written
//!   by `update.lua` with the customer's features, a sharded deadline
//!   index (`timer_hint.lua`, `timer_claim.lua`, `timer_settle.lua`) and
//!   `timer_finish.lua`.
//! - `popular` keeps the popularity lists (`store::popularity`): each
//!   write's pipeline reads back the items it wrote, and `pop_write.lua`
//!   files them in the popularity slot; `pop_read.lua` lists them.
//! - `covisit` keeps each item's co-visited neighbours (`store::covisit`):
//!   the event pipeline reads the customer's list before each visiting
//!   event, a second pipeline files the new events' pairs.
//!
//! Two connections: [`Lane::Request`] for what a request waits on (reads,
//! contact counters) and [`Lane::Background`] for the rest (the stream's
//! and the backfill's writes, catalogue scans). Redis answers each
//! connection's commands in order, so on one connection a read sent after
//! the consumer's 500-event pipeline waited for all of it (tens of ms);
//! on its own connection Redis interleaves it between the pipeline's
//! chunks.

mod blobs;
mod bulk;
mod covisit;
mod decode;
mod encode;
mod items;
mod keys;
mod popular;
mod timers;

use super::dump;
use super::popularity::{PopularLists, PopularitySpec};
use super::{
    session_feature, ApplyOutcome, FeatureStore, GroupOutcome, GroupWrite, OfferKey, ReadQuery,
    ReadResult, StoreError,
};
use crate::features::aggregate::{EntityState, Plan};
use crate::features::definition::{Entity, FeatureSet};
use async_trait::async_trait;
use keys::Layout;
use redis::aio::ConnectionManager;
use redis::Value;
use std::sync::Arc;
use std::time::Duration;

const UPDATE_LUA: &str = include_str!("update.lua");
const RESTORE_LUA: &str = include_str!("restore.lua");
const READ_LUA: &str = include_str!("read.lua");

/// Settings of the Redis store (part of the config's `[store]`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub dedupe_window_ms: i64,
    pub ttl_seconds: u64,
    pub timeout_ms: u64,
    /// Shards of the trigger timers' deadline index.
    pub timer_shards: u32,
}

/// Which connection a call goes on (see the module doc).
#[derive(Clone, Copy, Debug)]
enum Lane {
    Request,
    Background,
}

/// The Redis-backed [`FeatureStore`].
pub struct RedisStore {
    conn: ConnectionManager,
    background: ConnectionManager,
    settings: RedisSettings,
    session_feature: Option<String>,
    customer: Layout,
    session: Layout,
    item: Layout,
    update_sha: String,
    restore_sha: String,
    read_sha: String,
    /// Whether the server takes `dump` payloads (Redis ≥ 7.0) and up to
    /// which sizes it keeps listpacks, asked once.
    restore_limits: tokio::sync::OnceCell<Option<dump::Limits>>,
    /// When `{p}:items` was last swept of expired items (`items`).
    items_swept_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// What popularity counts (`popular`); `None`: nothing kept.
    popularity: Option<PopularitySpec>,
    /// Whether events file co-visits (`covisit`).
    covisit: bool,
}

impl RedisStore {
    /// Connects and loads the scripts.
    pub async fn connect(
        settings: RedisSettings,
        set: Arc<FeatureSet>,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.timeout_ms.max(100))))
            .set_response_timeout(Some(Duration::from_millis(settings.timeout_ms.max(100))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let timeout = settings.timeout_ms.max(100);
        let open = || {
            let (client, cfg) = (client.clone(), cfg.clone());
            async move {
                tokio::time::timeout(
                    Duration::from_millis(timeout * 3),
                    ConnectionManager::new_with_config(client, cfg),
                )
                .await
                .map_err(|_| StoreError::Timeout(timeout * 3))?
                .map_err(StoreError::from)
            }
        };
        let (conn, background) = tokio::try_join!(open(), open())?;
        let store = RedisStore {
            conn,
            background,
            session_feature: session_feature(&set),
            customer: Layout::of(&set, Entity::Customer),
            session: Layout::of(&set, Entity::Session),
            item: Layout::of(&set, Entity::Item),
            popularity: PopularitySpec::of(&set),
            covisit: super::covisit::kept(&set),
            settings,
            update_sha: redis::Script::new(UPDATE_LUA).get_hash().to_string(),
            restore_sha: redis::Script::new(RESTORE_LUA).get_hash().to_string(),
            read_sha: redis::Script::new(READ_LUA).get_hash().to_string(),
            restore_limits: tokio::sync::OnceCell::new(),
            items_swept_at: std::sync::Mutex::new(None),
        };
        store.reload_scripts().await?;
        store.ensure_blobs().await?;
        Ok(store)
    }

    fn connection(&self, lane: Lane) -> ConnectionManager {
        match lane {
            Lane::Request => self.conn.clone(),
            Lane::Background => self.background.clone(),
        }
    }

    async fn reload_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for src in [
            UPDATE_LUA,
            RESTORE_LUA,
            READ_LUA,
            blobs::BLOB_LUA,
            popular::POP_WRITE_LUA,
            popular::POP_READ_LUA,
            timers::TIMER_HINT_LUA,
            timers::TIMER_CLAIM_LUA,
            timers::TIMER_SETTLE_LUA,
            timers::TIMER_FINISH_LUA,
        ] {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// The calls of one read: the customer group's script, then the items.
    fn read_pipeline(&self, q: &ReadQuery<'_>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(&self.read_sha)
            .arg(1)
            .arg(self.customer_key(q.customer_id))
            .arg(self.group_args(&self.customer, &self.session, q.session_id));
        self.push_item_reads(&mut pipe, q.item_ids);
        pipe
    }

    /// Runs `pipe` on the connection of `lane`, reloading the scripts once
    /// if Redis lost them.
    async fn run_pipeline(
        &self,
        pipe: &redis::Pipeline,
        lane: Lane,
    ) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.connection(lane);
        let first: Result<Vec<Value>, redis::RedisError> = pipe.query_async(&mut conn).await;
        match first {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and lost its script cache: reload and retry;
                // the update script is idempotent per event id.
                self.reload_scripts().await?;
                Ok(pipe.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    }

    /// Runs a filing pipeline (popularity, co-visits) once: a co-visit's
    /// `ZINCRBY` is not idempotent, so a pipeline Redis ran in part is never
    /// run again (when Redis lost its scripts, they are reloaded and the
    /// error returned: the write's retry, a redelivery, files the
    /// popularity again and no co-visits, at most once). Errors as
    /// `settle_filing`.
    pub(super) async fn run_filings(&self, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        if pipe.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection(Lane::Background);
        let done: Result<Vec<Value>, redis::RedisError> = pipe.query_async(&mut conn).await;
        match done {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.reload_scripts().await?;
                Err(e.into())
            }
            other => settle_filing(other.map_err(StoreError::from)),
        }
    }
}

/// A filing's outcome: a transient error is returned (the write is
/// retried); a refused filing is logged, not returned: the features were
/// written, and retrying the write would be refused the same way.
fn settle_filing(done: Result<Vec<Value>, StoreError>) -> Result<(), StoreError> {
    match done {
        Ok(_) => Ok(()),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "popularity or co-visit filing refused; those items' lists are short until their next write");
            Ok(())
        }
    }
}

#[async_trait]
impl FeatureStore for RedisStore {
    #[tracing::instrument(level = "debug", skip_all, fields(events = plans.len()))]
    async fn apply(&self, plans: &[Plan], now_ms: i64) -> Result<ApplyOutcome, StoreError> {
        if plans.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let (mut pipe, shape) = self.event_pipeline(plans, now_ms);
        let reads = self.push_event_pop_reads(&mut pipe, plans, now_ms);
        let mut replies = self.run_pipeline(&pipe, Lane::Background).await?;
        let at = replies
            .len()
            .checked_sub(reads.len())
            .ok_or_else(|| decode::protocol("apply: fewer replies than calls"))?;
        let pop = replies.split_off(at);
        let (out, lists) = decode::event_outcome(plans, shape, replies);
        // the popularity and the co-visits the write gave: one more call
        let filings = self.filings_of(&reads, pop)?;
        let mut pipe = redis::pipe();
        self.push_pop_write(&mut pipe, &filings, now_ms);
        self.push_event_covisits(&mut pipe, plans, lists)?;
        self.run_filings(&pipe).await?;
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(groups = groups.len()))]
    async fn apply_groups(
        &self,
        groups: &[GroupWrite],
        now_ms: i64,
    ) -> Result<GroupOutcome, StoreError> {
        self.write_groups(groups, now_ms).await
    }

    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError> {
        let replies = self
            .run_pipeline(&self.read_pipeline(q), Lane::Request)
            .await?;
        self.parse_read(replies, q.item_ids.len())
    }

    async fn read_with_offers(
        &self,
        q: &ReadQuery<'_>,
        offers: &[OfferKey],
        _now_ms: i64,
    ) -> Result<(ReadResult, Vec<u64>), StoreError> {
        if offers.is_empty() {
            return Ok((self.read(q).await?, Vec::new()));
        }
        let mut pipe = self.read_pipeline(q);
        // the counters share the customer's hash tag: one slot, one MGET
        let keys: Vec<String> = offers
            .iter()
            .map(|k| self.offer_key(q.customer_id, k))
            .collect();
        pipe.cmd("MGET").arg(&keys);
        let mut replies = self.run_pipeline(&pipe, Lane::Request).await?;
        let counts = replies
            .pop()
            .ok_or_else(|| StoreError::Protocol("missing offer counts reply".into()))?;
        let counts = decode::offer_counts(counts, offers.len())?;
        Ok((self.parse_read(replies, q.item_ids.len())?, counts))
    }

    async fn record_offers(
        &self,
        customer_id: &str,
        offers: &[OfferKey],
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        if offers.is_empty() {
            return Ok(());
        }
        // a fixed window: the expiry is set by the first offer only (NX)
        let mut pipe = redis::pipe();
        for k in offers {
            let key = self.offer_key(customer_id, k);
            pipe.cmd("INCR").arg(&key).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(k.period_ms.max(1))
                .arg("NX")
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    async fn item_ids(&self) -> Result<Vec<String>, StoreError> {
        self.list_items().await
    }

    async fn popular(
        &self,
        now_ms: i64,
        top: usize,
        top_per_category: usize,
    ) -> Result<PopularLists, StoreError> {
        self.read_popular(now_ms, top, top_per_category).await
    }

    async fn neighbours(
        &self,
        item_ids: &[String],
        top: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, StoreError> {
        self.read_neighbours(item_ids, top).await
    }

    async fn file_covisits(
        &self,
        filings: &[super::covisit::Filing<'_>],
    ) -> Result<(), StoreError> {
        self.file_neighbours(filings).await
    }

    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        self.push_item_reads(&mut pipe, ids);
        let replies = self.run_pipeline(&pipe, Lane::Request).await?;
        self.parse_items(&mut replies.into_iter(), ids.len())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn describe(&self) -> String {
        redact(&self.settings.url)
    }

    fn timers(&self) -> Option<&dyn crate::features::store::timers::TimerStore> {
        Some(self)
    }
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}
