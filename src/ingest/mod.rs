//! Getting events into the store: in-process for the embedded mode, or
//! through Kafka (producer for `POST /v1/events`, consumer group for the
//! topics `events.<type>`), with a dead-letter topic for bad messages; and
//! catalog/profile writes, in-process or through the topics `catalog.items`
//! and `catalog.customers` (`catalog.rs`), consumed by the same group.

pub mod apply;
pub mod catalog;
pub mod consumer;
pub mod kafka;
pub mod order;
pub mod producer;
pub mod retry;

pub use apply::{
    apply_catalog, apply_events, apply_events_at, apply_events_with, ApplyError, CatalogVia,
};
