//! Durable timers of inactivity triggers, kept by the store beside the
//! features ([`TimerStore`]).
//!
//! Two parts, so that a timer can never fire against what the features
//! say, on one Redis node or a Cluster:
//!
//! - the **record** of an episode ([`TimerRecord`]: which event started
//!   it, when, and its deadline), one per trigger and customer, in the
//!   customer's group (Redis: the hash `<p>:{c:<id>}:tm`, in the
//!   customer's slot). It is written by the same store call as the
//!   event's features ([`TimerOp`]s ride on the event's [`Plan`]): a
//!   `purchase` that cancels an abandonment ends the episode in the very
//!   write that records the purchase. It is the only thing that can fire.
//! - the **index** of deadlines: a sorted set per shard ([`shard_of`] the
//!   customer: `{<p>:timers:<k>}`, member `<trigger>\t<customer>`, score
//!   the deadline) and a hash beside it in the same slot (`…:gen`: how
//!   many times each member was written). It only says when to look: an
//!   entry is written (`ZADD LT`, never later than a deadline already
//!   there) before the record in the same pipeline, so it is never later
//!   than the record's deadline. Restarts of an episode's clock move only
//!   the record; its entry comes due early and is deferred to the record's
//!   deadline then.
//!
//! Firing ([`TimerStore::claim_due`]): a script claims the due entries of
//! a shard atomically, moving each one's score to the end of a lease
//! (claimed-until), so another instance does not take it and a claimer
//! that crashed has it claimed again once the lease ran out. The claimer
//! reads the record ([`TimerStore::record`]): none, or another episode,
//! or a later deadline → the entry is settled or deferred; due → the
//! action is delivered, then [`TimerStore::finish`] ends the episode (if
//! it is still the one fired) and [`TimerStore::settle`] removes the
//! entry, unless it was written again since the claim (`gen` moved), in
//! which case it comes due at once to be looked at again.
//!
//! A crash between the index write and the record write leaves an entry
//! with no record (settled, nothing fired); the record is never written
//! without its entry (they share one pipeline, on one connection, in
//! order). A crash after delivery and before `finish` fires the episode
//! again after the lease, with the same `action_id` (downstream dedupes).
//!
//! The memory store keeps the same two parts under its lock; they are lost
//! on restart, and a customer dropped by the memory bound drops its records.
//!
//! [`Plan`]: crate::features::aggregate::Plan

use super::StoreError;
use async_trait::async_trait;

/// A change to a customer's timer record, applied with its event's
/// features (once per event id, as they are).
#[derive(Debug, Clone, PartialEq)]
pub enum TimerOp {
    /// Starts an episode of `trigger` (the event's id names it, its `ts`
    /// starts it) due at `deadline`; if one is pending, moves its deadline
    /// to `deadline` if that is later.
    Start { trigger: String, deadline: i64 },
    /// Moves a pending episode's deadline to `deadline` if that is later.
    Touch { trigger: String, deadline: i64 },
    /// Ends a pending episode started at or before the event.
    Cancel { trigger: String },
}

impl TimerOp {
    pub fn trigger(&self) -> &str {
        match self {
            TimerOp::Start { trigger, .. }
            | TimerOp::Touch { trigger, .. }
            | TimerOp::Cancel { trigger } => trigger,
        }
    }
}

/// A pending episode of a trigger for a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRecord {
    /// The id of the event that started it.
    pub episode: String,
    /// That event's time.
    pub started: i64,
    pub deadline: i64,
}

impl TimerRecord {
    /// Applies `op` of an event (`event_id`, `ts`) to the record of its
    /// trigger (`None`: no episode pending). The rule `update.lua` mirrors.
    pub fn apply(rec: &mut Option<TimerRecord>, op: &TimerOp, event_id: &str, ts: i64) {
        match (op, rec.as_mut()) {
            (TimerOp::Start { deadline, .. }, None) => {
                *rec = Some(TimerRecord {
                    episode: event_id.to_string(),
                    started: ts,
                    deadline: *deadline,
                })
            }
            (TimerOp::Start { deadline, .. } | TimerOp::Touch { deadline, .. }, Some(r)) => {
                r.deadline = r.deadline.max(*deadline)
            }
            (TimerOp::Touch { .. }, None) => {}
            (TimerOp::Cancel { .. }, Some(r)) => {
                if ts >= r.started {
                    *rec = None;
                }
            }
            (TimerOp::Cancel { .. }, None) => {}
        }
    }
}

