//! Where a fired action goes: the actions topic (`kafka.actions_topic`,
//! `nextbest.actions`; key = customer id), acknowledged by the broker
//! before the firing counts as delivered; the webhook if one is configured
//! (`super::webhook`: delivered, or dead-lettered after its retries); and,
//! with or without Kafka, this instance's bounded list of recent actions
//! (`GET /v1/actions`, the embedded mode's way to see them).

use super::action::Action;
use crate::ingest::producer::{EventProducer, ProduceError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Errors delivering an action.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("cannot encode the action: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The most recent fired actions of this instance, newest last.
#[derive(Debug, Default)]
pub struct RecentActions {
    max: usize,
    list: Mutex<VecDeque<Arc<Action>>>,
}

impl RecentActions {
    pub fn new(max: usize) -> RecentActions {
        RecentActions {
            max,
            list: Mutex::new(VecDeque::new()),
        }
    }

    pub fn push(&self, a: Arc<Action>) {
        if self.max == 0 {
            return;
        }
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        while l.len() >= self.max {
            l.pop_front();
        }
        l.push_back(a);
    }

    /// The customer's (None: anyone's) recent actions, newest first, at most `limit`.
    pub fn of(&self, customer_id: Option<&str>, limit: usize) -> Vec<Arc<Action>> {
        let l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        l.iter()
            .rev()
            .filter(|a| customer_id.is_none_or(|c| a.customer_id == c))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Delivery of fired actions.
#[derive(Clone)]
pub struct Sink {
    /// The producer and the topic; None without Kafka.
    pub kafka: Option<(EventProducer, String)>,
    pub webhook: Option<Arc<super::webhook::Webhook>>,
    pub recent: Arc<RecentActions>,
}

impl Sink {
    /// Sends `a`; Ok once the broker acknowledged it and the webhook took
    /// it or its dead letter was acknowledged (without either: once it is
    /// in the recent list).
    pub async fn deliver(&self, a: Action) -> Result<(), DeliverError> {
        let payload = serde_json::to_vec(&a)?;
        if let Some((p, topic)) = &self.kafka {
            p.send_action(topic, &a.customer_id, &payload).await?;
        }
        if let Some(w) = &self.webhook {
            w.deliver(&a.action_id, &a.customer_id, &payload).await?;
        }
        self.recent.push(Arc::new(a));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(customer: &str, n: i64) -> Arc<Action> {
        Arc::new(Action {
            action_id: format!("a{n}"),
            trigger: "t".into(),
            action: "t".into(),
            customer_id: customer.into(),
            session_id: None,
            items: Vec::new(),
            reason: "t".into(),
            deadline: n,
            fired_at: n,
            context: serde_json::Value::Null,
        })
    }

    #[test]
    fn the_recent_list_is_bounded_and_filtered_newest_first() {
        let r = RecentActions::new(3);
        for n in 0..5 {
            r.push(action(if n % 2 == 0 { "a" } else { "b" }, n));
        }
        let all: Vec<i64> = r.of(None, 10).iter().map(|a| a.deadline).collect();
        assert_eq!(all, vec![4, 3, 2]);
        let a: Vec<i64> = r.of(Some("a"), 10).iter().map(|a| a.deadline).collect();
        assert_eq!(a, vec![4, 2]);
        assert_eq!(r.of(Some("a"), 1).len(), 1);
    }
}
