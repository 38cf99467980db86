//! Kafka client settings and topic setup shared by the producer and the
//! consumer. librdkafka is tuned here for a small, fast-rebalancing group.

use crate::config::KafkaConfig;
use crate::event::EventType;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// The subscription pattern of the contract.
pub const EVENTS_PATTERN: &str = "^events\\..*";

/// Catalog updates: key = item id, value = JSON object of its static fields.
pub const CATALOG_ITEMS_TOPIC: &str = "catalog.items";
/// Profile updates: key = customer id, value = JSON object of its static fields.
pub const CATALOG_CUSTOMERS_TOPIC: &str = "catalog.customers";

/// What the consumer subscribes to: the events pattern and the two catalog
/// topics (as anchored patterns, so a missing topic is not an error).
pub const SUBSCRIPTION: [&str; 3] = [EVENTS_PATTERN, "^catalog\\.items$", "^catalog\\.customers$"];

/// Errors talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("creating topic {topic} on {brokers}: {message}")]
    CreateTopic {
        topic: String,
        brokers: String,
        message: String,
    },
}

/// Base client settings, then `kafka.properties` (SASL, TLS, ...) as given;
/// each client sets its own settings after these.
pub fn client_config(brokers: &str, cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "nextbest")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4");
    for (k, v) in &cfg.properties.0 {
        c.set(k, v);
    }
    c
}

/// Every topic the contract names.
pub fn contract_topics(cfg: &KafkaConfig) -> Vec<String> {
    let mut t: Vec<String> = EventType::ALL.iter().map(|e| e.topic()).collect();
    t.push(CATALOG_ITEMS_TOPIC.into());
    t.push(CATALOG_CUSTOMERS_TOPIC.into());
    t.push(cfg.dlq_topic.clone());
    t.push(cfg.actions_topic.clone());
    t
}

/// Creates the contract's topics if they do not exist.
pub async fn ensure_topics(brokers: &str, cfg: &KafkaConfig) -> Result<(), KafkaSetupError> {
    create_topics(brokers, cfg, &contract_topics(cfg)).await
}

/// Creates the topics `names` if they do not exist.
pub async fn create_topics(
    brokers: &str,
    cfg: &KafkaConfig,
    names: &[String],
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers, cfg)
            .create()
            .map_err(|source| KafkaSetupError::Client {
                brokers: brokers.into(),
                source,
            })?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, cfg.partitions.max(1), TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(|e| KafkaSetupError::CreateTopic {
            topic: names.join(","),
            brokers: brokers.into(),
            message: e.to_string(),
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic,
                    brokers: brokers.into(),
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
