//! What just changed, for whoever holds a copy: which customers' features
//! changed (each `/v1/stream` socket watches its one customer and pushes a
//! fresh recommendation) and which items' catalog fields were written (each
//! instance's item cache drops them). The apply step publishes, after the
//! store acknowledged: [`ChangeFeed::publish`] for customers,
//! [`ChangeFeed::publish_items`] for catalog writes of items.
//!
//! Locally a watch is a per-customer `tokio::sync::watch` (a version
//! counter), so a burst of changes collapses into one wake-up and a slow
//! socket never holds more than "something changed": memory per connection
//! is bounded whatever the event rate, and a publisher never waits. An item
//! notice drops the items from this instance's item cache at once.
//!
//! Across instances ([`ChangeFeed::redis`]): every publish also goes, batched
//! (one `PUBLISH` for what queued up meanwhile, no added delay), to a Redis
//! channel, and every instance subscribes to both on one connection, so a
//! socket on instance A hears a change that instance B's consumer (or
//! embedded apply) made, and a catalog write B applied drops the item from
//! A's cache too:
//! - `<store.key_prefix>:changes`: changed customers;
//! - `<store.key_prefix>:item-changes`: items whose catalog fields were
//!   written.
//!
//! A message is the publisher's instance id, then one id a line (ids hold
//! no control characters); an instance ignores its own. Each kind has its
//! own bounded publish queue (a flood of customer notices never crowds out
//! item notices): past it, notices are dropped and counted
//! (`nextbest_change_feed_dropped_total{kind}`), never waited for; a dropped
//! item notice leaves the other instances' copy until its
//! `recommend.item_cache_ms` runs out. When the subscription breaks, it
//! reconnects with backoff; every subscription clears the whole item cache
//! and, after a break, wakes every watch (notices may have been missed), so
//! caches read again and clients refresh. Redis Cluster delivers `PUBLISH`
//! to every node's subscribers, so this holds there too.
//!
//! The feed does not order a notice against the store: a request on another
//! instance whose store read raced the write may cache the old state again
//! after the notice, for at most one `item_cache_ms` (as on the instance
//! that applied it).

use crate::decide::item_cache::ItemCache;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Batches of changed ids waiting for the Redis publisher, per kind.
const PUBLISH_QUEUE: usize = 1024;
/// Most ids in one Redis message.
const MAX_IDS_PER_MESSAGE: usize = 2000;
/// How often the subscriber pings Redis, and how long it waits for the answer.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff of the subscriber and publisher.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Errors setting up the cross-instance feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// `url` is shown without its password.
    #[error("change feed: bad Redis URL {url}: {source}")]
    Url {
        url: String,
        source: redis::RedisError,
    },
}

/// What a notice names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Customers whose features changed.
    Customers,
    /// Items whose catalog fields were written.
    Items,
}

impl Kind {
    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            Kind::Customers => "customers",
            Kind::Items => "items",
        }
    }
}

/// The Redis channels of the feed under a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Channels {
    customers: String,
    items: String,
}

impl Channels {
    fn under(key_prefix: &str) -> Channels {
        Channels {
            customers: format!("{key_prefix}:changes"),
            items: format!("{key_prefix}:item-changes"),
        }
    }

    /// What the messages of channel `name` name (None: not ours).
    fn kind(&self, name: &str) -> Option<Kind> {
        if name == self.customers {
            Some(Kind::Customers)
        } else if name == self.items {
            Some(Kind::Items)
        } else {
            None
        }
    }
}

/// The publishing and watching side; cheap to clone.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One version counter per watched customer.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// This instance's item cache, which item notices drop items from.
    items: Option<Arc<ItemCache>>,
    /// To the Redis publishers, when the feed spans instances.
    remote: Option<Remote>,
    /// This process's id in Redis messages.
    instance: String,
    /// Dropped with the feed: the background tasks stop.
    _stop: watch::Sender<()>,
}

