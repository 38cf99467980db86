//! The firing loop of inactivity triggers: every `triggers.tick_ms` it
//! claims the due timers (`TimerStore::claim_due`, each leased for
//! `triggers.lease_ms` so no other instance takes it), and for each looks
//! at the customer's record, in the customer's slot, which alone decides:
//!
//! - no record (cancelled, or fired already) → the index entry is settled;
//! - a later deadline (activity restarted the clock) → deferred to it;
//! - due → [`Firer::fire`]; once delivered (the broker acknowledged), or
//!   decided not to send (`when`, `cancel_when`, the cap), the episode is
//!   finished and the entry settled; a failed delivery is tried again
//!   `triggers.retry_ms` later, the episode still pending.
//!
//! A claimer that dies between delivery and `finish` leaves its claim to
//! expire: the episode fires again with the same `action_id`.

use super::fire::{Firer, Firing, Outcome};
use super::trigger::Kind;
use super::TriggerSet;
use crate::features::store::timers::{Claim, TimerStore};
use crate::features::store::StoreError;
use arc_swap::ArcSwap;
use futures::StreamExt;
use serde_json::{json, Map};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Claimed timers handled at once.
const IN_FLIGHT: usize = 32;

/// How often the pending-timers gauge is read.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// The loop's settings and handles.
pub struct TimerLoop {
    pub triggers: Arc<ArcSwap<TriggerSet>>,
    pub firer: Arc<Firer>,
    pub tick: Duration,
    pub lease_ms: i64,
    pub claim_batch: usize,
    pub retry_ms: i64,
}

impl TimerLoop {
    /// Runs until `stop` turns true (at once if the store keeps no timers).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let store = self.firer.store.clone();
        let Some(timers) = store.timers() else {
            tracing::info!("the store keeps no timers; inactivity triggers do not fire");
            return;
        };
        let mut every = tokio::time::interval(self.tick.max(Duration::from_millis(10)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauge_at = Instant::now();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            self.tick_once(timers).await;
            if gauge_at.elapsed() >= GAUGE_EVERY {
                gauge_at = Instant::now();
                if let Ok(n) = timers.pending().await {
                    metrics::gauge!(crate::metrics::TRIGGER_TIMERS_PENDING).set(n as f64);
                }
            }
        }
    }

    /// Claims the due timers once and handles them; returns how many.
    pub async fn tick_once(&self, timers: &dyn TimerStore) -> usize {
        let now = self.firer.clock.now_ms();
        let claims = match timers.claim_due(now, self.lease_ms, self.claim_batch).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming due timers failed; next tick tries again");
                return 0;
            }
        };
        let n = claims.len();
        futures::stream::iter(claims)
            .for_each_concurrent(IN_FLIGHT, |c| async move {
                if let Err(e) = self.handle(timers, &c).await {
                    // the lease runs out and the timer is claimed again
                    tracing::warn!(trigger = %c.trigger, error = %e, "timer not handled; retried after its lease");
                }
            })
            .await;
        n
    }

    async fn handle(&self, timers: &dyn TimerStore, c: &Claim) -> Result<(), StoreError> {
        let now = self.firer.clock.now_ms();
        let set = self.triggers.load_full();
        let Some(rec) = timers.record(&c.customer_id, &c.trigger).await? else {
            return timers.settle(c, None, now).await;
        };
        let trigger = set
            .get(&c.trigger)
            .filter(|t| matches!(t.kind, Kind::Inactivity { .. }));
        let Some(t) = trigger else {
            // the trigger is gone: its episodes end unfired
            let next = timers
                .finish(&c.customer_id, &c.trigger, &rec.episode)
                .await?;
            return timers.settle(c, next, now).await;
        };
        if rec.deadline > now {
            return timers.settle(c, Some(rec.deadline), now).await;
        }
        let mut extra = Map::new();
        extra.insert("started_at".into(), json!(rec.started));
        let f = Firing {
            customer_id: &c.customer_id,
            session_id: None,
            episode: &rec.episode,
            deadline: rec.deadline,
            extra,
        };
        match self.firer.fire(&set, t, f, None).await {
            Outcome::Failed(_) => {
                timers
                    .settle(c, Some(now.saturating_add(self.retry_ms)), now)
                    .await
            }
            Outcome::Fired(_) | Outcome::Suppressed(_) | Outcome::Cancelled => {
                let next = timers
                    .finish(&c.customer_id, &c.trigger, &rec.episode)
                    .await?;
                timers.settle(c, next, now).await
            }
        }
    }
}
