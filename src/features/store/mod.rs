//! The online store: where feature state lives between events and requests.
//!
//! Two implementations of [`FeatureStore`]: [`redis::RedisStore`] for
//! production (many instances share it) and [`memory::MemoryStore`], the
//! embedded default when `NEXTBEST_REDIS_URL` is unset. Both apply the same
//! [`Plan`]s with the same feature semantics (`aggregate::apply_update`),
//! at the writer's clock (`now_ms`: windows pruned relative to it), dedupe
//! by event id per entity group by the same rule ([`EventIds::dedupe_cutoff`]:
//! ids a window older than the write's newest event, or than its clock if
//! earlier, are forgotten), and read a customer, its session and any number
//! of items in one round trip. Both keep the popularity lists as part of
//! applying item writes ([`popularity`]: the rule, and the memory store's
//! implementation), the items co-visited with each item ([`covisit`]), and the durable timers of the triggers ([`timers`]:
//! records written with the customer's features, a sharded index of
//! deadlines claimed with a lease). Only this module knows Redis keys.
//! [`open`] builds the one the config asks for.

pub mod covisit;
pub mod dump;
pub mod memory;
pub mod popularity;
pub mod redis;
pub mod timers;

use super::aggregate::{EntityState, Plan, Update};
use super::definition::{Aggregation, Entity, FeatureSet, Field};
use crate::config::StoreConfig;
use async_trait::async_trait;
use std::sync::Arc;

/// Errors of the online store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis error: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

/// Redis error codes that say the server is not serving for now (loading,
/// busy with a script, failing over, out of memory, persistence failing,
/// not authenticated), whatever the call: a later retry may succeed.
const TRANSIENT_REDIS_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
    "NOAUTH",
    "NOPERM",
    "NOSCRIPT",
];

impl StoreError {
    /// Whether the store was unreachable or not serving for now (connection
    /// refused or reset, a timeout, Redis loading, busy, failing over, out of
    /// memory): the same call may succeed later, so a caller that must not
    /// lose data retries it. Otherwise the store answered and refused this
    /// call (a script error, `WRONGTYPE` because a key holds the wrong type,
    /// an unexpected reply), and retrying it unchanged fails again. When in
    /// doubt an error counts as transient: retrying loses nothing.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Protocol(_) => false,
            StoreError::Redis(e) => redis_error_is_transient(e),
        }
    }
}

/// A Redis reply error is transient by its code (for a pipeline: any of
/// its failed commands'); client-side errors by kind.
fn redis_error_is_transient(e: &::redis::RedisError) -> bool {
    use ::redis::ErrorKind;
    if let Some(failed) = e.clone().into_server_errors() {
        return failed
            .iter()
            .any(|(_, s)| TRANSIENT_REDIS_CODES.contains(&s.code()));
    }
    match e.kind() {
        ErrorKind::Server(_) => e.code().is_some_and(|c| TRANSIENT_REDIS_CODES.contains(&c)),
        ErrorKind::UnexpectedReturnType | ErrorKind::Client | ErrorKind::Extension => false,
        _ => true,
    }
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutcome {
    /// Entity groups (customer side, item side) changed by new events.
    pub applied: usize,
    /// Events already seen (same event id), skipped.
    pub duplicates: usize,
    /// Per input plan, in order: whether it was a duplicate.
    pub duplicate: Vec<bool>,
    /// Customers whose features changed, for push notifications.
    pub changed_customers: Vec<String>,
}

/// Which entity group a [`GroupWrite`] changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Group {
    /// The customer and its sessions.
    Customer(String),
    Item(String),
}

/// The merged updates of many events to one entity group (the backfill's
/// bulk path, see `features::merge`), or static values (no events).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupWrite {
    pub group: Group,
    /// `(event id, ts)` of every event merged in, each once. Empty for
    /// static enrichment, which is not deduped (a load overwrites).
    pub events: EventIds,
    /// Updates of the customer or item itself.
    pub updates: Vec<Update>,
    /// Customer groups only: updates per session id.
    pub sessions: Vec<(String, Vec<Update>)>,
}

