//! Folding the changes of many events to one entity into a small
//! equivalent set of updates: the backfill's bulk path.
//!
//! Because every [`Update`] commutes (see `aggregate`), the changes of many
//! events to one entity can be folded into one [`Folded`] value, one slot
//! per feature, whose [`FoldLayout::updates`] change *any* state exactly as
//! applying the original updates one by one would (sums up to float
//! rounding): counts and sums per field and bucket add up, `last` keeps the
//! greatest `(ts, seq, value)`, `time_since_last` the greatest ts, recent
//! lists the `cap` latest members, resettable sums the latest reset and the
//! contributions after it. So a backfill can write one call per entity
//! instead of one per event, and still never overwrite newer streaming
//! state.
//!
//! Pure like `aggregate`: no Redis, no clock. `tests` check the equivalence
//! against `apply_update` on random change sequences and random prior states.

use super::aggregate::{last_text_wins, sort_newest_first, Change, FeatureName, Text, Update};
use super::definition::{Entity, FeatureSet, BUCKETS_PER_WINDOW};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

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

    /// The fold's equivalent updates, pruned to what can still matter:
    /// window buckets within the newest window, the `cap` latest recent
    /// members, contributions after the latest reset.
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
}

fn entity_slot(e: Entity) -> usize {
    match e {
        Entity::Customer => 0,
        Entity::Session => 1,
        Entity::Item => 2,
    }
}

type FxMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// The fold of many [`Change`]s of one entity, borrowing from the events,
/// one slot per feature.
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
    /// At most the newest `BUCKETS_PER_WINDOW` buckets (see [`push_bucket`])
    /// and the window's bucket width.
    Windowed(i64, Vec<(i64, f64)>),
    Last {
        ts: i64,
        seq: i64,
        value: Text<'e>,
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

/// Adds `amount` to `bucket` of a window, keeping only the buckets within
/// `BUCKETS_PER_WINDOW` of the newest: `apply_update` at a time no earlier
/// than the newest event (a backfill refuses rows after its `as_of`) drops
/// the older ones anyway. Keeps a long history's fold to a dozen entries per
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
    /// Folds one change in: the semantics of `aggregate::apply_update`.
    fn push(&mut self, c: Change<'e>) {
        match (self, c) {
            (Slot::Add(x), Change::Add(a)) => *x += a,
            (Slot::Windowed(_, w), Change::AddWindowed { bucket, amount, .. }) => {
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
                if last_text_wins((t, q, v), (*ts, *seq, *value)) {
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
                    Change::AddWindowed {
                        bucket,
                        bucket_ms,
                        amount,
                    } => {
                        let mut w = Vec::with_capacity(BUCKETS_PER_WINDOW as usize);
                        w.push((bucket, amount));
                        Slot::Windowed(bucket_ms, w)
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
            Slot::Windowed(_, w) => w.len(),
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
            // `push_bucket` kept only the buckets within the newest window
            Slot::Windowed(bucket_ms, w) => {
                out.extend(w.into_iter().map(|(bucket, amount)| Update::AddWindowed {
                    feature: f(),
                    bucket,
                    bucket_ms,
                    amount,
                }))
            }
            Slot::Last { ts, seq, value } => out.push(Update::SetLast {
                feature: f(),
                ts,
                seq,
                value: value.to_cow().into_owned(),
            }),
            Slot::MaxTs(ts) => out.push(Update::MaxTs { feature: f(), ts }),
            Slot::Recent { cap, members } => {
                let mut list: Vec<(Cow<'_, str>, i64)> = members.into_iter().collect();
                sort_newest_first(&mut list);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::aggregate::{apply_update, EntityState};

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// One feature of each aggregation (indices 0..=5).
    fn set() -> FeatureSet {
        FeatureSet::parse(
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
        .expect("definitions parse")
    }

    fn random_change(r: &mut Rng, bucket_ms: i64) -> (usize, Change<'static>) {
        let ts = 1_000_000 + r.below(40) as i64 * 1000;
        match r.below(7) {
            0 => (0, Change::Add(r.below(5) as f64)),
            1 => (
                1,
                Change::AddWindowed {
                    bucket: r.below(30) as i64,
                    bucket_ms,
                    amount: 1.0,
                },
            ),
            2 => (
                2,
                Change::SetLast {
                    ts,
                    seq: r.below(3) as i64,
                    value: Text::Str(["v0", "v1", "v2", "v3"][r.below(4) as usize]),
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
        }
    }

    #[test]
    fn folded_updates_equal_one_by_one_on_any_prior_state() {
        let set = set();
        let layout = FoldLayout::new(&set);
        let named =
            |(f, c): (usize, Change<'static>)| c.named(set.features[f].name.as_str().into());
        let bms = set.features[1].window.expect("w is windowed").bucket_ms();
        for seed in 1..300u64 {
            let mut r = Rng(seed * 7919);
            // "now" no earlier than the newest bucket (29), as in a backfill
            let now = (29 + r.below(20) as i64) * bms + r.below(bms as u64) as i64;
            let prior: Vec<Update> = (0..r.below(20))
                .map(|_| named(random_change(&mut r, bms)))
                .collect();
            let batch: Vec<(usize, Change<'static>)> = (0..1 + r.below(60))
                .map(|_| random_change(&mut r, bms))
                .collect();
            let mut base = EntityState::default();
            prior.iter().for_each(|u| apply_update(&mut base, u, now));

            let mut one_by_one = base.clone();
            for c in &batch {
                apply_update(&mut one_by_one, &named(c.clone()), now);
            }

            let mut fold = layout.empty(Entity::Customer);
            for (f, c) in batch {
                layout.push(&mut fold, f, c);
            }
            let mut folded = base.clone();
            layout
                .updates(fold)
                .iter()
                .for_each(|u| apply_update(&mut folded, u, now));
            assert_eq!(one_by_one, folded, "seed {seed}");
        }
    }
}
