//! The rules stage: eligibility before scoring (which candidates may be
//! shown at all) and actions after it (what to do with each item, and why).
//! For now the rules are built in: items bought recently are not
//! recommended again (`recommend.exclude_purchased`), and an item still in
//! a non-empty cart gets the `complete_purchase` action with reason
//! `in_cart`. The CEL rule engine (conditions over customer/item/context
//! features, boosts, injected candidates, rule-defined actions) fills this
//! stage; its inputs are these functions' inputs.

use super::candidates::{Candidate, CART_LIST, PURCHASED_LIST};
use super::request::Label;
use crate::features::aggregate::{numeric_value, EntityState};
use crate::features::{Entity, FeatureSet};

/// The action attached to an item in the response.
pub const ACTION_RECOMMEND: &str = "recommend";
pub const ACTION_COMPLETE_PURCHASE: &str = "complete_purchase";
/// The customer feature holding the cart's value.
const CART_VALUE: &str = "cart_value";

/// The built-in rules, compiled against the feature definitions once.
#[derive(Debug, Clone)]
pub struct Rules {
    exclude_purchased: bool,
    /// Index of the customer's `cart_value` feature, if defined.
    cart_value: Option<usize>,
}

/// What the action rules read about the customer, computed once per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerFacts {
    pub cart_value: f64,
}

impl Rules {
    pub fn new(set: &FeatureSet, exclude_purchased: bool) -> Rules {
        let cart_value = set
            .features
            .iter()
            .position(|f| f.entity == Entity::Customer && f.name == CART_VALUE);
        Rules {
            exclude_purchased,
            cart_value,
        }
    }

    /// Indices of the candidates the customer may be shown, in order.
    pub fn eligible(&self, customer: &EntityState, cands: &[Candidate]) -> Vec<usize> {
        (0..cands.len())
            .filter(|&i| {
                !(self.exclude_purchased && in_list(customer, PURCHASED_LIST, &cands[i].item_id))
            })
            .collect()
    }

    /// The facts the action rules read, at `now`.
    pub fn facts(&self, set: &FeatureSet, customer: &EntityState, now: i64) -> CustomerFacts {
        let cart_value = self
            .cart_value
            .and_then(|i| numeric_value(&set.features[i], customer, now))
            .unwrap_or(0.0);
        CustomerFacts { cart_value }
    }

    /// The action for an eligible item, and the extra reason it adds.
    pub fn action(
        &self,
        facts: &CustomerFacts,
        customer: &EntityState,
        item_id: &str,
    ) -> (Label, Option<Label>) {
        if facts.cart_value > 0.0 && in_list(customer, CART_LIST, item_id) {
            (ACTION_COMPLETE_PURCHASE.into(), Some("in_cart".into()))
        } else {
            (ACTION_RECOMMEND.into(), None)
        }
    }
}

fn in_list(customer: &EntityState, list: &str, id: &str) -> bool {
    customer
        .recent
        .get(list)
        .is_some_and(|l| l.iter().any(|(m, _)| m == id))
}