/// `(event id, ts)` pairs in one buffer: a backfill carries millions of
/// ids, so this is one allocation per group instead of one per id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventIds {
    text: String,
    ends: Vec<u32>,
    ts: Vec<i64>,
}

impl EventIds {
    /// Room for `n` ids of `bytes` bytes in all.
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        EventIds {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, id: &str, ts: i64) {
        self.text.push_str(id);
        self.ends.push(self.text.len() as u32);
        self.ts.push(ts);
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// The oldest event time still deduped by id for these events written
    /// at `now_ms`: a dedupe window before the newest, or before `now_ms`
    /// if that is earlier (`update.lua` and the memory store apply the
    /// same rule).
    pub fn dedupe_cutoff(&self, window_ms: i64, now_ms: i64) -> i64 {
        self.ts
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .min(now_ms)
            .saturating_sub(window_ms)
    }

    /// The pairs, in the order pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, i64)> + '_ {
        (0..self.ts.len()).map(|k| {
            let start = if k == 0 { 0 } else { self.ends[k - 1] as usize };
            (&self.text[start..self.ends[k] as usize], self.ts[k])
        })
    }
}

/// What [`FeatureStore::apply_groups`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupOutcome {
    /// Groups written.
    pub applied: usize,
    /// Store keys written (Redis keys; entities and their sub-keys in memory).
    pub keys: usize,
    /// Groups not written because some of their events were applied before
    /// (e.g. by the live consumer): index into the input and the ids seen.
    pub conflicts: Vec<(usize, Vec<String>)>,
}

/// One read: a customer, optionally its session, and items.
#[derive(Debug, Clone)]
pub struct ReadQuery<'a> {
    pub customer_id: &'a str,
    /// The session to read; `None` → the customer's latest session.
    pub session_id: Option<&'a str>,
    pub item_ids: &'a [String],
}

/// The states read by one [`ReadQuery`].
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub customer: EntityState,
    pub session_id: Option<String>,
    pub session: EntityState,
    /// In the order of `item_ids`; empty state for unknown items.
    pub items: Vec<EntityState>,
}

/// A contact counter of a customer: how many answers offered `action`
/// within a window of `period_ms` that starts at the first such offer (a
/// fixed window: the count resets when it expires).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OfferKey {
    pub action: String,
    pub period_ms: i64,
}

