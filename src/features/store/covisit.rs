//! Co-visitation kept by the store itself, as part of applying events: for
//! every item, the items customers viewed, clicked or carted close to it,
//! which [`FeatureStore::neighbours`](super::FeatureStore::neighbours)
//! reads so candidate generation can offer items the customer has not
//! seen yet (the ones other shoppers went on to, or came from).
//!
//! **The rule.** An event that puts item `X` at the head of the
//! customer's [`LIST`] (a `distinct_recent` of `item_id`: page views,
//! clicks and cart adds as shipped) *co-visits* `X` with the items that
//! list held just before it: the [`STEPS`] most recent ones other than
//! `X`, at most [`WINDOW_MS`] older than the event. Each such pair adds
//! the event's weight ([`weight`]) to `X` in `Y`'s neighbours and to `Y` in
//! `X`'s (both ways: items seen together). A neighbour's score is thus a
//! count of co-visits with time decay: each co-visit counts half as much
//! per [`HALF_LIFE_MS`] of event time, as a forward-decayed sum (weights
//! grow by `2^(t / half-life)`, so an old sum never needs rewriting; only
//! the order and ratios of scores mean anything). Scores are exact for
//! events dated within about 19 years either side of [`EPOCH_MS`].
//!
//! **Once.** Only an event new to the customer group (not a duplicate of
//! an applied one) files pairs, so a redelivery never counts twice. A
//! crash between the event's write and its filing (Redis: two calls) loses
//! that event's pairs: at most once, as suits a ranking heuristic.
//!
//! **Bounds.** After each write, an item's neighbours keep the best
//! [`KEEP`] (the lowest dropped, ties by id as Redis orders them); the
//! Redis list expires with the item's keys.
//!
//! [`Neighbours`] is the memory store's list and the reference for Redis'
//! (`redis/covisit.rs`): the same events give the same lists.

use crate::features::aggregate::{EntityState, Plan, Update};
use crate::features::definition::{Aggregation, Entity, FeatureDef, FeatureSet, Field};
use std::collections::HashMap;

/// The customer list whose items co-visit.
pub const LIST: &str = "recent_items";
/// How many of the customer's previous items an event co-visits.
pub const STEPS: usize = 5;
/// How much older than the event a previous item may be.
pub const WINDOW_MS: i64 = 24 * 3_600_000;
/// Neighbours kept per item.
pub const KEEP: usize = 50;
/// Event time over which a co-visit's weight halves.
pub const HALF_LIFE_MS: i64 = 7 * 86_400_000;
/// The time whose co-visits weigh 1 (2025-01-01T00:00:00Z).
pub const EPOCH_MS: i64 = 1_735_689_600_000;

/// The weight of a co-visit at event time `ts`.
pub fn weight(ts: i64) -> f64 {
    ((ts - EPOCH_MS) as f64 / HALF_LIFE_MS as f64).exp2()
}

/// Whether the features keep co-visitation: the customer has [`LIST`], a
/// `distinct_recent` of `item_id`.
pub fn kept(set: &FeatureSet) -> bool {
    list_def(set).is_some()
}

/// The customer's [`LIST`] feature, if it is a `distinct_recent` of
/// `item_id`.
pub fn list_def(set: &FeatureSet) -> Option<&FeatureDef> {
    set.of_entity(Entity::Customer).find(|f| {
        f.name == LIST
            && matches!(
                f.aggregation,
                Aggregation::DistinctRecent {
                    field: Field::ItemId,
                    ..
                }
            )
    })
}

/// Whether `p` puts its item at the head of the customer's [`LIST`], and so
/// co-visits it with the items before it.
pub fn visits(p: &Plan) -> bool {
    p.item_id.is_some()
        && p.customer
            .iter()
            .any(|u| matches!(u, Update::PushRecent { feature, .. } if feature == LIST))
}

