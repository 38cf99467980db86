//! Popularity kept by the store itself, as part of applying item events:
//! the most popular items over the last 24 hours, overall and per
//! category, which [`FeatureStore::popular`](super::FeatureStore::popular)
//! lists without reading the catalogue.
//!
//! **The rule.** An item's popularity in a time bucket (the buckets of the
//! item's 24 h windows, [`BUCKETS_PER_WINDOW`] of them: 2 h wide) is
//! `Σ weight × count` over the weighted 24 h counts of [`WEIGHTS`], read
//! from the item's own, deduped state. After every item write the store
//! *files* the item ([`Filing`]): its exact total of each live bucket the
//! write added to (all live buckets for a backfill group) and its category
//! (the item's `category`, a `last` feature, with the time that set it). A
//! write that adds to no live bucket (an event older than the window, a
//! type no weighted count takes, a backfill group with nothing in the
//! last 24 h) files nothing; a category it changed is picked up by the
//! item's next filing. A
//! bucket keeps the greatest total filed for an item (counts never go
//! down within a bucket, so a late or repeated filing of an older total is
//! harmless: a redelivered event, which changes no count, files the same
//! total again). An item's popularity at `now` is the sum of its totals in
//! the buckets live at `now` (the same buckets its `*_24h` features sum),
//! so it drops out 24 h after its last event without anything deleting it.
//!
//! **Categories.** Each bucket also lists the item under a category,
//! the one recorded for the item (its category with the time that set
//! it). A filing with a newer category than the record's moves the item's
//! total in every live bucket from the old category's list to the new
//! one, so an item is listed under one category, its latest; a filing
//! with an older one files under the recorded one. Items without a
//! category are only in the global list.
//!
//! **Bounds.** After each write, every list it touched keeps its best
//! [`KEEP_GLOBAL`] items (global) or [`KEEP_CATEGORY`] (per category; the
//! lowest dropped, ties by id as Redis orders them); a dropped item comes
//! back with its exact total on its next filing. Buckets older than the
//! window are dropped (memory: on the next filing; Redis: their keys
//! expire a window and a bucket after their last write). Reads sum the
//! live buckets, so an item outside a bucket's top is under-counted there:
//! the lists are exact while fewer than `KEEP_*` items share a bucket (a
//! category), and close to it beyond (the reads ask for at most half of
//! what is kept). The category records are not cut to a top: one per item
//! filed under a category within the window (forgotten once its newest
//! bucket leaves it), so bounded by the catalogue, as the items' keys are.
//!
//! [`Book`] is the memory store's implementation and the reference for
//! Redis' (`redis/pop_write.lua`, `redis/pop_read.lua`): the same filings
//! give the same lists (`tests/popularity.rs`).

use crate::features::aggregate::{EntityState, Update};
use crate::features::definition::{Aggregation, Entity, FeatureSet, BUCKETS_PER_WINDOW};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Weights of the item counts in the popularity score; only `count`
/// features with a 24 h window count (others, or missing ones, are left out).
pub const WEIGHTS: [(&str, f64); 4] = [
    ("views_24h", 1.0),
    ("clicks_24h", 2.0),
    ("carts_24h", 5.0),
    ("purchases_24h", 10.0),
];
/// The item feature holding the category (a `last`).
pub const CATEGORY: &str = "category";
/// The window popularity is counted over.
pub const WINDOW_MS: i64 = 24 * 3_600_000;
/// Items kept per bucket in the global list.
pub const KEEP_GLOBAL: usize = 1000;
/// Items kept per bucket and category.
pub const KEEP_CATEGORY: usize = 200;

/// Which item features make up popularity, compiled from the definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct PopularitySpec {
    /// `(feature, weight)`, all `count`s over [`WINDOW_MS`].
    pub features: Vec<(String, f64)>,
    /// Width of a bucket (the window's).
    pub bucket_ms: i64,
    /// The category feature, if the item has one.
    pub category: Option<String>,
}

