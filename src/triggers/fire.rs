//! One firing of one trigger for one customer, decided and delivered:
//! the customer's current features read (with the contact counter of a
//! capped trigger, in the same round trip), then in order: `cancel_when`
//! (inactivity: the episode ends, counted as cancelled), `when` and the
//! contact cap (counted as suppressed), the items of `recommend = N` (the
//! recommend pipeline, its rules included), the message built and
//! delivered; a capped action's offer is counted after delivery.

use super::action::{action_id, Action, ActionItem};
use super::deliver::Sink;
use super::trigger::{Kind, Trigger};
use super::TriggerSet;
use crate::clock::Clock;
use crate::decide::{Decider, RecommendRequest};
use crate::features::aggregate::entity_values;
use crate::features::covisit_score::CoVisitScores;
use crate::features::store::{FeatureStore, ReadQuery, ReadResult};
use crate::features::vector::ContextValues;
use crate::features::{Entity, FeatureSet};
use crate::rules::schema::{Inputs, Namespace};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What a firing came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Delivered (the action's id).
    Fired(String),
    /// Not sent: `when` false, the cap reached, or a condition that could
    /// not be decided (the label).
    Suppressed(&'static str),
    /// Not sent: the inactivity trigger's `cancel_when` held.
    Cancelled,
    /// Not delivered (try again later): the store or the broker failed.
    Failed(String),
}

/// What one firing is about.
#[derive(Debug, Clone)]
pub struct Firing<'a> {
    pub customer_id: &'a str,
    /// None: the customer's latest session.
    pub session_id: Option<&'a str>,
    /// What names the episode in the `action_id`: the starting event's id,
    /// or the session.
    pub episode: &'a str,
    pub deadline: i64,
    /// Added to the message's context (e.g. the event that met a threshold).
    pub extra: Map<String, Value>,
}

/// Everything a firing needs.
pub struct Firer {
    pub set: Arc<FeatureSet>,
    pub store: Arc<dyn FeatureStore>,
    pub decider: Arc<Decider>,
    pub sink: Sink,
    pub clock: Clock,
    /// `recommend.default_budget_ms`: the budget of `recommend = N`.
    pub budget_ms: u64,
}

fn label(t: &Trigger) -> String {
    t.name.clone()
}

