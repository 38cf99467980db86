//! `sequence` triggers: an ordered pattern of events in one session
//! within a window (`steps`), optionally sharing a prop's value (`same`,
//! e.g. three page views of one category), with no `without` event among
//! them. [`History::observe`] records an event of a session and says
//! whether it completes the pattern (it must be the last step: a pattern
//! fires when it completes, on the event that completes it).
//!
//! The recent events of each (trigger, customer, session) are kept in
//! memory ([`Progress`], bounded, least recently used dropped, idle ones
//! dropped after the longest window): Kafka keeps a customer's events on
//! one partition, so one instance sees a customer's events in order. A
//! restart or a partition moving to another instance loses the partial
//! patterns there (a pattern straddling it may not fire); the store's
//! once-per-session marker means none fires twice.

use super::file::SequenceSpec;
use crate::event::{Event, EventType};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most events kept per (trigger, customer, session).
pub const MAX_KEPT: usize = 64;

/// One event as a pattern sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    ts: i64,
    kind: EventType,
    /// The value of the `same` prop, as text.
    same: Option<String>,
}

/// A session's recent events relevant to one pattern.
#[derive(Debug, Default)]
pub struct History {
    events: VecDeque<Seen>,
}

/// The value of prop `key` of `e` as text (strings as they are, numbers
/// and booleans as JSON writes them).
fn prop_text(e: &Event, key: &str) -> Option<String> {
    match e.props.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

impl History {
    /// Records `e` and says whether it completes `spec`'s pattern.
    pub fn observe(&mut self, spec: &SequenceSpec, e: &Event) -> bool {
        let relevant = spec.steps.contains(&e.kind) || spec.without == Some(e.kind);
        if !relevant {
            return false;
        }
        let seen = Seen {
            ts: e.ts,
            kind: e.kind,
            same: spec.same.as_deref().and_then(|k| prop_text(e, k)),
        };
        // events arrive in order per partition; a late one is placed by time
        let at = self
            .events
            .iter()
            .rposition(|s| s.ts <= seen.ts)
            .map_or(0, |i| i + 1);
        self.events.insert(at, seen);
        let horizon = self.events.back().map_or(e.ts, |s| s.ts) - spec.within_ms;
        while self.events.front().is_some_and(|s| s.ts < horizon) || self.events.len() > MAX_KEPT {
            self.events.pop_front();
        }
        at + 1 == self.events.len() && self.completes(spec)
    }

    /// Whether the newest event ends a match: walking back from it, each
    /// earlier step found in order, all within the window and sharing the
    /// `same` value, before any `without` event.
    fn completes(&self, spec: &SequenceSpec) -> bool {
        let Some(last) = self.events.back() else {
            return false;
        };
        let Some((&final_step, earlier)) = spec.steps.split_last() else {
            return false;
        };
        if last.kind != final_step || (spec.same.is_some() && last.same.is_none()) {
            return false;
        }
        let mut want = earlier.iter().rev().peekable();
        for s in self.events.iter().rev().skip(1) {
            if last.ts - s.ts > spec.within_ms {
                return false;
            }
            if spec.without == Some(s.kind) {
                return false;
            }
            let Some(&&k) = want.peek() else { break };
            if s.kind == k && s.same == last.same {
                want.next();
                if want.peek().is_none() {
                    return true;
                }
            }
        }
        want.peek().is_none()
    }
}

/// Key of one pattern's progress: (trigger, customer, session).
type Key = (Arc<str>, String, String);

/// The progress of every (trigger, customer, session) held in memory.
pub struct Progress {
    cache: moka::sync::Cache<Key, Arc<Mutex<History>>>,
}

impl Progress {
    /// At most `max` progressions, each dropped after `idle` without events.
    pub fn new(max: u64, idle: Duration) -> Progress {
        Progress {
            cache: moka::sync::Cache::builder()
                .max_capacity(max.max(1))
                .time_to_idle(idle.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Records `e` for trigger `name` (pattern `spec`); true if it completes it.
    pub fn observe(&self, name: &Arc<str>, spec: &SequenceSpec, e: &Event) -> bool {
        let key = (
            name.clone(),
            e.customer_id.clone(),
            e.session_id.clone().unwrap_or_default(),
        );
        let h = self.cache.get_with(key, Default::default);
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        h.observe(spec, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SequenceSpec {
        SequenceSpec {
            steps: vec![
                EventType::PageView,
                EventType::PageView,
                EventType::PageView,
            ],
            same: Some("category".into()),
            within_ms: 600_000,
            without: Some(EventType::AddToCart),
        }
    }

    const T0: i64 = 1_764_355_200_000;

    /// An event `ts` ms after T0.
    fn ev(kind: &str, ts: i64, category: &str) -> Event {
        Event::from_value(serde_json::json!({
            "event_id": format!("e{ts}"), "type": kind, "customer_id": "c1", "ts": T0 + ts,
            "session_id": "s1", "item_id": "p1", "props": {"category": category}
        }))
        .expect("valid event")
    }

    #[test]
    fn three_views_of_one_category_within_the_window_complete_it() {
        let mut h = History::default();
        let s = spec();
        assert!(!h.observe(&s, &ev("page_view", 1_000, "shoes")));
        assert!(!h.observe(&s, &ev("page_view", 2_000, "hats")));
        assert!(!h.observe(&s, &ev("page_view", 3_000, "shoes")));
        assert!(
            h.observe(&s, &ev("page_view", 4_000, "shoes")),
            "the third shoes view"
        );
    }

    #[test]
    fn too_slow_or_interrupted_patterns_do_not() {
        let s = spec();
        let mut h = History::default();
        h.observe(&s, &ev("page_view", 0, "shoes"));
        h.observe(&s, &ev("page_view", 1_000, "shoes"));
        assert!(
            !h.observe(&s, &ev("page_view", 700_000, "shoes")),
            "outside the window"
        );
        let mut h = History::default();
        h.observe(&s, &ev("page_view", 0, "shoes"));
        h.observe(&s, &ev("page_view", 1_000, "shoes"));
        h.observe(&s, &ev("add_to_cart", 1_500, "shoes"));
        assert!(
            !h.observe(&s, &ev("page_view", 2_000, "shoes")),
            "an add_to_cart among them"
        );
        assert!(
            !h.observe(&s, &ev("page_view", 3_000, "shoes")),
            "still among the last three's span"
        );
        assert!(
            h.observe(&s, &ev("page_view", 4_000, "shoes")),
            "three after it"
        );
        let mut h = History::default();
        h.observe(&s, &ev("click", 0, "shoes"));
        assert!(h.events.is_empty(), "events of other types are not kept");
    }

    #[test]
    fn progress_is_kept_per_session() {
        let p = Progress::new(100, Duration::from_secs(60));
        let s = spec();
        let name: Arc<str> = Arc::from("size_guide");
        let mut other = ev("page_view", 2_000, "shoes");
        other.session_id = Some("s2".into());
        assert!(!p.observe(&name, &s, &ev("page_view", 1_000, "shoes")));
        assert!(!p.observe(&name, &s, &other));
        assert!(!p.observe(&name, &s, &ev("page_view", 3_000, "shoes")));
        assert!(p.observe(&name, &s, &ev("page_view", 4_000, "shoes")));
    }
}