impl PopularitySpec {
    /// The spec of `set`; `None` when no weighted count is defined (then
    /// nothing is kept and the lists are empty).
    pub fn of(set: &FeatureSet) -> Option<PopularitySpec> {
        let features: Vec<(String, f64)> = WEIGHTS
            .iter()
            .filter_map(|(n, w)| {
                set.of_entity(Entity::Item)
                    .find(|f| {
                        f.name == *n
                            && matches!(f.aggregation, Aggregation::Count)
                            && f.window.is_some_and(|w| w.ms == WINDOW_MS)
                    })
                    .map(|f| (f.name.clone(), *w))
            })
            .collect();
        if features.is_empty() {
            return None;
        }
        let category = set
            .of_entity(Entity::Item)
            .find(|f| f.name == CATEGORY && matches!(f.aggregation, Aggregation::Last { .. }))
            .map(|f| f.name.clone());
        Some(PopularitySpec {
            features,
            bucket_ms: WINDOW_MS / BUCKETS_PER_WINDOW,
            category,
        })
    }

    /// The newest bucket a read at `now` no longer sees.
    pub fn cut(&self, now: i64) -> i64 {
        now.div_euclid(self.bucket_ms) - BUCKETS_PER_WINDOW
    }

    /// The buckets a read at `now` sums (oldest first).
    pub fn live(&self, now: i64) -> std::ops::RangeInclusive<i64> {
        let cut = self.cut(now);
        (cut + 1)..=(cut + BUCKETS_PER_WINDOW)
    }

    /// The live buckets (at `now`) that `updates` add to, each once.
    pub fn touched(&self, updates: &[Update], now: i64, out: &mut Vec<i64>) {
        let cut = self.cut(now);
        for u in updates {
            if let Update::AddWindowed {
                feature, bucket, ..
            } = u
            {
                if *bucket > cut
                    && !out.contains(bucket)
                    && self.features.iter().any(|(f, _)| f == feature.as_str())
                {
                    out.push(*bucket);
                }
            }
        }
    }

    /// An item's total in `bucket`, given each weighted count's amount
    /// there (in [`Self::features`] order).
    pub fn total(&self, amounts: impl Iterator<Item = f64>) -> f64 {
        self.features
            .iter()
            .zip(amounts)
            .map(|((_, w), a)| w * a)
            .sum()
    }

    /// The filing of item `id` from its state: its totals in `buckets`
    /// (those above 0) and its category. A filing without totals is not
    /// filed (see the module doc).
    pub fn filing(&self, id: &str, st: &EntityState, buckets: &[i64]) -> Filing {
        let totals = buckets
            .iter()
            .map(|b| {
                let amounts = self.features.iter().map(|(f, _)| {
                    st.windows
                        .get(f)
                        .and_then(|w| w.buckets.get(b))
                        .copied()
                        .unwrap_or(0.0)
                });
                (*b, self.total(amounts))
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        let category = self
            .category
            .as_ref()
            .and_then(|f| st.lasts.get(f))
            .filter(|l| !l.value.is_empty())
            .map(|l| (l.value.clone(), l.ts));
        Filing {
            item: id.to_string(),
            category,
            totals,
        }
    }
}

/// What one item write files: the item's exact totals in some buckets and
/// its current category with the time that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct Filing {
    pub item: String,
    pub category: Option<(String, i64)>,
    /// `(bucket, total)`, totals above 0 (the stores file nothing else).
    pub totals: Vec<(i64, f64)>,
}

/// The lists [`FeatureStore::popular`](super::FeatureStore::popular)
/// answers, best first (ties by id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PopularLists {
    pub global: Vec<(String, f64)>,
    pub by_category: HashMap<String, Vec<(String, f64)>>,
}

/// Orders `(id, score)` best first, ties by id, and keeps `top`.
pub fn rank(mut list: Vec<(String, f64)>, top: usize) -> Vec<(String, f64)> {
    list.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(top);
    list
}

/// A score with a total order (scores are finite sums of counts).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Score {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// One list of one bucket, as a Redis sorted set: member → score, and the
/// members lowest first (score, then id by bytes), for trimming.
#[derive(Debug, Clone, Default)]
struct Ranked {
    score: HashMap<String, f64>,
    order: BTreeSet<(Score, String)>,
}

impl Ranked {
    /// `ZADD GT`: sets the member's score if new or greater.
    fn add_gt(&mut self, id: &str, s: f64) {
        match self.score.get(id) {
            Some(old) if *old >= s => {}
            Some(old) => {
                self.order.remove(&(Score(*old), id.to_string()));
                self.order.insert((Score(s), id.to_string()));
                self.score.insert(id.to_string(), s);
            }
            None => {
                self.order.insert((Score(s), id.to_string()));
                self.score.insert(id.to_string(), s);
            }
        }
    }

