//! Where "now" comes from: the wall clock in production; an event-time
//! clock for replays and backtests (`nextbest serve --clock event`), whose
//! "now" is the newest event time applied so far (a watermark, as stream
//! processors keep one), so a recorded history sent in time order gets the
//! windows and recency it had live; and a manual clock that tests set and
//! advance, so windows, recency and timers can be exercised without real
//! time passing. The aggregation code never reads a clock; it is handed
//! "now" by callers that got it from here.

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
    /// The newest event time applied so far (0 before the first event);
    /// moved by [`Clock::observe`] (shared by every clone).
    Event(Arc<AtomicI64>),
}

/// Which clock the server runs on (`clock` in the config, `NEXTBEST_CLOCK`,
/// `nextbest serve --clock`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// The wall clock.
    #[default]
    Wall,
    /// Event time: "now" is the newest event applied (for replays).
    Event,
}

impl std::str::FromStr for ClockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wall" => Ok(ClockMode::Wall),
            "event" => Ok(ClockMode::Event),
            other => Err(format!(
                "unknown clock {other:?}: use \"wall\" or \"event\""
            )),
        }
    }
}

impl Clock {
    /// A manual clock starting at `ms`.
    pub fn manual(ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(ms)))
    }

    /// The clock of `mode`.
    pub fn of(mode: ClockMode) -> Clock {
        match mode {
            ClockMode::Wall => Clock::System,
            ClockMode::Event => Clock::Event(Arc::new(AtomicI64::new(0))),
        }
    }

    /// The current time in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => wall_ms(),
            Clock::Manual(t) | Clock::Event(t) => t.load(Ordering::Acquire),
        }
    }

    /// The time a batch of events whose newest is `newest_ts` is written
    /// at: now; on an event-time clock the later of now and `newest_ts`
    /// (where the clock will be once the batch is applied).
    pub fn write_time(&self, newest_ts: Option<i64>) -> i64 {
        let now = self.now_ms();
        match self {
            Clock::Event(_) => newest_ts.map_or(now, |t| t.max(now)),
            _ => now,
        }
    }

    /// After a batch whose newest event is `newest_ts` was applied: an
    /// event-time clock moves there (never back); others do not move.
    pub fn observe(&self, newest_ts: Option<i64>) {
        if let (Clock::Event(_), Some(ts)) = (self, newest_ts) {
            self.advance_to(ts);
        }
    }

    /// The bounds live events are checked against on this clock: the
    /// configured ones; on an event-time clock there is no bound ahead
    /// (events move the clock), lateness still holds (an event older than
    /// the newest minus the dedupe window cannot be deduped).
    pub fn bounds(&self, configured: crate::event::TimeBounds) -> crate::event::TimeBounds {
        match self {
            Clock::Event(_) => crate::event::TimeBounds {
                future_ms: i64::MAX,
                ..configured
            },
            _ => configured,
        }
    }

    /// Sets a manual clock to `ms` (no effect on the system clock).
    pub fn set(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.store(ms, Ordering::Release);
        }
    }

    /// Moves a manual or event-time clock forward to `ms` if that is later
    /// (no effect on the system clock).
    pub fn advance_to(&self, ms: i64) {
        if let Clock::Manual(t) | Clock::Event(t) = self {
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

    #[test]
    fn an_event_clock_follows_the_newest_applied_event() {
        let c = Clock::of(ClockMode::Event);
        assert_eq!(c.now_ms(), 0, "no event yet");
        assert_eq!(
            c.write_time(Some(5_000)),
            5_000,
            "a batch is written at its newest event"
        );
        assert_eq!(c.now_ms(), 0, "the clock moves only once it is applied");
        c.observe(Some(5_000));
        assert_eq!(c.now_ms(), 5_000);
        assert_eq!(
            c.write_time(Some(4_000)),
            5_000,
            "an older batch is written at now"
        );
        c.observe(Some(4_000));
        assert_eq!(c.now_ms(), 5_000, "never back");
        let b = crate::event::TimeBounds {
            future_ms: 300_000,
            lateness_ms: 1_000,
        };
        assert_eq!(
            c.bounds(b).future_ms,
            i64::MAX,
            "events move it: no bound ahead"
        );
        assert_eq!(c.bounds(b).lateness_ms, 1_000);
        assert_eq!(Clock::System.bounds(b), b);
        let wall = Clock::System;
        let before = wall_ms();
        assert!(
            wall.write_time(Some(1)) >= before,
            "the wall clock ignores event times"
        );
        wall.observe(Some(i64::MAX));
        assert!(wall.now_ms() < i64::MAX);
        assert_eq!("event".parse::<ClockMode>(), Ok(ClockMode::Event));
        assert!("later"
            .parse::<ClockMode>()
            .unwrap_err()
            .contains("\"wall\" or \"event\""));
    }
}