/// The items a visit of `item` at `ts` co-visits, given the customer's
/// [`LIST`] just before it (newest first, with times): up to [`STEPS`]
/// other items at most [`WINDOW_MS`] older than the event (and not newer).
pub fn previous<'l>(item: &str, ts: i64, list: &'l [(String, i64)]) -> Vec<&'l str> {
    previous_of(item, ts, list).map(String::as_str).collect()
}

/// [`previous`] of a list of any members.
pub fn previous_of<'l, 'i, M: AsRef<str>>(
    item: &'i str,
    ts: i64,
    list: &'l [(M, i64)],
) -> impl Iterator<Item = &'l M> + use<'l, 'i, M> {
    list.iter()
        .filter(move |(m, t)| m.as_ref() != item && *t <= ts && *t >= ts - WINDOW_MS)
        .take(STEPS)
        .map(|(m, _)| m)
}

/// The co-visits of a visit of `item` at `ts`: `(item, neighbour,
/// weight)`, both ways.
pub fn pairs<'a>(item: &'a str, ts: i64, previous: &[&'a str]) -> Vec<(&'a str, &'a str, f64)> {
    let w = weight(ts);
    previous
        .iter()
        .flat_map(|&y| [(y, item, w), (item, y, w)])
        .collect()
}

/// [`pairs`] of plan `p`'s visit, given its customer's [`LIST`] before it.
pub fn pairs_of<'a>(p: &'a Plan, list: &'a [(String, i64)]) -> Vec<(&'a str, &'a str, f64)> {
    match p.item_id.as_deref() {
        Some(item) if visits(p) => pairs(item, p.ts, &previous(item, p.ts, list)),
        _ => Vec::new(),
    }
}

/// The customer's [`LIST`] in `state`, newest first.
pub fn list_of(state: &EntityState) -> &[(String, i64)] {
    state.recent.get(LIST).map(Vec::as_slice).unwrap_or(&[])
}

/// Sums a batch's co-visits per `(item, neighbour)`, in first-seen order
/// (the order both stores add them in).
pub fn merge<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str, f64)>) -> Vec<Filing<'a>> {
    let mut out: Vec<Filing<'a>> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (item, n, w) in pairs {
        let k = *at.entry(item).or_insert_with(|| {
            out.push(Filing {
                item,
                add: Vec::new(),
            });
            out.len() - 1
        });
        let add = &mut out[k].add;
        match add.iter_mut().find(|(m, _)| *m == n) {
            Some((_, s)) => *s += w,
            None => add.push((n, w)),
        }
    }
    out
}

/// What one write adds to one item's neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct Filing<'a> {
    pub item: &'a str,
    pub add: Vec<(&'a str, f64)>,
}

/// The best [`KEEP`] of one filing's neighbours, best first (ties by id,
/// the greater first): what filing them into an item with no list yet
/// leaves.
pub fn best<'a>(add: &[(&'a str, f64)]) -> Vec<(&'a str, f64)> {
    let mut all = add.to_vec();
    all.sort_by(|a, b| better_first((a.0, a.1), (b.0, b.1)));
    all.truncate(KEEP);
    all
}

/// The order neighbours are kept in: the higher score first, ties by id,
/// the greater first (Redis' `ZREVRANGE` order, so its cut and ours agree).
fn better_first(a: (&str, f64), b: (&str, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then_with(|| b.0.cmp(a.0))
}

/// One item's neighbours with their scores (the memory store's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Neighbours {
    scores: HashMap<String, f64>,
}

impl Neighbours {
    /// Adds a filing's scores, then keeps the best [`KEEP`].
    pub fn file(&mut self, add: &[(&str, f64)]) {
        for (n, w) in add {
            *self.scores.entry((*n).to_string()).or_default() += w;
        }
        if self.scores.len() > KEEP {
            let keep: Vec<(String, f64)> = self.top(KEEP);
            self.scores = keep.into_iter().collect();
        }
    }