    fn remove(&mut self, id: &str) -> Option<f64> {
        let s = self.score.remove(id)?;
        self.order.remove(&(Score(s), id.to_string()));
        Some(s)
    }

    /// Drops the lowest members past `keep` (`ZREMRANGEBYRANK`).
    fn trim(&mut self, keep: usize) {
        while self.score.len() > keep {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            self.score.remove(&id);
        }
    }
}

/// The lists of one bucket.
#[derive(Debug, Clone, Default)]
struct Bucket {
    global: Ranked,
    by_category: HashMap<String, Ranked>,
}

/// The category an item is filed under: set at `ts`, in buckets up to
/// `newest` (absent once `newest` leaves the window).
#[derive(Debug, Clone)]
struct Record {
    ts: i64,
    newest: i64,
    category: String,
}

/// Which list of which bucket a filing touched (trimmed once after it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Touched {
    Global(i64),
    Category(i64, String),
}

/// The popularity lists of the memory store (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Book {
    buckets: BTreeMap<i64, Bucket>,
    records: HashMap<String, Record>,
    /// `records.len()` after the last sweep of stale records.
    swept_at: usize,
}

impl Book {
    /// Files `filings` written at `now` as `pop_write.lua` does: buckets a
    /// read at `now` no longer sees are dropped first (and not filed);
    /// each list touched is cut to its best once, after all of them.
    pub fn file(&mut self, spec: &PopularitySpec, filings: &[Filing], now: i64) {
        let cut = spec.cut(now);
        while let Some((b, _)) = self.buckets.first_key_value() {
            if *b > cut {
                break;
            }
            self.buckets.pop_first();
        }
        if self.records.len() > 2 * self.swept_at.max(512) {
            self.records.retain(|_, r| r.newest > cut);
            self.swept_at = self.records.len();
        }
        let mut touched: HashSet<Touched> = HashSet::new();
        for f in filings {
            self.file_one(f, cut, &mut touched);
        }
        for t in touched {
            match t {
                Touched::Global(b) => {
                    if let Some(bucket) = self.buckets.get_mut(&b) {
                        bucket.global.trim(KEEP_GLOBAL);
                    }
                }
                Touched::Category(b, c) => {
                    if let Some(list) = self
                        .buckets
                        .get_mut(&b)
                        .and_then(|bucket| bucket.by_category.get_mut(&c))
                    {
                        list.trim(KEEP_CATEGORY);
                    }
                }
            }
        }
    }

    /// Files one item (see [`Self::file`]).
    fn file_one(&mut self, f: &Filing, cut: i64, touched: &mut HashSet<Touched>) {
        let live = |b: &i64, s: &f64| *b > cut && *s > 0.0;
        let Some((cat, ts)) = &f.category else {
            for (b, s) in f.totals.iter().filter(|(b, s)| live(b, s)) {
                self.buckets
                    .entry(*b)
                    .or_default()
                    .global
                    .add_gt(&f.item, *s);
                touched.insert(Touched::Global(*b));
            }
            return;
        };
        let record = self
            .records
            .get(&f.item)
            .filter(|r| r.newest > cut)
            .cloned();
        // the category to file under: this filing's, unless a newer one is
        // recorded; a newer one than the record's moves every live bucket
        let (fcat, fts) = match &record {
            Some(r) if *ts < r.ts => (r.category.clone(), r.ts),
            Some(r) if r.category != *cat => {
                for b in (cut + 1)..=(cut + BUCKETS_PER_WINDOW) {
                    let Some(bucket) = self.buckets.get_mut(&b) else {
                        continue;
                    };
                    let Some(s) = bucket
                        .by_category
                        .get_mut(&r.category)
                        .and_then(|l| l.remove(&f.item))
                    else {
                        continue;
                    };
                    if bucket
                        .by_category
                        .get(&r.category)
                        .is_some_and(|l| l.score.is_empty())
                    {
                        bucket.by_category.remove(&r.category);
                    }
                    bucket
                        .by_category
                        .entry(cat.clone())
                        .or_default()
                        .add_gt(&f.item, s);
                    touched.insert(Touched::Category(b, cat.clone()));
                }
                (cat.clone(), *ts)
            }
            _ => (cat.clone(), *ts),
        };
        let mut newest = record.as_ref().map(|r| r.newest);
        for (b, s) in f.totals.iter().filter(|(b, s)| live(b, s)) {
            let bucket = self.buckets.entry(*b).or_default();
            bucket.global.add_gt(&f.item, *s);
            bucket
                .by_category
                .entry(fcat.clone())
                .or_default()
                .add_gt(&f.item, *s);
            touched.insert(Touched::Global(*b));
            touched.insert(Touched::Category(*b, fcat.clone()));
            newest = Some(newest.map_or(*b, |n| n.max(*b)));
        }
        if let Some(newest) = newest {
            self.records.insert(
                f.item.clone(),
                Record {
                    ts: fts,
                    newest,
                    category: fcat,
                },
            );
        }
    }

