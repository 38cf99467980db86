//! Merging many updates of one entity into a small equivalent set: the
//! backfill's bulk path.
//!
//! Because every [`Update`] commutes (see `aggregate`), the updates of many
//! events to one entity can be folded into one [`Merged`] value whose
//! [`Merged::into_updates`] changes *any* state exactly as applying the
//! original updates one by one would (sums up to float rounding): counts and
//! sums per field and bucket add up, `last` keeps the greatest `(ts, seq,
//! value)`, `time_since_last` the greatest ts, recent lists the `cap` latest
//! members, resettable sums the latest reset and the contributions after it.
//! So a backfill can write one call per entity instead of one per event, and
//! still never overwrite newer streaming state.
//!
//! Pure like `aggregate`: no Redis, no clock. `tests` check the equivalence
//! against `apply_update` on random update sequences and random prior states.

use super::aggregate::{last_wins, Change, FeatureName, LastValue, Update};
use super::definition::{Entity, FeatureSet, BUCKETS_PER_WINDOW};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// The fold of any number of updates to one entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    adds: HashMap<FeatureName, f64>,
    windows: HashMap<FeatureName, BTreeMap<i64, f64>>,
    lasts: HashMap<FeatureName, LastValue>,
    max_ts: HashMap<FeatureName, i64>,
    /// feature → (cap, member → latest ts)
    recent: HashMap<FeatureName, (usize, HashMap<String, i64>)>,
    /// feature → (latest reset ts or None, ts → contribution)
    resettable: HashMap<FeatureName, (Option<i64>, BTreeMap<i64, f64>)>,
    statics: HashMap<FeatureName, String>,
}

fn slot<V: Default>(map: &mut HashMap<FeatureName, V>, key: FeatureName) -> &mut V {
    map.entry(key).or_default()
}

impl Merged {
    /// Whether no update was pushed.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty()
            && self.windows.is_empty()
            && self.lasts.is_empty()
            && self.max_ts.is_empty()
            && self.recent.is_empty()
            && self.resettable.is_empty()
            && self.statics.is_empty()
    }

    /// Folds one update in.
    pub fn push(&mut self, u: Update) {
        match u {
            Update::Add { feature, amount } => match self.adds.get_mut(&feature) {
                Some(x) => *x += amount,
                None => {
                    self.adds.insert(feature, amount);
                }
            },
            Update::AddWindowed {
                feature,
                bucket,
                amount,
            } => {
                let w = match self.windows.get_mut(&feature) {
                    Some(w) => w,
                    None => slot(&mut self.windows, feature),
                };
                *w.entry(bucket).or_insert(0.0) += amount;
            }
            Update::SetLast {
                feature,
                ts,
                seq,
                value,
            } => {
                let newer = self
                    .lasts
                    .get(&feature)
                    .is_none_or(|cur| last_wins((ts, seq, &value), (cur.ts, cur.seq, &cur.value)));
                if newer {
                    self.lasts.insert(feature, LastValue { ts, seq, value });
                }
            }
            Update::MaxTs { feature, ts } => match self.max_ts.get_mut(&feature) {
                Some(t) => *t = (*t).max(ts),
                None => {
                    self.max_ts.insert(feature, ts);
                }
            },
            Update::PushRecent {
                feature,
                member,
                ts,
                cap,
            } => {
                let (c, members) = match self.recent.get_mut(&feature) {
                    Some(r) => r,
                    None => slot(&mut self.recent, feature),
                };
                *c = cap;
                match members.get_mut(&member) {
                    Some(t) => *t = (*t).max(ts),
                    None => {
                        members.insert(member, ts);
                    }
                }
            }
            Update::AddResettable {
                feature,
                ts,
                amount,
            } => {
                let (_, parts) = match self.resettable.get_mut(&feature) {
                    Some(r) => r,
                    None => slot(&mut self.resettable, feature),
                };
                *parts.entry(ts).or_insert(0.0) += amount;
            }
            Update::Reset { feature, ts } => {
                let (reset, _) = match self.resettable.get_mut(&feature) {
                    Some(r) => r,
                    None => slot(&mut self.resettable, feature),
                };
                *reset = Some(reset.map_or(ts, |r| r.max(ts)));
            }
            Update::SetStatic { feature, value } => {
                self.statics.insert(feature, value);
            }
        }
    }

    /// Folds another merge in (the two sets of updates, in any order).
    /// Statics: `other` wins (it is the later load).
    pub fn absorb(&mut self, other: Merged) {
        for u in other.into_updates_unpruned() {
            self.push(u);
        }
    }

    /// The equivalent updates, pruned to what can still matter: window
    /// buckets within the newest window, the `cap` latest recent members,
    /// contributions after the latest reset.
    pub fn into_updates(self) -> Vec<Update> {
        self.updates(true)
    }

    fn into_updates_unpruned(self) -> Vec<Update> {
        self.updates(false)
    }

    fn updates(self, prune: bool) -> Vec<Update> {
        let mut out = Vec::new();
        for (feature, amount) in self.adds {
            out.push(Update::Add { feature, amount });
        }
        for (feature, buckets) in self.windows {
            let max = buckets.keys().next_back().copied().unwrap_or(0);
            for (bucket, amount) in buckets {
                if prune && bucket <= max - BUCKETS_PER_WINDOW {
                    continue;
                }
                out.push(Update::AddWindowed {
                    feature: feature.clone(),
                    bucket,
                    amount,
                });
            }
        }
        for (feature, l) in self.lasts {
            out.push(Update::SetLast {
                feature,
                ts: l.ts,
                seq: l.seq,
                value: l.value,
            });
        }
        for (feature, ts) in self.max_ts {
            out.push(Update::MaxTs { feature, ts });
        }
        for (feature, (cap, members)) in self.recent {
            let mut list: Vec<(String, i64)> = members.into_iter().collect();
            if prune {
                // the order of `aggregate::apply_update` (and of Redis sorted sets)
                list.sort_by(|a, b| {
                    b.1.cmp(&a.1)
                        .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
                });
                list.truncate(cap);
            }
            for (member, ts) in list {
                out.push(Update::PushRecent {
                    feature: feature.clone(),
                    member,
                    ts,
                    cap,
                });
            }
        }
        for (feature, (reset, parts)) in self.resettable {
            // the reset first: contributions at or before it are dropped anyway
            if let Some(ts) = reset {
                out.push(Update::Reset {
                    feature: feature.clone(),
                    ts,
                });
            }
            for (ts, amount) in parts {
                if prune && reset.is_some_and(|r| ts <= r) {
                    continue;
                }
                out.push(Update::AddResettable {
                    feature: feature.clone(),
                    ts,
                    amount,
                });
            }
        }
        for (feature, value) in self.statics {
            out.push(Update::SetStatic { feature, value });
        }
        out
    }
}

