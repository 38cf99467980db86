//! Co-visitation kept by the store (`features::store::covisit`), on the
//! memory store and on a real Redis alike: items viewed close together
//! become each other's neighbours, a redelivered event adds nothing, items
//! further apart than the window do not co-visit, both stores give the
//! same lists for the same history (and for filings of one to many
//! neighbours, past the cut), a backfill files what the stream would
//! (once), and the recommend pipeline offers a
//! new customer's next item from them (`co_visited`).

mod common;
use common::*;
use nextbest::backfill::load::{aggregate_and_write, BackfillJob};
use nextbest::backfill::progress::Progress;
use nextbest::backfill::select::select;
use nextbest::event::Event;
use nextbest::features::aggregate::plan_event;
use nextbest::features::store::covisit::{self, WINDOW_MS};
use nextbest::features::store::memory::MemoryStore;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::FeatureStore;
use nextbest::features::FeatureSet;
use serde_json::json;
use std::sync::Arc;

const MIN: i64 = 60_000;
const T: i64 = 1_793_491_200_000;
const WINDOW: i64 = 30 * 24 * 3_600_000;

fn set() -> Arc<FeatureSet> {
    Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features load"))
}

async fn redis_store(set: Arc<FeatureSet>) -> RedisStore {
    let settings = RedisSettings {
        url: redis_url(),
        key_prefix: unique("cv"),
        dedupe_window_ms: WINDOW,
        ttl_seconds: 3600,
        timeout_ms: 5000,
        timer_shards: 16,
    };
    RedisStore::connect(settings, set)
        .await
        .expect("redis connects")
}

/// One store of each kind, each fresh.
async fn stores() -> Vec<(&'static str, Box<dyn FeatureStore>)> {
    let set = set();
    vec![
        ("memory", Box::new(MemoryStore::new(set.clone(), WINDOW))),
        ("redis", Box::new(redis_store(set).await)),
    ]
}

fn view(id: &str, customer: &str, item: &str, ts: i64) -> Event {
    Event::from_value(json!({
        "event_id": id, "type": "page_view", "customer_id": customer,
        "session_id": format!("s-{customer}"), "item_id": item, "ts": ts,
        "props": {"price": 10.0, "category": "shoes"}
    }))
    .expect("valid event")
}

async fn apply(store: &dyn FeatureStore, events: &[Event], now: i64) {
    let set = set();
    let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
    store.apply(&plans, now).await.expect("apply");
}

async fn ids(store: &dyn FeatureStore, item: &str) -> Vec<String> {
    let mut l = store
        .neighbours(&[item.to_string()], 50)
        .await
        .expect("neighbours");
    l.remove(0).into_iter().map(|(m, _)| m).collect()
}

