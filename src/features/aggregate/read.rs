//! State → values: [`feature_value`] and [`numeric_value`] read one
//! feature of an [`EntityState`] at a time `now` (windows slide with it;
//! sums are rounded so drift reads as zero), [`entity_values`] all of an
//! entity's. Never reads a clock: `now` is an argument.

use super::state::EntityState;
use crate::features::definition::{
    Aggregation, Entity, FeatureDef, FeatureSet, BUCKETS_PER_WINDOW,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// A feature's value as read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Num(f64),
    Text(String),
    List(Vec<String>),
    Missing,
}

impl FeatureValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Num(x) => Some(*x),
            FeatureValue::Text(t) => t.parse().ok(),
            _ => None,
        }
    }
}

/// The value of one stored feature of an entity at time `now` (ms).
pub fn feature_value(f: &FeatureDef, state: &EntityState, now: i64) -> FeatureValue {
    match numeric_value(f, state, now) {
        Some(x) => FeatureValue::Num(x),
        None => match &f.aggregation {
            Aggregation::Last { .. } | Aggregation::Static { .. } => state
                .lasts
                .get(&f.name)
                .map(|l| FeatureValue::Text(l.value.clone()))
                .unwrap_or(FeatureValue::Missing),
            Aggregation::DistinctRecent { .. } => FeatureValue::List(
                state
                    .recent
                    .get(&f.name)
                    .map(|l| l.iter().map(|(m, _)| m.clone()).collect())
                    .unwrap_or_default(),
            ),
            _ => FeatureValue::Missing,
        },
    }
}

/// Sums are rounded to this many decimal places when read, so that float
/// drift from adding and removing the same amounts (in any order) reads as
/// exactly zero, and stores agree on the last digit.
const SUM_DECIMALS: f64 = 1e6;

fn round_sum(x: f64) -> f64 {
    let r = (x * SUM_DECIMALS).round() / SUM_DECIMALS;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// The numeric value of a numeric feature at `now` without allocating;
/// `None` for text and list features.
pub fn numeric_value(f: &FeatureDef, state: &EntityState, now: i64) -> Option<f64> {
    match &f.aggregation {
        Aggregation::Count | Aggregation::Sum { .. } => {
            if let Some(r) = state.resettable.get(&f.name) {
                return Some(round_sum(r.parts.values().fold(0.0, |a, x| a + x)));
            }
            Some(match f.window {
                None => state
                    .nums
                    .get(&f.name)
                    .map(|x| round_sum(*x))
                    .unwrap_or(f.default),
                Some(w) => match state.windows.get(&f.name) {
                    None => f.default,
                    Some(win) => {
                        let nb = now.div_euclid(w.bucket_ms());
                        round_sum(
                            win.buckets
                                .range((nb - BUCKETS_PER_WINDOW + 1)..=nb)
                                .fold(0.0, |a, (_, x)| a + x),
                        )
                    }
                },
            })
        }
        Aggregation::Last { .. } | Aggregation::Static { .. } if f.is_numeric() => Some(
            state
                .lasts
                .get(&f.name)
                .and_then(|l| l.value.parse().ok())
                .unwrap_or(f.default),
        ),
        Aggregation::TimeSinceLast => Some(match state.nums.get(&f.name) {
            Some(ts) => ((now as f64 - ts) / 1000.0).max(0.0),
            None => f.default,
        }),
        Aggregation::Last { .. }
        | Aggregation::Static { .. }
        | Aggregation::DistinctRecent { .. } => None,
    }
}

/// All stored features of one entity at `now`, by feature name.
pub fn entity_values(
    set: &FeatureSet,
    entity: Entity,
    state: &EntityState,
    now: i64,
) -> BTreeMap<String, FeatureValue> {
    set.of_entity(entity)
        .map(|f| (f.name.clone(), feature_value(f, state, now)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::aggregate::fixtures::{apply_all, history, set, T0};

    #[test]
    fn values_follow_the_definitions() {
        let set = set();
        let (c, _) = apply_all(&set, &history());
        let now = T0 + 5000;
        let v = entity_values(&set, Entity::Customer, &c, now);
        assert_eq!(v["views_1h"], FeatureValue::Num(1.0));
        assert_eq!(v["views_24h"], FeatureValue::Num(2.0));
        assert_eq!(v["carts_1h"], FeatureValue::Num(3.0));
        // purchase at T0+3000 resets the cart; only p3 (7.5) remains.
        assert_eq!(v["cart_value"], FeatureValue::Num(7.5));
        assert_eq!(v["cart_items"], FeatureValue::Num(1.0));
        assert_eq!(v["since_last_cart_s"], FeatureValue::Num(1.0));
        assert_eq!(
            v["recent_items"],
            FeatureValue::List(vec!["p3".into(), "p2".into(), "p1".into(), "p9".into()])
        );
        // two hours later the 1h window no longer holds the events
        let later = entity_values(&set, Entity::Customer, &c, T0 + 2 * 3_600_000);
        assert_eq!(later["carts_1h"], FeatureValue::Num(0.0));
        assert_eq!(later["carts_24h"], FeatureValue::Num(3.0));
    }
}