/// Where each feature's slot is in a [`Folded`]: features are numbered
/// within their entity.
#[derive(Debug, Clone)]
pub struct FoldLayout {
    local: Vec<usize>,
    names: Vec<String>,
    customer: usize,
    session: usize,
    item: usize,
}

impl FoldLayout {
    pub fn new(set: &FeatureSet) -> FoldLayout {
        let mut counts = [0usize; 3];
        let local = set
            .features
            .iter()
            .map(|f| {
                let c = &mut counts[entity_slot(f.entity)];
                *c += 1;
                *c - 1
            })
            .collect();
        FoldLayout {
            local,
            names: set.features.iter().map(|f| f.name.clone()).collect(),
            customer: counts[0],
            session: counts[1],
            item: counts[2],
        }
    }

    /// An empty fold for an entity.
    pub fn empty<'e>(&self, e: Entity) -> Folded<'e> {
        let n = match e {
            Entity::Customer => self.customer,
            Entity::Session => self.session,
            Entity::Item => self.item,
        };
        Folded {
            slots: (0..n).map(|_| Slot::Empty).collect(),
            globals: Vec::new(),
        }
    }

    /// Folds the change of feature `feature` (index in the set) in.
    pub fn push<'e>(&self, into: &mut Folded<'e>, feature: usize, c: Change<'e>) {
        let local = self.local[feature];
        if matches!(into.slots[local], Slot::Empty) {
            into.globals.push(feature);
        }
        into.slots[local].push(c);
    }

    /// The fold as a [`Merged`] (named updates).
    /// The fold's equivalent updates, pruned: the same updates as
    /// `self.merged(f).into_updates()` (in another order), built straight
    /// from the slots — the backfill's path, where the `Merged` maps would
    /// only be built to be taken apart again.
    pub fn updates(&self, f: Folded<'_>) -> Vec<Update> {
        let n = f
            .globals
            .iter()
            .map(|&g| f.slots[self.local[g]].len())
            .sum();
        let mut out = Vec::with_capacity(n);
        let mut slots = f.slots;
        for g in f.globals {
            let slot = std::mem::replace(&mut slots[self.local[g]], Slot::Empty);
            slot.into_updates(&self.names[g], &mut out);
        }
        out
    }

    /// The fold as a [`Merged`]: the reference form [`FoldLayout::updates`]
    /// is tested against.
    pub fn merged(&self, f: Folded<'_>) -> Merged {
        let mut m = Merged::default();
        let mut slots = f.slots;
        for g in f.globals {
            let slot = std::mem::replace(&mut slots[self.local[g]], Slot::Empty);
            slot.into_merged(&self.names[g], &mut m);
        }
        m
    }
}

