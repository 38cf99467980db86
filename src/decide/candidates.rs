//! The candidates stage: which items are considered. A request either lists
//! them, or they are generated from the customer's state (what they carted
//! and viewed recently, the items other shoppers co-visited with their
//! latest ones (`features::covisit_score`: the neighbours of its `seeds`,
//! read from the store's `covisit` lists), popular
//! items of their recent categories, then the globally popular items);
//! rules inject more from their sources
//! ([`from_source`], [`inject`]). Each candidate carries where it came from, which becomes a
//! reason in the answer.

use super::popularity::Popularity;
use super::request::Label;
use crate::features::aggregate::EntityState;
use crate::rules::file::InjectSource;
use std::collections::HashSet;

/// Where a candidate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Requested,
    Carted,
    Viewed,
    /// Co-visited with the customer's latest items by other shoppers.
    CoVisited,
    CategoryPopular,
    Popular,
    /// Added by a rule; the label is the reason it gives.
    Injected(Label),
}

impl Source {
    /// The reason this source adds to an item's `reasons`.
    pub fn reason(&self) -> Label {
        match self {
            Source::Requested => "requested".into(),
            Source::Carted => "carted_recently".into(),
            Source::Viewed => "viewed_recently".into(),
            Source::CoVisited => "co_visited".into(),
            Source::CategoryPopular => "popular_in_category".into(),
            Source::Popular => "popular".into(),
            Source::Injected(reason) => reason.clone(),
        }
    }
}

/// One item under consideration.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub item_id: String,
    pub source: Source,
}

/// Names of the customer list features candidate generation uses.
pub const CART_LIST: &str = "cart_recent";
pub const VIEW_LIST: &str = "recent_items";
pub const CATEGORY_LIST: &str = "recent_categories";
pub const PURCHASED_LIST: &str = "purchased_recent";

/// The share (%) of the generated candidates the recently viewed may take.
pub const VIEWED_SHARE: usize = 75;

/// The request's own list, in its order (already deduplicated by the API).
pub fn requested(ids: &[String]) -> Vec<Candidate> {
    ids.iter()
        .map(|id| Candidate {
            item_id: id.clone(),
            source: Source::Requested,
        })
        .collect()
}

/// Up to `n` candidates for a customer: the cart, up to
/// [`VIEWED_SHARE`] % of `n` of the recently viewed, up to `n/4` of
/// `covisited` (best first), the popular
/// items of the recent categories (`n/2` shared among them), then the
/// popular items.
pub fn generate(
    customer: &EntityState,
    covisited: &[(String, f64)],
    pop: &Popularity,
    n: usize,
) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    let list = |name: &str| {
        customer
            .recent
            .get(name)
            .map(|l| l.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut push = |id: &str, source: Source, out: &mut Vec<Candidate>| {
        if out.len() < n && seen.insert(id.to_string()) {
            out.push(Candidate {
                item_id: id.to_string(),
                source,
            });
        }
    };
    for id in list(CART_LIST) {
        push(id, Source::Carted, &mut out);
    }
    for id in list(VIEW_LIST).into_iter().take(n * VIEWED_SHARE / 100) {
        push(id, Source::Viewed, &mut out);
    }
    let quota = out.len() + n / 4;
    for (id, _) in covisited {
        if out.len() >= quota {
            break;
        }
        push(id, Source::CoVisited, &mut out);
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

/// The items an `inject` source gives for a customer, at most `limit`,
/// best first.
pub fn from_source(
    source: &InjectSource,
    customer: &EntityState,
    pop: &Popularity,
    limit: usize,
) -> Vec<String> {
    let list = |name: &str| -> Vec<String> {
        customer
            .recent
            .get(name)
            .map(|l| l.iter().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default()
    };
    match source {
        InjectSource::Items(ids) => ids.iter().take(limit).cloned().collect(),
        InjectSource::RecentlyViewed => list(VIEW_LIST).into_iter().take(limit).collect(),
        InjectSource::Popular => pop
            .global
            .iter()
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect(),
        InjectSource::PopularInRecentCategories => {
            let cats = list(CATEGORY_LIST);
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            // round robin over the categories, most recent first
            let lists: Vec<&Vec<(String, f64)>> =
                cats.iter().filter_map(|c| pop.by_category.get(c)).collect();
            let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
            'fill: for rank in 0..longest {
                for l in &lists {
                    if let Some((id, _)) = l.get(rank) {
                        if seen.insert(id.as_str()) {
                            out.push(id.clone());
                            if out.len() >= limit {
                                break 'fill;
                            }
                        }
                    }
                }
            }
            out
        }
    }
}

/// Adds `ids` not already among `cands`, each with `reason` (the seam rules
/// inject candidates through). Returns how many were added.
pub fn inject(cands: &mut Vec<Candidate>, ids: &[String], reason: Label) -> usize {
    let mut have: HashSet<String> = cands.iter().map(|c| c.item_id.clone()).collect();
    let before = cands.len();
    for id in ids {
        if have.insert(id.clone()) {
            cands.push(Candidate {
                item_id: id.clone(),
                source: Source::Injected(reason.clone()),
            });
        }
    }
    cands.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_candidates_are_the_cart_most_of_the_viewed_then_co_visited_and_popular() {
        let mut c = EntityState::default();
        let list = |p: &str, n: usize| -> Vec<(String, i64)> {
            (0..n)
                .map(|i| (format!("{p}{i}"), 1000 - i as i64))
                .collect()
        };
        c.recent.insert(CART_LIST.into(), list("c", 3));
        c.recent.insert(VIEW_LIST.into(), list("v", 100));
        c.recent.insert(CATEGORY_LIST.into(), list("k", 1));
        let covisited: Vec<(String, f64)> = (0..30).map(|i| (format!("n{i}"), 1.0)).collect();
        let mut pop = Popularity::default();
        pop.by_category.insert(
            "k0".into(),
            (0..5).map(|i| (format!("t{i}"), 1.0)).collect(),
        );
        pop.global = (0..5).map(|i| (format!("g{i}"), 1.0)).collect();
        let count = |cands: &[Candidate], s: Source| cands.iter().filter(|x| x.source == s).count();

        let full = generate(&c, &covisited, &pop, 100);
        assert_eq!(full.len(), 100);
        assert_eq!(count(&full, Source::Carted), 3);
        assert_eq!(count(&full, Source::Viewed), 75);
        assert_eq!(full[3].item_id, "v0", "the newest viewed after the cart");
        assert_eq!(
            count(&full, Source::CoVisited),
            22,
            "what is left, best first"
        );
        assert_eq!(full[78].item_id, "n0");

        // a short history leaves room for a quarter co-visited and popular items
        c.recent.insert(VIEW_LIST.into(), list("v", 4));
        let short = generate(&c, &covisited, &pop, 100);
        assert_eq!(count(&short, Source::Viewed), 4);
        assert_eq!(count(&short, Source::CoVisited), 25);
        assert_eq!(count(&short, Source::CategoryPopular), 5);
        assert_eq!(count(&short, Source::Popular), 5);
    }

    #[test]
    fn injected_candidates_are_new_once_each_in_order() {
        let mut c = requested(&["a".into(), "b".into()]);
        let added = inject(
            &mut c,
            &["b".into(), "x".into(), "y".into(), "x".into()],
            "upsell".into(),
        );
        assert_eq!(added, 2);
        let ids: Vec<&str> = c.iter().map(|c| c.item_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "x", "y"]);
        assert_eq!(c[2].source.reason(), "upsell");
        assert_eq!(c[0].source.reason(), "requested");
    }
}
