//! The order check of the optional per-customer `seq` (DESIGN.md §1:
//! validate → dedupe → order check): gaps, duplicates and regressions in a
//! customer's sequence, counted by kind and logged with the customer and
//! where the event came from.
//!
//! Features don't depend on arrival order (every update commutes), so this
//! check changes nothing that is stored; it tells an operator that a sender
//! skips, repeats or reorders. Per customer it keeps the highest `seq`
//! applied and which of the [`WINDOW`] below it were seen:
//!
//! | kind | when |
//! |---|---|
//! | `in_order` | `seq` is the next one (or the customer's first seen here) |
//! | `gap` | `seq` jumps ahead: counted once per missing number |
//! | `reordered` | a missing number arrives late (within the window) |
//! | `duplicate` | a number already seen, under another event id |
//! | `regression` | below the window: too late to tell gap from repeat |
//!
//! Events of one customer reach one consumer (one partition per topic, key
//! = customer id), but the topics are consumed independently, so a
//! customer's `page_view` may arrive after its later `add_to_cart`:
//! `reordered` counts are expected there; a `gap` that `reordered` never
//! fills is an event that never came. Only applied events are checked (a
//! redelivered one is a duplicate by id, not by `seq`). The state is this
//! instance's, bounded ([`MAX_CUSTOMERS`], least recently used dropped), and
//! starts empty after a restart or a rebalance: a customer's first event
//! seen here is `in_order`.

use crate::event::Event;
use moka::sync::Cache;

/// How many numbers below the highest a customer's state remembers.
pub const WINDOW: i64 = 64;

/// Customers whose sequence state is kept.
pub const MAX_CUSTOMERS: u64 = 200_000;

/// What one event's `seq` says about the customer's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqKind {
    InOrder,
    /// Jumped ahead, skipping this many numbers.
    Gap(i64),
    Reordered,
    Duplicate,
    Regression,
}

impl SeqKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SeqKind::InOrder => "in_order",
            SeqKind::Gap(_) => "gap",
            SeqKind::Reordered => "reordered",
            SeqKind::Duplicate => "duplicate",
            SeqKind::Regression => "regression",
        }
    }
}

/// One customer's sequence: the highest `seq` and a bitmap of the
/// [`WINDOW`] numbers below it (bit `k` = `max - 1 - k` seen; at the first
/// event none is, so one below it arriving later is `reordered`).
#[derive(Debug, Clone, Copy, Default)]
struct Seq {
    max: i64,
    below: u64,
}

impl Seq {
    fn first(seq: i64) -> Seq {
        Seq { max: seq, below: 0 }
    }

    fn observe(&mut self, seq: i64) -> SeqKind {
        if seq > self.max {
            let shift = seq - self.max;
            let skipped = shift - 1;
            // the old max is seen (bit `shift - 1`); the skipped numbers
            // below it are not (0)
            let moved = if shift < WINDOW {
                self.below << shift
            } else {
                0
            };
            let old_max = if shift <= WINDOW {
                1u64 << (shift - 1)
            } else {
                0
            };
            self.below = moved | old_max;
            self.max = seq;
            return if skipped == 0 {
                SeqKind::InOrder
            } else {
                SeqKind::Gap(skipped)
            };
        }
        if seq == self.max {
            return SeqKind::Duplicate;
        }
        let k = self.max - 1 - seq;
        if k >= WINDOW {
            return SeqKind::Regression;
        }
        let bit = 1u64 << k;
        if self.below & bit != 0 {
            SeqKind::Duplicate
        } else {
            self.below |= bit;
            SeqKind::Reordered
        }
    }
}

/// Where an event came from, for the log: e.g. `events.page_view/3@1042`.
pub type Origin<'a> = Option<&'a str>;

/// The per-customer sequence check (cheap to share: one per process).
#[derive(Clone)]
pub struct SeqCheck {
    seqs: Cache<String, Seq>,
}

impl Default for SeqCheck {
    fn default() -> Self {
        SeqCheck::new(MAX_CUSTOMERS)
    }
}

