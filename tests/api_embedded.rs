//! The embedded loop over HTTP: events in, features and recommendations out,
//! and clear 400s for bad input.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn events_change_features_and_recommendations() {
    let app = TestApp::spawn(base_config()).await;
    let c = unique("c");
    let t = now_ms();
    let cands = json!(["p1", "p2", "p3", "p4"]);
    let (s, before) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "k": 4, "candidates": cands}),
        )
        .await;
    assert_eq!(s, 200, "{before}");
    assert_eq!(before["fallback"], false, "{before}");
    assert_eq!(before["model"]["name"], "ranker");
    assert_eq!(before["items"].as_array().map(Vec::len), Some(4));

    let events = json!([
        event("e1", "page_view", &c, Some("p3"), t - 3000),
        event("e2", "click", &c, Some("p3"), t - 2000),
        event("e3", "add_to_cart", &c, Some("p3"), t - 1000),
    ]);
    let (s, body) = app.post("/v1/events", events).await;
    assert_eq!((s, body), (202, json!({"accepted": 3})));

    let f = app.get(&format!("/v1/features/customer/{c}")).await.1;
    assert_eq!(f["features"]["views_1h"], 1.0);
    assert_eq!(f["features"]["carts_1h"], 1.0);
    assert_eq!(f["features"]["cart_value"], 25.0);
    assert_eq!(f["features"]["recent_items"], json!(["p3"]));
    assert_eq!(f["session"]["events"], 3.0);
    let item = app.get("/v1/features/item/p3").await.1;
    assert_eq!(item["features"]["carts_24h"], 1.0);

    let (_, after) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "k": 4, "candidates": cands}),
        )
        .await;
    let score = |r: &serde_json::Value, id: &str| {
        r["items"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["item_id"] == id))
            .and_then(|i| i["score"].as_f64())
            .expect("item ranked")
    };
    assert!(
        score(&after, "p3") > score(&before, "p3"),
        "carting p3 must raise its score: {before} → {after}"
    );
    assert_eq!(after["items"][0]["item_id"], "p3", "{after}");
    assert_eq!(after["items"][0]["action"], "complete_purchase");

    // a duplicate changes nothing
    let (s, _) = app
        .post(
            "/v1/events",
            json!(event("e3", "add_to_cart", &c, Some("p3"), t - 1000)),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(app.customer_feature(&c, "carts_1h").await, 1.0);

    // generated candidates include what the customer carted
    let (_, gen) = app
        .post("/v1/recommend", json!({"customer_id": c, "k": 5}))
        .await;
    assert!(
        gen["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["item_id"] == "p3")),
        "{gen}"
    );

    // purchase: cart emptied; the bought item at half its priority
    // (rules/defaults.toml: purchased_recently)
    app.post(
        "/v1/events",
        json!(event("e4", "purchase", &c, Some("p3"), t)),
    )
    .await;
    assert_eq!(app.customer_feature(&c, "cart_value").await, 0.0);
    let (_, post) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "k": 4, "candidates": cands}),
        )
        .await;
    let p3 = post["items"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["item_id"] == "p3"))
        .unwrap_or_else(|| panic!("p3 still ranked: {post}"));
    assert_eq!(p3["weight"], 0.5, "{post}");
    assert!(
        p3["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("purchased_recently"))),
        "{post}"
    );
    assert!(score(&post, "p3") < score(&after, "p3"), "{after} → {post}");
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let app = TestApp::spawn(base_config()).await;
    let cases = [
        (json!({"k": 3}), "customer_id"),
        (json!({"customer_id": 7}), "customer_id"),
        (json!({"customer_id": "c", "k": 0}), "k"),
        (json!({"customer_id": "c", "k": "five"}), "k"),
        (
            json!({"customer_id": "c", "candidates": "p1"}),
            "candidates",
        ),
        (
            json!({"customer_id": "c", "candidates": ["p1", 2]}),
            "candidates[1]",
        ),
        (json!({"customer_id": "c", "budget_ms": -5}), "budget_ms"),
        (json!({"customer_id": "c", "context": [1]}), "context"),
        (
            json!({"customer_id": "c", "context": {"is_mobile": "yes"}}),
            "context.is_mobile",
        ),
        (json!({"customer_id": "c", "model": "nope"}), "model"),
        (json!({"customer_id": "c", "kk": 1}), "kk"),
    ];
    app.assert_field_errors("/v1/recommend", &cases).await;
    let (s, r) = app.post_raw("/v1/recommend", "{not json").await;
    assert_eq!(s, 400);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("JSON")),
        "{r}"
    );

    // events: the index and field are named, and nothing is applied
    let c = unique("c");
    let good = event("g1", "page_view", &c, Some("p1"), now_ms());
    let mut bad = event("g2", "add_to_cart", &c, None, now_ms());
    bad.as_object_mut().map(|o| o.remove("item_id"));
    let (s, r) = app.post("/v1/events", json!([good, bad])).await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(
        (r["index"].clone(), r["field"].clone()),
        (json!(1), json!("item_id")),
        "{r}"
    );
    assert_eq!(
        app.customer_feature(&c, "views_1h").await,
        0.0,
        "nothing from a rejected batch is applied"
    );
    let (s, r) = app
        .post(
            "/v1/events",
            json!({"event_id": "x", "type": "page_view", "customer_id": "c", "ts": 1764355200}),
        )
        .await;
    assert_eq!((s, r["field"].clone()), (400, json!("ts")), "{r}");
    let (s, _) = app.post("/v1/events", json!([])).await;
    assert_eq!(s, 400);
    app.stop().await;
}