/// The online feature store.
#[async_trait]
pub trait FeatureStore: Send + Sync + 'static {
    /// Applies event plans at the writer's time `now_ms` (windows and the
    /// dedupe memory are pruned relative to it; see `aggregate::apply_update`
    /// and [`EventIds::dedupe_cutoff`]); each event id changes each entity
    /// group at most once.
    async fn apply(&self, plans: &[Plan], now_ms: i64) -> Result<ApplyOutcome, StoreError>;
    /// Applies merged group writes. All-or-nothing per group: if any of a
    /// group's event ids was applied before, nothing of that group is written
    /// and the group is reported in `conflicts` (the caller re-merges without
    /// those events and retries), so every event still counts exactly once.
    async fn apply_groups(
        &self,
        groups: &[GroupWrite],
        now_ms: i64,
    ) -> Result<GroupOutcome, StoreError>;
    /// Reads customer, session and item states in one round trip.
    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError>;
    /// [`Self::read`] and the customer's counts of `offers` (in order; 0
    /// for none or expired), in the same round trip.
    async fn read_with_offers(
        &self,
        q: &ReadQuery<'_>,
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<(ReadResult, Vec<u64>), StoreError>;
    /// Counts one offer of each of `offers` to the customer at `now_ms`.
    async fn record_offers(
        &self,
        customer_id: &str,
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Every item id with features (tests and benches; nothing on the
    /// request or refresh path lists the catalogue).
    async fn item_ids(&self) -> Result<Vec<String>, StoreError>;
    /// The `top` most popular items at `now_ms` and the `top_per_category`
    /// most popular of each category, best first, ties by id: kept by the
    /// store as it applies item writes ([`popularity`]), so this reads the
    /// lists, never the items. At most [`popularity::KEEP_GLOBAL`] and
    /// [`popularity::KEEP_CATEGORY`].
    async fn popular(
        &self,
        now_ms: i64,
        top: usize,
        top_per_category: usize,
    ) -> Result<popularity::PopularLists, StoreError>;
    /// The best `top` co-visited neighbours of each of `item_ids` (in
    /// order; best first, with their scores), kept by the store as it
    /// applies events ([`covisit`]). One round trip.
    async fn neighbours(
        &self,
        item_ids: &[String],
        top: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, StoreError>;
    /// Adds `filings` to the items' neighbours, as applying their events
    /// would have (the backfill's co-visits, [`covisit`]).
    async fn file_covisits(&self, filings: &[covisit::Filing<'_>]) -> Result<(), StoreError>;
    /// Reads item states only.
    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError>;
    /// Checks the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// `memory` or `redis://host:port`, for logs and /readyz.
    fn describe(&self) -> String;
    /// The store's trigger timers ([`timers`]); `None` for a store that
    /// keeps none (test doubles), where inactivity triggers never fire.
    fn timers(&self) -> Option<&dyn timers::TimerStore> {
        None
    }
}

/// The store `cfg` asks for: Redis at `cfg.redis_url` when set (connected,
/// its scripts loaded), else the embedded memory store.
pub async fn open(
    cfg: &StoreConfig,
    set: Arc<FeatureSet>,
) -> Result<Arc<dyn FeatureStore>, StoreError> {
    Ok(match &cfg.redis_url {
        Some(url) => {
            let settings = redis::RedisSettings {
                url: url.clone(),
                key_prefix: cfg.key_prefix.clone(),
                dedupe_window_ms: cfg.dedupe_window_ms(),
                ttl_seconds: cfg.ttl_secs,
                timeout_ms: cfg.timeout_ms,
                timer_shards: cfg.timer_shards,
            };
            Arc::new(redis::RedisStore::connect(settings, set).await?)
        }
        None => Arc::new(memory::MemoryStore::with_limits(
            set,
            cfg.dedupe_window_ms(),
            memory::MemoryLimits::of(cfg),
        )),
    })
}

/// The customer feature holding the latest session id (a `last` of
/// `session_id`), used to find "the current session" when a request names none.
pub fn session_feature(set: &FeatureSet) -> Option<String> {
    set.of_entity(Entity::Customer)
        .find(|f| {
            matches!(
                f.aggregation,
                Aggregation::Last {
                    field: Field::SessionId
                }
            )
        })
        .map(|f| f.name.clone())
}

#[cfg(test)]
mod tests {
    use super::StoreError;
    use ::redis::{ErrorKind, RedisError, ServerErrorKind};

    /// The error a reply line (`-CODE detail`) becomes.
    fn reply(line: &str) -> StoreError {
        let v = ::redis::parse_redis_value(format!("{line}\r\n").as_bytes()).expect("a reply");
        StoreError::Redis(v.extract_error().expect_err("an error reply"))
    }

    #[test]
    fn unreachable_or_not_serving_is_transient() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for e in [
            StoreError::Timeout(300),
            StoreError::Redis(RedisError::from(refused)),
            StoreError::Redis(RedisError::from(reset)),
            StoreError::Redis(RedisError::from((
                ErrorKind::Server(ServerErrorKind::BusyLoading),
                "loading",
            ))),
            reply("-LOADING Redis is loading the dataset in memory"),
            reply("-BUSY Redis is busy running a script"),
            reply("-CLUSTERDOWN The cluster is down"),
            reply("-OOM command not allowed when used memory > 'maxmemory'"),
        ] {
            assert!(e.is_transient(), "{e}");
        }
    }

    #[test]
    fn a_refused_call_is_permanent() {
        for e in [
            reply("-WRONGTYPE Operation against a key holding the wrong kind of value"),
            reply("-ERR user_script:1: nextbest apply: unknown op Q"),
            StoreError::Protocol("expected an array".into()),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