impl SeqCheck {
    pub fn new(max_customers: u64) -> SeqCheck {
        SeqCheck {
            seqs: Cache::new(max_customers),
        }
    }

    /// Checks one applied event's `seq` (none → nothing to check).
    pub fn observe(&self, e: &Event, origin: Origin<'_>) -> Option<SeqKind> {
        let seq = e.seq?;
        let mut kind = SeqKind::InOrder;
        self.seqs
            .entry_by_ref(e.customer_id.as_str())
            .and_upsert_with(|cur| match cur {
                None => Seq::first(seq),
                Some(entry) => {
                    let mut s = entry.into_value();
                    kind = s.observe(seq);
                    s
                }
            });
        let amount = match kind {
            SeqKind::Gap(n) => n as u64,
            _ => 1,
        };
        metrics::counter!(crate::metrics::EVENTS_ORDER, "kind" => kind.as_str()).increment(amount);
        if !matches!(kind, SeqKind::InOrder | SeqKind::Reordered) {
            tracing::warn!(
                customer_id = %e.customer_id,
                event_id = %e.event_id,
                seq,
                kind = kind.as_str(),
                skipped = match kind { SeqKind::Gap(n) => n, _ => 0 },
                origin = origin.unwrap_or("http"),
                "customer event sequence out of order"
            );
        }
        Some(kind)
    }

    /// Checks the applied ones of `events` (`duplicate[i]`: event `i` was
    /// a redelivery, not checked); `origins[i]` for the log.
    pub fn observe_applied(&self, events: &[Event], duplicate: &[bool], origins: &[String]) {
        for (i, e) in events.iter().enumerate() {
            if !duplicate.get(i).copied().unwrap_or(false) {
                self.observe(e, origins.get(i).map(String::as_str));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(seqs: &[i64]) -> Vec<SeqKind> {
        let mut s = Seq::first(seqs[0]);
        seqs[1..].iter().map(|&q| s.observe(q)).collect()
    }

    #[test]
    fn gaps_reorders_duplicates_and_regressions_are_told_apart() {
        use SeqKind::*;
        assert_eq!(kinds(&[1, 2, 3]), [InOrder, InOrder]);
        // 3 and 4 skipped, then 4 arrives late, then 3, then 4 again
        assert_eq!(
            kinds(&[2, 5, 4, 3, 4, 5]),
            [Gap(2), Reordered, Reordered, Duplicate, Duplicate]
        );
        // far behind the window: a regression; far ahead: one big gap
        assert_eq!(kinds(&[200, 100, 1000]), [Regression, Gap(799)]);
        // the first seen is in order, whatever its number; one below it came late
        assert_eq!(kinds(&[50, 49, 51]), [Reordered, InOrder]);
        // a jump of exactly the window keeps the old max in it
        assert_eq!(kinds(&[1, 65, 1]), [Gap(63), Duplicate]);
    }

    #[test]
    fn the_check_follows_each_customer_separately() {
        let check = SeqCheck::new(10);
        let ev = |c: &str, id: &str, seq: i64| {
            Event::from_value(serde_json::json!({
                "event_id": id, "type": "page_view", "customer_id": c,
                "ts": 1_764_355_200_000i64, "seq": seq
            }))
            .expect("valid")
        };
        assert_eq!(
            check.observe(&ev("a", "1", 1), None),
            Some(SeqKind::InOrder)
        );
        assert_eq!(
            check.observe(&ev("b", "2", 7), None),
            Some(SeqKind::InOrder)
        );
        assert_eq!(check.observe(&ev("a", "3", 3), None), Some(SeqKind::Gap(1)));
        assert_eq!(
            check.observe(&ev("b", "4", 8), None),
            Some(SeqKind::InOrder)
        );
        let no_seq = Event::from_value(serde_json::json!({
            "event_id": "5", "type": "page_view", "customer_id": "a", "ts": 1_764_355_200_000i64
        }))
        .expect("valid");
        assert_eq!(check.observe(&no_seq, None), None);
    }
}
