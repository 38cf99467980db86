//! The budget contract and the fallback reasons, with a store that is slow
//! or failing, under paused tokio time (the deadline is virtual, so the
//! tests are exact and fast) and the real shipped model.

use super::*;
use crate::config::Config;
use crate::event::Event;
use crate::features::aggregate::{EntityState, Plan};
use crate::features::store::memory::MemoryStore;
use crate::features::store::{
    ApplyOutcome, GroupOutcome, GroupWrite, OfferKey, ReadQuery, ReadResult, StoreError,
};
use crate::features::vector::ContextValues;
use crate::model::scorer::LoadOptions;
use async_trait::async_trait;
use std::path::Path;

/// A memory store that answers reads after `delay`, or fails them.
struct TestStore {
    inner: MemoryStore,
    delay: Duration,
    fail: bool,
}

impl TestStore {
    async fn wait(&self) -> Result<(), StoreError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail {
            return Err(StoreError::Protocol("injected failure".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl FeatureStore for TestStore {
    async fn apply(&self, plans: &[Plan], now_ms: i64) -> Result<ApplyOutcome, StoreError> {
        self.inner.apply(plans, now_ms).await
    }
    async fn apply_groups(
        &self,
        groups: &[GroupWrite],
        now_ms: i64,
    ) -> Result<GroupOutcome, StoreError> {
        self.inner.apply_groups(groups, now_ms).await
    }
    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError> {
        self.wait().await?;
        self.inner.read(q).await
    }
    async fn read_with_offers(
        &self,
        q: &ReadQuery<'_>,
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<(ReadResult, Vec<u64>), StoreError> {
        self.wait().await?;
        self.inner.read_with_offers(q, offers, now_ms).await
    }
    async fn record_offers(
        &self,
        customer_id: &str,
        offers: &[OfferKey],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.record_offers(customer_id, offers, now_ms).await
    }
    async fn item_ids(&self) -> Result<Vec<String>, StoreError> {
        self.inner.item_ids().await
    }
    async fn popular(
        &self,
        now_ms: i64,
        top: usize,
        top_per_category: usize,
    ) -> Result<crate::features::store::popularity::PopularLists, StoreError> {
        self.inner.popular(now_ms, top, top_per_category).await
    }
    async fn file_covisits(
        &self,
        filings: &[crate::features::store::covisit::Filing<'_>],
    ) -> Result<(), StoreError> {
        self.inner.file_covisits(filings).await
    }
    async fn neighbours(
        &self,
        item_ids: &[String],
        top: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, StoreError> {
        self.wait().await?;
        self.inner.neighbours(item_ids, top).await
    }
    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError> {
        self.wait().await?;
        self.inner.read_items(ids).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A decider over the shipped definitions and model, with `store`.
async fn decider(cfg: &Config, delay: Duration, fail: bool) -> Decider {
    let set = Arc::new(
        FeatureSet::load(&repo().join("feature-store/features.toml")).expect("shipped features"),
    );
    let inner = MemoryStore::new(set.clone(), 3_600_000);
    let seed: Vec<Event> = (0..5)
        .map(|i| {
            Event::from_value(serde_json::json!({
                "event_id": format!("e{i}"), "type": "page_view", "customer_id": "c1",
                "ts": 1_764_355_200_000i64 + i, "item_id": format!("p{i}"),
                "props": {"price": 10.0, "category": "shoes"}
            }))
            .expect("valid event")
        })
        .collect();
    crate::ingest::apply::apply_events_at(&set, &inner, &seed, 1_764_355_200_010)
        .await
        .expect("memory apply");
    let store: Arc<dyn FeatureStore> = Arc::new(TestStore { inner, delay, fail });
    shipped_decider(cfg, set, store)
}

/// A decider over `set`, the shipped models and rules (checked to load),
/// and `store`.
pub(super) fn shipped_decider(
    cfg: &Config,
    set: Arc<FeatureSet>,
    store: Arc<dyn FeatureStore>,
) -> Decider {
    let opts = LoadOptions {
        sessions: cfg.model.sessions,
        intra_threads: 1,
        ort_dylib_path: None,
    };
    let reg = Registry::rescan(&repo().join("models"), &set, &opts, &[], None);
    assert!(
        reg.models.values().any(|m| m.serving.is_some()),
        "the shipped model loads: {:?}",
        reg.problems
    );
    let routing = Routing::new(&Default::default(), &[], None).expect("default routing");
    let rules = RuleSet::load(&repo().join("rules"), &set, None);
    assert!(
        rules.errors().next().is_none(),
        "shipped rules load: {:?}",
        rules.files
    );
    Decider::new(
        cfg,
        set,
        store,
        Arc::new(ArcSwap::from_pointee(reg)),
        Arc::new(ArcSwap::from_pointee(Popularity::default())),
        routing,
        Arc::new(ArcSwap::from_pointee(rules)),
    )
    .expect("default config")
}

fn request(d: &Decider, budget_ms: u64) -> RecommendRequest {
    RecommendRequest {
        request_id: "r1".into(),
        customer_id: "c1".into(),
        session_id: None,
        k: 3,
        context: ContextValues::defaults(&d.set),
        candidates: Some((0..5).map(|i| format!("p{i}")).collect()),
        budget_ms,
        queued: std::time::Duration::ZERO,
        model: None,
        now_ms: 1_764_355_260_000,
        explain: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_gets_the_fallback_within_the_budget() {
    let cfg = Config::default();
    // positive control: the same store a little slower than instant ranks
    let ok = decider(&cfg, Duration::from_millis(5), false).await;
    let rec = ok.recommend(&request(&ok, 50)).await;
    assert!(!rec.fallback, "ranked: {:?}", rec.fallback_reason);
    assert_eq!(rec.items.len(), 3);
    assert!(rec.items.iter().all(|i| i.reasons[0] == "model_score"));

    let slow = decider(&cfg, Duration::from_secs(10), false).await;
    let t = tokio::time::Instant::now();
    let rec = slow.recommend(&request(&slow, 50)).await;
    let took = t.elapsed();
    assert!(rec.fallback);
    assert_eq!(
        rec.fallback_reason.as_deref(),
        Some("budget of 50 ms exceeded")
    );
    assert!(took <= Duration::from_millis(50), "answered after {took:?}");
    assert!(
        took >= Duration::from_millis(45),
        "waited for the store: {took:?}"
    );
    let ids: Vec<&str> = rec.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["p0", "p1", "p2"], "the request's candidates in order");
    assert_eq!(rec.items[0].reasons, ["fallback", "requested"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_gets_the_fallback_naming_the_store() {
    let d = decider(&Config::default(), Duration::ZERO, true).await;
    let rec = d.recommend(&request(&d, 200)).await;
    assert!(rec.fallback);
    let reason = rec.fallback_reason.unwrap_or_default();
    assert!(
        reason.starts_with("feature store:") && reason.contains("injected failure"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_free_scoring_slot_means_a_fallback_not_a_pile_up() {
    let mut cfg = Config::default();
    cfg.model.sessions = 1;
    cfg.model.max_waiting = 1;
    let d = decider(&cfg, Duration::ZERO, false).await;
    let held = d.admission.acquire().await.expect("the one slot");

    // one request may wait: it falls back when its budget runs out
    let t = tokio::time::Instant::now();
    let rec = d.recommend(&request(&d, 40)).await;
    assert!(rec.fallback);
    assert_eq!(
        rec.fallback_reason.as_deref(),
        Some("budget of 40 ms exceeded")
    );
    assert!(t.elapsed() >= Duration::from_millis(35));

    // with a request already waiting, the next one is refused at once
    let waiting = {
        let req = request(&d, 1000);
        let d = &d;
        async move { d.recommend(&req).await }
    };
    let refused = async {
        tokio::task::yield_now().await;
        let t = tokio::time::Instant::now();
        let rec = d.recommend(&request(&d, 1000)).await;
        (rec, t.elapsed())
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
    };
    let (waited, (rec, took), ()) = tokio::join!(waiting, refused, release);
    assert!(rec.fallback);
    assert_eq!(
        rec.fallback_reason.as_deref(),
        Some("too many requests waiting to be scored")
    );
    assert!(took < Duration::from_millis(5), "refused after {took:?}");
    // positive control: the waiting request is scored once the slot is free
    assert!(!waited.fallback, "{:?}", waited.fallback_reason);
}