impl Firer {
    /// Decides and delivers one firing of `t` (of `triggers`); `read` is
    /// the customer's state if the caller has just read it.
    #[tracing::instrument(name = "trigger_fire", skip_all, fields(trigger = %t.name, customer_id = %f.customer_id))]
    pub async fn fire(
        &self,
        triggers: &TriggerSet,
        t: &Trigger,
        f: Firing<'_>,
        read: Option<ReadResult>,
    ) -> Outcome {
        let now = self.clock.now_ms();
        let offer = t.offer_key();
        let (read, count) = match (read, &offer) {
            (Some(r), None) => (r, 0),
            _ => {
                let q = ReadQuery {
                    customer_id: f.customer_id,
                    session_id: f.session_id,
                    item_ids: &[],
                };
                let offers: Vec<_> = offer.iter().cloned().collect();
                match self.store.read_with_offers(&q, &offers, now).await {
                    Ok((r, counts)) => (r, counts.first().copied().unwrap_or(0)),
                    Err(e) => return self.failed(t, format!("feature store: {e}")),
                }
            }
        };
        let context_values = ContextValues::defaults(&self.set);
        // conditions read the request's fields only, never an item's
        let no_covisit = CoVisitScores::default();
        let inputs = Inputs {
            set: &self.set,
            customer: &read.customer,
            session: &read.session,
            context: &context_values,
            now,
            covisit: &no_covisit,
        };
        let bound = triggers.plan.bind_request(&inputs);
        let holds = |c: &crate::rules::condition::Condition| {
            c.eval_request(&triggers.env, &triggers.plan, &bound)
        };
        if let Kind::Inactivity {
            cancel_when: Some(c),
            ..
        } = &t.kind
        {
            match holds(c) {
                Ok(true) => {
                    metrics::counter!(crate::metrics::TRIGGER_CANCELLED, "trigger" => label(t), "by" => "condition")
                        .increment(1);
                    return Outcome::Cancelled;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cancel_when could not be decided; not firing");
                    return self.suppressed(t, "error");
                }
            }
        }
        if let Some(c) = &t.when {
            match holds(c) {
                Ok(true) => {}
                Ok(false) => return self.suppressed(t, "when"),
                Err(e) => {
                    tracing::debug!(error = %e, "when could not be decided; not firing");
                    return self.suppressed(t, "error");
                }
            }
        }
        if let Some(cap) = t.cap {
            if count >= u64::from(cap.max) {
                return self.suppressed(t, "capped");
            }
        }
        let session_id = f
            .session_id
            .map(str::to_string)
            .or_else(|| read.session_id.clone());
        let items = if t.recommend > 0 {
            self.items(t, f.customer_id, session_id.as_deref(), f.episode, now)
                .await
        } else {
            Vec::new()
        };
        let mut context = Map::new();
        context.insert("kind".into(), json!(t.kind.name()));
        context.insert("episode".into(), json!(f.episode));
        if !t.context.is_empty() {
            let customer = entity_values(&self.set, Entity::Customer, &read.customer, now);
            let session = entity_values(&self.set, Entity::Session, &read.session, now);
            let mut features = Map::new();
            for (ns, name) in &t.context {
                let v = match ns {
                    Namespace::Customer => customer.get(name),
                    _ => session.get(name),
                };
                features.insert(
                    format!("{}.{name}", ns.as_str()),
                    v.map_or(Value::Null, |v| {
                        serde_json::to_value(v).unwrap_or(Value::Null)
                    }),
                );
            }
            context.insert("features".into(), Value::Object(features));
        }
        context.extend(f.extra);
        let action = Action {
            action_id: action_id(&t.name, f.customer_id, f.episode),
            trigger: t.name.clone(),
            action: t.action.clone(),
            customer_id: f.customer_id.to_string(),
            session_id,
            items,
            reason: t.reason.clone(),
            deadline: f.deadline,
            fired_at: now,
            context: Value::Object(context),
        };
        let id = action.action_id.clone();
        if let Err(e) = self.sink.deliver(action).await {
            return self.failed(t, e.to_string());
        }
        if let Some(k) = offer {
            if let Err(e) = self.store.record_offers(f.customer_id, &[k], now).await {
                tracing::warn!(error = %e, "the trigger's offer was not counted");
            }
        }
        metrics::counter!(crate::metrics::TRIGGER_FIRED, "trigger" => label(t)).increment(1);
        metrics::histogram!(crate::metrics::TRIGGER_FIRE_LAG, "kind" => t.kind.name())
            .record(((now - f.deadline) as f64 / 1000.0).max(0.0));
        tracing::info!(action_id = %id, lag_ms = now - f.deadline, "trigger fired");
        Outcome::Fired(id)
    }

    /// The customer's current top `t.recommend` items (empty if the
    /// pipeline fell back to nothing).
    async fn items(
        &self,
        t: &Trigger,
        customer_id: &str,
        session_id: Option<&str>,
        episode: &str,
        now: i64,
    ) -> Vec<ActionItem> {
        let req = RecommendRequest {
            request_id: format!("trigger-{}", action_id(&t.name, customer_id, episode)),
            customer_id: customer_id.to_string(),
            session_id: session_id.map(str::to_string),
            k: t.recommend,
            context: ContextValues::defaults(&self.set),
            candidates: None,
            budget_ms: self.budget_ms,
            queued: std::time::Duration::ZERO,
            model: None,
            now_ms: now,
            explain: false,
        };
        self.decider
            .recommend(&req)
            .await
            .items
            .into_iter()
            .map(|i| ActionItem {
                item_id: i.item_id,
                score: i.score,
                action: i.action.to_string(),
                reasons: i.reasons.iter().map(|r| r.to_string()).collect(),
            })
            .collect()
    }

    fn suppressed(&self, t: &Trigger, why: &'static str) -> Outcome {
        metrics::counter!(crate::metrics::TRIGGER_SUPPRESSED, "trigger" => label(t), "reason" => why)
            .increment(1);
        Outcome::Suppressed(why)
    }

    fn failed(&self, t: &Trigger, why: String) -> Outcome {
        tracing::warn!(error = %why, "trigger action not delivered");
        metrics::counter!(crate::metrics::TRIGGER_DELIVERY_FAILED, "trigger" => label(t))
            .increment(1);
        Outcome::Failed(why)
    }
}