fn entity_slot(e: Entity) -> usize {
    match e {
        Entity::Customer => 0,
        Entity::Session => 1,
        Entity::Item => 2,
    }
}

type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// The fold of many [`Change`]s of one entity, borrowing from the events:
/// the allocation-free form of [`Merged`], one slot per feature.
#[derive(Debug)]
pub struct Folded<'e> {
    slots: Vec<Slot<'e>>,
    /// Global indices of the features with a slot, in first-seen order.
    globals: Vec<usize>,
}

impl Folded<'_> {
    pub fn is_empty(&self) -> bool {
        self.globals.is_empty()
    }
}

#[derive(Debug)]
enum Slot<'e> {
    Empty,
    Add(f64),
    /// At most the newest `BUCKETS_PER_WINDOW` buckets (see [`push_bucket`]).
    Windowed(Vec<(i64, f64)>),
    Last {
        ts: i64,
        seq: i64,
        value: Cow<'e, str>,
    },
    MaxTs(i64),
    Recent {
        cap: usize,
        members: FxMap<Cow<'e, str>, i64>,
    },
    Resettable {
        reset: Option<i64>,
        parts: BTreeMap<i64, f64>,
    },
}

/// Adds `amount` to `bucket` of a window, keeping only the buckets
/// [`Merged::into_updates`] would keep (those within `BUCKETS_PER_WINDOW`
/// of the newest): a bucket that old is never written, since the newest
/// bucket only grows. Keeps a long history's fold to a dozen entries per
/// window instead of one per bucket ever seen.
fn push_bucket(w: &mut Vec<(i64, f64)>, bucket: i64, amount: f64) {
    let newest = w.iter().map(|(b, _)| *b).max().unwrap_or(bucket);
    if bucket <= newest - BUCKETS_PER_WINDOW {
        return;
    }
    match w.iter_mut().find(|(b, _)| *b == bucket) {
        Some((_, x)) => *x += amount,
        None => {
            w.push((bucket, amount));
            if bucket > newest {
                w.retain(|(b, _)| *b > bucket - BUCKETS_PER_WINDOW);
            }
        }
    }
}

impl<'e> Slot<'e> {
    /// Same semantics as [`Merged::push`].
    fn push(&mut self, c: Change<'e>) {
        match (self, c) {
            (Slot::Add(x), Change::Add(a)) => *x += a,
            (Slot::Windowed(w), Change::AddWindowed { bucket, amount }) => {
                push_bucket(w, bucket, amount)
            }
            (
                Slot::Last { ts, seq, value },
                Change::SetLast {
                    ts: t,
                    seq: q,
                    value: v,
                },
            ) => {
                if last_wins((t, q, &v), (*ts, *seq, value)) {
                    (*ts, *seq, *value) = (t, q, v);
                }
            }
            (Slot::MaxTs(ts), Change::MaxTs(t)) => *ts = (*ts).max(t),
            (Slot::Recent { cap, members }, Change::PushRecent { member, ts, cap: c }) => {
                *cap = c;
                match members.get_mut(member.as_ref()) {
                    Some(t) => *t = (*t).max(ts),
                    None => {
                        members.insert(member, ts);
                    }
                }
            }
            (Slot::Resettable { parts, .. }, Change::AddResettable { ts, amount }) => {
                *parts.entry(ts).or_insert(0.0) += amount
            }
            (Slot::Resettable { reset, .. }, Change::Reset(ts)) => {
                *reset = Some(reset.map_or(ts, |r| r.max(ts)))
            }
            (slot @ Slot::Empty, c) => {
                *slot = match c {
                    Change::Add(a) => Slot::Add(a),
                    Change::AddWindowed { bucket, amount } => {
                        let mut w = Vec::with_capacity(BUCKETS_PER_WINDOW as usize);
                        w.push((bucket, amount));
                        Slot::Windowed(w)
                    }
                    Change::SetLast { ts, seq, value } => Slot::Last { ts, seq, value },
                    Change::MaxTs(t) => Slot::MaxTs(t),
                    Change::PushRecent { member, ts, cap } => {
                        let mut members = FxMap::default();
                        members.insert(member, ts);
                        Slot::Recent { cap, members }
                    }
                    Change::AddResettable { ts, amount } => Slot::Resettable {
                        reset: None,
                        parts: BTreeMap::from([(ts, amount)]),
                    },
                    Change::Reset(ts) => Slot::Resettable {
                        reset: Some(ts),
                        parts: BTreeMap::new(),
                    },
                };
            }
            // one feature has one aggregation, so its changes are all of one kind
            (_, c) => debug_assert!(false, "feature changed with mixed kinds: {c:?}"),
        }
    }

