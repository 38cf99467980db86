//! The Kafka consumer: group `nextbest`, subscribed to `^events\..*` and
//! the catalog topics `catalog.items` / `catalog.customers`.
//!
//! Contract (at-least-once delivery, exactly-once effect):
//! 1. a batch of messages is read (up to `batch_size`, waiting at most
//!    `batch_linger_ms` after the first); a receive error mid-batch ends the
//!    batch with the messages already received;
//! 2. each message is decoded and validated once per batch (an event, or on
//!    a catalog topic a partial update of one item's or customer's static
//!    fields, key = id); invalid ones (an event dated outside the
//!    `store.allowed_future_secs` / `allowed_lateness_secs` bounds too) go to
//!    the dead-letter topic with the reason, and the broker must acknowledge
//!    each before going on;
//! 3. the valid events are applied to the store in one call (one Redis
//!    pipeline); the store dedupes by event id, so a redelivered event
//!    changes nothing; then the batch's catalog writes in one call, in
//!    message order (each overwrites, so a redelivered one changes nothing
//!    either, and events never touch static fields, so the two calls
//!    commute);
//!    the applied events' `seq` go through the order check (`order.rs`);
//! 4. only then are the batch's offsets committed: at most every
//!    `kafka.commit_interval_ms` (100), covering every batch applied since
//!    the last commit, and when the stream goes idle (a commit per small
//!    batch kept a Kafka-protocol broker busy at a few thousand events/s).
//!
//! A crash anywhere before 4 redelivers the batch, which 3 makes harmless.
//! Failures in 2 and 3 (see `retry.rs`):
//! - the store or broker unreachable (connection refused or reset, timeout,
//!   Redis loading, busy, failing over: [`StoreError::is_transient`]): the
//!   same call is retried, forever, with jittered exponential backoff; only
//!   the failed call, not the decoding or the dead letters already sent;
//! - the store refusing the call (a script or type error such as
//!   `WRONGTYPE`): the events (or writes) are split in halves until each
//!   refused one stands alone, all the others are applied, and each refused
//!   one goes to the dead-letter topic once, with the store's error as the
//!   reason (label `store_rejected`); then the batch is committed and the
//!   consumer goes on. A refused event may have changed its other entity
//!   group (its item when its customer was refused): groups are written
//!   independently.
//!
//! Commits are asynchronous (`CommitMode::Async`: queued to librdkafka,
//! which sends them in order; a failure is logged by [`LagContext`] and the
//! next commit of the partition covers it, or the messages are redelivered,
//! harmlessly); nothing on the async threads waits for the broker. So that
//! a clean stop loses no commit, the offsets of every batch applied in the
//! run are committed once more, synchronously, on the blocking pool, before
//! [`EventConsumer::run`] returns (closing the consumer would flush queued
//! commits too; this one is explicit, bounded and logged), and the consumer
//! is closed there as well; a batch not yet applied when the stop came is
//! not committed and is redelivered. Dead letters are sent
//! once per delivery of a batch: a batch redelivered after a crash sends
//! its dead letters again. Messages on the dead-letter topic itself (it
//! matches the pattern) are skipped.
//!
//! [`StoreError::is_transient`]: crate::features::store::StoreError::is_transient

use super::apply::{apply_catalog, apply_events_with, ApplyError, CatalogVia};
use super::catalog::{self, CatalogTopics};
use super::kafka::{client_config, KafkaSetupError, SUBSCRIPTION};
use super::order::SeqCheck;
use super::producer::{DeadLetterOrigin, EventProducer};
use super::retry::{isolate_refused, until_answered, until_done, Stopped};
use crate::clock::Clock;
use crate::config::KafkaConfig;
use crate::config::StoreConfig;
use crate::event::{newest_ts, Event, EventError, TimeBounds};
use crate::features::store::{FeatureStore, GroupWrite};
use crate::features::FeatureSet;
use crate::triggers::Triggers;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
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

