//! Catalog and profile changes while serving: `PUT /v1/items/{id}` and
//! `PUT /v1/customers/{id}` (embedded, and on a real Redis with the item
//! cache on), and the topics `catalog.items` / `catalog.customers` through a
//! real Kafka-protocol broker (Tansu), bad messages to the DLQ; and across
//! two `nextbest serve` processes, an item set out of stock through one
//! leaves the other's next answer (its item cache told by the change feed).

mod common;
use common::*;
use nextbest::features::aggregate::EntityState;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The group join on a fresh group can take a while on Tansu.
const JOIN: Duration = Duration::from_secs(90);

fn item_path(id: &str) -> String {
    format!("/v1/items/{id}")
}

/// The item's cached state in this instance, if any.
fn cached(app: &TestApp, id: &str) -> Option<Arc<EntityState>> {
    let cache = app
        .state
        .decider
        .item_cache
        .as_ref()
        .expect("item cache on");
    cache.get_many(&[id.to_string()]).pop().flatten()
}

/// The stored text of a static field in a state.
fn stored(st: &EntityState, feature: &str) -> Option<String> {
    st.lasts.get(feature).map(|l| l.value.clone())
}

#[tokio::test]
async fn put_sets_fields_at_once_and_bad_bodies_name_the_field() {
    let app = TestApp::spawn(base_config()).await;
    let p = unique("p");
    let (s, r) = app
        .put(
            &item_path(&p),
            json!({"price": 59.9, "in_stock": 0, "brand": "acme"}).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["item_id"], p.as_str());
    assert_eq!(r["known"], true);
    assert_eq!(r["features"]["in_stock"], 0.0, "{r}");
    assert_eq!(r["features"]["list_price"], 59.9, "{r}");
    assert_eq!(r["features"]["brand"], "acme", "{r}");
    let (_, got) = app.get(&format!("/v1/features/item/{p}")).await;
    assert_eq!(got["features"], r["features"], "GET shows the PUT at once");

    // a partial update keeps what it does not name
    let (s, r) = app
        .put(
            &item_path(&p),
            format!(r#"{{"in_stock": true, "item_id": "{p}"}}"#),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["features"]["in_stock"], 1.0, "{r}");
    assert_eq!(r["features"]["brand"], "acme", "untouched field kept: {r}");

    let c = unique("c");
    let (s, r) = app
        .put(
            &format!("/v1/customers/{c}"),
            r#"{"segment": "vip", "lifetime_value": "1234.5"}"#,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["customer_id"], c.as_str());
    assert_eq!(app.customer_feature(&c, "segment").await, "vip");
    assert_eq!(app.customer_feature(&c, "lifetime_value").await, 1234.5);

    // bad bodies: 400 naming the field, nothing written
    let cases: [(String, &str, Option<&str>); 9] = [
        (
            item_path(&p),
            r#"{"colour": "red", "in_stock": 0}"#,
            Some("colour"),
        ),
        (
            item_path(&p),
            r#"{"in_stock": 0, "item_id": "other"}"#,
            Some("item_id"),
        ),
        (item_path(&p), r#"{"price": "cheap"}"#, Some("price")),
        (item_path(&p), r#"{"in_stock": [0]}"#, Some("in_stock")),
        (item_path("bad%7Bid"), r#"{"in_stock": 0}"#, Some("item_id")),
        (
            format!("/v1/customers/{c}"),
            r#"{"price": 1}"#,
            Some("price"),
        ),
        (item_path(&p), "{}", None),
        (item_path(&p), "[1]", None),
        (item_path(&p), "{not json", None),
    ];
    for (path, body, field) in cases {
        let (s, r) = app.put(&path, body).await;
        assert_eq!(s, 400, "{path} {body} → {r}");
        assert!(r["error"].is_string(), "{r}");
        if let Some(f) = field {
            assert_eq!(r["field"], f, "{path} {body} → {r}");
            assert!(
                r["error"].as_str().is_some_and(|e| e.contains(f)),
                "{path} {body} → {r}"
            );
        }
    }
    let (_, after) = app.get(&format!("/v1/features/item/{p}")).await;
    assert_eq!(after["features"]["in_stock"], 1.0, "bad PUTs wrote nothing");
    assert_eq!(after["features"]["list_price"], 59.9);

    let m = app.metrics().await;
    let updates = |entity: &str| {
        metric_sum(
            &m,
            "nextbest_catalog_updates_total",
            &[&format!("entity=\"{entity}\""), "via=\"http\""],
        )
    };
    assert!(updates("item") >= 2.0 && updates("customer") >= 1.0, "{m}");
    assert!(
        metric_sum(&m, "nextbest_catalog_rejected_total", &["via=\"http\""]) >= 9.0,
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_redis_drops_the_item_from_this_instances_cache() {
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis_url());
    cfg.recommend.item_cache_ms = 60_000;
    let app = TestApp::spawn(cfg).await;
    let p = unique("p");
    let (s, r) = app.put(&item_path(&p), r#"{"in_stock": 1}"#).await;
    assert_eq!(s, 200, "{r}");
    let recommend = json!({"customer_id": unique("c"), "candidates": [p], "k": 1});
    let (s, r) = app.post("/v1/recommend", recommend.clone()).await;
    assert_eq!(s, 200, "{r}");
    let before = cached(&app, &p).expect("a recommend caches the item");
    assert_eq!(stored(&before, "in_stock").as_deref(), Some("1"));

    let (s, r) = app.put(&item_path(&p), r#"{"in_stock": 0}"#).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["features"]["in_stock"], 0.0, "{r}");
    assert!(
        cached(&app, &p).is_none(),
        "the write dropped the cached item"
    );
    app.post("/v1/recommend", recommend).await;
    let after = cached(&app, &p).expect("cached again");
    assert_eq!(
        stored(&after, "in_stock").as_deref(),
        Some("0"),
        "the next request read the new state"
    );
    app.stop().await;
}

async fn item_feature(app: &TestApp, id: &str, name: &str) -> Value {
    app.get(&format!("/v1/features/item/{id}")).await.1["features"][name].clone()
}

/// A dead letter: its payload and headers.
type DeadLetter = (String, Vec<(String, String)>);

/// The first message on the DLQ keyed by each of `keys` (one reader).
async fn dead_letters(keys: &[&str]) -> Vec<DeadLetter> {
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dlq consumer");
    dlq.subscribe(&["events.dlq"]).expect("subscribe");
    let mut found: Vec<Option<DeadLetter>> = vec![None; keys.len()];
    let deadline = tokio::time::Instant::now() + JOIN;
    while tokio::time::Instant::now() < deadline {
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await else {
            continue;
        };
        let Some(slot) = keys
            .iter()
            .position(|k| m.key() == Some(k.as_bytes()))
            .filter(|&i| found[i].is_none())
        else {
            continue;
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        let v = x.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (x.key.to_string(), v.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
        found[slot] = Some((payload, headers));
    }
    panic!("not every dead letter of {keys:?} within {JOIN:?}: {found:?}");
}

/// A dead letter's header `key` (empty if absent).
fn header(letter: &DeadLetter, key: &str) -> String {
    letter
        .1
        .iter()
        .find(|(h, _)| h == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_topics_change_features_and_bad_messages_go_to_the_dlq() {
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis_url());
    // longer than any group join: only the consumer can drop the entry
    cfg.recommend.item_cache_ms = 600_000;
    cfg.kafka.brokers = Some(kafka_brokers());
    cfg.kafka.batch_linger_ms = 5;
    let app = TestApp::spawn(cfg).await;
    let p = unique("p");
    // the item in this instance's cache before the catalog changes it
    let recommend = json!({"customer_id": unique("c"), "candidates": [p], "k": 1});
    let (s, r) = app.post("/v1/recommend", recommend.clone()).await;
    assert_eq!(s, 200, "{r}");
    assert!(cached(&app, &p).is_some(), "the item is cached");

    // a bad message, then a good one for the same item (same partition)
    let kafka = producer();
    let bad = r#"{"in_stock": "maybe"}"#;
    produce(&kafka, "catalog.items", &p, bad).await;
    produce(
        &kafka,
        "catalog.items",
        &p,
        r#"{"in_stock": 0, "brand": "acme"}"#,
    )
    .await;
    // the same for a customer profile on catalog.customers
    let bad_customer = unique("c");
    let bad_profile = r#"{"lifetime_value": "lots"}"#;
    produce(&kafka, "catalog.customers", &bad_customer, bad_profile).await;
    produce(
        &kafka,
        "catalog.customers",
        &bad_customer,
        r#"{"segment": "gold"}"#,
    )
    .await;
    eventually(JOIN, "the good catalog message to be applied", || {
        let app = &app;
        let p = p.clone();
        async move { (item_feature(app, &p, "in_stock").await == 0.0).then_some(()) }
    })
    .await;
    assert_eq!(item_feature(&app, &p, "brand").await, "acme");
    eventually(
        Duration::from_secs(10),
        "the consumer to drop the item from the cache",
        || {
            let app = &app;
            let p = p.clone();
            async move { cached(app, &p).is_none().then_some(()) }
        },
    )
    .await;
    app.post("/v1/recommend", recommend).await;
    let fresh = cached(&app, &p).expect("cached again");
    assert_eq!(stored(&fresh, "in_stock").as_deref(), Some("0"));

    eventually(
        Duration::from_secs(30),
        "the good profile message to be applied",
        || {
            let app = &app;
            let c = bad_customer.clone();
            async move { (app.customer_feature(&c, "segment").await == "gold").then_some(()) }
        },
    )
    .await;
    let ltv = app.customer_feature(&bad_customer, "lifetime_value").await;
    assert_eq!(
        ltv.as_f64().unwrap_or(0.0),
        0.0,
        "the bad profile message set nothing: {ltv}"
    );

    let letters = dead_letters(&[&p, &bad_customer]).await;
    for (letter, (payload, field, topic)) in letters.iter().zip([
        (bad, "in_stock", "catalog.items"),
        (bad_profile, "lifetime_value", "catalog.customers"),
    ]) {
        assert_eq!(letter.0, payload, "the original bytes");
        assert!(header(letter, "error").contains(field), "{letter:?}");
        assert_eq!(header(letter, "source_topic"), topic, "{letter:?}");
    }

    // a PUT with Kafka configured goes through the topic: 202, then applied
    let c = unique("c");
    let (s, r) = app
        .put(&format!("/v1/customers/{c}"), r#"{"segment": "vip"}"#)
        .await;
    assert_eq!(
        (s, r),
        (202, json!({"accepted": 1, "topic": "catalog.customers"}))
    );
    eventually(
        Duration::from_secs(30),
        "the PUT to reach the profile",
        || {
            let app = &app;
            let c = c.clone();
            async move { (app.customer_feature(&c, "segment").await == "vip").then_some(()) }
        },
    )
    .await;
    let (s, r) = app.put(&item_path(&p), r#"{"in_stock": "x"}"#).await;
    assert_eq!((s, r["field"].clone()), (400, json!("in_stock")), "{r}");

    let m = app.metrics().await;
    assert!(
        metric_sum(&m, "nextbest_catalog_updates_total", &["via=\"kafka\""]) >= 2.0,
        "{m}"
    );
    for entity in ["item", "customer"] {
        let labels = ["via=\"kafka\"".to_string(), format!("entity=\"{entity}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert!(
            metric_sum(&m, "nextbest_catalog_rejected_total", &labels) >= 1.0,
            "{entity}: {m}"
        );
    }
    app.stop().await;
}

async fn recommend_on(server: &ServerProc, body: &Value) -> Vec<String> {
    let r = server.post("/v1/recommend", body).await;
    assert_eq!(r.status().as_u16(), 200);
    common::answer_ids(&r.json().await.expect("recommend JSON"))
}

/// Writes an item's catalog fields straight into the store under `prefix`,
/// as an apply would, but announcing nothing on the change feed.
async fn write_unannounced(prefix: &str, id: &str, body: &str) {
    let set = Arc::new(
        nextbest::features::FeatureSet::load(&repo().join("feature-store/features.toml"))
            .expect("features load"),
    );
    let cfg = nextbest::config::StoreConfig {
        redis_url: Some(redis_url()),
        key_prefix: prefix.to_string(),
        ..Default::default()
    };
    let store = nextbest::features::store::open(&cfg, set.clone())
        .await
        .expect("store opens");
    let write =
        nextbest::features::catalog::StaticColumns::of(&set, nextbest::features::Entity::Item)
            .parse_update(id, body.as_bytes())
            .expect("a valid update");
    nextbest::ingest::apply_catalog(store.as_ref(), &[write], nextbest::ingest::CatalogVia::Http)
        .await
        .expect("stored");
}

/// Two `nextbest serve` processes on one Redis and one broker: A consumes,
/// B only serves (`kafka.consume = false`), its item cache kept for 10
/// minutes (longer than any group join), so only the change feed can make
/// it read an item again within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_set_out_of_stock_through_one_instance_leaves_anothers_next_answer() {
    let (prefix, group) = (unique("t"), unique("g"));
    let spec = |consume: bool| {
        ServerSpec {
        redis_url: Some(redis_url()),
        brokers: Some(kafka_brokers()),
        config: format!(
            "[store]\nkey_prefix = \"{prefix}\"\n\
             [kafka]\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\nbatch_linger_ms = 5\nconsume = {consume}\n\
             [recommend]\nitem_cache_ms = 600000\npopularity_refresh_secs = 1\n\
             [model]\nwatch = false\n[rules]\nwatch = false\n"
        ),
        log_filter: None,
        env: Vec::new(),
    }
    };
    let a = ServerProc::start(spec(true)).await;
    let b = ServerProc::start(spec(false)).await;
    eventually(
        Duration::from_secs(20),
        "B subscribed to the change feed",
        || async {
            (metric_sum(&b.metrics().await, "nextbest_change_feed_subscribed", &[]) == 1.0)
                .then_some(())
        },
    )
    .await;

    let (x, y) = (unique("px"), unique("py"));
    for id in [&x, &y] {
        write_unannounced(&prefix, id, r#"{"in_stock": 1}"#).await;
    }
    let ask = json!({"customer_id": unique("c"), "candidates": [x, y], "k": 2});
    let first = recommend_on(&b, &ask).await;
    assert!(first.contains(&x) && first.contains(&y), "{first:?}");

    // the positive control: y out of stock in the store, unannounced, is
    // still in B's answer, served from B's cache
    write_unannounced(&prefix, &y, r#"{"in_stock": 0}"#).await;
    let (_, stored_y) = b.get(&format!("/v1/features/item/{y}")).await;
    assert_eq!(stored_y["features"]["in_stock"], 0.0, "{stored_y}");
    let cached = recommend_on(&b, &ask).await;
    assert!(
        cached.contains(&y),
        "B answers from its cache, not the store: {cached:?}"
    );

    // x out of stock through A: produced to catalog.items, applied by A
    let r = a
        .client
        .put(format!("{}{}", a.base, item_path(&x)))
        .body(r#"{"in_stock": 0}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 202);
    eventually(JOIN, "A's consumer to apply the write", || async {
        let (_, f) = b.get(&format!("/v1/features/item/{x}")).await;
        (f["features"]["in_stock"] == 0.0).then_some(())
    })
    .await;
    // the notice follows the store's ack: B drops x from its next answers
    let after = eventually(Duration::from_secs(10), "x to leave B's answer", || async {
        let got = recommend_on(&b, &ask).await;
        (!got.contains(&x)).then_some(got)
    })
    .await;
    assert!(
        after.contains(&y),
        "only the announced item was read again (B's cache still holds y): {after:?}"
    );

    let am = a.metrics().await;
    assert!(
        metric_sum(
            &am,
            "nextbest_change_feed_published_total",
            &["kind=\"items\""]
        ) >= 1.0,
        "{am}"
    );
    let bm = b.metrics().await;
    assert_eq!(
        metric_sum(&bm, "nextbest_catalog_updates_total", &[]),
        0.0,
        "B applied nothing itself: the drop came through Redis"
    );
}