    /// The `top` items overall and `top_per_category` per category at `now`.
    pub fn popular(
        &self,
        spec: &PopularitySpec,
        now: i64,
        top: usize,
        top_per_category: usize,
    ) -> PopularLists {
        let mut global: HashMap<&str, f64> = HashMap::new();
        let mut cats: HashMap<&str, HashMap<&str, f64>> = HashMap::new();
        for (_, bucket) in self.buckets.range(spec.live(now)) {
            for (id, s) in &bucket.global.score {
                *global.entry(id).or_default() += s;
            }
            for (cat, list) in &bucket.by_category {
                let sums = cats.entry(cat).or_default();
                for (id, s) in &list.score {
                    *sums.entry(id).or_default() += s;
                }
            }
        }
        let owned = |m: HashMap<&str, f64>| -> Vec<(String, f64)> {
            m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        PopularLists {
            global: rank(owned(global), top),
            by_category: cats
                .into_iter()
                .filter(|(_, m)| !m.is_empty())
                .map(|(c, m)| (c.to_string(), rank(owned(m), top_per_category)))
                .collect(),
        }
    }

    /// Entries held in all buckets' lists (for tests of the bounds).
    pub fn len(&self) -> usize {
        self.buckets
            .values()
            .map(|b| {
                b.global.score.len() + b.by_category.values().map(|l| l.score.len()).sum::<usize>()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const NOW: i64 = 1_000 * WINDOW_MS;

    fn spec() -> PopularitySpec {
        PopularitySpec {
            features: vec![("views_24h".into(), 1.0), ("purchases_24h".into(), 10.0)],
            bucket_ms: WINDOW_MS / BUCKETS_PER_WINDOW,
            category: Some(CATEGORY.into()),
        }
    }

    fn filing(item: &str, cat: Option<(&str, i64)>, totals: &[(i64, f64)]) -> Filing {
        Filing {
            item: item.into(),
            category: cat.map(|(c, t)| (c.to_string(), t)),
            totals: totals.to_vec(),
        }
    }

    fn bucket(spec: &PopularitySpec, t: i64) -> i64 {
        t.div_euclid(spec.bucket_ms)
    }

    #[test]
    fn totals_sum_over_live_buckets_and_age_out() {
        let s = spec();
        let mut book = Book::default();
        let b0 = bucket(&s, NOW);
        book.file(&s, &[filing("a", None, &[(b0, 3.0)])], NOW);
        book.file(&s, &[filing("a", None, &[(b0 - 1, 4.0)])], NOW);
        book.file(&s, &[filing("b", None, &[(b0, 5.0)])], NOW);
        let l = book.popular(&s, NOW, 10, 10);
        assert_eq!(l.global, vec![("a".into(), 7.0), ("b".into(), 5.0)]);
        // 22 h later a's older bucket is out of the window, b's not yet
        let later = NOW + 22 * H;
        let l = book.popular(&s, later, 10, 10);
        assert_eq!(l.global, vec![("b".into(), 5.0), ("a".into(), 3.0)]);
        // a day and a bucket later nothing is left, and a filing drops the buckets
        let gone = NOW + WINDOW_MS + 2 * H;
        assert!(book.popular(&s, gone, 10, 10).global.is_empty());
        book.file(&s, &[filing("c", None, &[(bucket(&s, gone), 1.0)])], gone);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn a_repeated_or_older_total_changes_nothing() {
        let s = spec();
        let mut book = Book::default();
        let b0 = bucket(&s, NOW);
        book.file(&s, &[filing("a", None, &[(b0, 3.0)])], NOW);
        book.file(&s, &[filing("a", None, &[(b0, 3.0)])], NOW);
        book.file(&s, &[filing("a", None, &[(b0, 2.0)])], NOW);
        assert_eq!(
            book.popular(&s, NOW, 10, 10).global,
            vec![("a".into(), 3.0)]
        );
        book.file(&s, &[filing("a", None, &[(b0, 4.0)])], NOW);
        assert_eq!(
            book.popular(&s, NOW, 10, 10).global,
            vec![("a".into(), 4.0)]
        );
    }

    #[test]
    fn an_item_moving_category_leaves_the_old_list() {
        let s = spec();
        let mut book = Book::default();
        let b0 = bucket(&s, NOW);
        book.file(
            &s,
            &[filing(
                "a",
                Some(("shoes", 10)),
                &[(b0 - 2, 2.0), (b0, 1.0)],
            )],
            NOW,
        );
        book.file(&s, &[filing("b", Some(("shoes", 10)), &[(b0, 1.0)])], NOW);
        let l = book.popular(&s, NOW, 10, 10);
        assert_eq!(
            l.by_category["shoes"],
            vec![("a".into(), 3.0), ("b".into(), 1.0)]
        );
        // a moves (a later category time), with a filing that adds nothing
        book.file(&s, &[filing("a", Some(("hats", 20)), &[(b0, 0.0)])], NOW);
        let l = book.popular(&s, NOW, 10, 10);
        assert_eq!(l.by_category["shoes"], vec![("b".into(), 1.0)]);
        assert_eq!(l.by_category["hats"], vec![("a".into(), 3.0)]);
        assert_eq!(l.global[0], ("a".into(), 3.0));
        // a filing with an older category time does not move it back
        book.file(&s, &[filing("a", Some(("shoes", 15)), &[(b0, 2.0)])], NOW);
        let l = book.popular(&s, NOW, 10, 10);
        assert_eq!(l.by_category["hats"], vec![("a".into(), 4.0)]);
        assert_eq!(l.by_category["shoes"], vec![("b".into(), 1.0)]);
        // the last item leaving a category removes the list
        book.file(&s, &[filing("b", Some(("hats", 30)), &[])], NOW);
        assert!(!book
            .popular(&s, NOW, 10, 10)
            .by_category
            .contains_key("shoes"));
    }

    #[test]
    fn a_bucket_keeps_its_best_items_only() {
        let s = spec();
        let mut book = Book::default();
        let b0 = bucket(&s, NOW);
        for i in 0..(KEEP_CATEGORY + 50) {
            let f = filing(&format!("i{i:04}"), Some(("c", 1)), &[(b0, 1.0 + i as f64)]);
            book.file(&s, &[f], NOW);
        }
        let l = book.popular(&s, NOW, 10_000, 10_000);
        assert_eq!(l.global.len(), KEEP_CATEGORY + 50);
        assert_eq!(l.by_category["c"].len(), KEEP_CATEGORY);
        // the lowest were dropped
        assert_eq!(l.by_category["c"].last().map(|x| x.1), Some(51.0));
        for i in 0..(KEEP_GLOBAL + 10) {
            book.file(&s, &[filing(&format!("g{i:05}"), None, &[(b0, 1.0)])], NOW);
        }
        // ties are dropped by id, lowest first (as Redis orders members)
        let l = book.popular(&s, NOW, 10_000, 10_000);
        assert_eq!(l.global.len(), KEEP_GLOBAL);
        assert!(l.global.iter().all(|(id, _)| id.as_str() >= "g00010"));
    }

    #[test]
    fn the_spec_takes_24h_counts_only() {
        let set = FeatureSet::parse(
            r#"
[[feature]]
name = "views_24h"
entity = "item"
events = ["page_view"]
aggregation = "count"
window = "24h"
[[feature]]
name = "clicks_24h"
entity = "item"
events = ["click"]
aggregation = "count"
window = "1h"
[[feature]]
name = "category"
entity = "item"
events = ["page_view"]
aggregation = "last"
value = "props.category"
"#,
        )
        .expect("features");
        let s = PopularitySpec::of(&set).expect("a spec");
        assert_eq!(s.features, vec![("views_24h".to_string(), 1.0)]);
        assert_eq!(s.category.as_deref(), Some(CATEGORY));
        assert_eq!(s.bucket_ms, 2 * H);
        let empty = FeatureSet::parse(
            "[[feature]]\nname = \"clicks_24h\"\nentity = \"item\"\nevents = [\"click\"]\naggregation = \"count\"\nwindow = \"1h\"\n",
        )
        .expect("features");
        assert_eq!(PopularitySpec::of(&empty), None);
    }
}
