//! The threshold and sequence checks, after each applied batch (one task,
//! fed by [`super::engine::Triggers::after_apply`], so the apply path never
//! waits for them): each sequence trigger's pattern advanced by each event
//! ([`super::sequence`]); each threshold trigger's condition checked on
//! the customer's and session's features after the write, once per
//! (customer, session) of the batch that had an event of its `on` types
//! (the batches queued while one was checked are checked as one).
//! What holds fires at most once per session: the store's marker (in the
//! customer's slot) is set first, and only the call that set it fires; a
//! marker this instance saw set is remembered ([`Marked`]), so the later
//! events of that session cost no store call.
//! A delivery that fails is not tried again (at most once).

use super::engine::AppliedBatch;
use super::fire::{Firer, Firing, Outcome};
use super::sequence::Progress;
use super::trigger::{Kind, Trigger};
use super::TriggerSet;
use crate::event::Event;
use crate::features::covisit_score::CoVisitScores;
use crate::features::store::{ReadQuery, ReadResult};
use crate::features::vector::ContextValues;
use crate::rules::schema::Inputs;
use arc_swap::ArcSwap;
use futures::StreamExt;
use serde_json::{json, Map};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Most reads in flight for one batch's threshold checks.
const READS_IN_FLIGHT: usize = 32;
/// Most markers set or actions fired at once by one check.
const FIRES_IN_FLIGHT: usize = 4;
/// The batches queued meanwhile are checked together, up to this many
/// events: under a fast stream the consumer's batches are small, and one
/// check per batch (a store round trip per 32 customers, each batch after
/// the other) fell behind 2,000 events/s; together, a customer with events
/// in several of them is read once.
const MERGE_EVENTS: usize = 5_000;

/// The checks' task.
pub struct Watcher {
    pub triggers: Arc<ArcSwap<TriggerSet>>,
    pub firer: Arc<Firer>,
    pub progress: Progress,
    /// How long a once-per-session marker is kept.
    pub marker_ttl: Duration,
    /// The (trigger, customer, session) markers this instance has seen set
    /// (by it or another call), so a condition that keeps holding does not
    /// ask the store again for every later event of the session.
    pub marked: Marked,
}

/// Markers known to be set: (trigger, customer, session), at most
/// `max`, each forgotten after the marker's own lifetime.
pub struct Marked(moka::sync::Cache<(String, String, String), ()>);

impl Marked {
    pub fn new(max: u64, ttl: Duration) -> Marked {
        Marked(
            moka::sync::Cache::builder()
                .max_capacity(max.max(1))
                .time_to_live(ttl.max(Duration::from_secs(1)))
                .build(),
        )
    }
}

