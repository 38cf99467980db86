//! The Kafka consumer: group `nextbest`, subscribed to `^events\..*` and
//! the catalog topics `catalog.items` / `catalog.customers`.
//!
//! Contract (at-least-once delivery, exactly-once effect):
//! 1. a batch of messages is read (up to `batch_size`, waiting at most
//!    `batch_linger_ms` after the first);
//! 2. each message is validated (an event, or on a catalog topic a partial
//!    update of one item's or customer's static fields, key = id); invalid
//!    ones go to the dead-letter topic with the reason, and the broker must
//!    acknowledge that before going on;
//! 3. the valid events are applied to the store in one call (one Redis
//!    pipeline); the store dedupes by event id, so a redelivered event
//!    changes nothing; then the batch's catalog writes in one call, in
//!    message order (each overwrites, so a redelivered one changes nothing
//!    either, and events never touch static fields, so the two calls
//!    commute);
//! 4. only then are the batch's offsets committed.
//!
//! A crash anywhere before 4 redelivers the batch, which 3 makes harmless.
//! Store or broker failures retry the same batch, forever, with jittered
//! exponential backoff (backon; see [`store_retry_delays`]); a receive error
//! mid-batch ends the batch with the messages already received. Known gaps
//! (tracked in the reliability issue): a batch whose store call keeps failing
//! holds up this consumer's partitions, its bad messages are dead-lettered
//! again on each retry, and the commit is synchronous. Messages on the
//! dead-letter topic itself (it matches the pattern) are skipped.

use super::apply::{apply_catalog, apply_events, CatalogVia};
use super::catalog::{self, CatalogTopics};
use super::kafka::{client_config, KafkaSetupError, SUBSCRIPTION};
use super::producer::{DeadLetterOrigin, EventProducer};
use crate::config::KafkaConfig;
use crate::event::{Event, EventError};
use crate::features::store::FeatureStore;
use crate::features::FeatureSet;
use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often librdkafka reports statistics (consumer lag per partition).
const STATS_INTERVAL_MS: &str = "5000";

/// The longest wait between two attempts at one batch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Waits between attempts to apply one batch: exponential from 50 ms,
/// doubling up to 2.5 s, each plus a random jitter of up to as much again
/// (so instances that failed together do not retry together, and no wait
/// exceeds [`MAX_RETRY_DELAY`]). Never ends: a batch is never dropped.
fn store_retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_RETRY_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Client context that turns librdkafka's statistics into the consumer-lag
/// gauge (runs on librdkafka's thread; never blocks the consume loop).
pub struct LagContext;

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(crate::metrics::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// Errors of the consume loop.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Apply(#[from] super::apply::ApplyError),
    #[error(transparent)]
    Produce(#[from] super::producer::ProduceError),
}

/// A batch of consumed messages, not yet committed.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<OwnedMessage>,
}

/// What processing a batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    pub valid: usize,
    pub dead_lettered: usize,
    pub applied: usize,
    pub duplicates: usize,
    /// Customers whose features changed (events or profile writes).
    pub changed_customers: Vec<String>,
    /// Catalog/profile writes applied.
    pub catalog_applied: usize,
    /// Items whose catalog fields were written (their cached states are stale).
    pub changed_items: Vec<String>,
}

/// The consumer with what it needs to apply events.
pub struct EventConsumer {
    consumer: StreamConsumer<LagContext>,
    set: Arc<FeatureSet>,
    store: Arc<dyn FeatureStore>,
    producer: EventProducer,
    catalog: CatalogTopics,
    cfg: KafkaConfig,
}

impl EventConsumer {
    /// Creates the consumer and subscribes to the events pattern and the
    /// catalog topics.
    pub fn new(
        brokers: &str,
        cfg: &KafkaConfig,
        set: Arc<FeatureSet>,
        store: Arc<dyn FeatureStore>,
        producer: EventProducer,
    ) -> Result<Self, ConsumeError> {
        let consumer: StreamConsumer<LagContext> = client_config(brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (cfg.session_timeout_ms / 5).max(100).to_string(),
            )
            .set("max.poll.interval.ms", "300000")
            .set("fetch.wait.max.ms", "5")
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .create_with_context(LagContext)
            .map_err(|source| KafkaSetupError::Client {
                brokers: brokers.into(),
                source,
            })?;
        consumer.subscribe(&SUBSCRIPTION)?;
        Ok(EventConsumer {
            consumer,
            catalog: CatalogTopics::new(&set),
            set,
            store,
            producer,
            cfg: cfg.clone(),
        })
    }

