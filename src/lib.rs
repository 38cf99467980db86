//! nextbest: a real-time next-best-action server. Events become online
//! features (`features`, `ingest`); a request becomes a ranked answer
//! (`decide`, `model`, `rules`); triggers watch the stream and fire actions
//! (`triggers`); `api` is the HTTP face and `app` wires it together.
//! See ARCHITECTURE.md for the map and its invariants.

pub mod api;
pub mod app;
pub mod backfill;
pub mod change_feed;
pub mod clock;
pub mod config;
pub mod decide;
pub mod evaluate;
pub mod event;
pub mod features;
pub mod folder_watch;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod rules;
pub mod triggers;

/// Wall-clock time in ms since the Unix epoch (for code that has no
/// [`clock::Clock`] handed to it: CLI defaults, metrics, tests).
pub fn now_ms() -> i64 {
    clock::wall_ms()
}
