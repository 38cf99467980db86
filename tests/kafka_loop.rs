//! The core loop through a real Kafka-protocol broker (Tansu) into a real
//! Redis: produced events change features and recommendations, duplicates
//! change nothing, poison goes to the DLQ while the consumer goes on, and a
//! consumer that dies after the Redis write but before the commit neither
//! loses nor double-counts, and an event Redis refuses goes to the DLQ once
//! while the rest of its batch is applied and committed. Every "none" is
//! checked against a positive control (a marker after it on the same
//! partition). Redis and broker outages, crashes and SIGTERM are in
//! `tests/faults.rs`.

mod common;
use common::*;
use nextbest::config::KafkaConfig;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::{FeatureStore, ReadQuery};
use nextbest::features::FeatureSet;
use nextbest::ingest::consumer::BatchOutcome;
use nextbest::ingest::consumer::EventConsumer;
use nextbest::ingest::kafka::ensure_topics;
use nextbest::ingest::producer::EventProducer;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn kafka_cfg() -> KafkaConfig {
    KafkaConfig {
        brokers: Some(kafka_brokers()),
        group_id: unique("g"),
        session_timeout_ms: 6000,
        batch_linger_ms: 5,
        ..KafkaConfig::default()
    }
}

/// The group join on a fresh group can take a while on Tansu.
const JOIN: Duration = Duration::from_secs(90);

/// A Redis store of the shipped features under a fresh key prefix.
/// A consumer of `cfg`'s group on the test broker, applying to `store`.
fn new_consumer(
    cfg: &KafkaConfig,
    set: &Arc<FeatureSet>,
    store: &Arc<dyn FeatureStore>,
) -> EventConsumer {
    let brokers = kafka_brokers();
    EventConsumer::new(
        &brokers,
        cfg,
        set.clone(),
        store.clone(),
        EventProducer::new(&brokers, cfg).expect("producer"),
    )
    .expect("consumer")
}

async fn redis_store(set: &Arc<FeatureSet>, prefix: &str) -> Arc<dyn FeatureStore> {
    let settings = RedisSettings {
        url: redis_url(),
        key_prefix: prefix.to_string(),
        dedupe_window_ms: 7 * 24 * 3_600_000,
        ttl_seconds: 3600,
        timeout_ms: 2000,
        timer_shards: 16,
    };
    Arc::new(
        RedisStore::connect(settings, set.clone())
            .await
            .expect("redis"),
    )
}

/// A customer feature's value read straight from the store (-1 if unset).
async fn stored_feature(set: &FeatureSet, store: &dyn FeatureStore, c: &str, name: &str) -> f64 {
    let f = set.stored(name).expect("feature");
    let r = store
        .read(&ReadQuery {
            customer_id: c,
            session_id: None,
            item_ids: &[],
        })
        .await
        .expect("read");
    nextbest::features::aggregate::numeric_value(f, &r.customer, now_ms()).unwrap_or(-1.0)
}