/// The queues to the Redis publishers, one per kind.
#[derive(Debug)]
struct Remote {
    customers: mpsc::Sender<Vec<String>>,
    items: mpsc::Sender<Vec<String>>,
}

/// One customer's changes, for one socket. Dropping it unregisters.
#[derive(Debug)]
pub struct CustomerWatch {
    rx: watch::Receiver<u64>,
    customer: String,
    feed: Weak<Inner>,
}

impl ChangeFeed {
    /// A feed within this process only; item notices drop items from
    /// `items`, this instance's item cache (if it has one).
    pub fn in_process(items: Option<Arc<ItemCache>>) -> ChangeFeed {
        let (stop, _) = watch::channel(());
        ChangeFeed {
            inner: Arc::new(Inner {
                watchers: Mutex::new(HashMap::new()),
                items,
                remote: None,
                instance: uuid::Uuid::new_v4().simple().to_string(),
                _stop: stop,
            }),
        }
    }

    /// A feed shared by every instance on the Redis at `url` through the
    /// channels `<key_prefix>:changes` and `<key_prefix>:item-changes`;
    /// item notices, this instance's and the others', drop items from
    /// `items`. Connects in the background (and reconnects); only a
    /// malformed URL fails here. Needs a tokio runtime.
    pub fn redis(
        url: &str,
        key_prefix: &str,
        items: Option<Arc<ItemCache>>,
    ) -> Result<ChangeFeed, FeedError> {
        let client = redis::Client::open(url).map_err(|source| FeedError::Url {
            url: crate::config::redact_url(url),
            source,
        })?;
        let channels = Channels::under(key_prefix);
        let (stop, stop_rx) = watch::channel(());
        let (customers_tx, customers_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (items_tx, items_rx) = mpsc::channel(PUBLISH_QUEUE);
        let inner = Arc::new(Inner {
            watchers: Mutex::new(HashMap::new()),
            items,
            remote: Some(Remote {
                customers: customers_tx,
                items: items_tx,
            }),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            _stop: stop,
        });
        for (kind, channel, rx) in [
            (Kind::Customers, channels.customers.clone(), customers_rx),
            (Kind::Items, channels.items.clone(), items_rx),
        ] {
            tokio::spawn(publish_loop(
                client.clone(),
                channel,
                kind,
                inner.instance.clone(),
                rx,
            ));
        }
        tokio::spawn(subscribe_loop(
            client,
            channels,
            Arc::downgrade(&inner),
            stop_rx,
        ));
        Ok(ChangeFeed { inner })
    }

    /// Announces that these customers' features changed: wakes their local
    /// watches and (across instances) queues them for Redis. Never waits.
    pub fn publish<'a>(&self, customers: impl IntoIterator<Item = &'a String>) {
        let customers: Vec<&String> = customers.into_iter().collect();
        if customers.is_empty() {
            return;
        }
        self.inner.wake(customers.iter().map(|c| c.as_str()));
        if let Some(remote) = &self.inner.remote {
            remote.send(Kind::Customers, customers.into_iter().cloned().collect());
        }
    }

    /// Announces that these items' catalog fields were written: drops them
    /// from this instance's item cache at once and (across instances)
    /// queues them for Redis, so every instance's next request reads them
    /// fresh. Never waits.
    pub fn publish_items(&self, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.inner.drop_items(items.iter().map(String::as_str));
        if let Some(remote) = &self.inner.remote {
            remote.send(Kind::Items, items.to_vec());
        }
    }

