//! [`Triggers`]: what the apply paths (the consumer, `POST /v1/events` in
//! embedded mode) call around a store write. Before it, the timer changes
//! of the inactivity triggers are added to the events' plans, so the store
//! writes them with the features; after it, the applied (not duplicate)
//! events are counted and handed to the threshold and sequence checks
//! ([`super::watch`]) through a queue bounded in events
//! (`triggers.queue`) that never makes the apply path wait: a batch that
//! does not fit is not checked (counted). The bound is in events, not
//! batches, so its memory is bounded whatever the batch sizes (it was 10,000
//! batches: under a stream the checks could not keep up with, up to 5 M
//! events held, ~85 MB a minute at 2,000 events/s in the soak).

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
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Applied events, as the checks receive them, holding their room in the
/// queue until they are checked (dropped).
pub struct AppliedBatch {
    pub events: Vec<Event>,
    _room: OwnedSemaphorePermit,
}

/// The triggers running and the handles around them.
pub struct Triggers {
    pub current: Arc<ArcSwap<TriggerSet>>,
    /// This instance's recent fired actions (`GET /v1/actions`).
    pub recent: Arc<RecentActions>,
    checks: mpsc::UnboundedSender<AppliedBatch>,
    /// Room for `queue` events waiting for the checks.
    room: Arc<Semaphore>,
}

impl Triggers {
    /// A handle and the receiving end of its checks' queue (room for
    /// `queue` events), for [`super::watch::Watcher::run`].
    pub fn new(
        current: Arc<ArcSwap<TriggerSet>>,
        recent: Arc<RecentActions>,
        queue: usize,
    ) -> (Triggers, mpsc::UnboundedReceiver<AppliedBatch>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = queue.clamp(1, Semaphore::MAX_PERMITS);
        (
            Triggers {
                current,
                recent,
                checks: tx,
                room: Arc::new(Semaphore::new(room)),
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
        let n = (0..events.len()).filter(|&i| applied(i)).count();
        if n == 0 {
            return;
        }
        let skipped = || {
            metrics::counter!(crate::metrics::TRIGGER_CHECKS_SKIPPED).increment(n as u64);
            tracing::debug!(events = n, "trigger checks queue full; batch not checked");
        };
        let Some(room) = u32::try_from(n)
            .ok()
            .and_then(|n| self.room.clone().try_acquire_many_owned(n).ok())
        else {
            return skipped();
        };
        let batch = AppliedBatch {
            events: events
                .iter()
                .enumerate()
                .filter(|(i, _)| applied(*i))
                .map(|(_, e)| e.clone())
                .collect(),
            _room: room,
        };
        if self.checks.send(batch).is_err() {
            skipped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::features::aggregate::plan_event;
    use crate::features::FeatureSet;
    use std::path::Path;

    fn event(i: usize) -> Event {
        Event {
            event_id: format!("e{i}"),
            kind: EventType::PageView,
            customer_id: format!("c{i}"),
            ts: 1_764_355_200_000,
            session_id: Some("s".into()),
            item_id: Some("p1".into()),
            seq: None,
            props: Default::default(),
        }
    }

    #[test]
    fn the_checks_queue_is_bounded_in_events_and_a_checked_batch_gives_its_room_back() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = FeatureSet::load(&root.join("feature-store/features.toml")).expect("features");
        let shipped =
            super::super::TriggerSet::load(&root.join("triggers"), &set, &Default::default(), None);
        let current = Arc::new(ArcSwap::from_pointee(shipped));
        let (triggers, mut rx) = Triggers::new(current, Arc::new(RecentActions::new(0)), 5);
        let apply = |from: usize, n: usize| {
            let events: Vec<Event> = (from..from + n).map(event).collect();
            let plans: Vec<Plan> = events.iter().map(|e| plan_event(&set, e)).collect();
            let out = ApplyOutcome {
                duplicate: vec![false; n],
                ..Default::default()
            };
            triggers.after_apply(&events, &plans, &out);
        };
        apply(0, 3);
        let first = rx.try_recv().expect("3 events fit in room for 5");
        assert_eq!(first.events.len(), 3);
        apply(3, 3);
        assert!(
            rx.try_recv().is_err(),
            "3 more do not fit while the first 3 wait"
        );
        apply(6, 2);
        let second = rx.try_recv().expect("2 more fit");
        assert_eq!(second.events[0].event_id, "e6");
        drop(first);
        apply(8, 3);
        assert_eq!(
            rx.try_recv()
                .expect("room given back once checked")
                .events
                .len(),
            3
        );
        drop(second);
    }
}
