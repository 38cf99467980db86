//! Producing to Kafka: events from `POST /v1/events` and catalog updates
//! from `PUT /v1/items/{id}` / `PUT /v1/customers/{id}` (acknowledged by
//! the broker before the HTTP 202), dead letters with their reason, and
//! fired trigger actions.

use crate::config::KafkaConfig;
use crate::event::Event;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

use super::kafka::{client_config, KafkaSetupError};

/// The largest dead-letter payload: well under librdkafka's default
/// `message.max.bytes` (1 MB) with the headers.
pub const MAX_DEAD_LETTER_BYTES: usize = 512 * 1024;

/// Errors producing.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("broker did not acknowledge event {index} (topic {topic}): {message}")]
    Event {
        index: usize,
        topic: String,
        message: String,
    },
    #[error("broker did not acknowledge the update on {topic}: {message}")]
    Catalog { topic: String, message: String },
    #[error("broker did not acknowledge {what} within the produce timeout ({ms} ms)")]
    Timeout { what: String, ms: u64 },
    #[error("broker did not acknowledge dead letter on {topic}: {message}")]
    DeadLetter { topic: String, message: String },
    #[error("broker did not acknowledge the action on {topic}: {message}")]
    Action { topic: String, message: String },
}

/// Where a dead letter came from.
#[derive(Debug, Clone)]
pub struct DeadLetterOrigin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The consumer group that refused it (header `consumer_group`).
    pub group: &'a str,
}

/// A Kafka producer for events and dead letters.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
    dlq_topic: String,
    timeout: Duration,
}

impl EventProducer {
    pub fn new(brokers: &str, cfg: &KafkaConfig) -> Result<EventProducer, KafkaSetupError> {
        let producer: FutureProducer = client_config(brokers, cfg)
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", cfg.produce_timeout_ms.to_string())
            .create()
            .map_err(|source| KafkaSetupError::Client {
                brokers: brokers.into(),
                source,
            })?;
        Ok(EventProducer {
            producer,
            dlq_topic: cfg.dlq_topic.clone(),
            timeout: Duration::from_millis(cfg.produce_timeout_ms),
        })
    }

    /// Produces events to `events.<type>` keyed by customer id; returns once
    /// the broker acknowledged every one.
    #[tracing::instrument(name = "produce_events", skip_all, fields(events = events.len()))]
    pub async fn send_events(&self, events: &[Event]) -> Result<(), ProduceError> {
        let sends = events.iter().enumerate().map(|(index, e)| async move {
            let topic = e.kind.topic();
            let payload = e.to_json_bytes();
            let record = FutureRecord::to(&topic)
                .key(e.customer_id.as_bytes())
                .payload(&payload)
                .timestamp(e.ts);
            match self.producer.send(record, self.timeout).await {
                Ok(_) => {
                    metrics::counter!(crate::metrics::EVENTS_PRODUCED, "type" => e.kind.as_str())
                        .increment(1);
                    Ok(())
                }
                Err((err, _)) => Err(ProduceError::Event {
                    index,
                    topic,
                    message: err.to_string(),
                }),
            }
        });
        // librdkafka checks message timeouts about once a second, so its
        // own failure can come well after `produce_timeout_ms`: the answer
        // is bounded here (a message still delivered later is deduped by
        // its event id when the client retries)
        let results = tokio::time::timeout(self.timeout, futures::future::join_all(sends))
            .await
            .map_err(|_| ProduceError::Timeout {
                what: format!("{} events", events.len()),
                ms: self.timeout.as_millis() as u64,
            })?;
        for r in results {
            r?;
        }
        Ok(())
    }

    /// Produces one catalog/profile update (already validated) to `topic`,
    /// keyed by the id; returns once the broker acknowledged it.
    #[tracing::instrument(name = "produce_catalog", skip_all, fields(topic = topic))]
    pub async fn send_catalog(
        &self,
        topic: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<(), ProduceError> {
        let record = FutureRecord::to(topic).key(id.as_bytes()).payload(payload);
        tokio::time::timeout(self.timeout, self.producer.send(record, self.timeout))
            .await
            .map_err(|_| ProduceError::Timeout {
                what: format!("the update on {topic}"),
                ms: self.timeout.as_millis() as u64,
            })?
            .map(|_| ())
            .map_err(|(e, _)| ProduceError::Catalog {
                topic: topic.to_string(),
                message: e.to_string(),
            })
    }

    /// Produces one fired trigger action (JSON) to `topic` keyed by the
    /// customer id; returns once the broker acknowledged it.
    #[tracing::instrument(name = "produce_action", skip_all, fields(topic = topic))]
    pub async fn send_action(
        &self,
        topic: &str,
        customer_id: &str,
        payload: &[u8],
    ) -> Result<(), ProduceError> {
        self.send_keyed_action(topic, customer_id, payload, None)
            .await
    }

    /// Produces a trigger action no webhook took to the dead-letter topic
    /// `topic`, keyed by the customer id, with the reason in header `error`.
    pub async fn send_dead_action(
        &self,
        topic: &str,
        customer_id: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), ProduceError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: "error",
            value: Some(reason),
        });
        self.send_keyed_action(topic, customer_id, payload, Some(headers))
            .await
    }

    /// One action message keyed by the customer id, acknowledged by the broker.
    async fn send_keyed_action(
        &self,
        topic: &str,
        customer_id: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError> {
        let mut record = FutureRecord::to(topic)
            .key(customer_id.as_bytes())
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| ProduceError::Action {
                topic: topic.to_string(),
                message: e.to_string(),
            })
    }

    /// Sends a message's original bytes to the dead-letter topic with the
    /// reason; a payload over [`MAX_DEAD_LETTER_BYTES`] is cut to that size
    /// (header `truncated_from` = its length), so a message the broker would
    /// refuse to take back (a 10 MB one, say) can't hold up its partition.
    pub async fn dead_letter(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
        origin: &DeadLetterOrigin<'_>,
    ) -> Result<(), ProduceError> {
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let full = payload.len().to_string();
        let truncated = payload.len() > MAX_DEAD_LETTER_BYTES;
        let payload = &payload[..payload.len().min(MAX_DEAD_LETTER_BYTES)];
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "error",
                value: Some(reason),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(origin.topic),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "consumer_group",
                value: Some(origin.group),
            });
        if truncated {
            headers = headers.insert(Header {
                key: "truncated_from",
                value: Some(full.as_str()),
            });
        }
        let mut record = FutureRecord::to(&self.dlq_topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| ProduceError::DeadLetter {
                topic: self.dlq_topic.clone(),
                message: e.to_string(),
            })
    }
}
