//! Popularity kept by the store (`features::store::popularity`), on the
//! memory store and on a real Redis alike: the lists follow events, a
//! redelivered event changes nothing, an item ages out of the 24 h window,
//! an item moving category leaves the old list, the backfill's bulk write
//! files what it writes, and both stores give the same lists for the same
//! shuffled history with duplicates.

mod common;
use common::*;
use nextbest::backfill::load::BackfillJob;
use nextbest::backfill::progress::Progress;
use nextbest::backfill::{fold, select::select, write};
use nextbest::event::Event;
use nextbest::features::aggregate::plan_event;
use nextbest::features::store::memory::MemoryStore;
use nextbest::features::store::popularity::PopularLists;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::FeatureStore;
use nextbest::features::FeatureSet;
use serde_json::json;
use std::sync::Arc;

const H: i64 = 3_600_000;
/// An hour into a 2 h bucket.
const T: i64 = 1_793_491_200_000 + H;
const WINDOW: i64 = 30 * 24 * H;

fn set() -> Arc<FeatureSet> {
    Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features load"))
}

async fn redis_store(set: Arc<FeatureSet>) -> RedisStore {
    let settings = RedisSettings {
        url: redis_url(),
        key_prefix: unique("pop"),
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

fn ev(id: &str, kind: &str, item: &str, category: &str, ts: i64) -> Event {
    Event::from_value(json!({
        "event_id": id, "type": kind, "customer_id": "c1", "session_id": "s1",
        "item_id": item, "ts": ts, "props": {"price": 10.0, "category": category}
    }))
    .expect("valid event")
}

async fn apply(store: &dyn FeatureStore, events: &[Event], now: i64) {
    let set = set();
    let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
    store.apply(&plans, now).await.expect("apply");
}

async fn popular(store: &dyn FeatureStore, now: i64) -> PopularLists {
    store.popular(now, 500, 100).await.expect("popular")
}

fn list(v: &[(&str, f64)]) -> Vec<(String, f64)> {
    v.iter().map(|(i, s)| (i.to_string(), *s)).collect()
}

#[tokio::test]
async fn popularity_follows_events_and_a_duplicate_changes_nothing() {
    for (name, store) in stores().await {
        let store = store.as_ref();
        assert!(popular(store, T).await.global.is_empty(), "{name}: empty");
        // views count 1, clicks 2, purchases 10
        let first = [
            ev("e1", "page_view", "p1", "shoes", T),
            ev("e2", "page_view", "p1", "shoes", T + 1),
            ev("e3", "purchase", "p2", "shoes", T + 2),
            ev("e4", "click", "p3", "hats", T + 3),
        ];
        apply(store, &first, T + 10).await;
        let l = popular(store, T + 10).await;
        assert_eq!(
            l.global,
            list(&[("p2", 10.0), ("p1", 2.0), ("p3", 2.0)]),
            "{name}"
        );
        assert_eq!(
            l.by_category["shoes"],
            list(&[("p2", 10.0), ("p1", 2.0)]),
            "{name}"
        );
        assert_eq!(l.by_category["hats"], list(&[("p3", 2.0)]), "{name}");
        // the purchase and a view redelivered (alone, and in a batch with a new event)
        apply(store, &first[2..3], T + 20).await;
        apply(
            store,
            &[first[0].clone(), ev("e5", "click", "p3", "hats", T + 4)],
            T + 20,
        )
        .await;
        let l = popular(store, T + 20).await;
        assert_eq!(
            l.global,
            list(&[("p2", 10.0), ("p3", 4.0), ("p1", 2.0)]),
            "{name}: the duplicates counted nothing, the new click did"
        );
        // the top is cut where asked
        let top = store.popular(T + 20, 1, 1).await.expect("popular");
        assert_eq!(top.global, list(&[("p2", 10.0)]), "{name}");
        assert_eq!(top.by_category["hats"], list(&[("p3", 4.0)]), "{name}");
    }
}

#[tokio::test]
async fn an_item_ages_out_of_the_window() {
    for (name, store) in stores().await {
        let store = store.as_ref();
        apply(store, &[ev("a1", "page_view", "old", "shoes", T)], T).await;
        apply(
            store,
            &[ev("a2", "add_to_cart", "new", "shoes", T + 4 * H)],
            T + 4 * H,
        )
        .await;
        // 22 h after its bucket began "old" still counts; at 24 h it does not
        let l = popular(store, T + 21 * H).await;
        assert_eq!(l.global, list(&[("new", 5.0), ("old", 1.0)]), "{name}");
        let l = popular(store, T + 23 * H).await;
        assert_eq!(l.global, list(&[("new", 5.0)]), "{name}: aged out");
        assert_eq!(l.by_category["shoes"], list(&[("new", 5.0)]), "{name}");
        // a write a window later files anew; nothing old comes back
        let later = T + 30 * H;
        apply(
            store,
            &[ev("a3", "page_view", "other", "hats", later)],
            later,
        )
        .await;
        let l = popular(store, later).await;
        assert_eq!(l.global, list(&[("other", 1.0)]), "{name}");
        assert!(!l.by_category.contains_key("shoes"), "{name}");
    }
}

#[tokio::test]
async fn an_item_moving_category_leaves_the_old_list() {
    for (name, store) in stores().await {
        let store = store.as_ref();
        apply(
            store,
            &[
                ev("m1", "page_view", "p1", "shoes", T - 4 * H),
                ev("m2", "page_view", "p1", "shoes", T),
                ev("m3", "page_view", "p2", "shoes", T),
            ],
            T,
        )
        .await;
        let l = popular(store, T).await;
        assert_eq!(
            l.by_category["shoes"],
            list(&[("p1", 2.0), ("p2", 1.0)]),
            "{name}"
        );
        // p1 moves to hats: both its buckets go with it
        apply(
            store,
            &[ev("m4", "page_view", "p1", "hats", T + 10)],
            T + 10,
        )
        .await;
        let l = popular(store, T + 10).await;
        assert_eq!(l.by_category["shoes"], list(&[("p2", 1.0)]), "{name}");
        assert_eq!(l.by_category["hats"], list(&[("p1", 3.0)]), "{name}");
        // a late event naming the old category does not move it back
        apply(
            store,
            &[ev("m5", "page_view", "p1", "shoes", T + 5)],
            T + 20,
        )
        .await;
        let l = popular(store, T + 20).await;
        assert_eq!(l.by_category["hats"], list(&[("p1", 4.0)]), "{name}");
        assert_eq!(l.by_category["shoes"], list(&[("p2", 1.0)]), "{name}");
        // the last item leaving a category takes the list away
        apply(
            store,
            &[ev("m6", "page_view", "p2", "hats", T + 30)],
            T + 30,
        )
        .await;
        let l = popular(store, T + 30).await;
        assert!(!l.by_category.contains_key("shoes"), "{name}");
        assert_eq!(
            l.by_category["hats"],
            list(&[("p1", 4.0), ("p2", 2.0)]),
            "{name}"
        );
    }
}

/// `n` events over 30 h before `T` on 60 items in 5 categories (an item's
/// category changes now and then), redelivered and shuffled.
fn history(seed: u64, n: usize) -> Vec<Event> {
    let mut r = Rng(seed);
    let kinds = ["page_view", "page_view", "click", "add_to_cart", "purchase"];
    let mut out = Vec::new();
    for i in 0..n {
        let item = r.below(60);
        let cat = (item + r.below(10) / 9) % 5;
        out.push(ev(
            &format!("h{seed}-{i}"),
            kinds[r.below(kinds.len() as u64) as usize],
            &format!("p{item}"),
            &format!("cat{cat}"),
            T - r.below(30 * H as u64) as i64,
        ));
    }
    redeliver_and_shuffle(&mut out, &mut r, n / 10);
    out
}

/// The lists at a few times after `T`.
async fn lists_over_time(store: &dyn FeatureStore) -> Vec<PopularLists> {
    let mut out = Vec::new();
    for dt in [0, 5 * H, 20 * H] {
        out.push(popular(store, T + dt).await);
    }
    out
}

#[tokio::test]
async fn memory_and_redis_agree_on_shuffled_histories_with_duplicates() {
    let set = set();
    for seed in [3u64, 41, 2026] {
        let events = history(seed, 1500);
        let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
        let mem = MemoryStore::new(set.clone(), WINDOW);
        let red = redis_store(set.clone()).await;
        // memory in one go, redis in uneven batches, both at one "now"
        mem.apply(&plans, T).await.expect("memory applies");
        for chunk in plans.chunks(37) {
            red.apply(chunk, T).await.expect("redis applies");
        }
        let m = lists_over_time(&mem).await;
        let r = lists_over_time(&red).await;
        assert!(m[0].global.len() > 40, "seed {seed}: most items listed");
        assert!(m[0].by_category.len() == 5, "seed {seed}: every category");
        assert!(
            m[2].global.len() < m[0].global.len(),
            "seed {seed}: some items aged out"
        );
        assert_eq!(m, r, "seed {seed}: same lists");
    }
}

async fn backfill(store: &dyn FeatureStore, events: &[Event]) {
    let set = set();
    let (idx, _, _) = select(events, T, 1);
    let groups = fold::aggregate(&set, events, &idx, 1);
    let job = BackfillJob {
        as_of: T,
        batch: 16,
        in_flight: 2,
        ..BackfillJob::default()
    };
    let progress = Progress::hidden("test", 0);
    write::write(&set, store, events, groups, &job, &progress)
        .await
        .expect("backfill writes");
}

#[tokio::test]
async fn a_backfill_files_what_it_writes_as_the_stream_does() {
    let set = set();
    let events = history(77, 2000);
    let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
    let stream = MemoryStore::new(set.clone(), WINDOW);
    stream.apply(&plans, T).await.expect("stream applies");
    let expected = lists_over_time(&stream).await;
    assert!(!expected[0].global.is_empty(), "a positive control");
    // first half into empty stores (Redis: restore.lua), the rest over it
    // (update.lua on groups that exist)
    let (a, b) = events.split_at(events.len() / 2);
    for (name, store) in stores().await {
        let store = store.as_ref();
        backfill(store, a).await;
        let half = lists_over_time(store).await;
        assert_ne!(half, expected, "{name}: half the history is not all of it");
        backfill(store, b).await;
        assert_eq!(lists_over_time(store).await, expected, "{name}");
    }
}

#[tokio::test]
async fn one_write_of_more_items_than_the_lists_keep_lists_the_same_in_both_stores() {
    // 1,300 items in two categories in one call (one `pop_write.lua`): past
    // both cuts (1,000 global, 200 a category), with ties at them
    let set = set();
    let mut events = Vec::new();
    for i in 0..1300 {
        for v in 0..1 + (i * 7) % 5 {
            events.push(ev(
                &format!("w{i}-{v}"),
                "page_view",
                &format!("p{i}"),
                &format!("cat{}", i % 2),
                T - H + v as i64,
            ));
        }
    }
    let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
    let mut lists = Vec::new();
    for (name, store) in stores().await {
        store.apply(&plans, T).await.expect("applies");
        let l = store.popular(T, 1000, 200).await.expect("popular");
        assert_eq!(l.global.len(), 1000, "{name}: the global list is full");
        for c in ["cat0", "cat1"] {
            assert_eq!(l.by_category[c].len(), 200, "{name}: {c} is full");
        }
        lists.push(l);
    }
    assert_eq!(lists[0], lists[1], "memory and redis keep the same lists");
}
