//! nextbest: a real-time next-best-action server. Events become online
//! features (`features`, `ingest`); a request becomes a ranked answer
//! (`decide`, `model`); `api` is the HTTP face and `app` wires it together.
//! See ARCHITECTURE.md for the map and its invariants.

pub mod api;
pub mod app;
pub mod backfill;
pub mod config;
pub mod decide;
pub mod event;
pub mod features;
pub mod ingest;
pub mod metrics;
pub mod model;

/// Wall-clock time in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
