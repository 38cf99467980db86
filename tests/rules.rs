//! Business rules from outside: the shipped upsell example through Kafka
//! and Redis (and an item the catalog topic marks out of stock leaving the
//! answer), exclusions, levers and `explain` as written, the shipped page
//! category boost, priority = propensity × value × weight with a configured
//! value, a rule failing at run time skipped and counted, a broken file
//! rejected with `file:line` while the old rules answer, a hot reload under
//! concurrent requests, the contact cap (with the rule metrics), and
//! `nextbest rules check`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An event with its own price and category.
fn shop(id: &str, kind: &str, c: &str, item: &str, price: f64, cat: &str, ts: i64) -> Value {
    json!({
        "event_id": id, "type": kind, "customer_id": c, "ts": ts, "item_id": item,
        "session_id": format!("s-{c}"),
        "props": {"price": price, "quantity": 1, "category": cat}
    })
}

fn item<'a>(rec: &'a Value, id: &str) -> Option<&'a Value> {
    rec["items"].as_array()?.iter().find(|i| i["item_id"] == id)
}

/// The group join on a fresh group can take a while on Tansu.
const JOIN: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_over_100_gets_upsells_through_kafka_and_redis() {
    let mut cfg = base_config();
    cfg.store.redis_url = Some(redis_url());
    cfg.kafka.brokers = Some(kafka_brokers());
    cfg.kafka.batch_linger_ms = 5;
    let app = TestApp::spawn(cfg).await;
    let upsell_matches = |m: &str| {
        metric_sum(
            m,
            "nextbest_rule_matches_total",
            &["rule=\"upsell_over_100\""],
        )
    };
    let matches_before = upsell_matches(&app.metrics().await);
    let (rich, modest, other) = (unique("rich"), unique("modest"), unique("other"));
    // the shared broker's catalog topic keeps this test's out-of-stock
    // write from earlier runs: a fresh id for the item it sets
    let lux1 = unique("lux1");
    let lux1 = lux1.as_str();
    let t = now_ms() - 10_000;
    let events = json!([
        // a cart of 120: two items of 60 (the average item is 60)
        shop(
            &format!("{rich}-1"),
            "add_to_cart",
            &rich,
            "bag1",
            60.0,
            "bags",
            t
        ),
        shop(
            &format!("{rich}-2"),
            "add_to_cart",
            &rich,
            "bag2",
            60.0,
            "bags",
            t + 1
        ),
        // a cart of 80
        shop(
            &format!("{modest}-1"),
            "add_to_cart",
            &modest,
            "bag3",
            40.0,
            "bags",
            t + 2
        ),
        shop(
            &format!("{modest}-2"),
            "add_to_cart",
            &modest,
            "bag4",
            40.0,
            "bags",
            t + 3
        ),
        // other shoppers make a pricier and a cheaper bag popular
        shop(
            &format!("{other}-1"),
            "page_view",
            &other,
            lux1,
            90.0,
            "bags",
            t + 4
        ),
        shop(
            &format!("{other}-2"),
            "page_view",
            &other,
            lux1,
            90.0,
            "bags",
            t + 5
        ),
        shop(
            &format!("{other}-3"),
            "page_view",
            &other,
            "cheap1",
            50.0,
            "bags",
            t + 6
        ),
    ]);
    let (s, body) = app.post("/v1/events", events).await;
    assert_eq!(s, 202, "{body}");

    // the upsell appears once the consumer applied the events and the
    // popularity lists were rebuilt
    let rec = eventually(JOIN, "an upsell for the cart of 120", || {
        let (app, rich) = (&app, rich.clone());
        async move {
            let (_, r) = app
                .post("/v1/recommend", json!({"customer_id": rich, "k": 10}))
                .await;
            item(&r, lux1)
                .is_some_and(|i| i["action"] == "upsell")
                .then_some(r)
        }
    })
    .await;
    let lux = item(&rec, lux1).expect("the pricier bag ranked");
    assert!(
        lux["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("upsell_over_100"))),
        "{lux}"
    );
    assert_eq!(lux["weight"], 1.2, "{lux}");
    assert_eq!(lux["value"], 1.0, "{lux}");
    let (score, propensity) = (
        lux["score"].as_f64().expect("score"),
        lux["propensity"].as_f64().expect("propensity"),
    );
    assert!((score - propensity * 1.2).abs() < 1e-5, "{lux}");
    let matches_after = upsell_matches(&app.metrics().await);
    assert!(
        matches_after > matches_before,
        "upsell_over_100's matches counted: {matches_before} → {matches_after}"
    );
    // priced below the cart's average item: not an upsell
    if let Some(cheap) = item(&rec, "cheap1") {
        assert_ne!(cheap["action"], "upsell", "{cheap}");
    }
    // the items in the cart are to be bought, not upsold
    assert_eq!(
        item(&rec, "bag1").expect("bag1")["action"],
        "complete_purchase",
        "{rec}"
    );

    // a cart of 80 gets no upsell (its features are in: its items are in its cart)
    let (_, r) = app
        .post("/v1/recommend", json!({"customer_id": modest, "k": 10}))
        .await;
    assert_eq!(
        item(&r, "bag3").expect("bag3")["action"],
        "complete_purchase",
        "{r}"
    );
    assert!(
        item(&r, lux1).is_some(),
        "lux1 is a candidate for the modest cart too: {r}"
    );
    assert!(
        r["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["action"] != "upsell")),
        "{r}"
    );

    // the catalog marks lux1 out of stock over Kafka: the next answers drop it
    produce(&producer(), "catalog.items", lux1, r#"{"in_stock": 0}"#).await;
    let r = eventually(JOIN, "lux1 out of the answer", || {
        let (app, rich) = (&app, rich.clone());
        async move {
            let (_, r) = app
                .post(
                    "/v1/recommend",
                    json!({"customer_id": rich, "k": 10, "explain": true}),
                )
                .await;
            (r["fallback"] == false && item(&r, lux1).is_none()).then_some(r)
        }
    })
    .await;
    assert!(
        r["excluded"]
            .as_array()
            .is_some_and(|a| a.contains(&json!({"item_id": lux1, "rule": "out_of_stock"}))),
        "{r}"
    );
    app.stop().await;
}

fn write(path: &Path, text: &str) {
    // write then rename, so the watcher never sees half a file
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write rule file");
    std::fs::rename(&tmp, path).expect("rename rule file");
}

/// A fresh rules folder holding `text` as `rules.toml`.
fn rules_dir(tag: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&dir).expect("rules dir");
    write(&dir.join("rules.toml"), text);
    dir
}

/// The embedded server on the shipped features and model with the rules
/// of `dir`.
async fn serve_rules(dir: &Path) -> TestApp {
    let mut cfg = base_config();
    cfg.rules.dir = dir.to_path_buf();
    TestApp::spawn(cfg).await
}

#[tokio::test]
async fn a_rule_failing_at_run_time_is_skipped_for_the_item_and_counted() {
    // `recent_items[0]` fails on a customer with no recent items (the
    // checks cannot foresee an empty list); for p1 only, as `&&` stops at
    // a false left side
    let dir = rules_dir(
        "errrules",
        "[[rule]]\nname = \"boost_p1\"\nitem_when = \"item.id == 'p1'\"\nweight = 2.0\n\
         [[rule]]\nname = \"last_seen_boost\"\nitem_when = \"item.id == 'p1' && customer.recent_items[0] == item.id\"\nweight = 5.0\n",
    );
    let app = serve_rules(&dir).await;
    let errors = |m: &str| {
        metric_sum(
            m,
            "nextbest_rule_errors_total",
            &["rule=\"last_seen_boost\""],
        )
    };
    let before = errors(&app.metrics().await);
    let c = unique("c");
    let ask = json!({"customer_id": c, "k": 2, "candidates": ["p1", "p2"]});
    let (s, rec) = app.post("/v1/recommend", ask.clone()).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["fallback"], false, "{rec}");
    let p1 = item(&rec, "p1").expect("p1 still answered");
    assert_eq!(
        p1["weight"], 2.0,
        "boost_p1 applied, the failing rule skipped: {p1}"
    );
    assert!(
        p1["reasons"].as_array().is_some_and(
            |r| r.contains(&json!("boost_p1")) && !r.contains(&json!("last_seen_boost"))
        ),
        "{p1}"
    );
    assert!(item(&rec, "p2").is_some(), "{rec}");
    let after = errors(&app.metrics().await);
    assert!(
        after >= before + 1.0,
        "the failure counted: {before} → {after}"
    );

    // positive control: with p1 the customer's latest item the rule holds
    let (s, _) = app
        .post(
            "/v1/events",
            event(&unique("e"), "page_view", &c, Some("p1"), now_ms()),
        )
        .await;
    assert_eq!(s, 202);
    let (_, rec) = app.post("/v1/recommend", ask).await;
    let p1 = item(&rec, "p1").expect("p1");
    assert_eq!(p1["weight"], 10.0, "both rules apply: {p1}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn priority_is_propensity_times_the_configured_value_times_the_weight() {
    let dir = rules_dir(
        "valuerules",
        "[[rule]]\nname = \"boost_m1\"\nitem_when = \"item.id == 'm1'\"\nweight = 1.5\n",
    );
    let mut cfg = base_config();
    cfg.rules.dir = dir.clone();
    cfg.recommend.value = Some("item.margin".into());
    let app = TestApp::spawn(cfg).await;
    // m1: a margin (and a catalog price); e1: no margin, a price seen in
    // events; l1: only a catalog price (item.list_price, not item.price)
    for (id, body) in [
        ("m1", r#"{"margin": 12, "price": 80}"#),
        ("l1", r#"{"price": 55}"#),
    ] {
        let (s, r) = app.put(&format!("/v1/items/{id}"), body).await;
        assert_eq!(s, 200, "{r}");
    }
    let viewer = unique("viewer");
    let (s, _) = app
        .post(
            "/v1/events",
            event(&unique("e"), "page_view", &viewer, Some("e1"), now_ms()),
        )
        .await;
    assert_eq!(s, 202);
    let (s, rec) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": unique("c"), "k": 4, "candidates": ["m1", "e1", "l1", "n1"]}),
        )
        .await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["fallback"], false, "{rec}");
    for (id, value, weight) in [
        ("m1", 12.0, 1.5),
        ("e1", 25.0, 1.0),
        ("l1", 1.0, 1.0),
        ("n1", 1.0, 1.0),
    ] {
        let i = item(&rec, id).unwrap_or_else(|| panic!("{id} in {rec}"));
        assert_eq!(
            (i["value"].as_f64(), i["weight"].as_f64()),
            (Some(value), Some(weight)),
            "{i}"
        );
        let (score, propensity) = (
            i["score"].as_f64().expect("score"),
            i["propensity"].as_f64().expect("propensity"),
        );
        let want = propensity * value * weight;
        assert!(
            propensity != 0.0 && (score - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{i}"
        );
    }
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_shipped_page_category_boost_lifts_the_pages_category_only() {
    // the shipped rules; s1's category comes from an event (item.category),
    // h1's from the catalog (item.catalog_category), b1 is of another one
    let app = TestApp::spawn(base_config()).await;
    let viewer = unique("viewer");
    let (s, _) = app
        .post(
            "/v1/events",
            event(&unique("e"), "page_view", &viewer, Some("s1"), now_ms()),
        )
        .await;
    assert_eq!(s, 202);
    for (id, category) in [("h1", "shoes"), ("b1", "bags")] {
        let body = json!({ "category": category }).to_string();
        let (s, r) = app.put(&format!("/v1/items/{id}"), body).await;
        assert_eq!(s, 200, "{r}");
    }
    let ask = |context: Value| json!({"customer_id": unique("c"), "k": 3, "candidates": ["s1", "h1", "b1"], "context": context});
    let boosted = |rec: &Value, id: &str| {
        let i = item(rec, id).unwrap_or_else(|| panic!("{id} in {rec}"));
        let reason = i["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("page_category_boost")));
        match (i["weight"].as_f64(), reason) {
            (Some(1.5), true) => true,
            (Some(1.0), false) => false,
            _ => panic!("weight and reason disagree: {i}"),
        }
    };
    let (s, rec) = app
        .post("/v1/recommend", ask(json!({"page_category": "shoes"})))
        .await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(
        (
            boosted(&rec, "s1"),
            boosted(&rec, "h1"),
            boosted(&rec, "b1")
        ),
        (true, true, false),
        "{rec}"
    );
    // no page category: none boosted; another one: its items only
    for (context, want) in [
        (json!({}), (false, false, false)),
        (json!({"page_category": "bags"}), (false, false, true)),
    ] {
        let (_, rec) = app.post("/v1/recommend", ask(context.clone())).await;
        assert_eq!(
            (
                boosted(&rec, "s1"),
                boosted(&rec, "h1"),
                boosted(&rec, "b1")
            ),
            want,
            "{context}: {rec}"
        );
    }
    app.stop().await;
}

const RULES_V1: &str = r#"[[rule]]
name = "boost_p2"
description = "p2 is on promotion"
item_when = "item.id == 'p2'"
weight = 3.0

[[rule]]
name = "hide_p3"
item_when = "item.id == 'p3'"
exclude = true

[[rule]]
name = "vip"
when = "customer.views_1h >= 1.0"
item_when = "item.id == 'p1'"
action = "vip_offer"
priority = 1
"#;

#[tokio::test]
async fn rules_exclude_boost_act_explain_and_reload() {
    let dir = std::env::temp_dir().join(unique("rules"));
    std::fs::create_dir_all(&dir).expect("rules dir");
    let file = dir.join("promo.toml");
    write(&file, RULES_V1);
    let mut cfg = base_config();
    cfg.rules.dir = dir.clone();
    cfg.rules.reload_debounce_ms = 100;
    let app = TestApp::spawn(cfg).await;
    let c = unique("c");
    let ask =
        json!({"customer_id": c, "k": 4, "candidates": ["p1", "p2", "p3", "p4"], "explain": true});

    let (s, rec) = app.post("/v1/recommend", ask.clone()).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(common::answer_ids(&rec).len(), 3, "{rec}");
    assert!(item(&rec, "p3").is_none(), "hide_p3 excludes p3: {rec}");
    assert_eq!(
        rec["excluded"],
        json!([{"item_id": "p3", "rule": "hide_p3"}])
    );
    let p2 = item(&rec, "p2").expect("p2");
    assert_eq!(p2["weight"], 3.0);
    let (score, propensity) = (
        p2["score"].as_f64().unwrap_or(0.0),
        p2["propensity"].as_f64().unwrap_or(-1.0),
    );
    assert!((score - 3.0 * propensity).abs() < 1e-5, "{p2}");
    assert!(
        p2["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("boost_p2"))),
        "{p2}"
    );
    assert_eq!(
        p2["explain"],
        json!([{"rule": "boost_p2", "file": file.display().to_string(), "did": [{"effect": "weight", "weight": 3.0}]}])
    );
    // `when` does not hold yet: p1 keeps the default action
    let p1 = item(&rec, "p1").expect("p1");
    assert_eq!(p1["action"], "recommend", "{p1}");
    assert_eq!(item(&rec, "p4").expect("p4")["weight"], 1.0);

    // one page view and the customer's rule holds
    let (s, _) = app
        .post(
            "/v1/events",
            event(&unique("e"), "page_view", &c, Some("p9"), now_ms()),
        )
        .await;
    assert_eq!(s, 202);
    let (_, rec) = app.post("/v1/recommend", ask.clone()).await;
    let p1 = item(&rec, "p1").expect("p1");
    assert_eq!(p1["action"], "vip_offer", "{p1}");
    assert!(
        p1["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("vip"))),
        "{p1}"
    );

    // the listing
    let (s, listed) = app.get("/v1/rules").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = listed["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["boost_p2", "hide_p3", "vip"], "{listed}");
    assert_eq!(listed["rules"][0]["file"], file.display().to_string());
    assert_eq!(listed["files"][0]["status"], "active");

    // a broken version is rejected with file:line:column; the old rules answer
    write(
        &file,
        &RULES_V1.replace("item.id == 'p3'", "item.id == 'p3' && item.colour == 'red'"),
    );
    let listed = eventually(Duration::from_secs(20), "the broken file rejected", || {
        let app = &app;
        async move {
            let (_, l) = app.get("/v1/rules").await;
            (l["files"][0]["status"] == "rejected").then_some(l)
        }
    })
    .await;
    let f = &listed["files"][0];
    let error = f["error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(&format!("{}:9:33:", file.display())) && error.contains("item.colour"),
        "{f}"
    );
    assert_eq!(
        (f["line"].as_u64(), f["column"].as_u64()),
        (Some(9), Some(33)),
        "{f}"
    );
    assert_eq!(f["serving_previous"], true, "{f}");
    let (_, rec) = app.post("/v1/recommend", ask.clone()).await;
    assert!(
        item(&rec, "p3").is_none(),
        "the previous rules still exclude p3: {rec}"
    );
    assert_eq!(common::answer_ids(&rec).len(), 3);

    // a good new version swaps in within seconds while requests keep
    // coming: every answer is the old rule set or the new one, whole
    hot_reload_under_load(&app, &ask, || {
        write(&file, &RULES_V1.replace("'p3'", "'p4'"))
    })
    .await;
    let (_, listed) = app.get("/v1/rules").await;
    assert_eq!(listed["files"][0]["status"], "active", "{listed}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Which rule set an answer of `rules_exclude_boost_act_explain_and_reload`
/// reflects: the old one hides p3, the new one p4; anything else is a mix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Old,
    New,
}

fn seen(v: &Value) -> Result<Seen, String> {
    let whole = v["fallback"] == false && common::answer_ids(v).len() == 3;
    match (item(v, "p3").is_none(), item(v, "p4").is_none()) {
        (true, false) if whole => Ok(Seen::Old),
        (false, true) if whole => Ok(Seen::New),
        _ => Err(v.to_string()),
    }
}

/// Concurrent request loops while `change` swaps the rule file: each loop
/// answers with the old rules first, every loop sees the new ones within
/// a liveness bound, and no answer is non-200, partial, a mix of both rule
/// sets, or the old rules after the new ones (the swap is one pointer).
async fn hot_reload_under_load(app: &TestApp, ask: &Value, change: impl FnOnce()) {
    const LOOPS: usize = 8;
    const BOUND: Duration = Duration::from_secs(10);
    let stop = Arc::new(AtomicBool::new(false));
    // per loop: answers with the old rules, with the new ones
    let counts: Arc<Vec<[AtomicUsize; 2]>> = Arc::new(
        (0..LOOPS)
            .map(|_| [AtomicUsize::new(0), AtomicUsize::new(0)])
            .collect(),
    );
    let loops: Vec<_> = (0..LOOPS)
        .map(|n| {
            let (client, url, body) = (
                app.client.clone(),
                format!("{}/v1/recommend", app.base),
                ask.clone(),
            );
            let (stop, counts) = (stop.clone(), counts.clone());
            tokio::spawn(async move {
                let mut bad = Vec::new();
                let mut first_new: Option<std::time::Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    let answer = match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => seen(&r.json().await.unwrap_or(Value::Null)),
                        other => Err(format!("{other:?}")),
                    };
                    match answer {
                        Ok(Seen::Old) if first_new.is_some() => {
                            bad.push(format!("loop {n}: the old rules after the new ones"))
                        }
                        Ok(Seen::Old) => {
                            counts[n][0].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Seen::New) => {
                            first_new.get_or_insert_with(std::time::Instant::now);
                            counts[n][1].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => bad.push(format!("loop {n}: {e}")),
                    }
                }
                (first_new, bad)
            })
        })
        .collect();
    let each = |i: usize| {
        let counts = counts.clone();
        move || {
            let counts = counts.clone();
            async move {
                counts
                    .iter()
                    .all(|c| c[i].load(Ordering::Relaxed) > 0)
                    .then_some(())
            }
        }
    };
    eventually(BOUND, "every loop to answer with the old rules", each(0)).await;
    let changed = std::time::Instant::now();
    change();
    eventually(BOUND, "every loop to answer with the new rules", each(1)).await;
    let all_new = changed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut first, mut bad) = (None::<std::time::Instant>, Vec::new());
    for l in loops {
        let (f, b) = l.await.expect("request loop");
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        bad.extend(b);
    }
    let answered: usize = counts
        .iter()
        .map(|c| c[0].load(Ordering::Relaxed) + c[1].load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "hot reload under {LOOPS} request loops: first answer with the new rules {:?} after the rename, every loop {all_new:?}; {answered} answers",
        first.map(|f| f.saturating_duration_since(changed))
    );
    assert!(
        bad.is_empty(),
        "every answer during the reload was whole and one rule set: {bad:?}"
    );
}

#[test]
fn rules_check_passes_the_shipped_rules_and_fails_a_broken_file() {
    let bin = env!("CARGO_BIN_EXE_nextbest");
    let features = repo().join("feature-store/features.toml");
    let ok = std::process::Command::new(bin)
        .args(["rules", "check"])
        .arg(repo().join("rules"))
        .env("NEXTBEST_FEATURES", &features)
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("upsell_over_100"), "{out}");

    let dir = std::env::temp_dir().join(unique("badrules"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("typo.toml"),
        "[[rule]]\nname = \"typo\"\nitem_when = \"customer.cart_value > 'x'\"\nweight = 2.0\n",
    )
    .expect("write");
    let bad = std::process::Command::new(bin)
        .args(["rules", "check"])
        .arg(&dir)
        .env("NEXTBEST_FEATURES", &features)
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{out}");
    let want = format!("{}:3:", dir.join("typo.toml").display());
    assert!(out.contains(&want) && out.contains("wrong types"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The offers counted for `action` (from the customer's features).
async fn offers(app: &TestApp, c: &str, action: &str) -> u64 {
    let (_, f) = app.get(&format!("/v1/features/customer/{c}")).await;
    f["offers"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["action"] == action))
        .and_then(|o| o["count"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_contact_cap_holds_after_n_offers_and_resets_after_the_period() {
    let dir = std::env::temp_dir().join(unique("caprules"));
    std::fs::create_dir_all(&dir).expect("rules dir");
    write(
        &dir.join("cap.toml"),
        "[[rule]]\nname = \"teaser\"\nitem_when = \"item.id == 'p1'\"\naction = \"teaser\"\npriority = 1\nmax_per_customer = 2\nperiod = \"3s\"\n",
    );
    let mut cfg = base_config();
    cfg.rules.dir = dir.clone();
    cfg.store.redis_url = Some(redis_url());
    let app = TestApp::spawn(cfg).await;
    let offered = |m: &str| metric_sum(m, "nextbest_actions_offered_total", &["action=\"teaser\""]);
    let suppressed =
        |m: &str| metric_sum(m, "nextbest_contact_suppressed_total", &["rule=\"teaser\""]);
    let m = app.metrics().await;
    let (offered_before, suppressed_before) = (offered(&m), suppressed(&m));
    let c = unique("c");
    let ask = json!({"customer_id": c, "k": 2, "candidates": ["p1", "p2"]});
    let action = |r: &Value| {
        item(r, "p1")
            .map(|i| i["action"].clone())
            .unwrap_or(Value::Null)
    };
    for n in 1..=2 {
        let (_, r) = app.post("/v1/recommend", ask.clone()).await;
        assert_eq!(action(&r), "teaser", "offer {n}: {r}");
        // the offer is counted after the answer, off the request path
        eventually(Duration::from_secs(10), "the offer to be counted", || {
            let (app, c) = (&app, c.clone());
            async move { (offers(app, &c, "teaser").await == n).then_some(()) }
        })
        .await;
    }
    let (_, r) = app.post("/v1/recommend", ask.clone()).await;
    assert_eq!(action(&r), "recommend", "capped after 2 offers: {r}");
    assert_eq!(
        offers(&app, &c, "teaser").await,
        2,
        "a capped answer is no offer"
    );
    let m = app.metrics().await;
    assert!(
        offered(&m) >= offered_before + 2.0,
        "two teasers offered: {offered_before} → {}",
        offered(&m)
    );
    assert!(
        suppressed(&m) >= suppressed_before + 1.0,
        "the capped answer counted as suppressed: {suppressed_before} → {}",
        suppressed(&m)
    );
    // the window expires: the counter is gone and the action comes back
    eventually(Duration::from_secs(15), "the cap to reset", || {
        let (app, ask) = (&app, ask.clone());
        async move {
            let (_, r) = app.post("/v1/recommend", ask).await;
            (item(&r, "p1").is_some_and(|i| i["action"] == "teaser")).then_some(())
        }
    })
    .await;
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
