//! Update → state: [`apply_update`], the reference semantics every store
//! follows (`store/redis/update.lua` does exactly the same), and the
//! ordering rules it shares with the backfill's fold ([`last_wins`],
//! [`sort_newest_first`]). Every update commutes with every other.

use super::plan::{Text, Update};
use super::state::{EntityState, LastValue, Windowed};
use crate::features::definition::BUCKETS_PER_WINDOW;
use std::collections::BTreeMap;

/// Whether a `last` value `(ts, seq, value)` replaces the current one: the
/// greater `(ts, seq)`, and on a tie the greater value (by bytes), so the
/// outcome does not depend on the order updates arrive in. `update.lua`
/// implements the same rule.
pub fn last_wins(new: (i64, i64, &str), cur: (i64, i64, &str)) -> bool {
    (new.0, new.1) > (cur.0, cur.1)
        || ((new.0, new.1) == (cur.0, cur.1) && new.2.as_bytes() > cur.2.as_bytes())
}

/// [`last_wins`] for [`Text`] values, printed only on a `(ts, seq)` tie
/// (otherwise the value does not matter).
pub fn last_text_wins(new: (i64, i64, Text<'_>), cur: (i64, i64, Text<'_>)) -> bool {
    if (new.0, new.1) != (cur.0, cur.1) {
        return last_wins((new.0, new.1, ""), (cur.0, cur.1, ""));
    }
    last_wins(
        (new.0, new.1, &new.2.to_cow()),
        (cur.0, cur.1, &cur.2.to_cow()),
    )
}

/// Orders a recent list as Redis orders the sorted set: by score, then
/// member bytes, newest first (also the backfill fold's order).
pub fn sort_newest_first<M: AsRef<str>>(list: &mut [(M, i64)]) {
    list.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| b.0.as_ref().as_bytes().cmp(a.0.as_ref().as_bytes()))
    });
}

/// A `distinct_recent` list after `member` is seen at `ts`: its time is
/// the latest it was seen at, the list newest first, cut to `cap`
/// (`make` gives the member to keep when it is new to the list).
pub fn push_recent<M: AsRef<str>>(
    list: &mut Vec<(M, i64)>,
    member: &str,
    make: impl FnOnce() -> M,
    ts: i64,
    cap: usize,
) {
    match list.iter_mut().find(|(m, _)| m.as_ref() == member) {
        Some(entry) => entry.1 = entry.1.max(ts),
        None => list.push((make(), ts)),
    }
    sort_newest_first(list);
    list.truncate(cap);
}

/// Applies one update at the writer's time `now` (ms; windows are pruned
/// relative to it). This is the reference semantics; the Redis Lua script
/// in `store/redis/update.lua` does exactly the same.
pub fn apply_update(state: &mut EntityState, u: &Update, now: i64) {
    match u {
        Update::Add { feature, amount } => {
            *state.nums.entry(feature.to_string()).or_insert(0.0) += amount;
        }
        Update::AddWindowed {
            feature,
            bucket,
            bucket_ms,
            amount,
        } => {
            // Buckets a window before now's are invisible to every read at
            // `now` or later: drop them, and never write one.
            let cut = now.div_euclid((*bucket_ms).max(1)) - BUCKETS_PER_WINDOW;
            let b = *bucket;
            let w = match state.windows.get_mut(feature.as_str()) {
                Some(w) => w,
                None if b > cut => state
                    .windows
                    .entry(feature.to_string())
                    .or_insert(Windowed {
                        lo: cut,
                        buckets: BTreeMap::new(),
                    }),
                None => return,
            };
            if cut > w.lo {
                w.buckets.retain(|i, _| *i > cut);
                w.lo = cut;
            }
            if b <= w.lo {
                return;
            }
            *w.buckets.entry(b).or_insert(0.0) += amount;
        }
        Update::SetLast {
            feature,
            ts,
            seq,
            value,
        } => {
            let newer = state
                .lasts
                .get(feature.as_str())
                .is_none_or(|cur| last_wins((*ts, *seq, value), (cur.ts, cur.seq, &cur.value)));
            if newer {
                state.lasts.insert(
                    feature.to_string(),
                    LastValue {
                        ts: *ts,
                        seq: *seq,
                        value: value.clone(),
                    },
                );
            }
        }
        Update::MaxTs { feature, ts } => {
            let cur = state.nums.entry(feature.to_string()).or_insert(*ts as f64);
            if (*ts as f64) > *cur {
                *cur = *ts as f64;
            }
        }
        Update::PushRecent {
            feature,
            member,
            ts,
            cap,
        } => {
            let list = state.recent.entry(feature.to_string()).or_default();
            push_recent(list, member, || member.clone(), *ts, *cap);
        }
        Update::AddResettable {
            feature,
            ts,
            amount,
        } => {
            let r = state.resettable.entry(feature.to_string()).or_default();
            if *ts > r.reset_ts {
                *r.parts.entry(*ts).or_insert(0.0) += amount;
            }
        }
        Update::Reset { feature, ts } => {
            let r = state.resettable.entry(feature.to_string()).or_default();
            if *ts > r.reset_ts {
                r.reset_ts = *ts;
                r.parts.retain(|t, _| *t > *ts);
            }
        }
        Update::SetStatic { feature, value } => {
            state.lasts.insert(
                feature.to_string(),
                LastValue {
                    ts: 0,
                    seq: 0,
                    value: value.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::apply_update;
    use crate::features::aggregate::fixtures::{apply_all, ev, history, set, T0};
    use crate::features::aggregate::{feature_value, plan_event, EntityState, FeatureValue};
    use serde_json::json;

    #[test]
    fn order_does_not_matter() {
        let set = set();
        let h = history();
        let (c1, i1) = apply_all(&set, &h);
        let mut rev = h.clone();
        rev.reverse();
        let (c2, i2) = apply_all(&set, &rev);
        assert_eq!(c1, c2);
        assert_eq!(i1, i2);
    }

    /// One event dated ten years ahead neither hides later real events nor
    /// is seen before its time: windows prune by the writer's clock.
    #[test]
    fn an_event_from_the_future_does_not_freeze_windows() {
        let set = set();
        let views_1h = set.stored("customer.views_1h").expect("views_1h defined");
        let mut c = EntityState::default();
        let future = T0 + 10 * 365 * 24 * 3_600_000;
        let events = [
            ev("f", "page_view", future, Some("p1"), json!({})),
            ev("1", "page_view", T0, Some("p1"), json!({})),
            ev("2", "page_view", T0 + 1_000, Some("p2"), json!({})),
        ];
        for (k, e) in events.iter().enumerate() {
            let now = T0 + 1_000 * k as i64;
            plan_event(&set, e)
                .customer
                .iter()
                .for_each(|u| apply_update(&mut c, u, now));
        }
        assert_eq!(
            feature_value(views_1h, &c, T0 + 2_000),
            FeatureValue::Num(2.0)
        );
        assert_eq!(feature_value(views_1h, &c, future), FeatureValue::Num(1.0));
        // a bucket a window older than the writer's now is never kept
        let mut old = EntityState::default();
        plan_event(
            &set,
            &ev("o", "page_view", T0 - 2 * 3_600_000, None, json!({})),
        )
        .customer
        .iter()
        .for_each(|u| apply_update(&mut old, u, T0));
        assert!(old
            .windows
            .get("views_1h")
            .is_none_or(|w| w.buckets.is_empty()));
    }
}
