//! Online features: definitions (from `feature-store/features.toml`), the pure
//! aggregation shared by stream, backfill and training export, the catalog
//! and profile fields (`catalog`: one conversion for files, HTTP and Kafka),
//! model rows, and the online store (Redis or in-memory).

pub mod aggregate;
pub mod catalog;
pub mod definition;
pub mod merge;
pub mod store;
pub mod vector;

pub use aggregate::{EntityState, FeatureValue};
pub use definition::{Entity, FeatureSet};