/// Every message on events.dlq up to its current end: the payload and the
/// headers (`error`, `source_*`, `consumer_group`, `truncated_from`).
async fn dead_letter_records() -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dlq consumer");
    let meta = dlq
        .fetch_metadata(Some("events.dlq"), Duration::from_secs(10))
        .expect("dlq metadata");
    let mut ends = std::collections::BTreeMap::new();
    for t in meta.topics() {
        for p in t.partitions() {
            let (_, high) = dlq
                .fetch_watermarks("events.dlq", p.id(), Duration::from_secs(10))
                .expect("dlq watermarks");
            if high > 0 {
                ends.insert(p.id(), high);
            }
        }
    }
    dlq.subscribe(&["events.dlq"]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + JOIN;
    while !ends.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out reading events.dlq up to {ends:?}"
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await else {
            continue;
        };
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|x| {
                        let v = x.value?;
                        Some((x.key.to_string(), String::from_utf8_lossy(v).to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((m.payload().unwrap_or_default().to_vec(), headers));
    }
    out
}

/// [`dead_letter_records`] as (payload text, reason).
async fn dead_letters() -> Vec<(String, String)> {
    dead_letter_records()
        .await
        .into_iter()
        .map(|(payload, mut h)| {
            (
                String::from_utf8_lossy(&payload).to_string(),
                h.remove("error").unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_events_reach_features_and_recommendations_and_poison_goes_to_dlq() {
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis_url());
    cfg.kafka = kafka_cfg();
    let app = TestApp::spawn(cfg).await;
    let p = producer();
    let c = unique("c");
    let t = now_ms();
    let cands = json!(["k1", "k2", "k3"]);
    let (_, before) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "candidates": cands, "k": 3}),
        )
        .await;

    let ev = serde_json::to_vec(&event(&format!("{c}-1"), "add_to_cart", &c, Some("k2"), t))
        .expect("json");
    produce(&p, "events.add_to_cart", &c, &ev).await;
    eventually(JOIN, "produced add_to_cart to show in features", || {
        let app = &app;
        let c = c.clone();
        async move { (app.customer_feature(&c, "carts_1h").await == 1.0).then_some(()) }
    })
    .await;
    let (_, after) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "candidates": cands, "k": 3}),
        )
        .await;
    assert_eq!(after["fallback"], false);
    assert_eq!(
        after["items"][0]["item_id"], "k2",
        "before {before}, after {after}"
    );

    // the same event again (a redelivery), then poison and an invalid
    // click, then on each of those partitions (same topic, same key) a good
    // marker event after them: once a marker is applied, everything before
    // it on its partition has been consumed
    produce(&p, "events.add_to_cart", &c, &ev).await;
    let poison_id = unique("poison");
    produce(
        &p,
        "events.click",
        &c,
        format!("{{not json {poison_id}").as_bytes(),
    )
    .await;
    let invalid = json!({"event_id": unique("inv"), "type": "click", "customer_id": c, "ts": t});
    produce(
        &p,
        "events.click",
        &c,
        &serde_json::to_vec(&invalid).expect("json"),
    )
    .await;
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    let click_marker = event(&format!("{c}-2"), "click", &c, Some("k3"), t + 1);
    produce(&p, "events.click", &c, json(click_marker)).await;
    let cart_marker = event(&format!("{c}-3"), "add_to_cart", &c, Some("k1"), t + 2);
    produce(&p, "events.add_to_cart", &c, json(cart_marker)).await;
    eventually(
        Duration::from_secs(30),
        "the markers after the duplicate and the poison to be applied",
        || {
            let app = &app;
            let c = c.clone();
            async move {
                let carted = app.customer_feature(&c, "cart_recent").await;
                let clicks = app.customer_feature(&c, "clicks_1h").await;
                (carted.as_array().is_some_and(|a| a.contains(&json!("k1"))) && clicks == 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        app.customer_feature(&c, "carts_1h").await,
        2.0,
        "the first add_to_cart and the marker count; the duplicate between them does not"
    );

    // both bad messages are in the DLQ with a reason
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dlq consumer");
    dlq.subscribe(&["events.dlq"]).expect("subscribe");
    let mut found_poison = None;
    let mut found_invalid = None;
    let deadline = tokio::time::Instant::now() + JOIN;
    while (found_poison.is_none() || found_invalid.is_none())
        && tokio::time::Instant::now() < deadline
    {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await else {
            continue;
        };
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
        let reason = m.headers().and_then(|h| {
            h.iter()
                .find(|x| x.key == "error")
                .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).to_string()))
        });
        if payload.contains(&poison_id) {
            found_poison = reason;
        } else if payload.contains(invalid["event_id"].as_str().unwrap_or("?")) {
            found_invalid = reason;
        }
    }
    let poison_reason = found_poison.expect("poison message in events.dlq with an error header");
    assert!(poison_reason.contains("invalid JSON"), "{poison_reason}");
    let invalid_reason = found_invalid.expect("invalid event in events.dlq with an error header");
    assert!(invalid_reason.contains("item_id"), "{invalid_reason}");

    // operators see the consumer: lag per partition (librdkafka statistics, every 5 s) and dead letters
    eventually(Duration::from_secs(30), "consumer lag series", || {
        let app = &app;
        async move {
            app.metrics()
                .await
                .contains("nextbest_consumer_lag{topic=\"events.add_to_cart\"")
                .then_some(())
        }
    })
    .await;
    let m = app.metrics().await;
    assert!(
        metric_sum(&m, "nextbest_events_dead_lettered_total", &[]) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "nextbest_events_consumed_total",
            &["type=\"add_to_cart\""]
        ) >= 2.0,
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_events_with_kafka_answers_after_the_broker_acked() {
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis_url());
    cfg.kafka = kafka_cfg();
    let app = TestApp::spawn(cfg).await;
    let c = unique("c");
    let (s, r) = app
        .post(
            "/v1/events",
            json!([
                event(&format!("{c}-a"), "page_view", &c, Some("x1"), now_ms()),
                event(&format!("{c}-b"), "click", &c, Some("x1"), now_ms())
            ]),
        )
        .await;
    assert_eq!((s, r), (202, json!({"accepted": 2})));
    eventually(JOIN, "events posted over HTTP to be consumed", || {
        let app = &app;
        let c = c.clone();
        async move { (app.customer_feature(&c, "clicks_1h").await == 1.0).then_some(()) }
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_after_redis_write_before_commit_neither_loses_nor_double_counts() {
    let set =
        Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features"));
    let settings = RedisSettings {
        url: redis_url(),
        key_prefix: unique("k"),
        dedupe_window_ms: 7 * 24 * 3_600_000,
        ttl_seconds: 3600,
        timeout_ms: 2000,
        timer_shards: 16,
    };
    let store: Arc<dyn FeatureStore> = Arc::new(
        RedisStore::connect(settings, set.clone())
            .await
            .expect("redis"),
    );
    let cfg = kafka_cfg();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &cfg).await.expect("topics");
    let p = producer();
    let c = unique("c");
    let t = now_ms();
    let n: i64 = 5;
    for i in 0..n {
        let e = serde_json::to_vec(&event(
            &format!("{c}-{i}"),
            "add_to_cart",
            &c,
            Some(&format!("z{i}")),
            t + i,
        ))
        .expect("json");
        produce(&p, "events.add_to_cart", &c, &e).await;
    }
    let feature = set.stored("customer.carts_1h").expect("feature").clone();
    let carts = |store: Arc<dyn FeatureStore>, c: String| {
        let f = feature.clone();
        async move {
            let r = store
                .read(&ReadQuery {
                    customer_id: &c,
                    session_id: None,
                    item_ids: &[],
                })
                .await
                .expect("read");
            nextbest::features::aggregate::numeric_value(&f, &r.customer, now_ms()).unwrap_or(-1.0)
        }
    };

    // never asked to stop
    let (_keep_running, running) = tokio::sync::watch::channel(false);

    // first consumer: reads and applies our events, then "dies" without committing
    let first = new_consumer(&cfg, &set, &store);
    let mut applied_first = 0;
    let deadline = tokio::time::Instant::now() + JOIN;
    while applied_first < n && tokio::time::Instant::now() < deadline {
        let batch = first
            .next_batch(Duration::from_secs(2))
            .await
            .expect("batch");
        let ours = batch
            .messages
            .iter()
            .filter(|m| m.key() == Some(c.as_bytes()))
            .count();
        first.process(&batch, &running).await.expect("applied");
        applied_first += ours as i64;
    }
    assert_eq!(applied_first, n, "first consumer saw all events");
    assert_eq!(carts(store.clone(), c.clone()).await, n as f64);
    drop(first); // no commit

    // second consumer in the same group: gets them again, applies nothing new, commits
    let second = new_consumer(&cfg, &set, &store);
    let mut redelivered = 0;
    let mut duplicates = 0;
    let deadline = tokio::time::Instant::now() + JOIN;
    while redelivered < n && tokio::time::Instant::now() < deadline {
        let batch = second
            .next_batch(Duration::from_secs(2))
            .await
            .expect("batch");
        redelivered += batch
            .messages
            .iter()
            .filter(|m| m.key() == Some(c.as_bytes()))
            .count() as i64;
        let out = second.process(&batch, &running).await.expect("applied");
        duplicates += out.duplicates;
        second.commit(&batch, CommitMode::Sync).expect("commit");
    }
    assert_eq!(redelivered, n, "uncommitted events are redelivered");
    assert!(
        duplicates >= n as usize,
        "redelivered events are recognised as duplicates"
    );
    assert_eq!(
        carts(store.clone(), c.clone()).await,
        n as f64,
        "no double count"
    );
    drop(second);

    // a third consumer after the commit sees none of them again; it has
    // joined and read past where they were once it gets an event produced
    // after them on the same partition (same topic, same key)
    let third = new_consumer(&cfg, &set, &store);
    let fresh_id = format!("{c}-fresh");
    let fresh =
        serde_json::to_vec(&event(&fresh_id, "add_to_cart", &c, Some("z9"), t + n)).expect("json");
    produce(&p, "events.add_to_cart", &c, &fresh).await;
    let mut again = 0;
    let mut got_fresh = false;
    let deadline = tokio::time::Instant::now() + JOIN;
    while !got_fresh && tokio::time::Instant::now() < deadline {
        let batch = third
            .next_batch(Duration::from_secs(1))
            .await
            .expect("batch");
        for m in batch
            .messages
            .iter()
            .filter(|m| m.key() == Some(c.as_bytes()))
        {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
            if payload.contains(&fresh_id) {
                got_fresh = true;
            } else {
                again += 1;
            }
        }
    }
    assert!(
        got_fresh,
        "the third consumer got the event produced after the commit (it joined and read)"
    );
    assert_eq!(again, 0, "committed events are not redelivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_refuses_is_dead_lettered_once_and_the_rest_applied_and_committed() {
    let set =
        Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features"));
    let prefix = unique("k");
    let store = redis_store(&set, &prefix).await;
    let cfg = kafka_cfg();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &cfg).await.expect("topics");
    // the bad customer's feature hash holds a string: its update script
    // answers WRONGTYPE before writing anything or recording the event id
    // (it checks every key's type first), for its events only
    let bad = unique("bad");
    let mut conn = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:{{c:{bad}}}"))
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("SET");

    let p = producer();
    let t = now_ms();
    let (good1, good2, later) = (unique("g1"), unique("g2"), unique("g3"));
    let bad_id = format!("{bad}-0");
    for (c, id) in [
        (&good1, format!("{good1}-0")),
        (&bad, bad_id.clone()),
        (&good2, format!("{good2}-0")),
    ] {
        let e = serde_json::to_vec(&event(&id, "page_view", c, Some("r1"), t)).expect("json");
        produce(&p, "events.page_view", c, &e).await;
    }
    // and an event dated ten years ahead (a device with a wrong clock)
    let (ahead, ahead_id) = (unique("ahead"), unique("ahead-e"));
    let far = t + 10 * 365 * 86_400_000;
    let e = serde_json::to_vec(&event(&ahead_id, "page_view", &ahead, None, far)).expect("json");
    produce(&p, "events.page_view", &ahead, &e).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let outcomes: Arc<Mutex<Vec<BatchOutcome>>> = Arc::default();
    let consumer = new_consumer(&cfg, &set, &store);
    let seen = outcomes.clone();
    let last = later.clone();
    // stops the consumer as soon as the batch with the later event is
    // applied: its commit is the one made on the way out
    let running = tokio::spawn(consumer.run(stop, move |o| {
        seen.lock().expect("outcomes").push(o.clone());
        if o.changed_customers.contains(&last) {
            let _ = stop_tx.send(true);
        }
    }));
    for c in [&good1, &good2] {
        eventually(
            JOIN,
            "the good events beside the refused one to be applied",
            || {
                let (set, store) = (&set, store.as_ref());
                async move {
                    (stored_feature(set, store, c, "customer.views_1h").await == 1.0).then_some(())
                }
            },
        )
        .await;
    }
    // the consumer goes on: an event produced after them is applied
    let e = serde_json::to_vec(&event(&format!("{later}-0"), "page_view", &later, None, t))
        .expect("json");
    produce(&p, "events.page_view", &later, &e).await;
    eventually(
        Duration::from_secs(30),
        "an event after the refused one to be applied",
        || {
            let (set, store) = (&set, store.as_ref());
            let later = &later;
            async move {
                (stored_feature(set, store, later, "customer.views_1h").await == 1.0).then_some(())
            }
        },
    )
    .await;
    let refused: usize = outcomes
        .lock()
        .expect("outcomes")
        .iter()
        .map(|o| o.refused)
        .sum();
    assert_eq!(refused, 1, "only the bad customer's event was refused");

    // the stop right after the last batch commits what was applied
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the consumer stops within 30 s")
        .expect("the consumer task ends cleanly");
    // a new consumer in the same group gets the events produced now, one
    // per key of ours (so it joined and read each of those partitions past
    // our events), and none of the applied ones again
    let next = new_consumer(&cfg, &set, &store);
    let ours = [&good1, &bad, &good2, &later];
    let fresh = unique("fresh");
    for c in ours {
        let id = format!("{fresh}-{c}");
        let e = serde_json::to_vec(&event(&id, "page_view", c, None, t + 1)).expect("json");
        produce(&p, "events.page_view", c, &e).await;
    }
    let (mut fresh_seen, mut again) = (0, 0);
    let deadline = tokio::time::Instant::now() + JOIN;
    while fresh_seen < ours.len() && tokio::time::Instant::now() < deadline {
        let batch = next
            .next_batch(Duration::from_secs(1))
            .await
            .expect("batch");
        for m in &batch.messages {
            if !ours.iter().any(|c| m.key() == Some(c.as_bytes())) {
                continue;
            }
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
            if payload.contains(&fresh) {
                fresh_seen += 1;
            } else {
                again += 1;
            }
        }
    }
    let got_fresh = fresh_seen == ours.len();
    assert!(
        got_fresh,
        "the new consumer got the {} events produced after the stop, {fresh_seen} seen",
        ours.len()
    );
    assert_eq!(again, 0, "the stopped consumer's batches were committed");
    drop(next);

    // the refused event is on events.dlq once, with the store's error
    let letters: Vec<(String, String)> = dead_letters()
        .await
        .into_iter()
        .filter(|(payload, _)| payload.contains(&bad_id))
        .collect();
    assert_eq!(letters.len(), 1, "dead-lettered exactly once: {letters:?}");
    let reason = &letters[0].1;
    assert!(
        reason.contains("refused") && reason.contains("WRONGTYPE"),
        "the reason names the store's error: {reason}"
    );
    let letters: Vec<(String, String)> = dead_letters()
        .await
        .into_iter()
        .filter(|(payload, _)| payload.contains(&ahead_id))
        .collect();
    // (every consumer group of the tests running beside this one refuses it
    // too, so it is on events.dlq once per group, not once)
    assert!(!letters.is_empty(), "the future event is dead-lettered");
    assert!(
        letters[0].1.contains("ahead of the server's clock"),
        "{}",
        letters[0].1
    );
    assert_eq!(
        stored_feature(&set, store.as_ref(), &ahead, "customer.views_1h").await,
        0.0,
        "and not applied"
    );
}

/// Issue 15 item 9: malformed messages (truncated JSON, binary, the wrong
/// schema, 10 MB) each go to events.dlq once from this consumer's group,
/// the big one cut to 512 KiB with its size in a header, and the consumer
/// goes on to apply the event after them.
#[tokio::test]
async fn malformed_messages_are_dead_lettered_once_and_the_consumer_goes_on() {
    let set =
        Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features"));
    let store = redis_store(&set, &unique("k")).await;
    let cfg = kafka_cfg();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &cfg).await.expect("topics");
    let big_producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("message.max.bytes", "16000000")
        .create()
        .expect("producer for large messages");
    let tag = unique("mal");
    let c = unique("mc");
    let mut binary = tag.as_bytes().to_vec();
    binary.extend((0..=255u8).rev().cycle().take(3000));
    let mut big = format!("{{\"marker\":\"{tag}-big\",\"pad\":\"");
    big.push_str(&"x".repeat(10 * 1024 * 1024));
    big.push_str("\"}");
    let payloads: Vec<Vec<u8>> = vec![
        format!("{{\"event_id\":\"{tag}-t\",\"type\":\"page_v").into_bytes(),
        binary,
        serde_json::to_vec(&json!({"marker": tag, "foo": 1})).expect("json"),
        big.into_bytes(),
    ];
    for p in &payloads {
        produce(&big_producer, "events.page_view", &c, p).await;
    }
    let good = serde_json::to_vec(&event(
        &format!("{tag}-good"),
        "page_view",
        &c,
        None,
        now_ms(),
    ))
    .expect("json");
    produce(&big_producer, "events.page_view", &c, &good).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let consumer = new_consumer(&cfg, &set, &store);
    let who = c.clone();
    let running = tokio::spawn(consumer.run(stop, move |o| {
        if o.changed_customers.contains(&who) {
            let _ = stop_tx.send(true);
        }
    }));
    eventually(
        JOIN,
        "the event after the malformed ones to be applied",
        || {
            let (set, store, c) = (&set, store.as_ref(), &c);
            async move {
                (stored_feature(set, store, c, "customer.views_1h").await == 1.0).then_some(())
            }
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the consumer stops within 30 s")
        .expect("the consumer task ends cleanly");

    let ours: Vec<_> = dead_letter_records()
        .await
        .into_iter()
        .filter(|(payload, h)| {
            h.get("consumer_group") == Some(&cfg.group_id)
                && String::from_utf8_lossy(payload).contains(&tag)
        })
        .collect();
    assert_eq!(ours.len(), payloads.len(), "each malformed message once");
    for (sent, (got, h)) in payloads.iter().zip(&ours) {
        assert!(h.get("error").is_some_and(|e| !e.is_empty()), "{h:?}");
        if sent.len() > 512 * 1024 {
            assert_eq!(got.len(), 512 * 1024, "cut to 512 KiB");
            assert_eq!(h.get("truncated_from"), Some(&sent.len().to_string()));
        } else {
            assert_eq!(got, sent, "the original bytes");
        }
    }
}

/// `clock = "event"` through Kafka: a recorded history produced in time
/// order moves the consumer's clock, and its windows are those it had live.
/// (Its own broker: the shared one holds other tests' events, dated now,
/// which would move this clock to today.)
#[tokio::test]
async fn on_an_event_clock_the_consumer_replays_history_with_its_windows() {
    let tansu = TansuProc::start();
    let mut cfg = base_config();
    cfg.clock = nextbest::clock::ClockMode::Event;
    cfg.store.redis_url = Some(redis_url());
    cfg.kafka = KafkaConfig {
        brokers: Some(tansu.brokers()),
        ..kafka_cfg()
    };
    let app = TestApp::spawn(cfg).await;
    let p = producer_for(&tansu.brokers());
    let c = unique("hist");
    let t0: i64 = 1_600_000_000_000;
    let view = |n: u32, ts: i64| {
        serde_json::to_vec(&event(&format!("{c}-{n}"), "page_view", &c, Some("p1"), ts))
            .expect("json")
    };
    produce(&p, "events.page_view", &c, view(1, t0)).await;
    produce(&p, "events.page_view", &c, view(2, t0 + 60_000)).await;
    eventually(JOIN, "two 2020 views counted in the hour", || {
        let (app, c) = (&app, c.clone());
        async move { (app.customer_feature(&c, "views_1h").await == 2.0).then_some(()) }
    })
    .await;
    assert_eq!(app.state.clock.now_ms(), t0 + 60_000);
    produce(&p, "events.page_view", &c, view(3, t0 + 131 * 60_000)).await;
    eventually(Duration::from_secs(30), "the clock two hours on", || {
        let app = &app;
        async move { (app.state.clock.now_ms() == t0 + 131 * 60_000).then_some(()) }
    })
    .await;
    assert_eq!(
        app.customer_feature(&c, "views_1h").await,
        1.0,
        "the first two are out of the hour two hours on"
    );
    app.stop().await;
}
