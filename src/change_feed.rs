//! Which customers' features just changed: the apply step publishes
//! ([`ChangeFeed::publish`], after the store acknowledged), and each
//! `/v1/stream` socket watches its one customer ([`ChangeFeed::watch`]) and
//! pushes a fresh recommendation.
//!
//! Locally a watch is a per-customer `tokio::sync::watch` (a version
//! counter), so a burst of changes collapses into one wake-up and a slow
//! socket never holds more than "something changed": memory per connection
//! is bounded whatever the event rate, and a publisher never waits.
//!
//! Across instances ([`ChangeFeed::redis`]): every publish also goes, batched
//! (one `PUBLISH` for what queued up meanwhile, no added delay), to the
//! Redis channel `<store.key_prefix>:changes`, and every instance
//! subscribes to it, so a socket on instance A hears a change that instance
//! B's consumer (or embedded apply) made. A message is the publisher's
//! instance id, then one customer id a line (ids hold no control
//! characters); an instance ignores its own. The publish queue is bounded:
//! past it, notices are dropped and counted, never waited for. When the
//! subscription breaks, it reconnects with backoff and then wakes every
//! watch (notices may have been missed), so clients refresh. Redis
//! Cluster delivers `PUBLISH` to every node's subscribers, so this holds
//! there too.

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Batches of changed customers waiting for the Redis publisher.
const PUBLISH_QUEUE: usize = 1024;
/// Most customer ids in one Redis message.
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

/// The publishing and watching side; cheap to clone.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One version counter per watched customer.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// To the Redis publisher, when the feed spans instances.
    remote: Option<mpsc::Sender<Vec<String>>>,
    /// This process's id in Redis messages.
    instance: String,
    /// Dropped with the feed: the background tasks stop.
    _stop: watch::Sender<()>,
}

/// One customer's changes, for one socket. Dropping it unregisters.
#[derive(Debug)]
pub struct CustomerWatch {
    rx: watch::Receiver<u64>,
    customer: String,
    feed: Weak<Inner>,
}

impl ChangeFeed {
    /// A feed within this process only.
    pub fn in_process() -> ChangeFeed {
        let (stop, _) = watch::channel(());
        ChangeFeed {
            inner: Arc::new(Inner {
                watchers: Mutex::new(HashMap::new()),
                remote: None,
                instance: uuid::Uuid::new_v4().simple().to_string(),
                _stop: stop,
            }),
        }
    }

    /// A feed shared by every instance on the Redis at `url` through the
    /// channel `channel`. Connects in the background (and reconnects);
    /// only a malformed URL fails here. Needs a tokio runtime.
    pub fn redis(url: &str, channel: String) -> Result<ChangeFeed, FeedError> {
        let client = redis::Client::open(url).map_err(|source| FeedError::Url {
            url: crate::config::redact_url(url),
            source,
        })?;
        let (stop, stop_rx) = watch::channel(());
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let inner = Arc::new(Inner {
            watchers: Mutex::new(HashMap::new()),
            remote: Some(tx),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            _stop: stop,
        });
        tokio::spawn(publish_loop(
            client.clone(),
            channel.clone(),
            inner.instance.clone(),
            rx,
        ));
        tokio::spawn(subscribe_loop(
            client,
            channel,
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
        if let Some(tx) = &self.inner.remote {
            let batch = customers.into_iter().cloned().collect();
            if tx.try_send(batch).is_err() {
                metrics::counter!(crate::metrics::CHANGE_FEED_DROPPED).increment(1);
            }
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

/// The message for `customers` from `instance`.
fn encode(instance: &str, customers: &[String]) -> String {
    let mut m = String::with_capacity(instance.len() + customers.len() * 16);
    m.push_str(instance);
    for c in customers {
        m.push('\n');
        m.push_str(c);
    }
    m
}

/// The sender and customers of a message.
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

/// Sends queued batches to Redis, what queued up meanwhile in one
/// `PUBLISH` (at most [`MAX_IDS_PER_MESSAGE`] ids). Ends when the feed is
/// dropped. While Redis is unreachable, batches are dropped (and counted):
/// a stale notice is worth nothing later.
async fn publish_loop(
    client: redis::Client,
    channel: String,
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
                    tracing::warn!(error = %e, "change feed: cannot connect to Redis to publish; notices dropped");
                    metrics::counter!(crate::metrics::CHANGE_FEED_DROPPED).increment(1);
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
            Ok(_) => metrics::counter!(crate::metrics::CHANGE_FEED_PUBLISHED).increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "change feed: publish failed; notices dropped");
                metrics::counter!(crate::metrics::CHANGE_FEED_DROPPED).increment(1);
                conn = None;
            }
        }
    }
}

/// Subscribes to the channel and wakes local watches for other instances'
/// notices; reconnects with backoff, waking every watch after a break.
/// Ends when the feed is dropped.
async fn subscribe_loop(
    client: redis::Client,
    channel: String,
    feed: Weak<Inner>,
    mut stop: watch::Receiver<()>,
) {
    let mut delays = reconnect_delays();
    let mut connected_before = false;
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
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
                tracing::debug!(channel = %channel, "change feed: subscribed");
                if connected_before {
                    // what was published during the break is lost
                    match feed.upgrade() {
                        Some(inner) => inner.wake_all(),
                        None => return,
                    }
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
                            if let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) {
                                if let Some((from, customers)) = decode(text) {
                                    if from != inner.instance {
                                        inner.wake(customers);
                                    }
                                }
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
                tracing::warn!(channel = %channel, "change feed: subscription lost; reconnecting");
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
        let feed = ChangeFeed::in_process();
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
        let (from, got) = decode(&m).expect("decodes");
        assert_eq!(from, "inst");
        assert_eq!(got.collect::<Vec<_>>(), ["c1", "anon-9f"]);
        let (_, none) = decode("inst").expect("decodes");
        assert_eq!(none.count(), 0);
    }

    #[test]
    fn reconnects_wait_doubling_from_100_ms_to_5_s() {
        let ms: Vec<u128> = reconnect_delays().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
