//! The rules stage: eligibility and actions after scoring. For now the
//! built-in rules are: items bought recently are not recommended again, and
//! an item still in the cart gets the `complete_purchase` action. The CEL
//! rule engine (conditions over customer/item/context features, boosts,
//! injected actions) will slot in here.

use super::candidates::{CART_LIST, PURCHASED_LIST};
use crate::features::aggregate::EntityState;

/// The action attached to an item in the response.
pub const ACTION_RECOMMEND: &str = "recommend";
pub const ACTION_COMPLETE_PURCHASE: &str = "complete_purchase";

/// Whether the customer may be shown the item.
pub fn eligible(customer: &EntityState, item_id: &str, exclude_purchased: bool) -> bool {
    !(exclude_purchased && in_list(customer, PURCHASED_LIST, item_id))
}

/// The action for an eligible item, and the extra reason it adds.
pub fn action_for(
    customer: &EntityState,
    item_id: &str,
    cart_value: f64,
) -> (&'static str, Option<&'static str>) {
    if cart_value > 0.0 && in_list(customer, CART_LIST, item_id) {
        (ACTION_COMPLETE_PURCHASE, Some("in_cart"))
    } else {
        (ACTION_RECOMMEND, None)
    }
}

fn in_list(customer: &EntityState, list: &str, id: &str) -> bool {
    customer
        .recent
        .get(list)
        .is_some_and(|l| l.iter().any(|(m, _)| m == id))
}
