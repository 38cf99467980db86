//! The arbitration stage: each item's priority, then the order and the
//! top k.
//!
//! Priority = propensity (the model's score) × value × weight (the product
//! of the matching rules' levers). The value is the item's
//! `recommend.value` feature (e.g. `item.margin`); an item without it
//! recorded falls back to `item.price`, then 1; with `recommend.value`
//! unset every value is 1.
//!
//! Order: higher priority first; on equal scores, the item the customer
//! interacted with most recently first (the newest time it appears in their
//! cart, viewed or purchased lists; items they never touched after those
//! they did); then by item id, so the answer never depends on the order
//! candidates arrived in.

use super::candidates::{CART_LIST, PURCHASED_LIST, VIEW_LIST};
use super::request::RankedItem;
use crate::features::aggregate::EntityState;
use crate::features::{Entity, FeatureSet};
use crate::rules::schema::recorded_item_number;
use std::cmp::Ordering;
use std::collections::HashMap;

/// The customer lists whose times break ties.
const INTERACTION_LISTS: [&str; 3] = [CART_LIST, VIEW_LIST, PURCHASED_LIST];

/// Where an item's value comes from (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValueSource {
    /// Index of the `recommend.value` feature, and of `item.price`.
    feature: Option<usize>,
    price: Option<usize>,
}

/// The item feature holding the price (the value's first fallback).
const PRICE: &str = "price";

impl ValueSource {
    /// Resolves `recommend.value` (`item.<numeric feature>`, or unset).
    pub fn new(set: &FeatureSet, name: Option<&str>) -> Result<ValueSource, String> {
        let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
            return Ok(ValueSource::default());
        };
        let index = |n: &str| {
            set.features
                .iter()
                .position(|f| f.entity == Entity::Item && f.name == n && f.is_numeric())
        };
        let feature = name.strip_prefix("item.").and_then(index).ok_or_else(|| {
            format!("recommend.value `{name}` is not a numeric item feature (e.g. `item.margin`)")
        })?;
        Ok(ValueSource {
            feature: Some(feature),
            price: index(PRICE),
        })
    }

    /// An item's value at `now`.
    pub fn value(&self, set: &FeatureSet, item: &EntityState, now: i64) -> f64 {
        let Some(f) = self.feature else { return 1.0 };
        recorded_item_number(set, f, item, now)
            .or_else(|| {
                self.price
                    .and_then(|p| recorded_item_number(set, p, item, now))
            })
            .unwrap_or(1.0)
    }
}

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
    use crate::features::aggregate::LastValue;

    fn item(id: &str, score: f32) -> RankedItem {
        RankedItem::plain(id.into(), score, Vec::new())
    }

    fn shipped() -> FeatureSet {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        FeatureSet::load(&path).expect("shipped definitions")
    }

    /// An item state with these recorded `last`/static values.
    fn state(fields: &[(&str, &str)]) -> EntityState {
        let mut st = EntityState::default();
        for (k, v) in fields {
            st.lasts.insert(
                (*k).into(),
                LastValue {
                    ts: 1,
                    seq: 0,
                    value: (*v).into(),
                },
            );
        }
        st
    }

    #[test]
    fn the_value_is_the_configured_feature_then_the_price_then_one() {
        let set = shipped();
        let margin = ValueSource::new(&set, Some("item.margin")).expect("a numeric item feature");
        let value = |fields: &[(&str, &str)]| margin.value(&set, &state(fields), 10);
        assert_eq!(value(&[("margin", "12"), ("price", "40")]), 12.0);
        // a margin of 0 is recorded: it is the value, not a gap
        assert_eq!(value(&[("margin", "0"), ("price", "40")]), 0.0);
        assert_eq!(value(&[("price", "40")]), 40.0, "no margin: item.price");
        assert_eq!(value(&[]), 1.0, "neither: 1");
        // the catalog's `price` column is item.list_price, not item.price
        assert_eq!(value(&[("list_price", "55")]), 1.0);
        // unset: every value is 1
        let unset = ValueSource::new(&set, None).expect("unset");
        assert_eq!(unset.value(&set, &state(&[("margin", "12")]), 10), 1.0);
        // the list price when configured as the value
        let list = ValueSource::new(&set, Some("item.list_price")).expect("numeric");
        assert_eq!(list.value(&set, &state(&[("list_price", "55")]), 10), 55.0);
        for bad in ["item.brand", "customer.cart_value", "margin", "item.nope"] {
            let e = ValueSource::new(&set, Some(bad)).expect_err(bad);
            assert!(e.contains(bad), "{e}");
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
