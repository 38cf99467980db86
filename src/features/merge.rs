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

use super::aggregate::{LastValue, Update};
use super::definition::BUCKETS_PER_WINDOW;
use std::collections::{BTreeMap, HashMap};

/// The fold of any number of updates to one entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    adds: HashMap<String, f64>,
    windows: HashMap<String, BTreeMap<i64, f64>>,
    lasts: HashMap<String, LastValue>,
    max_ts: HashMap<String, i64>,
    /// feature → (cap, member → latest ts)
    recent: HashMap<String, (usize, HashMap<String, i64>)>,
    /// feature → (latest reset ts or None, ts → contribution)
    resettable: HashMap<String, (Option<i64>, BTreeMap<i64, f64>)>,
    statics: HashMap<String, String>,
}

fn slot<'a, V: Default>(map: &'a mut HashMap<String, V>, key: String) -> &'a mut V {
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
                let newer = match self.lasts.get(&feature) {
                    None => true,
                    Some(cur) => {
                        (ts, seq) > (cur.ts, cur.seq)
                            || ((ts, seq) == (cur.ts, cur.seq)
                                && value.as_bytes() > cur.value.as_bytes())
                    }
                };
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

    fn random_update(r: &mut Rng) -> Update {
        let ts = 1_000_000 + r.below(40) as i64 * 1000;
        // one aggregation per feature name, as in real definitions
        let kind = r.below(7);
        let prefix = ["a", "w", "l", "t", "r", "s", "s"][kind as usize];
        let feature = format!("{prefix}{}", r.below(2));
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