/// A due index entry, claimed until its lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub trigger: String,
    pub customer_id: String,
    /// The entry's score when claimed (no later than the deadline).
    pub due: i64,
    /// How many times the entry had been written when claimed.
    pub gen: u64,
}

/// The index member of a trigger's timer for a customer.
pub fn member(trigger: &str, customer: &str) -> String {
    format!("{trigger}\t{customer}")
}

/// Splits an index member into (trigger, customer).
pub fn parse_member(m: &str) -> Option<(&str, &str)> {
    m.split_once('\t')
}

/// The index shard of a customer among `shards` (FNV-1a of the id: the
/// same on every instance and every run).
pub fn shard_of(customer: &str, shards: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in customer.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shards.max(1)
}

/// Timers kept by a store (see the module doc).
#[async_trait]
pub trait TimerStore: Send + Sync {
    /// Claims at most `limit` index entries due at `now_ms`, each leased
    /// until `now_ms + lease_ms`.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Claim>, StoreError>;
    /// The customer's pending episode of `trigger`, if any.
    async fn record(
        &self,
        customer_id: &str,
        trigger: &str,
    ) -> Result<Option<TimerRecord>, StoreError>;
    /// Ends the episode `episode` of `trigger` if it is still the pending
    /// one; returns the deadline of the one pending afterwards, if any.
    async fn finish(
        &self,
        customer_id: &str,
        trigger: &str,
        episode: &str,
    ) -> Result<Option<i64>, StoreError>;
    /// Settles a claimed entry: due again at `next` (None: removed), unless
    /// it was written since the claim, in which case it is due at `now_ms`.
    async fn settle(&self, claim: &Claim, next: Option<i64>, now_ms: i64)
        -> Result<(), StoreError>;
    /// Index entries pending (due or not, claimed or not).
    async fn pending(&self) -> Result<u64, StoreError>;
    /// Sets the customer's once-per-session marker of `trigger` for
    /// `session` (kept `ttl_ms`); true if it was not set before.
    async fn mark_once(
        &self,
        customer_id: &str,
        session: &str,
        trigger: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
}

/// The memory store's deadline index: the Redis sorted set and its `gen`
/// hash, as one map and its order.
#[derive(Debug, Default, Clone)]
pub struct MemoryIndex {
    /// member → (score, gen)
    entries: std::collections::HashMap<String, (i64, u64)>,
    by_score: std::collections::BTreeSet<(i64, String)>,
}

impl MemoryIndex {
    fn set_score(&mut self, member: &str, score: i64) {
        let e = self.entries.entry(member.to_string()).or_insert((score, 0));
        self.by_score.remove(&(e.0, member.to_string()));
        e.0 = score;
        self.by_score.insert((score, member.to_string()));
    }

    /// `ZADD LT` and `HINCRBY gen` (`timer_hint.lua`).
    pub fn hint(&mut self, member: &str, deadline: i64) {
        let score = match self.entries.get(member) {
            Some((s, _)) => (*s).min(deadline),
            None => deadline,
        };
        self.set_score(member, score);
        if let Some(e) = self.entries.get_mut(member) {
            e.1 += 1;
        }
    }

    /// Claims at most `limit` entries due at `now` until `lease_until`
    /// (`timer_claim.lua`): (member, score, gen).
    pub fn claim(&mut self, now: i64, lease_until: i64, limit: usize) -> Vec<(String, i64, u64)> {
        let due: Vec<(i64, String)> = self
            .by_score
            .iter()
            .take_while(|(s, _)| *s <= now)
            .take(limit)
            .cloned()
            .collect();
        due.into_iter()
            .map(|(score, m)| {
                self.set_score(&m, lease_until);
                let gen = self.entries.get(&m).map_or(0, |e| e.1);
                (m, score, gen)
            })
            .collect()
    }

