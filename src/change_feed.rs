//! Which customers' features just changed: the apply step publishes, and
//! `/v1/stream` subscribers hear it and push a fresh recommendation.
//!
//! Today the feed is in-process (a bounded tokio broadcast channel), so a
//! WebSocket hears only changes applied by its own instance; a feed shared
//! across instances (Redis pub/sub) goes behind this same type. A slow
//! subscriber never holds publishers up: it misses old notices and is told
//! so ([`Change::Lagged`]), and should then refresh.

use tokio::sync::broadcast;

/// Notices kept for slow subscribers before they lag.
const CAPACITY: usize = 1024;

/// The publishing side; cheap to clone.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<String>,
}

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This customer's features changed.
    Customer(String),
    /// Notices were missed (the subscriber was too slow): any customer may
    /// have changed.
    Lagged,
}

/// One subscriber.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<String>,
}

impl ChangeFeed {
    /// A feed within this process.
    pub fn in_process() -> ChangeFeed {
        let (tx, _) = broadcast::channel(CAPACITY);
        ChangeFeed { tx }
    }

    /// Announces that these customers' features changed (no-op without
    /// subscribers).
    pub fn publish<'a>(&self, customers: impl IntoIterator<Item = &'a String>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for c in customers {
            let _ = self.tx.send(c.clone());
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

impl Subscription {
    /// The next notice; `None` once the feed is gone.
    pub async fn next(&mut self) -> Option<Change> {
        match self.rx.recv().await {
            Ok(c) => Some(Change::Customer(c)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Lagged),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_hear_changes_and_lag_is_reported() {
        let feed = ChangeFeed::in_process();
        feed.publish(&["before".to_string()]); // nobody listens: dropped
        let mut sub = feed.subscribe();
        feed.publish(&["c1".to_string(), "c2".to_string()]);
        assert_eq!(sub.next().await, Some(Change::Customer("c1".into())));
        assert_eq!(sub.next().await, Some(Change::Customer("c2".into())));
        let many: Vec<String> = (0..CAPACITY + 5).map(|i| format!("c{i}")).collect();
        feed.publish(&many);
        assert_eq!(sub.next().await, Some(Change::Lagged));
        drop(feed);
        let mut rest = 0;
        while let Some(c) = sub.next().await {
            assert!(matches!(c, Change::Customer(_)));
            rest += 1;
        }
        assert!(rest <= CAPACITY, "then the kept notices, then the end");
    }
}
