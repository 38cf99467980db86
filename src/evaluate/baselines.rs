//! The simple rankers `evaluate` compares the served answer with, each
//! built from the same replay (events strictly before the decision), kept
//! in memory beside the store:
//!
//! - **recently viewed**: the customer's last `k` distinct items, any
//!   event that names an item (view, click, cart, purchase), most recent
//!   first;
//! - **co-visitation**: items that followed or preceded each other within
//!   [`COVISIT_STEPS`] item events of one customer, counted over every
//!   customer; a customer's list is the items co-visited with their last
//!   [`COVISIT_SEEDS`] distinct items, by summed counts (ties by id);
//! - **popularity**: the server's own 24 h popularity list at the decision
//!   (taken from the same snapshot the served path uses).

use crate::event::Event;
use std::collections::{HashMap, VecDeque};

/// How far apart (in a customer's item events) two items still co-visit.
pub const COVISIT_STEPS: usize = 5;
/// How many of the customer's latest distinct items seed co-visitation.
pub const COVISIT_SEEDS: usize = 5;

/// Per customer, their latest distinct items, most recent first.
#[derive(Debug, Default)]
pub struct RecentItems {
    cap: usize,
    by_customer: HashMap<String, VecDeque<String>>,
}

impl RecentItems {
    pub fn new(cap: usize) -> RecentItems {
        RecentItems {
            cap: cap.max(1),
            by_customer: HashMap::new(),
        }
    }

    pub fn observe(&mut self, e: &Event) {
        let Some(item) = &e.item_id else { return };
        let list = self.by_customer.entry(e.customer_id.clone()).or_default();
        if let Some(i) = list.iter().position(|x| x == item) {
            list.remove(i);
        }
        list.push_front(item.clone());
        list.truncate(self.cap);
    }

    pub fn of(&self, customer: &str) -> Vec<String> {
        self.by_customer
            .get(customer)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `item` is among the customer's remembered items.
    pub fn contains(&self, customer: &str, item: &str) -> bool {
        self.by_customer
            .get(customer)
            .is_some_and(|l| l.iter().any(|x| x == item))
    }
}

/// Co-visitation counts, and each customer's recent item events.
#[derive(Debug, Default)]
pub struct CoVisitation {
    pairs: HashMap<String, HashMap<String, u32>>,
    steps: HashMap<String, VecDeque<String>>,
}

impl CoVisitation {
    pub fn observe(&mut self, e: &Event) {
        let Some(item) = &e.item_id else { return };
        let steps = self.steps.entry(e.customer_id.clone()).or_default();
        for prev in steps.iter() {
            if prev != item {
                *self
                    .pairs
                    .entry(prev.clone())
                    .or_default()
                    .entry(item.clone())
                    .or_default() += 1;
                *self
                    .pairs
                    .entry(item.clone())
                    .or_default()
                    .entry(prev.clone())
                    .or_default() += 1;
            }
        }
        steps.push_front(item.clone());
        steps.truncate(COVISIT_STEPS);
    }

    /// Up to `k` items co-visited with the customer's latest distinct items.
    pub fn recommend(&self, recent: &[String], k: usize) -> Vec<String> {
        let mut scores: HashMap<&str, u64> = HashMap::new();
        for seed in recent.iter().take(COVISIT_SEEDS) {
            if let Some(n) = self.pairs.get(seed) {
                for (item, c) in n {
                    *scores.entry(item.as_str()).or_default() += u64::from(*c);
                }
            }
        }
        let mut ranked: Vec<(&str, u64)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(k)
            .map(|(id, _)| id.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn ev(customer: &str, item: &str) -> Event {
        Event {
            event_id: format!("{customer}-{item}"),
            kind: EventType::PageView,
            customer_id: customer.into(),
            ts: 0,
            session_id: None,
            item_id: Some(item.into()),
            seq: None,
            props: Default::default(),
        }
    }

    #[test]
    fn recent_items_are_distinct_most_recent_first_and_capped() {
        let mut r = RecentItems::new(3);
        for i in ["a", "b", "a", "c", "d"] {
            r.observe(&ev("c1", i));
        }
        assert_eq!(r.of("c1"), ["d", "c", "a"]);
        assert!(r.of("c2").is_empty());
    }

    #[test]
    fn co_visitation_counts_neighbours_within_the_steps() {
        let mut c = CoVisitation::default();
        for i in ["a", "b", "c"] {
            c.observe(&ev("c1", i));
        }
        for i in ["a", "b"] {
            c.observe(&ev("c2", i));
        }
        // a–b twice, a–c and b–c once
        assert_eq!(c.recommend(&["a".into()], 5), ["b", "c"]);
        assert_eq!(c.recommend(&["c".into()], 1), ["a"]);
        assert!(c.recommend(&["zz".into()], 5).is_empty());
    }
}
