//! The Redis store against a real redis-server: same state as the memory
//! store for the same (shuffled, duplicated) history. (Redis killed or
//! paused under a running server: `tests/faults.rs`.)

mod common;
use common::*;
use nextbest::event::{Event, EventType};
use nextbest::features::aggregate::Update;
use nextbest::features::aggregate::{plan_event, EntityState};
use nextbest::features::store::memory::MemoryStore;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::{EventIds, FeatureStore, Group, GroupWrite, ReadQuery};
use nextbest::features::FeatureSet;
use serde_json::json;
use std::sync::Arc;

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
        assert_eq!(w.lo, v.lo, "{what}: {k} lo");
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
    redis_store_window(url, set, 30 * 24 * 3_600_000).await
}

/// The tests' settings: keys under `prefix`, a TTL of an hour.
fn settings(url: &str, prefix: &str, window_ms: i64) -> RedisSettings {
    RedisSettings {
        url: url.into(),
        key_prefix: prefix.into(),
        dedupe_window_ms: window_ms,
        ttl_seconds: 3600,
        timeout_ms: 2000,
        timer_shards: 16,
    }
}

async fn redis_store_window(url: &str, set: Arc<FeatureSet>, window_ms: i64) -> RedisStore {
    let settings = settings(url, &unique("p"), window_ms);
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
        // memory in one go; redis in uneven batches; both at one "now"
        let now = now_ms();
        let m = mem.apply(&plans, now).await.expect("memory applies");
        let mut dups = 0;
        for chunk in plans.chunks(37) {
            dups += red
                .apply(chunk, now)
                .await
                .expect("redis applies")
                .duplicates;
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

fn page_view(id: &str, customer: &str, session: &str, item: &str, ts: i64) -> Event {
    Event::from_value(json!({
        "event_id": id, "type": "page_view", "customer_id": customer, "session_id": session,
        "item_id": item, "ts": ts, "props": {"category": "shoes"}
    }))
    .expect("valid event")
}

/// Issue 15 item 1: an event dated ten years ahead (let into the store
/// directly, past the HTTP/Kafka boundary that refuses it) hides no later
/// real event from the windows and does not clear the dedupe memory; both
/// stores agree.
#[tokio::test]
async fn a_future_event_neither_freezes_windows_nor_clears_dedupe() {
    let set = set();
    let mem = MemoryStore::new(set.clone(), 3_600_000);
    let red = redis_store(&redis_url(), set.clone()).await;
    let now = now_ms();
    let c = unique("fut");
    let first = page_view("f0", &c, "s", "p1", now - 1_000);
    let future = page_view("f-future", &c, "s", "p2", now + 10 * 365 * 86_400_000);
    let second = page_view("f1", &c, "s", "p3", now);
    let q = ReadQuery {
        customer_id: &c,
        session_id: None,
        item_ids: &[],
    };
    let views = set.stored("customer.views_1h").expect("views_1h");
    for store in [&mem as &dyn FeatureStore, &red] {
        let what = store.describe();
        for e in [&first, &future, &second] {
            let out = store
                .apply(&[plan_event(&set, e)], now)
                .await
                .expect("applies");
            assert_eq!(out.duplicates, 0, "{what}: {} applied", e.event_id);
        }
        let st = store.read(&q).await.expect("read").customer;
        let v = nextbest::features::aggregate::feature_value(views, &st, now);
        assert_eq!(v.as_f64(), Some(2.0), "{what}: both real views count");
        // the first event is still remembered: its redelivery changes nothing
        let again = store
            .apply(&[plan_event(&set, &first)], now + 1)
            .await
            .expect("applies");
        assert_eq!((again.applied, again.duplicates), (0, 1), "{what}");
    }
    let a = mem.read(&q).await.expect("memory read");
    let b = red.read(&q).await.expect("redis read");
    assert_close(&a.customer, &b.customer, "memory vs redis");
}

/// Issue 15 item 3: a write that fails (a key of the customer holds the
/// wrong type) leaves nothing written and the event id unrecorded, so the
/// retry, once the key is fixed, applies the event exactly once.
#[tokio::test]
async fn a_failing_write_leaves_nothing_and_its_retry_applies_it_once() {
    let set = set();
    let prefix = unique("aon");
    let settings = settings(&redis_url(), &prefix, 3_600_000);
    let red = RedisStore::connect(settings, set.clone())
        .await
        .expect("redis connects");
    let mut conn = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let c = unique("c");
    let base = format!("{prefix}:{{c:{c}}}");
    let bad = format!("{base}:r:recent_items");
    let _: () = redis::cmd("SET")
        .arg(&bad)
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("set");
    let now = now_ms();
    let e = page_view("a1", &c, "s", "p1", now);
    let err = red
        .apply(&[plan_event(&set, &e)], now)
        .await
        .expect_err("the wrong-type key fails the write");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&base)
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    assert!(fields.is_empty(), "nothing written: {fields:?}");
    let seen: i64 = redis::cmd("ZCARD")
        .arg(format!("{base}:seen"))
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(seen, 0, "the id is not recorded");

    let _: () = redis::cmd("DEL")
        .arg(&bad)
        .query_async(&mut conn)
        .await
        .expect("del");
    let out = red
        .apply(&[plan_event(&set, &e)], now)
        .await
        .expect("the retry applies");
    // the item group (another script call of the same pipeline) was
    // written by the first attempt: now only the customer group is
    assert_eq!((out.applied, out.duplicates), (1, 0), "the customer group");
    let items = ["p1".to_string()];
    let q = ReadQuery {
        customer_id: &c,
        session_id: None,
        item_ids: &items,
    };
    let r = red.read(&q).await.expect("read");
    let value = |name: &str, st: &nextbest::features::aggregate::EntityState| {
        let f = set.stored(name).expect("defined");
        nextbest::features::aggregate::feature_value(f, st, now).as_f64()
    };
    assert_eq!(value("customer.views_1h", &r.customer), Some(1.0), "once");
    assert_eq!(value("item.views_1h", &r.items[0]), Some(1.0), "once");
    assert_eq!(r.customer.recent["recent_items"][0].0, "p1");
}

/// Issue 15 item 3: a session id holding `:` can't name another session's
/// keys (`a:r:items` is not session `a`'s recent list `items`).
#[tokio::test]
async fn session_ids_with_colons_keep_their_own_keys() {
    let set = Arc::new(
        FeatureSet::parse(
            r#"
[[feature]]
name = "items"
entity = "session"
events = ["page_view"]
aggregation = "distinct_recent"
value = "item_id"
cap = 5
[[feature]]
name = "views"
entity = "session"
events = ["page_view"]
aggregation = "count"
"#,
        )
        .expect("definitions parse"),
    );
    let red = redis_store(&redis_url(), set.clone()).await;
    let c = unique("colon");
    let now = now_ms();
    let plans = [
        plan_event(&set, &page_view("k1", &c, "a", "p1", now)),
        plan_event(&set, &page_view("k2", &c, "a:r:items", "p2", now)),
    ];
    let out = red.apply(&plans, now).await.expect("both apply");
    assert_eq!(out.applied, 4);
    for (sid, items, views) in [("a", ["p1"], 1.0), ("a:r:items", ["p2"], 1.0)] {
        let q = ReadQuery {
            customer_id: &c,
            session_id: Some(sid),
            item_ids: &[],
        };
        let r = red.read(&q).await.expect("read");
        let got: Vec<&str> = r.session.recent["items"]
            .iter()
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(got, items, "session {sid}");
        assert_eq!(r.session.nums.get("views"), Some(&views), "session {sid}");
    }
}

/// Issue 15 item 4: with a dedupe window shorter than the history, the two
/// stores forget the same ids: the same redeliveries count again in both
/// (and some do, the positive control that the window was reached).
#[tokio::test]
async fn redis_and_memory_forget_the_same_event_ids() {
    let set = set();
    let window = 12 * 3_600_000; // the history spans 3 days
    let events = history(4242, 600);
    let plans: Vec<_> = events.iter().map(|e| plan_event(&set, e)).collect();
    let mem = MemoryStore::new(set.clone(), window);
    let red = redis_store_window(&redis_url(), set.clone(), window).await;
    let now = now_ms();
    let mut mem_dups = Vec::new();
    let mut red_dups = Vec::new();
    for chunk in plans.chunks(29) {
        mem_dups.extend(mem.apply(chunk, now).await.expect("memory").duplicate);
        red_dups.extend(red.apply(chunk, now).await.expect("redis").duplicate);
    }
    assert_eq!(mem_dups, red_dups, "the same events are duplicates in both");
    let mut first = std::collections::HashSet::new();
    let redelivered = events.iter().filter(|e| !first.insert(&e.event_id)).count();
    let counted = red_dups.iter().filter(|d| **d).count();
    assert!(
        redelivered > 0 && counted > 0,
        "redeliveries happened and were caught"
    );
    assert!(
        counted < redelivered,
        "some redeliveries fell outside the window: {counted} of {redelivered} caught"
    );
}

/// Issue 15 item 4: `{p}:items` does not keep the ids of items whose keys
/// are gone (expired after `ttl_secs`, or evicted by Redis): the listing
/// sweeps them out of the set, and keeps the items that still have keys.
#[tokio::test]
async fn the_item_index_forgets_items_whose_keys_are_gone() {
    let set = set();
    let prefix = unique("items");
    let settings = settings(&redis_url(), &prefix, 30 * 24 * 3_600_000);
    let red = RedisStore::connect(settings, set.clone())
        .await
        .expect("redis connects");
    let c = unique("c");
    let now = now_ms();
    let plans: Vec<_> = ["p1", "p2", "p3"]
        .iter()
        .enumerate()
        .map(|(k, item)| plan_event(&set, &page_view(&format!("i{k}"), &c, "s", item, now)))
        .collect();
    red.apply(&plans, now).await.expect("apply");
    let mut conn = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    // p2's keys go, as its TTL would take them
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:{{i:p2}}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(!keys.is_empty(), "p2 was written");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("del");
    let members = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let index = format!("{prefix}:items");
        async move {
            let mut m: Vec<String> = redis::cmd("SMEMBERS")
                .arg(index)
                .query_async(&mut conn)
                .await
                .expect("smembers");
            m.sort();
            m
        }
    };
    assert_eq!(members(&mut conn).await, ["p1", "p2", "p3"], "before");
    let mut ids = red.item_ids().await.expect("item ids");
    ids.sort();
    assert_eq!(ids, ["p1", "p3"]);
    assert_eq!(members(&mut conn).await, ["p1", "p3"], "swept");
}

