//! `cross.covisit_score` and the co-visited candidates, from one read of
//! the store's co-visitation lists ([`store::covisit`](super::store::covisit)):
//! the neighbours of the customer's [`SEEDS`] latest items ([`seeds`],
//! [`PER_SEED`] each), each list normalised to sum 1 and summed per item
//! ([`covisit::rank`]). An item's score is that sum (0 when it is no seed's
//! neighbour); the candidates are the same items best first, the seeds
//! left out.
//!
//! One implementation for every path: the served one reads the lists with
//! [`FeatureStore::neighbours`] ([`CoVisitScores::read`]), the training
//! export from its replayed [`MemoryState`] ([`CoVisitScores::of_state`]);
//! both hand them to [`CoVisitScores::from_lists`]. Pure apart from those
//! two reads; knows no Redis keys.

use super::aggregate::EntityState;
use super::store::covisit;
use super::store::memory::MemoryState;
use super::store::{FeatureStore, StoreError};
use std::collections::HashMap;

/// The customer list the seeds come from.
pub const SEED_LIST: &str = covisit::LIST;
/// How many of the customer's latest items seed co-visitation.
pub const SEEDS: usize = 5;
/// Neighbours read per seed.
pub const PER_SEED: usize = 20;

/// The customer's latest items whose neighbours are read (up to [`SEEDS`]
/// of [`SEED_LIST`], newest first).
pub fn seeds(customer: &EntityState) -> Vec<String> {
    customer
        .recent
        .get(SEED_LIST)
        .map(|l| l.iter().take(SEEDS).map(|(m, _)| m.clone()).collect())
        .unwrap_or_default()
}

/// Per item, how strongly other shoppers' co-visits tie it to one
/// customer's latest items.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoVisitScores {
    /// Every neighbour of a seed but the seeds themselves, best first
    /// (ties by id).
    ranked: Vec<(String, f64)>,
    /// Every neighbour of a seed (seeds included), by item.
    by_item: HashMap<String, f64>,
}

impl CoVisitScores {
    /// From the seeds' neighbour lists (one per seed, as
    /// [`FeatureStore::neighbours`] returns them).
    pub fn from_lists(seeds: &[String], lists: &[Vec<(String, f64)>]) -> CoVisitScores {
        let all = covisit::rank(lists, &[], usize::MAX);
        let by_item = all.iter().cloned().collect();
        let ranked = all
            .into_iter()
            .filter(|(m, _)| !seeds.contains(m))
            .collect();
        CoVisitScores { ranked, by_item }
    }

    /// The customer's scores from the store (one round trip; none, and
    /// empty scores, for a customer with no recent items).
    pub async fn read(
        store: &dyn FeatureStore,
        customer: &EntityState,
    ) -> Result<CoVisitScores, StoreError> {
        let seeds = seeds(customer);
        if seeds.is_empty() {
            return Ok(CoVisitScores::default());
        }
        let lists = store.neighbours(&seeds, PER_SEED).await?;
        Ok(CoVisitScores::from_lists(&seeds, &lists))
    }

    /// The scores of `customer` in a replayed state (the training export).
    pub fn of_state(state: &MemoryState, customer: &EntityState) -> CoVisitScores {
        let seeds = seeds(customer);
        let lists: Vec<Vec<(String, f64)>> = seeds
            .iter()
            .map(|s| state.neighbours(s, PER_SEED))
            .collect();
        CoVisitScores::from_lists(&seeds, &lists)
    }

    /// `cross.covisit_score` of `item` (0 when no seed's neighbour).
    pub fn get(&self, item: &str) -> f64 {
        self.by_item.get(item).copied().unwrap_or(0.0)
    }

    /// The co-visited candidates, best first: the seeds' neighbours
    /// without the seeds (what [`covisit::rank`] gives with the seeds
    /// skipped).
    pub fn candidates(&self) -> &[(String, f64)] {
        &self.ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_the_normalised_sums_and_candidates_rank_without_the_seeds() {
        let seeds = vec!["a".to_string(), "b".to_string()];
        // a's neighbours: b 3, x 1; b's: x 2, a 2
        let lists = vec![
            vec![("b".to_string(), 3.0), ("x".to_string(), 1.0)],
            vec![("x".to_string(), 2.0), ("a".to_string(), 2.0)],
        ];
        let s = CoVisitScores::from_lists(&seeds, &lists);
        assert_eq!(s.get("x"), 0.25 + 0.5);
        assert_eq!(s.get("b"), 0.75);
        assert_eq!(s.get("a"), 0.5);
        assert_eq!(s.get("nobody"), 0.0);
        assert_eq!(s.candidates(), &[("x".to_string(), 0.75)]);
        let skip: Vec<&str> = seeds.iter().map(String::as_str).collect();
        assert_eq!(s.candidates(), covisit::rank(&lists, &skip, 100).as_slice());
        assert_eq!(CoVisitScores::default().get("x"), 0.0);
    }

    #[test]
    fn seeds_are_the_latest_items() {
        let mut c = EntityState::default();
        c.recent.insert(
            SEED_LIST.into(),
            (0..8).map(|i| (format!("i{i}"), 100 - i)).collect(),
        );
        assert_eq!(seeds(&c), ["i0", "i1", "i2", "i3", "i4"]);
        assert!(seeds(&EntityState::default()).is_empty());
    }
}
