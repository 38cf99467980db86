//! Popularity lists: the most popular items overall and per category over
//! the last 24 hours, as a snapshot in memory, so candidate generation,
//! rule injections and fallbacks never wait on the store. The store keeps
//! the lists itself as it applies item writes (the rule, the window and
//! the bounds: `features::store::popularity`); [`Popularity::build`] only
//! reads their tops, two store round trips whatever the catalogue's size.
//! An item with nothing in the last 24 h is not listed (the whole-catalogue
//! scan this replaced listed every item, the idle ones last with score 0).

use crate::features::store::{FeatureStore, StoreError};
use std::collections::HashMap;

/// Items kept in the global list and per category.
pub const GLOBAL_TOP: usize = 500;
pub const CATEGORY_TOP: usize = 100;

/// A snapshot of popularity lists, best first.
#[derive(Debug, Clone, Default)]
pub struct Popularity {
    pub global: Vec<(String, f64)>,
    pub by_category: HashMap<String, Vec<(String, f64)>>,
    pub built_at_ms: i64,
}

impl Popularity {
    /// The store's lists at `now` ([`GLOBAL_TOP`] overall, [`CATEGORY_TOP`]
    /// per category).
    pub async fn build(store: &dyn FeatureStore, now: i64) -> Result<Popularity, StoreError> {
        let lists = store.popular(now, GLOBAL_TOP, CATEGORY_TOP).await?;
        Ok(Popularity {
            global: lists.global,
            by_category: lists.by_category,
            built_at_ms: now,
        })
    }
}
