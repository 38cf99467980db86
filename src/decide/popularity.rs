//! Popularity lists: the most popular items overall and per category over
//! the last 24 hours, rebuilt periodically from the items' own features (so
//! they are as idempotent as the features) and kept in memory, so candidate
//! generation and fallbacks never wait on the store.

use crate::features::aggregate::{feature_value, FeatureValue};
use crate::features::store::FeatureStore;
use crate::features::{Entity, FeatureSet};
use std::collections::HashMap;

/// Weights of item features in the popularity score (features missing from
/// the definitions count 0).
const WEIGHTS: [(&str, f64); 4] = [
    ("views_24h", 1.0),
    ("clicks_24h", 2.0),
    ("carts_24h", 5.0),
    ("purchases_24h", 10.0),
];
/// The item feature holding the category.
const CATEGORY: &str = "category";
/// Items kept in the global list and per category.
const GLOBAL_TOP: usize = 500;
const CATEGORY_TOP: usize = 100;
/// Items read per store call while rebuilding.
const CHUNK: usize = 500;

/// A snapshot of popularity lists, best first.
#[derive(Debug, Clone, Default)]
pub struct Popularity {
    pub global: Vec<(String, f64)>,
    pub by_category: HashMap<String, Vec<(String, f64)>>,
    pub built_at_ms: i64,
}

impl Popularity {
    /// Rebuilds the lists from the store at `now`.
    pub async fn build(
        store: &dyn FeatureStore,
        set: &FeatureSet,
        now: i64,
    ) -> Result<Popularity, crate::features::store::StoreError> {
        let ids = store.item_ids().await?;
        let weights: Vec<_> = WEIGHTS
            .iter()
            .filter_map(|(n, w)| {
                set.of_entity(Entity::Item)
                    .find(|f| f.name == *n)
                    .map(|f| (f, *w))
            })
            .collect();
        let category = set.of_entity(Entity::Item).find(|f| f.name == CATEGORY);
        let mut scored: Vec<(String, f64, Option<String>)> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let states = store.read_items(chunk).await?;
            for (id, st) in chunk.iter().zip(states) {
                let score: f64 = weights
                    .iter()
                    .map(|(f, w)| w * feature_value(f, &st, now).as_f64().unwrap_or(0.0))
                    .sum();
                let cat = category.and_then(|f| match feature_value(f, &st, now) {
                    FeatureValue::Text(t) => Some(t),
                    _ => None,
                });
                scored.push((id.clone(), score, cat));
            }
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut by_category: HashMap<String, Vec<(String, f64)>> = HashMap::new();
        for (id, score, cat) in &scored {
            if let Some(c) = cat {
                let list = by_category.entry(c.clone()).or_default();
                if list.len() < CATEGORY_TOP {
                    list.push((id.clone(), *score));
                }
            }
        }
        let global = scored
            .into_iter()
            .take(GLOBAL_TOP)
            .map(|(id, s, _)| (id, s))
            .collect();
        Ok(Popularity {
            global,
            by_category,
            built_at_ms: now,
        })
    }
}