    /// At least the number of updates [`Slot::into_updates`] makes.
    fn len(&self) -> usize {
        match self {
            Slot::Empty => 0,
            Slot::Windowed(w) => w.len(),
            Slot::Recent { cap, members } => members.len().min(*cap),
            Slot::Resettable { parts, .. } => parts.len() + 1,
            _ => 1,
        }
    }

    fn into_updates(self, name: &str, out: &mut Vec<Update>) {
        let f = || FeatureName::from(name);
        match self {
            Slot::Empty => {}
            Slot::Add(amount) => out.push(Update::Add {
                feature: f(),
                amount,
            }),
            Slot::Windowed(w) => {
                let max = w.iter().map(|(b, _)| *b).max().unwrap_or(0);
                out.extend(
                    w.into_iter()
                        .filter(|(b, _)| *b > max - BUCKETS_PER_WINDOW)
                        .map(|(bucket, amount)| Update::AddWindowed {
                            feature: f(),
                            bucket,
                            amount,
                        }),
                );
            }
            Slot::Last { ts, seq, value } => out.push(Update::SetLast {
                feature: f(),
                ts,
                seq,
                value: value.into_owned(),
            }),
            Slot::MaxTs(ts) => out.push(Update::MaxTs { feature: f(), ts }),
            Slot::Recent { cap, members } => {
                let mut list: Vec<(Cow<'_, str>, i64)> = members.into_iter().collect();
                // the order of `aggregate::apply_update` (and of Redis sorted sets)
                list.sort_by(|a, b| {
                    b.1.cmp(&a.1)
                        .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
                });
                list.truncate(cap);
                out.extend(list.into_iter().map(|(member, ts)| Update::PushRecent {
                    feature: f(),
                    member: member.into_owned(),
                    ts,
                    cap,
                }));
            }
            Slot::Resettable { reset, parts } => {
                if let Some(ts) = reset {
                    out.push(Update::Reset { feature: f(), ts });
                }
                out.extend(
                    parts
                        .into_iter()
                        .filter(|(ts, _)| reset.is_none_or(|r| *ts > r))
                        .map(|(ts, amount)| Update::AddResettable {
                            feature: f(),
                            ts,
                            amount,
                        }),
                );
            }
        }
    }

    fn into_merged(self, name: &str, m: &mut Merged) {
        let f = || FeatureName::from(name);
        match self {
            Slot::Empty => {}
            Slot::Add(amount) => m.push(Update::Add {
                feature: f(),
                amount,
            }),
            Slot::Windowed(w) => {
                m.windows.insert(f(), w.into_iter().collect());
            }
            Slot::Last { ts, seq, value } => m.push(Update::SetLast {
                feature: f(),
                ts,
                seq,
                value: value.into_owned(),
            }),
            Slot::MaxTs(ts) => m.push(Update::MaxTs { feature: f(), ts }),
            Slot::Recent { cap, members } => {
                m.recent.insert(
                    f(),
                    (
                        cap,
                        members
                            .into_iter()
                            .map(|(k, v)| (k.into_owned(), v))
                            .collect(),
                    ),
                );
            }
            Slot::Resettable { reset, parts } => {
                m.resettable.insert(f(), (reset, parts));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::aggregate::{apply_update, EntityState};
    use crate::features::definition::FeatureSet;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_update(r: &mut Rng) -> Update {
        let ts = 1_000_000 + r.below(40) as i64 * 1000;
        // one aggregation per feature name, as in real definitions
        let kind = r.below(7);
        let prefix = ["a", "w", "l", "t", "r", "s", "s"][kind as usize];
        let feature: FeatureName = format!("{prefix}{}", r.below(2)).into();
        match kind {
            0 => Update::Add {
                feature,
                amount: r.below(5) as f64,
            },
            1 => Update::AddWindowed {
                feature,
                bucket: r.below(30) as i64,
                amount: 1.0,
            },
            2 => Update::SetLast {
                feature,
                ts,
                seq: r.below(3) as i64,
                value: format!("v{}", r.below(4)),
            },
            3 => Update::MaxTs { feature, ts },
            4 => Update::PushRecent {
                feature,
                member: format!("m{}", r.below(8)),
                ts,
                cap: 3,
            },
            5 => Update::AddResettable {
                feature,
                ts,
                amount: r.below(9) as f64,
            },
            _ => Update::Reset { feature, ts },
        }
    }

    #[test]
    fn fold_updates_are_the_merged_updates() {
        let set = FeatureSet::parse(
            r#"
[[feature]]
name = "n"
entity = "customer"
events = ["page_view"]
aggregation = "count"
[[feature]]
name = "w"
entity = "customer"
events = ["page_view"]
aggregation = "count"
window = "1h"
[[feature]]
name = "l"
entity = "customer"
events = ["page_view"]
aggregation = "last"
value = "item_id"
[[feature]]
name = "t"
entity = "customer"
events = ["page_view"]
aggregation = "time_since_last"
[[feature]]
name = "r"
entity = "customer"
events = ["page_view"]
aggregation = "distinct_recent"
value = "item_id"
cap = 3
[[feature]]
name = "s"
entity = "customer"
events = ["add_to_cart"]
aggregation = "sum"
value = "props.price"
reset_on = ["purchase"]
"#,
        )
        .expect("definitions parse");
        let layout = FoldLayout::new(&set);
        let sorted = |u: Vec<Update>| {
            let mut v: Vec<String> = u.iter().map(|u| format!("{u:?}")).collect();
            v.sort();
            v
        };
        for seed in 1..200u64 {
            let mut r = Rng(seed * 104_729);
            let (mut a, mut b) = (
                layout.empty(Entity::Customer),
                layout.empty(Entity::Customer),
            );
            for _ in 0..r.below(80) {
                let ts = 1_000_000 + r.below(40) as i64 * 100_000;
                let (f, c) = match r.below(7) {
                    0 => (0, Change::Add(r.below(5) as f64)),
                    1 => (
                        1,
                        Change::AddWindowed {
                            bucket: r.below(40) as i64,
                            amount: 1.0,
                        },
                    ),
                    2 => (
                        2,
                        Change::SetLast {
                            ts,
                            seq: r.below(3) as i64,
                            value: Cow::Owned(format!("v{}", r.below(4))),
                        },
                    ),
                    3 => (3, Change::MaxTs(ts)),
                    4 => (
                        4,
                        Change::PushRecent {
                            member: Cow::Owned(format!("m{}", r.below(8))),
                            ts,
                            cap: 3,
                        },
                    ),
                    5 => (
                        5,
                        Change::AddResettable {
                            ts,
                            amount: r.below(9) as f64,
                        },
                    ),
                    _ => (5, Change::Reset(ts)),
                };
                layout.push(&mut a, f, c.clone());
                layout.push(&mut b, f, c);
            }
            assert_eq!(
                sorted(layout.updates(a)),
                sorted(layout.merged(b).into_updates()),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn merged_updates_equal_one_by_one_on_any_prior_state() {
        for seed in 1..300u64 {
            let mut r = Rng(seed * 7919);
            let prior: Vec<Update> = (0..r.below(20)).map(|_| random_update(&mut r)).collect();
            let batch: Vec<Update> = (0..1 + r.below(60))
                .map(|_| random_update(&mut r))
                .collect();
            let mut base = EntityState::default();
            prior.iter().for_each(|u| apply_update(&mut base, u));

            let mut one_by_one = base.clone();
            batch.iter().for_each(|u| apply_update(&mut one_by_one, u));

            // split in two halves merged separately, then absorbed
            let mid = batch.len() / 2;
            let mut a = Merged::default();
            batch[..mid].iter().cloned().for_each(|u| a.push(u));
            let mut b = Merged::default();
            batch[mid..].iter().cloned().for_each(|u| b.push(u));
            a.absorb(b);
            let mut merged = base.clone();
            a.into_updates()
                .iter()
                .for_each(|u| apply_update(&mut merged, u));
            assert_eq!(one_by_one, merged, "seed {seed}");
        }
    }
}