/// How long the synchronous commit before exiting may take.
const EXIT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The dead-letter label (metric) of an event or write the store refused.
const STORE_REJECTED: &str = "store_rejected";

/// Client context that turns librdkafka's statistics into the consumer-lag
/// gauge and logs failed asynchronous commits (runs on librdkafka's
/// thread or the polling task; never blocks the consume loop).
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

impl ConsumerContext for LagContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(e) => {
                tracing::warn!(error = %e, partitions = offsets.count(), "offset commit failed; a later commit covers it, or the batch is redelivered (harmless)")
            }
        }
    }
}

/// Errors setting up the consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// A batch of consumed messages, not yet committed.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<OwnedMessage>,
}

/// What processing a batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Messages that decoded and validated (events and catalog writes).
    pub valid: usize,
    /// Messages sent to the dead-letter topic: invalid, or refused by the store.
    pub dead_lettered: usize,
    /// Of the valid ones, those the store refused (dead-lettered too).
    pub refused: usize,
    pub applied: usize,
    pub duplicates: usize,
    /// Customers whose features changed (events or profile writes).
    pub changed_customers: Vec<String>,
    /// Catalog/profile writes applied.
    pub catalog_applied: usize,
    /// Items whose catalog fields were written (their cached states are stale).
    pub changed_items: Vec<String>,
}

/// A message going to the dead-letter topic.
#[derive(Debug)]
struct Reject {
    /// Index of the message in its batch.
    msg: usize,
    reason: String,
    /// The metric label of the reason.
    label: &'static str,
}

/// A batch's messages decoded and sorted by what happens to them, before
/// anything is sent or written.
#[derive(Debug, Default)]
struct Decoded {
    events: Vec<Event>,
    /// Per event, the index of its message in the batch.
    event_msgs: Vec<usize>,
    writes: Vec<GroupWrite>,
    /// Per catalog write, the index of its message in the batch.
    write_msgs: Vec<usize>,
    rejects: Vec<Reject>,
}