impl Watcher {
    /// Checks each batch received, with those queued behind it (up to
    /// [`MERGE_EVENTS`] events, in order), until `stop` turns true or the
    /// queue closes. The batches keep their room in the queue until checked.
    pub async fn run(
        self,
        mut batches: mpsc::UnboundedReceiver<AppliedBatch>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => b,
                    None => return,
                },
                _ = stop.changed() => return,
            };
            let mut held = vec![first];
            let mut n = held[0].events.len();
            while n < MERGE_EVENTS {
                match batches.try_recv() {
                    Ok(b) => {
                        n += b.events.len();
                        held.push(b);
                    }
                    Err(_) => break,
                }
            }
            let events: Vec<Event> = held
                .iter_mut()
                .flat_map(|b| std::mem::take(&mut b.events))
                .collect();
            self.check(&events).await;
            drop(held);
        }
    }

    /// Checks one batch of applied events.
    #[tracing::instrument(name = "trigger_checks", skip_all, fields(events = events.len()))]
    pub async fn check(&self, events: &[Event]) {
        let set = self.triggers.load_full();
        let mut due: Vec<(Arc<Trigger>, &Event, Option<ReadResult>)> = Vec::new();
        for t in &set.triggers {
            if let Kind::Sequence(spec) = &t.kind {
                let name: Arc<str> = Arc::from(t.name.as_str());
                for e in events {
                    if self.progress.observe(&name, spec, e) {
                        due.push((t.clone(), e, None));
                    }
                }
            }
        }
        due.extend(self.thresholds(&set, events).await);
        // each holds: its marker set (a store call), then, if this call set
        // it, the firing; several at once (a condition that keeps holding
        // marks every event of the session, each a round trip: one after
        // the other, they held the checks to ~300 events/s in the soak)
        let set = &set;
        futures::stream::iter(due)
            .for_each_concurrent(FIRES_IN_FLIGHT, |(t, e, read)| async move {
                self.fire_once(set, &t, e, read).await;
            })
            .await;
    }

    /// The threshold triggers that hold after `events`, with the state read.
    async fn thresholds<'e>(
        &self,
        set: &TriggerSet,
        events: &'e [Event],
    ) -> Vec<(Arc<Trigger>, &'e Event, Option<ReadResult>)> {
        let thresholds: Vec<&Arc<Trigger>> = set
            .triggers
            .iter()
            .filter(|t| matches!(t.kind, Kind::Threshold { .. }))
            .collect();
        if thresholds.is_empty() {
            return Vec::new();
        }
        // per (customer, session): its last event, and which thresholds it concerns
        let mut groups: Vec<(&Event, Vec<usize>)> = Vec::new();
        let mut at: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for e in events {
            let concerned: Vec<usize> = thresholds
                .iter()
                .enumerate()
                .filter(|(_, t)| matches!(&t.kind, Kind::Threshold { on, .. } if on.is_empty() || on.contains(&e.kind)))
                .map(|(i, _)| i)
                .collect();
            if concerned.is_empty() {
                continue;
            }
            let key = (e.customer_id.as_str(), e.session_id.as_deref());
            let g = *at.entry(key).or_insert_with(|| {
                groups.push((e, Vec::new()));
                groups.len() - 1
            });
            groups[g].0 = e;
            for i in concerned {
                if !groups[g].1.contains(&i) {
                    groups[g].1.push(i);
                }
            }
        }
        let store = &self.firer.store;
        let mut out = Vec::new();
        for chunk in groups.chunks(READS_IN_FLIGHT) {
            let reads = futures::future::join_all(chunk.iter().map(|(e, _)| async move {
                let q = ReadQuery {
                    customer_id: &e.customer_id,
                    session_id: e.session_id.as_deref(),
                    item_ids: &[],
                };
                store.read(&q).await
            }))
            .await;
            let now = self.firer.clock.now_ms();
            let context = ContextValues::defaults(&self.firer.set);
            // conditions read the request's fields only, never an item's
            let no_covisit = CoVisitScores::default();
            for ((e, concerned), read) in chunk.iter().zip(reads) {
                let read = match read {
                    Ok(r) => r,
                    Err(err) => {
                        tracing::warn!(error = %err, "threshold check skipped: the store did not answer");
                        continue;
                    }
                };
                let bound = set.plan.bind_request(&Inputs {
                    set: &self.firer.set,
                    customer: &read.customer,
                    session: &read.session,
                    context: &context,
                    now,
                    covisit: &no_covisit,
                });
                for &i in concerned {
                    let t = thresholds[i];
                    let Kind::Threshold { condition, .. } = &t.kind else {
                        continue;
                    };
                    match condition.eval_request(&set.env, &set.plan, &bound) {
                        Ok(true) => out.push((t.clone(), *e, Some(read.clone()))),
                        Ok(false) => {}
                        Err(err) => {
                            tracing::debug!(trigger = %t.name, error = %err, "threshold condition could not be decided")
                        }
                    }
                }
            }
        }
        out
    }

    /// Fires `t` for `e`'s session unless it already fired there.
    async fn fire_once(&self, set: &TriggerSet, t: &Trigger, e: &Event, read: Option<ReadResult>) {
        let Some(timers) = self.firer.store.timers() else {
            return;
        };
        let session = e.session_id.as_deref().unwrap_or("");
        let key = (t.name.clone(), e.customer_id.clone(), session.to_string());
        if self.marked.0.contains_key(&key) {
            return;
        }
        let now = self.firer.clock.now_ms();
        let ttl = self.marker_ttl.as_millis() as i64;
        let set_now = timers
            .mark_once(&e.customer_id, session, &t.name, ttl, now)
            .await;
        if set_now.is_ok() {
            self.marked.0.insert(key, ());
        }
        match set_now {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(trigger = %t.name, error = %err, "once-per-session marker not set; not firing");
                return;
            }
        }
        let mut extra = Map::new();
        extra.insert("event_id".into(), json!(e.event_id));
        let episode = format!("session:{session}");
        let f = Firing {
            customer_id: &e.customer_id,
            session_id: e.session_id.as_deref(),
            episode: &episode,
            deadline: e.ts,
            extra,
        };
        if let Outcome::Failed(why) = self.firer.fire(set, t, f, read).await {
            tracing::warn!(trigger = %t.name, error = %why, "threshold/sequence action lost (fires at most once per session)");
        }
    }
}