#[tokio::test]
async fn health_models_and_metrics() {
    let app = TestApp::spawn(base_config()).await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (s, r) = app.get("/readyz").await;
    assert_eq!((s, r["ready"].clone()), (200, json!(true)), "{r}");
    let (_, m) = app.get("/v1/models").await;
    assert_eq!(m["default"], "ranker");
    // the newest version shipped serves
    assert_eq!(
        m["models"][0]["serving_version"].as_u64(),
        Some(shipped_ranker_version()),
        "{m}"
    );
    app.post("/v1/recommend", json!({"customer_id": "m1"}))
        .await;
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("nextbest_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/v1/recommend\""), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn without_a_model_recommend_falls_back_and_readyz_says_why() {
    let mut cfg = base_config();
    let empty = std::env::temp_dir().join(unique("models"));
    std::fs::create_dir_all(&empty).expect("temp dir");
    cfg.models_dir = empty;
    let app = TestApp::spawn(cfg).await;
    let (s, r) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": "c", "candidates": ["a", "b"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["fallback"], true);
    assert_eq!(r["items"][0]["item_id"], "a");
    let (s, r) = app.get("/readyz").await;
    assert_eq!((s, r["model_loaded"].clone()), (503, json!(false)));
    let _ = tokio::time::timeout(Duration::from_secs(1), app.stop()).await;
}

/// Issue 15 item 1, from outside: an event ten years ahead is refused with
/// a 400 naming `ts` (nothing of its batch stored), one a minute ahead is
/// taken, and the customer's real views keep counting.
#[tokio::test]
async fn events_from_the_future_are_refused_and_freeze_nothing() {
    let app = TestApp::spawn(base_config()).await;
    let c = unique("c");
    let t = now_ms();
    let far = t + 10 * 365 * 86_400_000;
    let (s, r) = app
        .post(
            "/v1/events",
            json!([
                event("ok-1", "page_view", &c, Some("p1"), t - 1000),
                event("far", "page_view", &c, Some("p2"), far),
            ]),
        )
        .await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(r["field"], "ts", "{r}");
    assert_eq!(r["index"], 1, "{r}");
    let msg = r["error"].as_str().unwrap_or_default();
    assert!(msg.contains("ahead of the server's clock"), "{r}");
    assert_eq!(
        app.customer_feature(&c, "views_1h").await,
        json!(0.0),
        "nothing of the batch stored"
    );

    let (s, r) = app
        .post(
            "/v1/events",
            json!([
                event("ok-1", "page_view", &c, Some("p1"), t - 1000),
                event("soon", "page_view", &c, Some("p2"), t + 60_000),
                event("ok-2", "page_view", &c, Some("p3"), t),
            ]),
        )
        .await;
    assert_eq!((s, r["accepted"].clone()), (202, json!(3)), "{r}");
    let views = app.customer_feature(&c, "views_1h").await;
    assert!(
        views == json!(2.0) || views == json!(3.0),
        "the real views count (and the one a minute ahead once its bucket is reached): {views}"
    );
    app.stop().await;
}

/// Issue 15 item 8: a customer's `seq` gaps, late arrivals and repeats are
/// counted by kind (an exact redelivery is a duplicate by id, not counted
/// again), features count every applied event once, and an event older
/// than `store.allowed_lateness_secs` is refused.
#[tokio::test]
async fn sequence_gaps_reorders_and_repeats_are_counted_and_late_events_refused() {
    let app = TestApp::spawn(base_config()).await;
    let c = unique("seq");
    let t = now_ms();
    let with_seq = |id: &str, seq: i64| {
        let mut e = event(id, "page_view", &c, Some("p1"), t - 1000);
        e["seq"] = json!(seq);
        e
    };
    let kinds = ["in_order", "gap", "reordered", "duplicate", "regression"];
    let count = |text: &str, kind: &str| {
        metric_sum(
            text,
            "nextbest_event_sequence_total",
            &[&format!("kind=\"{kind}\"")],
        )
    };
    let before = app.metrics().await;
    // 1, 2, then 5 (3 and 4 missing), 4 late, 4 again under another id,
    // and the event of seq 5 redelivered
    let (s, r) = app
        .post(
            "/v1/events",
            json!([
                with_seq("q1", 1),
                with_seq("q2", 2),
                with_seq("q5", 5),
                with_seq("q4", 4),
                with_seq("q4b", 4),
                with_seq("q5", 5)
            ]),
        )
        .await;
    assert_eq!((s, r["accepted"].clone()), (202, json!(6)), "{r}");
    let after = app.metrics().await;
    let delta: Vec<f64> = kinds
        .iter()
        .map(|k| count(&after, k) - count(&before, k))
        .collect();
    assert_eq!(
        delta,
        [2.0, 2.0, 1.0, 1.0, 0.0],
        "in_order, gap, reordered, duplicate, regression"
    );
    assert_eq!(
        app.customer_feature(&c, "views_1h").await,
        json!(5.0),
        "five distinct events, whatever their seq"
    );

    let old = event("old", "page_view", &c, Some("p1"), t - 8 * 86_400_000);
    let (s, r) = app.post("/v1/events", old).await;
    assert_eq!((s, r["field"].clone()), (400, json!("ts")), "{r}");
    assert!(
        r["error"].as_str().unwrap_or_default().contains("backfill"),
        "{r}"
    );
    app.stop().await;
}

/// `clock = "event"`: a recorded history (dated years ago) posted in time
/// order gets the windows it had live, and recommend answers as of then.
/// Positive control: the same history on the wall clock is refused as late.
#[tokio::test]
async fn on_an_event_clock_a_recorded_history_gets_the_windows_it_had_live() {
    let t0: i64 = 1_600_000_000_000; // 2020-09-13
    let view = |id: &str, ts: i64| event(id, "page_view", "hist", Some("p1"), ts);

    let wall = TestApp::spawn(base_config()).await;
    let (status, body) = wall.post("/v1/events", view("w-1", t0)).await;
    assert_eq!(status, 400, "the wall clock refuses a 2020 event: {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("old"),
        "{body}"
    );
    wall.stop().await;

    let mut cfg = base_config();
    cfg.clock = nextbest::clock::ClockMode::Event;
    let app = TestApp::spawn(cfg).await;
    let (status, body) = app
        .post(
            "/v1/events",
            json!([view("e-1", t0), view("e-2", t0 + 60_000)]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        app.state.clock.now_ms(),
        t0 + 60_000,
        "now is the newest event applied"
    );
    assert_eq!(app.customer_feature("hist", "views_1h").await, json!(2.0));
    assert_eq!(app.customer_feature("hist", "views_5m").await, json!(2.0));
    // ten minutes later (in event time): out of 5 minutes, still within the hour
    let (status, _) = app.post("/v1/events", view("e-3", t0 + 11 * 60_000)).await;
    assert_eq!(status, 202);
    assert_eq!(app.customer_feature("hist", "views_5m").await, json!(1.0));
    assert_eq!(app.customer_feature("hist", "views_1h").await, json!(3.0));
    // two hours on, the first three are out of the hour
    let (status, _) = app.post("/v1/events", view("e-4", t0 + 131 * 60_000)).await;
    assert_eq!(status, 202);
    assert_eq!(app.customer_feature("hist", "views_1h").await, json!(1.0));
    // no bound ahead on event time (events move the clock), lateness holds
    // relative to it: eight days before the watermark is refused
    let (status, body) = app
        .post("/v1/events", view("e-5", t0 - 8 * 86_400_000))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": "hist", "k": 1, "candidates": ["p1", "p2"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fallback"], json!(false), "{body}");
    app.stop().await;
}