    /// Waits up to `wait` for a first message, then fills the batch for at
    /// most the linger time. An empty batch means nothing arrived. A receive
    /// error after the first message ends the batch with what was received
    /// (the consumer's position is already past those messages, so dropping
    /// them would let the next commit skip them).
    pub async fn next_batch(&self, wait: Duration) -> Result<Batch, ConsumeError> {
        let mut batch = Batch::default();
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(batch),
            Ok(m) => m?.detach(),
        };
        batch.messages.push(first);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.batch_linger_ms);
        while batch.messages.len() < self.cfg.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => batch.messages.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, received = batch.messages.len(), "receive failed mid-batch; processing what was received");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Validates, dead-letters and applies a batch (does not commit).
    #[tracing::instrument(name = "consume_batch", skip_all, fields(messages = batch.messages.len()))]
    pub async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ConsumeError> {
        let mut out = BatchOutcome::default();
        let mut events = Vec::with_capacity(batch.messages.len());
        let mut writes = Vec::new();
        for m in &batch.messages {
            if m.topic() == self.cfg.dlq_topic {
                continue;
            }
            let payload = m.payload().unwrap_or_default();
            if let Some(cols) = self.catalog.columns(m.topic()) {
                match catalog::decode(cols, m.key(), payload) {
                    Ok(w) => writes.push(w),
                    Err(err) => {
                        metrics::counter!(crate::metrics::CATALOG_REJECTED, "entity" => cols.entity_name(), "via" => CatalogVia::Kafka.as_str())
                            .increment(1);
                        self.dead_letter(m, &err.to_string(), "catalog").await?;
                        out.dead_lettered += 1;
                    }
                }
                continue;
            }
            match Event::from_slice(payload) {
                Ok(e) => {
                    metrics::counter!(crate::metrics::EVENTS_CONSUMED, "type" => e.kind.as_str())
                        .increment(1);
                    events.push(e);
                }
                Err(err) => {
                    let label = match &err {
                        EventError::Json(_) | EventError::NotAnObject => "malformed",
                        _ => "invalid",
                    };
                    self.dead_letter(m, &err.to_string(), label).await?;
                    out.dead_lettered += 1;
                }
            }
        }
        out.valid = events.len() + writes.len();
        if !events.is_empty() {
            let applied = apply_events(&self.set, self.store.as_ref(), &events).await?;
            out.applied = applied.applied;
            out.duplicates = applied.duplicates;
            out.changed_customers = applied.changed_customers;
        }
        if !writes.is_empty() {
            let applied = apply_catalog(self.store.as_ref(), &writes, CatalogVia::Kafka).await?;
            out.catalog_applied = writes.len();
            out.changed_items = applied.items;
            out.changed_customers.extend(applied.customers);
        }
        Ok(out)
    }

    /// Sends a message's original bytes to the dead-letter topic with the
    /// reason, and waits for the broker's acknowledgement.
    async fn dead_letter(
        &self,
        m: &OwnedMessage,
        reason: &str,
        label: &'static str,
    ) -> Result<(), ConsumeError> {
        tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %reason, "dead-lettering message");
        let origin = DeadLetterOrigin {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
        };
        self.producer
            .dead_letter(m.key(), m.payload().unwrap_or_default(), reason, &origin)
            .await?;
        metrics::counter!(crate::metrics::EVENTS_DEAD_LETTERED, "reason" => label).increment(1);
        Ok(())
    }

    /// Commits the offsets after the batch's last message per partition.
    pub fn commit(&self, batch: &Batch, mode: CommitMode) -> Result<(), ConsumeError> {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch.messages {
            let e = next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.commit(&tpl, mode)?;
        Ok(())
    }

    /// Runs until `shutdown` turns true: batch → process (retrying on
    /// failure) → commit. Calls `on_applied` with each batch's outcome.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        on_applied: impl Fn(&BatchOutcome) + Send,
    ) {
        tracing::info!(group = %self.cfg.group_id, subscription = ?SUBSCRIPTION, "consumer started");
        while !*shutdown.borrow() {
            let batch = tokio::select! {
                b = self.next_batch(Duration::from_millis(500)) => b,
                _ = shutdown.changed() => break,
            };
            let batch = match batch {
                Ok(b) if b.messages.is_empty() => continue,
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut delays = store_retry_delays();
            loop {
                match self.process(&batch).await {
                    Ok(out) => {
                        if let Err(e) = self.commit(&batch, CommitMode::Sync) {
                            tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (harmless)");
                        }
                        on_applied(&out);
                        break;
                    }
                    Err(e) => {
                        let backoff = delays.next().unwrap_or(MAX_RETRY_DELAY);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not applied; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {
                                tracing::info!("consumer stopping with an unapplied batch; it will be redelivered");
                                return;
                            }
                        }
                    }
                }
            }
        }
        tracing::info!("consumer stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_jittered_stay_bounded_and_never_end() {
        let delays: Vec<Duration> = store_retry_delays().take(1_000).collect();
        assert_eq!(delays.len(), 1_000, "the retries never give up");
        assert!(
            delays[0] >= Duration::from_millis(50) && delays[0] < Duration::from_millis(100),
            "first wait {:?}",
            delays[0]
        );
        assert!(
            delays.iter().all(|d| *d <= MAX_RETRY_DELAY),
            "a wait over the bound"
        );
        let late = &delays[100..];
        assert!(
            late.iter().all(|d| *d >= MAX_RETRY_DELAY / 2),
            "the base reaches its cap"
        );
        assert!(
            late.iter().any(|d| *d != late[0]),
            "jittered: the capped waits are not all equal"
        );
    }
}
