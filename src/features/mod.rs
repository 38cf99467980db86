//! Online features: definitions (from `feature-store/features.toml`), the pure
//! aggregation shared by stream, backfill and training export, the catalog
//! and profile fields (`catalog`: one conversion for files, HTTP and Kafka),
//! model rows (with `covisit_score`, the one co-visitation input), and the
//! online store (Redis or in-memory).

pub mod aggregate;
pub mod catalog;
pub mod covisit_score;
pub mod definition;
pub mod merge;
pub mod store;
pub mod vector;

pub use aggregate::{EntityState, FeatureValue};
pub use definition::{Entity, FeatureSet};
