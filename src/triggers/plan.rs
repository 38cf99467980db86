//! Which timer changes an event makes ([`timer_ops`]), for the
//! inactivity triggers: a `cancel_on` event ends the episode, a
//! `start_on` event starts one (or, if one is pending, restarts its
//! clock), a `restart_on` event restarts a pending one's clock; the
//! deadline is the event's time plus the trigger's window. Pure: the ops
//! ride on the event's plan and the store applies them with its features,
//! once per event id.

use super::trigger::Kind;
use super::TriggerSet;
use crate::event::Event;
use crate::features::store::timers::TimerOp;

/// The timer ops of `e` under `set`.
pub fn timer_ops(set: &TriggerSet, e: &Event) -> Vec<TimerOp> {
    let mut ops = Vec::new();
    for t in &set.triggers {
        let Kind::Inactivity {
            start_on,
            cancel_on,
            restart_on,
            after_ms,
            ..
        } = &t.kind
        else {
            continue;
        };
        let deadline = e.ts.saturating_add(*after_ms);
        let trigger = t.name.clone();
        if cancel_on.contains(&e.kind) {
            ops.push(TimerOp::Cancel { trigger });
        } else if start_on.contains(&e.kind) {
            ops.push(TimerOp::Start { trigger, deadline });
        } else if restart_on.contains(&e.kind) {
            ops.push(TimerOp::Touch { trigger, deadline });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;
    use crate::triggers::Overrides;
    use std::path::Path;

    const T0: i64 = 1_764_355_200_000;

    #[test]
    fn the_shipped_abandonment_starts_restarts_and_cancels() {
        let set = FeatureSet::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml"),
        )
        .expect("definitions");
        let ts = TriggerSet::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("triggers"),
            &set,
            &Overrides {
                cart_abandonment_after_ms: Some(1_000),
            },
            None,
        );
        let ev = |kind: &str| {
            Event::from_value(serde_json::json!({
                "event_id": "e1", "type": kind, "customer_id": "c1", "ts": T0 + 10_000,
                "item_id": "p1", "session_id": "s1"
            }))
            .expect("valid event")
        };
        let cart_ops = |kind: &str| -> Vec<TimerOp> {
            timer_ops(&ts, &ev(kind))
                .into_iter()
                .filter(|o| o.trigger() == "cart_abandonment")
                .collect()
        };
        assert_eq!(
            cart_ops("add_to_cart"),
            vec![TimerOp::Start {
                trigger: "cart_abandonment".into(),
                deadline: T0 + 11_000
            }]
        );
        assert_eq!(
            cart_ops("purchase"),
            vec![TimerOp::Cancel {
                trigger: "cart_abandonment".into()
            }]
        );
        assert_eq!(
            cart_ops("page_view"),
            vec![TimerOp::Touch {
                trigger: "cart_abandonment".into(),
                deadline: T0 + 11_000
            }]
        );
    }
}
