//! Where "now" comes from on the request path: the wall clock in
//! production, a manual clock that tests (and replays) set and advance, so
//! windows, recency and timers can be exercised without real time passing.
//! The aggregation code never reads a clock; it is handed "now" by callers
//! that got it from here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A source of the current time in ms since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A time that only moves when told to (shared by every clone).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `ms`.
    pub fn manual(ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(ms)))
    }

    /// The current time in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => wall_ms(),
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }

    /// Sets a manual clock to `ms` (no effect on the system clock).
    pub fn set(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.store(ms, Ordering::Release);
        }
    }

    /// Moves a manual clock forward to `ms` if that is later (no effect on
    /// the system clock): how an event-time clock follows applied events.
    pub fn advance_to(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_max(ms, Ordering::AcqRel);
        }
    }
}

/// Wall-clock time in ms since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_never_back_by_advance() {
        let c = Clock::manual(1_000);
        let shared = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        shared.advance_to(5_000);
        assert_eq!(c.now_ms(), 5_000);
        shared.advance_to(2_000);
        assert_eq!(c.now_ms(), 5_000, "advance never moves back");
        c.set(2_000);
        assert_eq!(shared.now_ms(), 2_000, "set does");
        let wall = Clock::System.now_ms();
        assert!(
            wall > 1_700_000_000_000,
            "the system clock is the wall clock"
        );
    }
}
