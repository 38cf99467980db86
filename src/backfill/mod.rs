//! Batch jobs over event history. For now: the point-in-time training export
//! (`nextbest export-training`), which replays events through the same
//! aggregation code the server uses.

pub mod export;
