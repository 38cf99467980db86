//! Batch jobs over event history, sharing the streaming path's validation
//! and aggregation code:
//!
//! - `nextbest backfill` ([`load`]): history and static enrichment into the
//!   online store, exactly once with respect to the live consumer; its
//!   steps are [`select`] (which events), [`fold`] (merged updates per
//!   entity group) and [`write`] (batched, all-or-nothing group writes).
//! - `nextbest export-training` ([`export`]): point-in-time training rows.
//!
//! [`input`] reads JSON Lines, Parquet and CSV (polars) and is the only place
//! that knows file formats; [`props`] resolves the events' props for the
//! fold; [`progress`] reports on long jobs. Nothing here
//! knows Redis keys (that is `features::store`).

pub mod covisit;
pub mod export;
pub mod fold;
pub mod input;
pub mod load;
pub mod progress;
pub mod props;
pub mod select;
pub mod write;

/// The threads a batch job's CPU work is split over: one per core.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