#[tokio::test]
async fn items_viewed_together_become_neighbours_once_each_way() {
    for (name, store) in stores().await {
        let store = store.as_ref();
        let walk = [
            view("e1", "c1", "a", T),
            view("e2", "c1", "b", T + MIN),
            view("e3", "c1", "c", T + 2 * MIN),
        ];
        apply(store, &walk, T + 3 * MIN).await;
        // both ways; the newer co-visit weighs a little more
        assert_eq!(ids(store, "a").await, ["c", "b"], "{name}");
        assert_eq!(ids(store, "b").await, ["c", "a"], "{name}");
        assert_eq!(ids(store, "c").await, ["b", "a"], "{name}");
        let before = store
            .neighbours(&["a".into(), "b".into(), "c".into()], 50)
            .await
            .expect("neighbours");
        // a redelivery of the whole walk adds nothing...
        apply(store, &walk, T + 4 * MIN).await;
        let after = store
            .neighbours(&["a".into(), "b".into(), "c".into()], 50)
            .await
            .expect("neighbours");
        assert_eq!(before, after, "{name}: a redelivery changed the lists");
        // ...while a second customer's walk b → a does: a–b now leads a's list
        apply(
            store,
            &[
                view("f1", "c2", "b", T + 5 * MIN),
                view("f2", "c2", "a", T + 6 * MIN),
            ],
            T + 7 * MIN,
        )
        .await;
        assert_eq!(ids(store, "a").await, ["b", "c"], "{name}");
        let scores = store
            .neighbours(&["a".into()], 1)
            .await
            .expect("neighbours");
        let want = covisit::weight(T + MIN) + covisit::weight(T + 6 * MIN);
        assert!(
            (scores[0][0].1 - want).abs() < 1e-9 * want,
            "{name}: a–b scores {} (want {want})",
            scores[0][0].1
        );
        assert!(ids(store, "unknown").await.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn items_viewed_further_apart_than_the_window_do_not_co_visit() {
    for (name, store) in stores().await {
        let store = store.as_ref();
        apply(
            store,
            &[
                view("e1", "c1", "a", T),
                view("e2", "c1", "b", T + WINDOW_MS + MIN),
                view("e3", "c1", "c", T + WINDOW_MS + 2 * MIN),
            ],
            T + WINDOW_MS + 3 * MIN,
        )
        .await;
        // positive control: b and c, a minute apart, did co-visit
        assert_eq!(ids(store, "c").await, ["b"], "{name}");
        assert!(ids(store, "a").await.is_empty(), "{name}");
        assert_eq!(ids(store, "b").await, ["c"], "{name}");
    }
}

/// 40 customers each walk 12 steps over 30 items, a few minutes apart, in
/// event-time order.
fn walks() -> Vec<Event> {
    let mut r = Rng(0x5eed_c0de);
    let mut events = Vec::new();
    for c in 0..40 {
        let mut ts = T + r.below(60) as i64 * MIN;
        for s in 0..12 {
            let item = format!("i{}", r.below(30));
            events.push(view(&format!("c{c}-{s}"), &format!("c{c}"), &item, ts));
            ts += (1 + r.below(20) as i64) * MIN;
        }
    }
    events.sort_by_key(|e| e.ts);
    events
}

const NOW: i64 = T + 6 * 3_600_000;

/// The 30 items' neighbour lists.
async fn all_lists(store: &dyn FeatureStore) -> Vec<Vec<(String, f64)>> {
    let items: Vec<String> = (0..30).map(|i| format!("i{i}")).collect();
    store.neighbours(&items, 50).await.expect("neighbours")
}

/// Asserts two stores' lists hold the same ids in the same order and the
/// same scores (to rounding); returns how many neighbours they hold.
fn assert_same(a: &[Vec<(String, f64)>], b: &[Vec<(String, f64)>], what: &str) -> usize {
    let mut filed = 0;
    for (i, (m, r)) in a.iter().zip(b).enumerate() {
        let m_ids: Vec<&String> = m.iter().map(|(id, _)| id).collect();
        let r_ids: Vec<&String> = r.iter().map(|(id, _)| id).collect();
        assert_eq!(m_ids, r_ids, "{what}: item i{i}: neighbours differ");
        for ((_, x), (_, y)) in m.iter().zip(r) {
            assert!(
                (x - y).abs() <= 1e-9 * x.abs(),
                "{what}: item i{i}: {x} vs {y}"
            );
        }
        filed += m.len();
    }
    filed
}

async fn backfill(store: &dyn FeatureStore, events: &[Event]) {
    let set = set();
    let events = Arc::new(events.to_vec());
    let (idx, _, _) = select(&events, NOW, 1);
    let job = BackfillJob {
        as_of: NOW,
        batch: 16,
        in_flight: 2,
        ..BackfillJob::default()
    };
    let progress = Arc::new(Progress::hidden("test", 0));
    aggregate_and_write(set, store, events, idx, Vec::new(), &job, progress)
        .await
        .expect("backfill");
}

#[tokio::test]
async fn memory_and_redis_keep_the_same_lists_for_the_same_history() {
    // sent in batches of 50 as the consumer would
    let events = walks();
    let stores = stores().await;
    for (_, store) in &stores {
        for chunk in events.chunks(50) {
            apply(store.as_ref(), chunk, NOW).await;
        }
    }
    let mem = all_lists(stores[0].1.as_ref()).await;
    let red = all_lists(stores[1].1.as_ref()).await;
    let filed = assert_same(&mem, &red, "memory vs redis");
    assert!(filed > 100, "the history co-visited too little: {filed}");
}

#[tokio::test]
async fn filings_small_and_large_keep_the_same_lists_in_both_stores() {
    // Redis writes an item's first filing whole (its best KEEP, by
    // RESTORE) and adds later ones by ZINCRBY; the memory store is the
    // reference for both, past the cut of KEEP too
    let names: Vec<String> = (0..150).map(|i| format!("n{i:03}")).collect();
    let mut r = Rng(0xf11e_5eed);
    let mut rounds: Vec<Vec<covisit::Filing<'_>>> = Vec::new();
    for round in 0..12 {
        let mut filings = Vec::new();
        for item in ["x", "y", "z"] {
            let k = match (round, item) {
                // a first filing past the cut
                (0, "x") => 120,
                _ => [1, 3, 7, 8, 20, 120][r.below(6) as usize],
            };
            let start = r.below(150) as usize;
            let add = (0..k)
                .map(|j| {
                    let w = 1.0 + r.below(1_000_000) as f64 / 7.0;
                    (names[(start + j) % 150].as_str(), w)
                })
                .collect();
            filings.push(covisit::Filing { item, add });
        }
        rounds.push(filings);
    }
    let mut lists = Vec::new();
    for (name, store) in stores().await {
        for round in &rounds {
            store.file_covisits(round).await.expect("file");
        }
        let items: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
        let got = store.neighbours(&items, 100).await.expect("neighbours");
        assert!(
            got.iter().all(|l| l.len() == covisit::KEEP),
            "{name}: every list reached the cut: {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        lists.push(got);
    }
    assert_same(&lists[0], &lists[1], "memory vs redis");
}

#[tokio::test]
async fn a_backfill_files_the_co_visits_the_stream_would_and_only_once() {
    let events = walks();
    let streamed = MemoryStore::new(set(), WINDOW);
    for chunk in events.chunks(50) {
        apply(&streamed, chunk, NOW).await;
    }
    let want = all_lists(&streamed).await;
    for (name, store) in stores().await {
        let store = store.as_ref();
        // the first half streamed, then the whole history backfilled: the
        // streamed events are applied before and file nothing again
        let half = events.len() / 2;
        for chunk in events[..half].chunks(50) {
            apply(store, chunk, NOW).await;
        }
        backfill(store, &events).await;
        let got = all_lists(store).await;
        let filed = assert_same(&want, &got, name);
        assert!(
            filed > 100,
            "{name}: the history co-visited too little: {filed}"
        );
        // the same backfill again changes nothing
        backfill(store, &events).await;
        assert_same(&want, &all_lists(store).await, name);
    }
}

#[tokio::test]
async fn a_new_customer_is_offered_what_others_viewed_next() {
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis_url());
    let app = TestApp::spawn(cfg).await;
    let now = now_ms();
    // five shoppers go from the boots to the laces
    let mut events = Vec::new();
    for c in 0..5 {
        let shopper = format!("shopper{c}");
        events.push(event(
            &format!("{shopper}-1"),
            "page_view",
            &shopper,
            Some("boots"),
            now - 10 * MIN,
        ));
        events.push(event(
            &format!("{shopper}-2"),
            "page_view",
            &shopper,
            Some("laces"),
            now - 9 * MIN,
        ));
    }
    events.push(event(
        "new-1",
        "page_view",
        "newcomer",
        Some("boots"),
        now - MIN,
    ));
    let (status, body) = app.post("/v1/events", json!(events)).await;
    assert_eq!(status, 202, "{body}");
    let rec = eventually(std::time::Duration::from_secs(10), "laces offered", || {
        let app = &app;
        async move {
            let (s, body) = app
                .post("/v1/recommend", json!({"customer_id": "newcomer", "k": 20}))
                .await;
            assert_eq!(s, 200, "{body}");
            let items = body["items"].as_array()?.clone();
            items.into_iter().find(|i| i["item_id"] == "laces")
        }
    })
    .await;
    let reasons: Vec<&str> = rec["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(reasons.contains(&"co_visited"), "{rec}");
    app.stop().await;
}