    /// The best `n`, best first; ties by id, the greater first (Redis'
    /// `ZREVRANGE` order).
    pub fn top(&self, n: usize) -> Vec<(String, f64)> {
        let mut all: Vec<(&String, &f64)> = self.scores.iter().collect();
        all.sort_by(|a, b| better_first((a.0, *a.1), (b.0, *b.1)));
        all.into_iter()
            .take(n)
            .map(|(m, s)| (m.clone(), *s))
            .collect()
    }
}

/// Candidates from the neighbours of the customer's latest items: each
/// item's scores, divided by its list's total, summed over the lists (one
/// per seed); the items of `skip` (the caller passes the seeds) left out;
/// the best `n`, best first, ties by id.
pub fn rank(lists: &[Vec<(String, f64)>], skip: &[&str], n: usize) -> Vec<(String, f64)> {
    let mut sum: HashMap<&str, f64> = HashMap::new();
    for l in lists {
        // scores are comparable within a list; normalise so each seed
        // counts the same whatever its own popularity
        let total: f64 = l.iter().map(|(_, s)| s).sum();
        if total <= 0.0 {
            continue;
        }
        for (m, s) in l {
            *sum.entry(m.as_str()).or_default() += s / total;
        }
    }
    let mut out: Vec<(String, f64)> = sum
        .into_iter()
        .filter(|(m, _)| !skip.contains(m))
        .map(|(m, s)| (m.to_string(), s))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(item: &str, ts: i64) -> Plan {
        Plan {
            event_id: format!("e-{item}-{ts}"),
            ts,
            customer_id: "c".into(),
            item_id: Some(item.into()),
            customer: vec![Update::PushRecent {
                feature: LIST.into(),
                member: item.into(),
                ts,
                cap: 20,
            }],
            ..Plan::default()
        }
    }

    #[test]
    fn an_event_co_visits_the_latest_other_items_within_the_window() {
        let t = EPOCH_MS;
        let list: Vec<(String, i64)> = vec![
            ("x".into(), t - 10),
            ("a".into(), t - 20),
            ("b".into(), t - 30),
            ("c".into(), t - 40),
            ("d".into(), t - 50),
        ];
        let p = plan("x", t);
        assert!(visits(&p));
        assert_eq!(previous("x", t, &list), ["a", "b", "c", "d"]);
        let old: Vec<(String, i64)> = vec![("a".into(), t - WINDOW_MS - 1)];
        assert!(previous("x", t, &old).is_empty());
        assert_eq!(pairs("x", t, &["a"]), [("a", "x", 1.0), ("x", "a", 1.0)]);
        assert_eq!(pairs_of(&p, &list).len(), 8);
        let mut other = p.clone();
        other.customer.clear();
        assert!(!visits(&other));
        assert!(pairs_of(&other, &list).is_empty());
    }

    #[test]
    fn weights_halve_per_half_life() {
        assert_eq!(weight(EPOCH_MS), 1.0);
        assert!((weight(EPOCH_MS + HALF_LIFE_MS) - 2.0).abs() < 1e-12);
        assert!((weight(EPOCH_MS - HALF_LIFE_MS) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn neighbours_keep_the_best_and_rank_sums_normalised_lists() {
        let mut n = Neighbours::default();
        let many: Vec<(String, f64)> = (0..KEEP + 5)
            .map(|i| (format!("i{i:03}"), i as f64))
            .collect();
        let add: Vec<(&str, f64)> = many.iter().map(|(m, s)| (m.as_str(), *s)).collect();
        n.file(&add);
        let top = n.top(KEEP + 10);
        assert_eq!(top.len(), KEEP);
        assert_eq!(top[0].0, format!("i{:03}", KEEP + 4));
        n.file(&[("i054", 1.0)]);
        assert_eq!(n.top(1)[0], ("i054".to_string(), 55.0));

        let lists = vec![
            vec![("p".to_string(), 3.0), ("q".to_string(), 1.0)],
            vec![("q".to_string(), 10.0)],
        ];
        let r = rank(&lists, &[], 5);
        assert_eq!(r[0].0, "q");
        assert_eq!(r[1].0, "p");
        assert_eq!(rank(&lists, &["q"], 5).len(), 1);
    }
}
