//! The fallback stage: the answer when ranking failed or ran out of time.
//! The request's candidates in their order, or the globally popular items,
//! scored by rank (1, 1/2, 1/3, ...), with `fallback: true` and the reason.
//! Built from memory only, so rules (which need the customer's features)
//! do not apply to it.

use super::popularity::Popularity;
use super::request::{RankedItem, RecommendRequest, Recommendation};
use std::collections::BTreeMap;

/// The fallback answer to `req`.
pub fn answer(req: &RecommendRequest, pop: &Popularity, reason: String) -> Recommendation {
    let item = |r: usize, id: &str, source: &'static str| {
        RankedItem::plain(
            id.to_string(),
            1.0 / (r as f32 + 1.0),
            vec!["fallback".into(), source.into()],
        )
    };
    let items: Vec<RankedItem> = match &req.candidates {
        Some(list) => list
            .iter()
            .take(req.k)
            .enumerate()
            .map(|(r, id)| item(r, id, "requested"))
            .collect(),
        None => pop
            .global
            .iter()
            .take(req.k)
            .enumerate()
            .map(|(r, (id, _))| item(r, id, "popular"))
            .collect(),
    };
    Recommendation {
        request_id: req.request_id.clone(),
        customer_id: req.customer_id.clone(),
        items,
        model: None,
        fallback: true,
        fallback_reason: Some(reason),
        timings_us: BTreeMap::new(),
        excluded: None,
    }
}
