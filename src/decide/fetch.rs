//! The fetch stage: the customer's, the session's and the candidates' states
//! in one store round trip, item states served from the per-instance
//! [`ItemCache`] where fresh. Customer and session states (and the contact
//! counters rules cap actions with) are always read from the store.

use super::item_cache::ItemCache;
use crate::features::aggregate::EntityState;
use crate::features::covisit_score::CoVisitScores;
use crate::features::store::{FeatureStore, OfferKey, ReadQuery, StoreError};
use std::sync::Arc;

/// The states one request is decided on.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub customer: EntityState,
    pub session: EntityState,
    /// One per candidate, in candidate order (empty state for unknown items).
    pub items: Vec<Arc<EntityState>>,
    /// The customer's contact counters asked for, in order.
    pub offers: Vec<u64>,
    /// Co-visitation scores of the customer's latest items' neighbours
    /// (read when candidates are generated or a model or rule reads
    /// `cross.covisit_score`; else empty).
    pub covisit: CoVisitScores,
}

/// The store and the optional item cache, as the fetch stage sees them.
pub struct Fetcher<'a> {
    pub store: &'a dyn FeatureStore,
    pub cache: Option<&'a ItemCache>,
}

impl Fetcher<'_> {
    /// Reads the customer, the session (the latest one if `session_id` is
    /// `None`), the items of `item_ids` not in the cache and the customer's
    /// `offers` counters, in one round trip.
    pub async fn read(
        &self,
        customer_id: &str,
        session_id: Option<&str>,
        item_ids: &[String],
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<Fetched, StoreError> {
        let (cached, missing) = self.cached(item_ids);
        let (read, offers) = self
            .store
            .read_with_offers(
                &ReadQuery {
                    customer_id,
                    session_id,
                    item_ids: &missing,
                },
                offers,
                now_ms,
            )
            .await?;
        Ok(Fetched {
            customer: read.customer,
            session: read.session,
            items: self.merge(cached, missing, read.items),
            offers,
            covisit: CoVisitScores::default(),
        })
    }

    /// Reads the states of `item_ids` (cache first), in order.
    pub async fn items(&self, item_ids: &[String]) -> Result<Vec<Arc<EntityState>>, StoreError> {
        let (cached, missing) = self.cached(item_ids);
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            self.store.read_items(&missing).await?
        };
        Ok(self.merge(cached, missing, fresh))
    }

    /// Cached states for `ids` (None where not cached) and the ids that must
    /// be read from the store.
    fn cached(&self, ids: &[String]) -> (Vec<Option<Arc<EntityState>>>, Vec<String>) {
        let cached = match self.cache {
            Some(c) => c.get_many(ids),
            None => vec![None; ids.len()],
        };
        let missing = ids
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(i, _)| i.clone())
            .collect();
        (cached, missing)
    }

    /// Puts freshly read states (for `missing`, in order) into the cache and
    /// returns a state for every cached slot, filling the gaps in order.
    fn merge(
        &self,
        cached: Vec<Option<Arc<EntityState>>>,
        missing: Vec<String>,
        fresh: Vec<EntityState>,
    ) -> Vec<Arc<EntityState>> {
        let fresh: Vec<Arc<EntityState>> = fresh.into_iter().map(Arc::new).collect();
        if let Some(c) = self.cache {
            c.put_many(missing.into_iter().zip(fresh.iter().cloned()));
        }
        let mut it = fresh.into_iter();
        cached
            .into_iter()
            .map(|c| c.or_else(|| it.next()).unwrap_or_default())
            .collect()
    }
}
