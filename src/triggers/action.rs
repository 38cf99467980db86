//! The message a firing sends (one JSON object on `nextbest.actions`,
//! key = `customer_id`), and its `action_id`: the same for every delivery
//! of one episode (an inactivity timer's starting event) or one session
//! (threshold and sequence triggers), so a consumer can drop repeats.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// An item attached by `recommend = N`: as `/v1/recommend` ranks it at
/// fire time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionItem {
    pub item_id: String,
    pub score: f32,
    pub action: String,
    pub reasons: Vec<String>,
}

/// A fired action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub action_id: String,
    /// The trigger's name.
    pub trigger: String,
    /// The trigger's `action`.
    pub action: String,
    pub customer_id: String,
    pub session_id: Option<String>,
    pub items: Vec<ActionItem>,
    pub reason: String,
    /// When it was due (ms): an inactivity window's end; for threshold and
    /// sequence triggers, the time of the event that met it.
    pub deadline: i64,
    /// When it was sent (ms, the server's clock).
    pub fired_at: i64,
    /// The trigger's kind, what started it (`episode`: an event id, or the
    /// session) and the features its file names under `context`.
    pub context: serde_json::Value,
}

/// The id of one episode (`episode`: the starting event's id, or the
/// session) of `trigger` for `customer`: 32 hex digits of a SHA-256.
pub fn action_id(trigger: &str, customer: &str, episode: &str) -> String {
    let mut h = Sha256::new();
    for part in [trigger, customer, episode] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::action_id;

    #[test]
    fn ids_are_stable_per_episode_and_differ_between_them() {
        let a = action_id("cart_abandonment", "c1", "e-7");
        assert_eq!(a, action_id("cart_abandonment", "c1", "e-7"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, action_id("cart_abandonment", "c1", "e-8"));
        assert_ne!(
            a,
            action_id("cart_abandonment", "c1e", "-7"),
            "parts are separated"
        );
    }
}