    /// `timer_settle.lua`.
    pub fn settle(&mut self, member: &str, gen: u64, next: Option<i64>, now: i64) {
        let Some(&(score, current)) = self.entries.get(member) else {
            return;
        };
        if current != gen {
            self.set_score(member, score.min(now));
            return;
        }
        match next {
            Some(at) => self.set_score(member, at),
            None => {
                self.entries.remove(member);
                self.by_score.remove(&(score, member.to_string()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(d: i64) -> TimerOp {
        TimerOp::Start {
            trigger: "t".into(),
            deadline: d,
        }
    }

    #[test]
    fn an_episode_starts_once_moves_later_and_ends_on_a_later_cancel() {
        let mut r = None;
        TimerRecord::apply(
            &mut r,
            &TimerOp::Touch {
                trigger: "t".into(),
                deadline: 5,
            },
            "e0",
            0,
        );
        assert_eq!(r, None, "activity without an episode starts none");
        TimerRecord::apply(&mut r, &start(100), "e1", 10);
        TimerRecord::apply(&mut r, &start(90), "e2", 5);
        assert_eq!(
            r,
            Some(TimerRecord {
                episode: "e1".into(),
                started: 10,
                deadline: 100
            }),
            "a second start keeps the episode; its deadline never moves back"
        );
        TimerRecord::apply(
            &mut r,
            &TimerOp::Touch {
                trigger: "t".into(),
                deadline: 150,
            },
            "e3",
            60,
        );
        assert_eq!(r.as_ref().map(|r| r.deadline), Some(150));
        TimerRecord::apply(
            &mut r,
            &TimerOp::Cancel {
                trigger: "t".into(),
            },
            "e4",
            9,
        );
        assert!(
            r.is_some(),
            "a cancel older than the episode's start does not end it"
        );
        TimerRecord::apply(
            &mut r,
            &TimerOp::Cancel {
                trigger: "t".into(),
            },
            "e5",
            70,
        );
        assert_eq!(r, None);
    }

    #[test]
    fn the_index_claims_due_entries_once_per_lease_and_keeps_rewritten_ones() {
        let mut ix = MemoryIndex::default();
        ix.hint("a", 100);
        ix.hint("a", 150);
        ix.hint("b", 120);
        assert_eq!(ix.claim(99, 1_000, 10), vec![], "nothing due yet");
        let got = ix.claim(130, 1_130, 10);
        assert_eq!(
            got,
            vec![("a".to_string(), 100, 2), ("b".to_string(), 120, 1)],
            "due entries, the earliest deadline kept (LT)"
        );
        assert!(
            ix.claim(500, 1_500, 10).is_empty(),
            "leased: not claimed again"
        );
        // b is written again after its claim: settling does not remove it
        ix.hint("b", 5_000);
        ix.settle("a", 2, None, 600);
        ix.settle("b", 1, None, 600);
        assert_eq!(ix.len(), 1);
        assert_eq!(
            ix.claim(600, 1_600, 10),
            vec![("b".to_string(), 600, 2)],
            "due at once to be looked at again"
        );
        ix.settle("b", 2, Some(5_000), 600);
        assert!(ix.claim(4_999, 9_000, 10).is_empty());
        assert_eq!(
            ix.claim(1_600 + 3_400, 9_000, 10).len(),
            1,
            "deferred to its deadline"
        );
        // a crashed claimer: the lease runs out and the entry is claimed again
        assert_eq!(ix.claim(9_000, 10_000, 10).len(), 1);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("c42", 16), shard_of("c42", 16));
        assert!((0..1000).all(|i| shard_of(&format!("c{i}"), 16) < 16));
        assert_eq!(shard_of("anything", 0), 0);
        assert_eq!(parse_member(&member("cart", "c:1")), Some(("cart", "c:1")));
    }
}