/// The same timer story on Redis and on the memory store: written with
/// the event (a redelivery does not restart it), claimed once per lease by
/// any number of claimers, deferred to the record's deadline, finished,
/// and ended by a later purchase in the purchase's own write.
#[tokio::test]
async fn timers_behave_the_same_on_redis_and_in_memory() {
    use nextbest::features::store::timers::{TimerOp, TimerRecord};
    let set = set();
    let red = redis_store(&redis_url(), set.clone()).await;
    let mem = MemoryStore::new(set.clone(), 30 * 24 * 3_600_000);
    let t0 = now_ms();
    let plan = |id: &str, customer: &str, ts: i64, op: TimerOp| {
        let e = Event::from_value(json!({
            "event_id": id, "type": "add_to_cart", "customer_id": customer, "ts": ts,
            "item_id": "p1", "session_id": "s1"
        }))
        .expect("valid event");
        let mut p = plan_event(&set, &e);
        p.timers = vec![op];
        p
    };
    let start = |d| TimerOp::Start {
        trigger: "cart".into(),
        deadline: d,
    };
    for store in [&red as &dyn FeatureStore, &mem] {
        let timers = store.timers().expect("keeps timers");
        let customers: Vec<String> = (0..40).map(|i| unique(&format!("c{i}"))).collect();
        let plans: Vec<_> = customers
            .iter()
            .map(|c| plan(&format!("{c}-1"), c, t0, start(t0 + 1_000)))
            .collect();
        store.apply(&plans, t0).await.expect("apply");
        store.apply(&plans, t0).await.expect("a redelivery");
        let first = &customers[0];
        assert_eq!(
            timers.record(first, "cart").await.expect("record"),
            Some(TimerRecord {
                episode: format!("{first}-1"),
                started: t0,
                deadline: t0 + 1_000
            }),
            "{}",
            store.describe()
        );
        assert_eq!(timers.pending().await.expect("pending"), 40);
        assert!(timers
            .claim_due(t0 + 999, 5_000, 100)
            .await
            .expect("claim")
            .is_empty());
        // four claimers at once: each timer goes to one of them
        let claims =
            futures::future::join_all((0..4).map(|_| timers.claim_due(t0 + 1_000, 5_000, 7))).await;
        let mut got: Vec<String> = claims
            .into_iter()
            .flat_map(|c| c.expect("claim"))
            .map(|c| c.customer_id)
            .collect();
        let more = timers
            .claim_due(t0 + 1_000, 5_000, 100)
            .await
            .expect("claim");
        got.extend(more.iter().map(|c| c.customer_id.clone()));
        got.sort();
        let mut want = customers.clone();
        want.sort();
        assert_eq!(
            got,
            want,
            "{}: every timer claimed exactly once",
            store.describe()
        );
        // a crashed claimer: after the lease the timers are claimed again
        let again = timers
            .claim_due(t0 + 6_000, 5_000, 100)
            .await
            .expect("claim");
        assert_eq!(again.len(), 40, "{}", store.describe());
        for c in &again {
            let rec = timers
                .record(&c.customer_id, "cart")
                .await
                .expect("record")
                .expect("pending");
            assert_eq!(
                timers
                    .finish(&c.customer_id, "cart", &rec.episode)
                    .await
                    .expect("finish"),
                None
            );
            timers.settle(c, None, t0 + 6_000).await.expect("settle");
        }
        assert_eq!(
            timers.pending().await.expect("pending"),
            0,
            "{}",
            store.describe()
        );
        // a new episode, and a purchase after it: ended in the purchase's write
        store
            .apply(
                &[plan(
                    &format!("{first}-2"),
                    first,
                    t0 + 10_000,
                    start(t0 + 11_000),
                )],
                t0,
            )
            .await
            .expect("apply");
        let cancel = TimerOp::Cancel {
            trigger: "cart".into(),
        };
        store
            .apply(
                &[plan(&format!("{first}-3"), first, t0 + 10_500, cancel)],
                t0,
            )
            .await
            .expect("apply");
        assert_eq!(timers.record(first, "cart").await.expect("record"), None);
        // an entry written again after its claim is not removed by the settle
        let c = timers
            .claim_due(t0 + 11_000, 5_000, 100)
            .await
            .expect("claim");
        assert_eq!(c.len(), 1);
        store
            .apply(
                &[plan(
                    &format!("{first}-4"),
                    first,
                    t0 + 12_000,
                    start(t0 + 13_000),
                )],
                t0,
            )
            .await
            .expect("apply");
        timers
            .settle(&c[0], None, t0 + 11_000)
            .await
            .expect("settle");
        assert_eq!(
            timers.pending().await.expect("pending"),
            1,
            "{}",
            store.describe()
        );
        let c = timers
            .claim_due(t0 + 11_000, 5_000, 100)
            .await
            .expect("claim");
        assert_eq!(
            c.len(),
            1,
            "{}: due at once, to be looked at again",
            store.describe()
        );
        // once-per-session markers
        assert!(timers
            .mark_once(first, "s1", "t", 60_000, t0)
            .await
            .expect("mark"));
        assert!(!timers
            .mark_once(first, "s1", "t", 60_000, t0)
            .await
            .expect("mark"));
        assert!(timers
            .mark_once(first, "s2", "t", 60_000, t0)
            .await
            .expect("mark"));
    }
}

