//! The Redis store against a real redis-server: same state as the memory
//! store for the same (shuffled, duplicated) history, and fallbacks within
//! budget when Redis dies, recovering when it returns.

mod common;
use common::*;
use nextbest::event::{Event, EventType};
use nextbest::features::aggregate::{plan_event, EntityState};
use nextbest::features::store::memory::MemoryStore;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::{FeatureStore, ReadQuery};
use nextbest::features::FeatureSet;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn set() -> Arc<FeatureSet> {
    Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features load"))
}

fn history(seed: u64, n: usize) -> Vec<Event> {
    let mut r = Rng(seed);
    let kinds = EventType::ALL;
    let t0 = now_ms() - 3 * 24 * 3_600_000;
    let mut out = Vec::new();
    for i in 0..n {
        let kind = kinds[r.below(kinds.len() as u64) as usize].as_str();
        let item = format!("p{}", r.below(12));
        let mut v = json!({
            "event_id": format!("h{seed}-{i}"), "type": kind, "customer_id": format!("c{}", r.below(3)),
            "ts": t0 + r.below(3 * 24 * 3_600_000) as i64, "session_id": format!("s{}", r.below(4)),
            "seq": i, "props": {"price": (r.below(10000) as f64) / 100.0, "quantity": 1 + r.below(3), "category": format!("cat{}", r.below(4)), "dwell_ms": r.below(60000)}
        });
        if kind != "search" && kind != "session_start" {
            v["item_id"] = json!(item);
        }
        out.push(Event::from_value(v).expect("generated event is valid"));
    }
    redeliver_and_shuffle(&mut out, &mut r, n / 10);
    out
}

fn assert_close(a: &EntityState, b: &EntityState, what: &str) {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()));
    assert_eq!(
        a.nums.keys().collect::<Vec<_>>(),
        b.nums.keys().collect::<Vec<_>>(),
        "{what}: num fields"
    );
    for (k, x) in &a.nums {
        assert!(close(*x, b.nums[k]), "{what}: {k} {x} vs {}", b.nums[k]);
    }
    assert_eq!(a.windows.len(), b.windows.len(), "{what}: windows");
    for (k, w) in &a.windows {
        let v = &b.windows[k];
        assert_eq!(w.max, v.max, "{what}: {k} max");
        assert_eq!(
            w.buckets.keys().collect::<Vec<_>>(),
            v.buckets.keys().collect::<Vec<_>>(),
            "{what}: {k} buckets"
        );
        for (i, x) in &w.buckets {
            assert!(close(*x, v.buckets[i]), "{what}: {k}|{i}");
        }
    }
    assert_eq!(a.lasts, b.lasts, "{what}: last values");
    assert_eq!(a.recent, b.recent, "{what}: recent lists");
    assert_eq!(
        a.resettable.keys().collect::<Vec<_>>(),
        b.resettable.keys().collect::<Vec<_>>(),
        "{what}: resettable"
    );
    for (k, r) in &a.resettable {
        let s = &b.resettable[k];
        assert_eq!(r.reset_ts, s.reset_ts, "{what}: {k} reset");
        assert_eq!(
            r.parts.keys().collect::<Vec<_>>(),
            s.parts.keys().collect::<Vec<_>>(),
            "{what}: {k} parts"
        );
    }
}

async fn redis_store(url: &str, set: Arc<FeatureSet>) -> RedisStore {
    let settings = RedisSettings {
        url: url.into(),
        key_prefix: unique("p"),
        dedupe_window_ms: 30 * 24 * 3_600_000,
        ttl_seconds: 3600,
        timeout_ms: 2000,
    };
    RedisStore::connect(settings, set)
        .await
        .expect("redis connects")
}

#[tokio::test]
async fn redis_and_memory_agree_on_shuffled_histories_with_duplicates() {
    let set = set();
    for seed in [7u64, 99, 12345] {
        let events = history(seed, 400);
        let mem = MemoryStore::new(set.clone(), 30 * 24 * 3_600_000);
        let red = redis_store(&redis_url(), set.clone()).await;
        let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
        // memory in one go; redis in uneven batches
        let m = mem.apply(&plans).await.expect("memory applies");
        let mut dups = 0;
        for chunk in plans.chunks(37) {
            dups += red.apply(chunk).await.expect("redis applies").duplicates;
        }
        assert_eq!(m.duplicates, dups, "seed {seed}: same duplicates");
        assert!(
            dups >= 400 / 10 - 5,
            "seed {seed}: duplicates were injected, found {dups}"
        );
        let items: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        for c in 0..3 {
            for s in [None, Some("s1")] {
                let cid = format!("c{c}");
                let q = ReadQuery {
                    customer_id: &cid,
                    session_id: s,
                    item_ids: &items,
                };
                let a = mem.read(&q).await.expect("memory read");
                let b = red.read(&q).await.expect("redis read");
                assert_close(&a.customer, &b.customer, &format!("seed {seed} {cid}"));
                assert_eq!(a.session_id, b.session_id, "seed {seed} {cid} session id");
                assert_close(
                    &a.session,
                    &b.session,
                    &format!("seed {seed} {cid} session"),
                );
                for (i, (x, y)) in a.items.iter().zip(&b.items).enumerate() {
                    assert_close(x, y, &format!("seed {seed} item p{i}"));
                }
            }
        }
        let mut ids = red.item_ids().await.expect("item ids");
        ids.sort();
        let mut mids = mem.item_ids().await.expect("item ids");
        mids.sort();
        assert_eq!(ids, mids);
    }
}

#[tokio::test]
async fn redis_outage_gives_fallbacks_within_budget_then_recovers() {
    let mut redis = RedisProc::start();
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis.url());
    cfg.store.timeout_ms = 300;
    let app = TestApp::spawn(cfg).await;
    let c = unique("c");
    let (s, _) = app
        .post(
            "/v1/events",
            json!(event("r1", "add_to_cart", &c, Some("p1"), now_ms())),
        )
        .await;
    assert_eq!(s, 202);
    let body = json!({"customer_id": c, "k": 2, "candidates": ["p1", "p2"], "budget_ms": 100});
    let (_, ok) = app.post("/v1/recommend", body.clone()).await;
    assert_eq!(ok["fallback"], false, "{ok}");

    redis.kill();
    for _ in 0..5 {
        let t = Instant::now();
        let (s, r) = app.post("/v1/recommend", body.clone()).await;
        let took = t.elapsed();
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["fallback"], true, "{r}");
        assert_eq!(r["items"][0]["item_id"], "p1");
        // budget 100 ms; allow generous slack for the HTTP round trip on a loaded CI machine
        assert!(took < Duration::from_millis(1000), "answered in {took:?}");
    }
    let (s, r) = app.get("/readyz").await;
    assert_eq!((s, r["store_ok"].clone()), (503, json!(false)), "{r}");

    redis.restart();
    // the restarted Redis is empty but answers: recommendations stop falling back
    eventually(
        Duration::from_secs(20),
        "recommend to recover after Redis restarts",
        || {
            let app = &app;
            let body = body.clone();
            async move {
                let (_, r) = app.post("/v1/recommend", body).await;
                (r["fallback"] == false).then_some(())
            }
        },
    )
    .await;
    let (s, _) = app
        .post(
            "/v1/events",
            json!(event("r2", "page_view", &c, Some("p2"), now_ms())),
        )
        .await;
    assert_eq!(s, 202, "events are stored again after the restart");
    app.stop().await;
}
