//! The arbitration stage: orders the ranked items and keeps the top k.
//!
//! Order: higher score first; on equal scores, the item the customer
//! interacted with most recently first (the newest time it appears in their
//! cart, viewed or purchased lists; items they never touched after those
//! they did); then by item id, so the answer never depends on the order
//! candidates arrived in.

use super::candidates::{CART_LIST, PURCHASED_LIST, VIEW_LIST};
use super::request::RankedItem;
use crate::features::aggregate::EntityState;
use std::cmp::Ordering;
use std::collections::HashMap;

/// The customer lists whose times break ties.
const INTERACTION_LISTS: [&str; 3] = [CART_LIST, VIEW_LIST, PURCHASED_LIST];

/// Sorts `items` by the rule above and keeps the first `k`.
pub fn top_k(mut items: Vec<RankedItem>, k: usize, customer: &EntityState) -> Vec<RankedItem> {
    let last = last_interaction(customer);
    let seen = |id: &str| last.get(id).copied();
    items.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| cmp_recency(seen(&a.item_id), seen(&b.item_id)))
            .then_with(|| a.item_id.cmp(&b.item_id))
    });
    items.truncate(k);
    items
}

/// Newest first; never-seen last.
fn cmp_recency(a: Option<i64>, b: Option<i64>) -> Ordering {
    b.cmp(&a)
}

/// The newest time each item appears in the customer's interaction lists.
fn last_interaction(customer: &EntityState) -> HashMap<&str, i64> {
    let mut out: HashMap<&str, i64> = HashMap::new();
    for list in INTERACTION_LISTS {
        for (id, ts) in customer.recent.get(list).into_iter().flatten() {
            let e = out.entry(id.as_str()).or_insert(*ts);
            *e = (*e).max(*ts);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, score: f32) -> RankedItem {
        RankedItem {
            item_id: id.into(),
            score,
            action: "recommend".into(),
            reasons: Vec::new(),
        }
    }

    #[test]
    fn ties_go_to_the_latest_interaction_then_the_id() {
        let mut customer = EntityState::default();
        customer
            .recent
            .insert(VIEW_LIST.into(), vec![("z".into(), 300), ("m".into(), 100)]);
        customer
            .recent
            .insert(CART_LIST.into(), vec![("m".into(), 400)]);
        let items = vec![
            item("a", 0.5),
            item("z", 0.5),
            item("b", 0.5),
            item("m", 0.5),
            item("top", 0.9),
        ];
        let ids: Vec<String> = top_k(items.clone(), 10, &customer)
            .into_iter()
            .map(|i| i.item_id)
            .collect();
        // m: cart at 400 beats z: viewed at 300; a and b never seen, by id
        assert_eq!(ids, ["top", "m", "z", "a", "b"]);
        let reversed: Vec<RankedItem> = items.into_iter().rev().collect();
        let again: Vec<String> = top_k(reversed, 3, &customer)
            .into_iter()
            .map(|i| i.item_id)
            .collect();
        assert_eq!(again, ["top", "m", "z"]);
    }
}