/// An item's hash fields as its blob holds them (`{i:<item>}:b`, one msgpack
/// array of field, value, …), or `None` without a blob.
async fn blob_fields(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let b: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("get blob");
    let b = b?;
    let mut rest = b.as_slice();
    let n = rmp::decode::read_array_len(&mut rest).expect("blob is an array");
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n / 2 {
        let (f, r) = rmp::decode::read_str_from_slice(rest).expect("field");
        let (v, r) = rmp::decode::read_str_from_slice(r).expect("value");
        out.insert(f.to_string(), v.to_string());
        rest = r;
    }
    assert!(rest.is_empty(), "{key}: nothing after the pairs");
    Some(out)
}

/// Reads take an item's hash fields from its blob: every write of the hash
/// (events, static values) leaves the blob equal to it; a store written
/// before blobs (hashes, no blobs, no layout marker) reads its items empty
/// until a connect builds the blobs, keeping the hashes' expiry.
#[tokio::test]
async fn item_blobs_mirror_their_hashes_and_are_built_for_an_older_store() {
    let set = set();
    let prefix = unique("blobs");
    let settings = settings(&redis_url(), &prefix, 30 * 24 * 3_600_000);
    let red = RedisStore::connect(settings.clone(), set.clone())
        .await
        .expect("redis connects");
    let now = now_ms();
    let plans: Vec<_> = history(5, 300)
        .iter()
        .map(|e| plan_event(&set, e))
        .collect();
    red.apply(&plans, now).await.expect("apply");
    // a static value on one item and on an item with no events
    let brand = |item: &str, value: &str| GroupWrite {
        group: Group::Item(item.into()),
        updates: vec![Update::SetStatic {
            feature: "brand".into(),
            value: value.into(),
        }],
        events: EventIds::default(),
        sessions: Vec::new(),
    };
    let statics = vec![brand("p3", "acme"), brand("solo", "zed")];
    red.apply_groups(&statics, now).await.expect("static write");
    let mut conn = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let items: Vec<String> = (0..12)
        .map(|i| format!("p{i}"))
        .chain(["solo".to_string()])
        .collect();
    for id in &items {
        let base = format!("{prefix}:{{i:{id}}}");
        let hash: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&base)
            .query_async(&mut conn)
            .await
            .expect("hgetall");
        assert!(!hash.is_empty(), "{id} was written");
        let blob = blob_fields(&mut conn, &format!("{base}:b")).await;
        assert_eq!(blob.as_ref(), Some(&hash), "{id}: blob = hash");
    }
    assert_eq!(
        blob_fields(&mut conn, &format!("{prefix}:{{i:solo}}:b"))
            .await
            .expect("blob")["brand"],
        "zed"
    );
    let before = red.read_items(&items).await.expect("read");
    assert!(before.iter().all(|s| !s.is_empty()), "items read");

    // the store as an earlier version left it: no blobs, no marker
    let blobs: Vec<String> = items
        .iter()
        .map(|id| format!("{prefix}:{{i:{id}}}:b"))
        .collect();
    for k in blobs.iter().chain([&format!("{prefix}:layout")]) {
        let _: () = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
    let bare = red.read_items(&items).await.expect("read");
    assert!(
        bare.iter()
            .all(|s| s.nums.is_empty() && s.windows.is_empty() && s.lasts.is_empty()),
        "without blobs the hash fields are not read"
    );

    let again = RedisStore::connect(settings, set.clone())
        .await
        .expect("redis connects again");
    let after = again.read_items(&items).await.expect("read");
    for ((id, a), b) in items.iter().zip(&before).zip(&after) {
        assert_close(a, b, &format!("{id} after the blobs were built"));
    }
    for k in &blobs {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!(
            ttl > 0 && ttl <= 3_600_000,
            "{k}: expires with its hash ({ttl} ms)"
        );
    }
    let marker: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:layout"))
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(marker.as_deref(), Some("blobs"));
}
