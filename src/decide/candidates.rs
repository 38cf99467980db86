//! Candidate generation when a request lists none: what the customer carted
//! and viewed recently, popular items in their recent categories, then the
//! globally popular items. Each candidate carries why it was chosen.

use super::popularity::Popularity;
use crate::features::aggregate::EntityState;
use std::collections::HashSet;

/// Where a candidate came from (becomes a reason in the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Requested,
    Carted,
    Viewed,
    CategoryPopular,
    Popular,
}

impl Source {
    pub fn reason(self) -> &'static str {
        match self {
            Source::Requested => "requested",
            Source::Carted => "carted_recently",
            Source::Viewed => "viewed_recently",
            Source::CategoryPopular => "popular_in_category",
            Source::Popular => "popular",
        }
    }
}

/// Names of the customer list features candidate generation uses.
pub const CART_LIST: &str = "cart_recent";
pub const VIEW_LIST: &str = "recent_items";
pub const CATEGORY_LIST: &str = "recent_categories";
pub const PURCHASED_LIST: &str = "purchased_recent";

/// Up to `n` candidates for a customer.
pub fn generate(customer: &EntityState, pop: &Popularity, n: usize) -> Vec<(String, Source)> {
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    let list = |name: &str| {
        customer
            .recent
            .get(name)
            .map(|l| l.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut push = |id: &str, src: Source, out: &mut Vec<(String, Source)>| {
        if out.len() < n && seen.insert(id.to_string()) {
            out.push((id.to_string(), src));
        }
    };
    for id in list(CART_LIST) {
        push(id, Source::Carted, &mut out);
    }
    for id in list(VIEW_LIST).into_iter().take(n / 4) {
        push(id, Source::Viewed, &mut out);
    }
    let cats = list(CATEGORY_LIST);
    if !cats.is_empty() {
        let per_cat = (n / 2).div_ceil(cats.len()).max(1);
        for c in cats {
            if let Some(items) = pop.by_category.get(c) {
                for (id, _) in items.iter().take(per_cat) {
                    push(id, Source::CategoryPopular, &mut out);
                }
            }
        }
    }
    for (id, _) in &pop.global {
        if out.len() >= n {
            break;
        }
        push(id, Source::Popular, &mut out);
    }
    out
}
