//! Getting events into the store: in-process for the embedded mode, or
//! through Kafka (producer for `POST /v1/events`, consumer group for the
//! topics `events.<type>`), with a dead-letter topic for bad messages.

pub mod apply;
pub mod consumer;
pub mod kafka;
pub mod producer;

pub use apply::{apply_events, ApplyError};