/// The consumer with what it needs to apply events.
pub struct EventConsumer {
    /// Shared with the blocking pool for the commit before exiting.
    consumer: Arc<StreamConsumer<LagContext>>,
    set: Arc<FeatureSet>,
    store: Arc<dyn FeatureStore>,
    producer: EventProducer,
    catalog: CatalogTopics,
    cfg: KafkaConfig,
    /// How far from the clock an event's `ts` may be (else dead-lettered).
    bounds: TimeBounds,
    /// The per-customer `seq` check of applied events.
    seq: SeqCheck,
    /// The server's clock: events are checked against it and written at
    /// it; an event-time clock follows the applied events.
    clock: Clock,
    /// The triggers: timer changes written with the events, checks after.
    triggers: Option<Arc<Triggers>>,
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
        let consumer: StreamConsumer<LagContext> = client_config(brokers, cfg)
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
            consumer: Arc::new(consumer),
            catalog: CatalogTopics::new(&set),
            set,
            store,
            producer,
            cfg: cfg.clone(),
            bounds: StoreConfig::default().time_bounds(),
            seq: SeqCheck::default(),
            clock: Clock::System,
            triggers: None,
        })
    }

    /// The time bounds of events (`store.allowed_future_secs`,
    /// `store.allowed_lateness_secs`) and the `seq` check to report to
    /// (shared with the in-process path); defaults otherwise.
    pub fn with_checks(mut self, bounds: TimeBounds, seq: SeqCheck) -> Self {
        self.bounds = bounds;
        self.seq = seq;
        self
    }

    /// The server's clock (default: the wall clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Writes the triggers' timer changes with the events and hands the
    /// applied events to their checks (`ingest::apply_events_with`).
    pub fn with_triggers(mut self, triggers: Arc<Triggers>) -> Self {
        self.triggers = Some(triggers);
        self
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

    /// Validates, dead-letters and applies a batch (does not commit): steps
    /// 2 and 3 of the contract. Returns only once every valid message is
    /// applied or refused and every dead letter acknowledged, retrying while
    /// the store or broker is unreachable; or [`Stopped`] if `stop` turned
    /// true first.
    #[tracing::instrument(name = "consume_batch", skip_all, fields(group = %self.cfg.group_id, messages = batch.messages.len()))]
    pub async fn process(
        &self,
        batch: &Batch,
        stop: &watch::Receiver<bool>,
    ) -> Result<BatchOutcome, Stopped> {
        let decoded = self.decode(batch);
        for r in &decoded.rejects {
            self.dead_letter(batch, r, stop).await?;
        }
        let mut out = BatchOutcome {
            valid: decoded.events.len() + decoded.writes.len(),
            dead_lettered: decoded.rejects.len(),
            ..BatchOutcome::default()
        };
        let mut refused = self.apply_events(batch, &decoded, stop, &mut out).await?;
        refused.extend(self.apply_catalog(&decoded, stop, &mut out).await?);
        if !refused.is_empty() {
            tracing::warn!(
                refused = refused.len(),
                valid = out.valid,
                "the store refused part of the batch; the rest is applied"
            );
        }
        for r in &refused {
            self.dead_letter(batch, r, stop).await?;
        }
        out.refused = refused.len();
        out.dead_lettered += refused.len();
        out.changed_customers.sort();
        out.changed_customers.dedup();
        Ok(out)
    }

    /// Step 2: each message of the batch decoded once, nothing sent yet.
    fn decode(&self, batch: &Batch) -> Decoded {
        let mut d = Decoded::default();
        let (now, bounds) = (self.clock.now_ms(), self.clock.bounds(self.bounds));
        for (msg, m) in batch.messages.iter().enumerate() {
            if m.topic() == self.cfg.dlq_topic {
                continue;
            }
            let payload = m.payload().unwrap_or_default();
            if let Some(cols) = self.catalog.columns(m.topic()) {
                match catalog::decode(cols, m.key(), payload) {
                    Ok(w) => {
                        d.writes.push(w);
                        d.write_msgs.push(msg);
                    }
                    Err(err) => {
                        metrics::counter!(crate::metrics::CATALOG_REJECTED, "entity" => cols.entity_name(), "via" => CatalogVia::Kafka.as_str())
                            .increment(1);
                        d.rejects.push(Reject {
                            msg,
                            reason: err.to_string(),
                            label: "catalog",
                        });
                    }
                }
                continue;
            }
            match Event::from_slice(payload).and_then(|e| e.check_time(now, bounds).map(|()| e)) {
                Ok(e) => {
                    metrics::counter!(crate::metrics::EVENTS_CONSUMED, "type" => e.kind.as_str())
                        .increment(1);
                    d.events.push(e);
                    d.event_msgs.push(msg);
                }
                Err(err) => {
                    let label = match &err {
                        EventError::Json(_) | EventError::NotAnObject => "malformed",
                        _ => "invalid",
                    };
                    d.rejects.push(Reject {
                        msg,
                        reason: err.to_string(),
                        label,
                    });
                }
            }
        }
        d
    }

    /// Step 3 for the events: all in one store call, split to isolate the
    /// ones the store refuses; returns those, to dead-letter.
    async fn apply_events(
        &self,
        batch: &Batch,
        d: &Decoded,
        stop: &watch::Receiver<bool>,
        out: &mut BatchOutcome,
    ) -> Result<Vec<Reject>, Stopped> {
        let (set, store, events) = (&*self.set, self.store.as_ref(), &d.events);
        let clock = &self.clock;
        let triggers = self.triggers.as_deref();
        let newest = newest_ts(events);
        let iso = isolate_refused(events.len(), move |r| {
            let part = &events[r];
            until_answered("apply events", stop, ApplyError::is_transient, move || {
                apply_events_with(set, store, part, clock.write_time(newest), triggers)
            })
        })
        .await?;
        let applied_newest = iso
            .done
            .iter()
            .filter_map(|(r, _)| newest_ts(&events[r.clone()]))
            .max();
        self.clock.observe(applied_newest);
        for (r, o) in iso.done {
            for (k, e) in events[r.clone()].iter().enumerate() {
                let i = r.start + k;
                if !o.duplicate.get(k).copied().unwrap_or(false) {
                    let m = &batch.messages[d.event_msgs[i]];
                    let origin = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
                    self.seq.observe(e, Some(&origin));
                }
            }
            out.applied += o.applied;
            out.duplicates += o.duplicates;
            out.changed_customers.extend(o.changed_customers);
        }
        Ok(refusals(iso.refused, &d.event_msgs, "event"))
    }

    /// Step 3 for the catalog writes, in message order: as for the events.
    async fn apply_catalog(
        &self,
        d: &Decoded,
        stop: &watch::Receiver<bool>,
        out: &mut BatchOutcome,
    ) -> Result<Vec<Reject>, Stopped> {
        let (store, writes) = (self.store.as_ref(), &d.writes);
        let iso = isolate_refused(writes.len(), move |r| {
            let part = &writes[r];
            until_answered("apply catalog", stop, ApplyError::is_transient, move || {
                apply_catalog(store, part, CatalogVia::Kafka)
            })
        })
        .await?;
        for (r, o) in iso.done {
            out.catalog_applied += r.len();
            out.changed_items.extend(o.items);
            out.changed_customers.extend(o.customers);
        }
        Ok(refusals(iso.refused, &d.write_msgs, "catalog write"))
    }

    /// Sends a message's original bytes to the dead-letter topic with the
    /// reason, retrying until the broker acknowledged it (a message is never
    /// committed without its dead letter).
    async fn dead_letter(
        &self,
        batch: &Batch,
        r: &Reject,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let m = &batch.messages[r.msg];
        tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %r.reason, "dead-lettering message");
        let origin = DeadLetterOrigin {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            group: &self.cfg.group_id,
        };
        let (key, payload) = (m.key(), m.payload().unwrap_or_default());
        until_done("dead letter", stop, || {
            self.producer.dead_letter(key, payload, &r.reason, &origin)
        })
        .await?;
        metrics::counter!(crate::metrics::EVENTS_DEAD_LETTERED, "reason" => r.label).increment(1);
        Ok(())
    }

    /// Commits the offsets after the batch's last message per partition.
    /// `CommitMode::Sync` blocks the calling thread until the broker
    /// answers; the loop ([`Self::run`]) commits asynchronously.
    pub fn commit(&self, batch: &Batch, mode: CommitMode) -> Result<(), ConsumeError> {
        let mut applied = Applied::default();
        applied.add(batch);
        if let Some(tpl) = applied.offsets()? {
            self.consumer.commit(&tpl, mode)?;
        }
        Ok(())
    }

    /// Queues an asynchronous commit of `pending` (and forgets it: a failed
    /// commit is covered by a later one, or the messages are redelivered).
    fn commit_async(&self, pending: &mut Applied) {
        match pending.offsets() {
            Ok(Some(tpl)) => {
                if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "offset commit not queued; the batches may be redelivered (harmless)");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "offsets of the batches not built; they may be redelivered (harmless)")
            }
        }
        *pending = Applied::default();
    }

    /// Commits the last applied batch's offsets synchronously, on the
    /// blocking pool, for the partitions still assigned to this consumer
    /// (another may own the others by now): its asynchronous commit may
    /// still be queued when the consumer is dropped. Earlier asynchronous
    /// commits were queued before this one and go first.
    async fn commit_before_exit(&self, last: TopicPartitionList) {
        let assigned = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "no assignment to commit to before exiting; the last batch may be redelivered (harmless)");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for e in last.elements() {
            if assigned.find_partition(e.topic(), e.partition()).is_some() {
                if let Err(err) = tpl.add_partition_offset(e.topic(), e.partition(), e.offset()) {
                    tracing::warn!(error = %err, topic = e.topic(), partition = e.partition(), "offset not committed before exiting");
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let consumer = self.consumer.clone();
        let commit = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync));
        match tokio::time::timeout(EXIT_COMMIT_TIMEOUT, commit).await {
            Ok(Ok(Ok(()))) => tracing::info!("committed the last applied batch before exiting"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "commit before exiting failed; the last batch may be redelivered (harmless)")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "commit before exiting did not run"),
            Err(_) => tracing::warn!(
                timeout_ms = EXIT_COMMIT_TIMEOUT.as_millis() as u64,
                "commit before exiting timed out; the last batch may be redelivered (harmless)"
            ),
        }
    }

    /// Runs until `shutdown` turns true: batch → process (retrying while
    /// the store or broker is unreachable) → asynchronous commit; on the
    /// way out, the last applied batch is committed synchronously. Calls
    /// `on_applied` with each batch's outcome.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        on_applied: impl Fn(&BatchOutcome) + Send,
    ) {
        tracing::info!(group = %self.cfg.group_id, subscription = ?SUBSCRIPTION, "consumer started");
        let every = Duration::from_millis(self.cfg.commit_interval_ms);
        // applied, not yet committed (committed at most every `every`, and
        // when the stream goes idle); and everything applied this run (the
        // commit before exiting)
        let mut pending = Applied::default();
        let mut applied = Applied::default();
        while !*shutdown.borrow() {
            let batch = tokio::select! {
                b = self.next_batch(Duration::from_millis(500)) => b,
                _ = shutdown.changed() => break,
            };
            let batch = match batch {
                Ok(b) if b.messages.is_empty() => {
                    self.commit_async(&mut pending);
                    continue;
                }
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let out = match self.process(&batch, &shutdown).await {
                Ok(out) => out,
                Err(Stopped) => {
                    tracing::info!(
                        "consumer stopping with an unapplied batch; it will be redelivered"
                    );
                    break;
                }
            };
            pending.add(&batch);
            applied.add(&batch);
            if pending.older_than(every) {
                self.commit_async(&mut pending);
            }
            on_applied(&out);
        }
        match applied.offsets() {
            Ok(Some(all)) => self.commit_before_exit(all).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "offsets to commit before exiting not built; the last batches may be redelivered (harmless)")
            }
        }
        // closing (leaving the group, flushing queued commits) blocks
        // until the broker answers: on the blocking pool too
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::warn!(error = %e, "closing the consumer did not finish");
        }
        tracing::info!("consumer stopped");
    }
}

/// Offsets of applied batches: per partition, the next offset to read
/// (the last applied message's + 1), and since when the oldest of them
/// waits for a commit.
#[derive(Default)]
struct Applied {
    next: BTreeMap<(String, i32), i64>,
    since: Option<std::time::Instant>,
}

impl Applied {
    fn add(&mut self, batch: &Batch) {
        for m in &batch.messages {
            let e = self
                .next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    fn older_than(&self, d: Duration) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= d)
    }

    fn offsets(&self) -> Result<Option<TopicPartitionList>, KafkaError> {
        if self.next.is_empty() {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(Some(tpl))
    }
}

/// The dead letters of what the store refused: `refused` indexes the
/// events (or writes), `msgs` maps those to their messages.
fn refusals(refused: Vec<(usize, ApplyError)>, msgs: &[usize], what: &str) -> Vec<Reject> {
    refused
        .into_iter()
        .map(|(i, e)| Reject {
            msg: msgs[i],
            reason: format!("the store refused the {what}: {e}"),
            label: STORE_REJECTED,
        })
        .collect()
}
