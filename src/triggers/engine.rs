//! [`Triggers`]: what the apply paths (the consumer, `POST /v1/events` in
//! embedded mode) call around a store write. Before it, the timer changes
//! of the inactivity triggers are added to the events' plans, so the store
//! writes them with the features; after it, the applied (not duplicate)
//! events are counted and handed to the threshold and sequence checks
//! ([`super::watch`]) through a bounded queue that never makes the apply
//! path wait (a full queue skips the batch's checks, counted).

use super::deliver::RecentActions;
use super::plan::timer_ops;
use super::trigger::Kind;
use super::TriggerSet;
use crate::event::Event;
use crate::features::aggregate::Plan;
use crate::features::store::timers::TimerOp;
use crate::features::store::ApplyOutcome;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Applied events, as the checks receive them.
pub type AppliedBatch = Vec<Event>;

/// The triggers running and the handles around them.
pub struct Triggers {
    pub current: Arc<ArcSwap<TriggerSet>>,
    /// This instance's recent fired actions (`GET /v1/actions`).
    pub recent: Arc<RecentActions>,
    checks: mpsc::Sender<AppliedBatch>,
}

impl Triggers {
    /// A handle and the receiving end of its checks' queue (of `queue`
    /// batches), for [`super::watch::Watcher::run`].
    pub fn new(
        current: Arc<ArcSwap<TriggerSet>>,
        recent: Arc<RecentActions>,
        queue: usize,
    ) -> (Triggers, mpsc::Receiver<AppliedBatch>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (
            Triggers {
                current,
                recent,
                checks: tx,
            },
            rx,
        )
    }

    /// Adds each event's timer changes to its plan (same order).
    pub fn plan_timers(&self, events: &[Event], plans: &mut [Plan]) {
        let set = self.current.load();
        if !set
            .triggers
            .iter()
            .any(|t| matches!(t.kind, Kind::Inactivity { .. }))
        {
            return;
        }
        for (e, p) in events.iter().zip(plans.iter_mut()) {
            p.timers = timer_ops(&set, e);
        }
    }

    /// After the store applied `plans` (of `events`) with outcome `out`:
    /// counts the timer changes applied and queues the applied events for
    /// the threshold and sequence checks.
    pub fn after_apply(&self, events: &[Event], plans: &[Plan], out: &ApplyOutcome) {
        let applied = |i: usize| !out.duplicate.get(i).copied().unwrap_or(false);
        for (_, p) in plans.iter().enumerate().filter(|(i, _)| applied(*i)) {
            for op in &p.timers {
                let (name, by) = match op {
                    TimerOp::Start { .. } => (crate::metrics::TRIGGER_SCHEDULED, None),
                    TimerOp::Touch { .. } => continue,
                    TimerOp::Cancel { .. } => (crate::metrics::TRIGGER_CANCELLED, Some("event")),
                };
                match by {
                    None => {
                        metrics::counter!(name, "trigger" => op.trigger().to_string()).increment(1)
                    }
                    Some(by) => {
                        metrics::counter!(name, "trigger" => op.trigger().to_string(), "by" => by)
                            .increment(1)
                    }
                }
            }
        }
        let watched = self
            .current
            .load()
            .triggers
            .iter()
            .any(|t| matches!(t.kind, Kind::Threshold { .. } | Kind::Sequence(_)));
        if !watched {
            return;
        }
        let batch: AppliedBatch = events
            .iter()
            .enumerate()
            .filter(|(i, _)| applied(*i))
            .map(|(_, e)| e.clone())
            .collect();
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if self.checks.try_send(batch).is_err() {
            metrics::counter!(crate::metrics::TRIGGER_CHECKS_SKIPPED).increment(n as u64);
            tracing::debug!(events = n, "trigger checks queue full; batch not checked");
        }
    }
}