    /// Watches one customer's changes.
    pub fn watch(&self, customer: &str) -> CustomerWatch {
        let mut map = self.inner.lock();
        let rx = map
            .entry(customer.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        CustomerWatch {
            rx,
            customer: customer.to_string(),
            feed: Arc::downgrade(&self.inner),
        }
    }

    /// Customers watched on this instance now (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Remote {
    /// Queues a batch for the publisher of `kind`; a full queue drops it.
    fn send(&self, kind: Kind, ids: Vec<String>) {
        let tx = match kind {
            Kind::Customers => &self.customers,
            Kind::Items => &self.items,
        };
        if tx.try_send(ids).is_err() {
            metrics::counter!(crate::metrics::CHANGE_FEED_DROPPED, "kind" => kind.label())
                .increment(1);
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // a panic while holding this lock leaves the map consistent
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the watches of `customers`.
    fn wake<'a>(&self, customers: impl Iterator<Item = &'a str>) {
        let map = self.lock();
        if map.is_empty() {
            return;
        }
        for c in customers {
            if let Some(tx) = map.get(c) {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Wakes every watch (notices may have been missed).
    fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Drops `items` from the item cache.
    fn drop_items<'a>(&self, items: impl Iterator<Item = &'a str>) {
        if let Some(cache) = &self.items {
            cache.invalidate(items);
        }
    }

    /// A message heard on the channel of `kind`: wakes the customers' watches
    /// or drops the items, unless this instance sent it (it did that when
    /// publishing). A payload that is not text is ignored.
    fn receive(&self, kind: Kind, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let Some((from, ids)) = decode(text) else {
            return;
        };
        if from == self.instance {
            return;
        }
        match kind {
            Kind::Customers => self.wake(ids),
            Kind::Items => self.drop_items(ids),
        }
    }

    /// A subscription began: what was published while not subscribed is
    /// lost, so the item cache is cleared (even at the first subscription:
    /// requests may have cached items since the start), and after a break
    /// every watch is woken.
    fn subscribed(&self, after_break: bool) {
        if let Some(cache) = &self.items {
            cache.clear();
        }
        if after_break {
            self.wake_all();
        }
    }
}

impl CustomerWatch {
    /// Waits until the customer's features changed since the last call (or
    /// since the watch began); many changes meanwhile count as one. `false`
    /// once the feed is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Forgets changes so far: [`CustomerWatch::changed`] waits for a new one.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }
}

impl Drop for CustomerWatch {
    fn drop(&mut self) {
        let Some(inner) = self.feed.upgrade() else {
            return;
        };
        let mut map = inner.lock();
        // this watch's receiver is still alive here, so 1 means "only us"
        if map
            .get(&self.customer)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.customer);
        }
    }
}

/// The message for `ids` from `instance`.
fn encode(instance: &str, ids: &[String]) -> String {
    let mut m = String::with_capacity(instance.len() + ids.len() * 16);
    m.push_str(instance);
    for id in ids {
        m.push('\n');
        m.push_str(id);
    }
    m
}

/// The sender and ids of a message.
fn decode(message: &str) -> Option<(&str, impl Iterator<Item = &str>)> {
    let mut lines = message.split('\n');
    let instance = lines.next()?;
    Some((instance, lines.filter(|c| !c.is_empty())))
}

/// Waits between reconnects: doubling from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`], never giving up (a fresh sequence after each success).
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .without_max_times()
        .build()
}

/// Sends queued batches of one kind to its channel, what queued up
/// meanwhile in one `PUBLISH` (at most [`MAX_IDS_PER_MESSAGE`] ids). Ends
/// when the feed is dropped. While Redis is unreachable, batches are
/// dropped (and counted): a stale notice is worth nothing later.
async fn publish_loop(
    client: redis::Client,
    channel: String,
    kind: Kind,
    instance: String,
    mut rx: mpsc::Receiver<Vec<String>>,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut delays = reconnect_delays();
    while let Some(first) = rx.recv().await {
        let mut ids = first;
        while ids.len() < MAX_IDS_PER_MESSAGE {
            match rx.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        ids.sort_unstable();
        ids.dedup();
        if conn.is_none() {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => {
                    conn = Some(c);
                    delays = reconnect_delays();
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = kind.label(), "change feed: cannot connect to Redis to publish; notices dropped");
                    metrics::counter!(crate::metrics::CHANGE_FEED_DROPPED, "kind" => kind.label())
                        .increment(1);
                    tokio::time::sleep(delays.next().unwrap_or(BACKOFF_MAX)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let message = encode(&instance, &ids);
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message)
            .query_async(c)
            .await;
        match sent {
            Ok(_) => {
                metrics::counter!(crate::metrics::CHANGE_FEED_PUBLISHED, "kind" => kind.label())
                    .increment(1)
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = kind.label(), "change feed: publish failed; notices dropped");
                metrics::counter!(crate::metrics::CHANGE_FEED_DROPPED, "kind" => kind.label())
                    .increment(1);
                conn = None;
            }
        }
    }
}

/// Subscribes to both channels on one connection and applies other
/// instances' notices; reconnects with backoff, clearing the item cache on
/// every subscription and waking every watch after a break. Ends when the
/// feed is dropped.
async fn subscribe_loop(
    client: redis::Client,
    channels: Channels,
    feed: Weak<Inner>,
    mut stop: watch::Receiver<()>,
) {
    let mut delays = reconnect_delays();
    let mut connected_before = false;
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[channels.customers.as_str(), channels.items.as_str()])
                .await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            r = session => r,
            _ = stop.changed() => return,
        };
        match pubsub {
            Ok(pubsub) => {
                delays = reconnect_delays();
                metrics::gauge!(crate::metrics::CHANGE_FEED_SUBSCRIBED).set(1.0);
                tracing::debug!(channel = %channels.customers, items = %channels.items, "change feed: subscribed");
                match feed.upgrade() {
                    Some(inner) => inner.subscribed(connected_before),
                    None => return,
                }
                connected_before = true;
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.reset();
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else { break };
                            let Some(inner) = feed.upgrade() else { return };
                            if let Some(kind) = channels.kind(msg.get_channel_name()) {
                                inner.receive(kind, msg.get_payload_bytes());
                            }
                        }
                        _ = ping.tick() => {
                            let alive = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
                metrics::gauge!(crate::metrics::CHANGE_FEED_SUBSCRIBED).set(0.0);
                tracing::warn!(channel = %channels.customers, items = %channels.items, "change feed: subscription lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, "change feed: cannot subscribe to Redis; retrying");
            }
        }
        let wait = delays.next().unwrap_or(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_hears_its_customer_and_bursts_collapse() {
        let feed = ChangeFeed::in_process(None);
        feed.publish(&["before".to_string()]); // nobody watches: nothing kept
        assert_eq!(feed.watched(), 0);
        let mut w = feed.watch("c1");
        let mut other = feed.watch("c2");
        assert_eq!(feed.watched(), 2);
        let burst: Vec<String> = (0..10_000).map(|_| "c1".to_string()).collect();
        feed.publish(&burst);
        tokio::time::timeout(Duration::from_secs(1), w.changed())
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.changed())
                .await
                .is_err(),
            "10,000 changes are one wake-up"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.changed())
                .await
                .is_err(),
            "c2 did not change"
        );
        let mut w2 = feed.watch("c1");
        drop(w);
        assert_eq!(feed.watched(), 2, "c1 still watched by w2");
        feed.publish(&["c1".to_string()]);
        assert!(w2.changed().await);
        drop(w2);
        drop(other);
        assert_eq!(feed.watched(), 0, "unwatched customers are forgotten");
        let mut w3 = feed.watch("c3");
        drop(feed);
        assert!(!w3.changed().await, "the feed is gone");
    }

    #[test]
    fn messages_round_trip() {
        let ids = vec!["c1".to_string(), "anon-9f".to_string()];
        let m = encode("inst", &ids);
        assert_eq!(m, "inst\nc1\nanon-9f");
        let (from, got) = decode(&m).expect("decodes");
        assert_eq!(from, "inst");
        assert_eq!(got.collect::<Vec<_>>(), ["c1", "anon-9f"]);
        let (_, none) = decode("inst").expect("decodes");
        assert_eq!(none.count(), 0);
    }

    #[test]
    fn each_kind_has_its_channel_under_the_prefix() {
        let ch = Channels::under("shop");
        assert_eq!(ch.customers, "shop:changes");
        assert_eq!(ch.items, "shop:item-changes");
        assert_eq!(ch.kind("shop:changes"), Some(Kind::Customers));
        assert_eq!(ch.kind("shop:item-changes"), Some(Kind::Items));
        assert_eq!(ch.kind("other:item-changes"), None);
    }

    fn cache_with(ids: &[&str]) -> Arc<ItemCache> {
        let cache = Arc::new(ItemCache::new(Duration::from_secs(60)));
        cache.put_many(ids.iter().map(|id| {
            (
                id.to_string(),
                Arc::new(crate::features::EntityState::default()),
            )
        }));
        cache
    }

    fn is_cached(cache: &ItemCache, id: &str) -> bool {
        cache.get_many(&[id.to_string()])[0].is_some()
    }

    #[tokio::test]
    async fn item_notices_drop_items_from_the_cache_but_not_our_own_echo() {
        let cache = cache_with(&["a", "b", "c", "d"]);
        let feed = ChangeFeed::in_process(Some(cache.clone()));
        let inner = &feed.inner;
        assert!(["a", "b", "c", "d"].iter().all(|id| is_cached(&cache, id)));
        feed.publish_items(&["a".to_string()]);
        assert!(
            !is_cached(&cache, "a"),
            "a local write drops the item at once"
        );

        let other = |ids: &[&str]| {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            encode("other-instance", &ids)
        };
        inner.receive(Kind::Items, other(&["b"]).as_bytes());
        assert!(
            !is_cached(&cache, "b"),
            "another instance's notice drops it"
        );
        // our own message comes back from Redis: already done, ignored
        let own = encode(&inner.instance, &["c".to_string()]);
        inner.receive(Kind::Items, own.as_bytes());
        assert!(is_cached(&cache, "c"), "our own echo is ignored");

        // a customer notice wakes that customer and drops no item
        let mut w = feed.watch("d");
        inner.receive(Kind::Customers, other(&["d"]).as_bytes());
        assert!(is_cached(&cache, "d"), "a customer id is not an item");
        tokio::time::timeout(Duration::from_secs(1), w.changed())
            .await
            .expect("the customer's watch is woken");
        // and an item notice wakes no watch of the same id
        inner.receive(Kind::Items, other(&["d"]).as_bytes());
        assert!(!is_cached(&cache, "d"));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.changed())
                .await
                .is_err(),
            "an item notice is not a customer change"
        );
        // not text: ignored
        inner.receive(Kind::Items, &[0xff, 0xfe]);
        assert!(is_cached(&cache, "c"));
    }

    #[tokio::test]
    async fn a_subscription_clears_the_item_cache_and_one_after_a_break_wakes_watches() {
        let cache = cache_with(&["a", "b"]);
        let feed = ChangeFeed::in_process(Some(cache.clone()));
        let mut w = feed.watch("c1");
        assert!(is_cached(&cache, "a") && is_cached(&cache, "b"));
        feed.inner.subscribed(false);
        assert!(!is_cached(&cache, "a") && !is_cached(&cache, "b"));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.changed())
                .await
                .is_err(),
            "the first subscription wakes nobody"
        );
        feed.inner.subscribed(true);
        tokio::time::timeout(Duration::from_secs(1), w.changed())
            .await
            .expect("after a break every watch is woken");
    }

    #[test]
    fn reconnects_wait_doubling_from_100_ms_to_5_s() {
        let ms: Vec<u128> = reconnect_delays().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
