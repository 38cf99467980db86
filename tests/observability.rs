//! Traffic moves the series operators watch: requests, stages, model
//! scores, events, and fallbacks by reason.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn traffic_moves_request_stage_model_and_event_series() {
    let app = TestApp::spawn(base_config()).await;
    let before = app.metrics().await;
    let c = unique("c");
    let t = now_ms();
    app.post(
        "/v1/events",
        json!([
            event("o1", "page_view", &c, Some("i1"), t),
            event("o2", "add_to_cart", &c, Some("i1"), t)
        ]),
    )
    .await;
    for _ in 0..5 {
        let (s, _) = app
            .post(
                "/v1/recommend",
                json!({"customer_id": c, "candidates": ["i1", "i2"]}),
            )
            .await;
        assert_eq!(s, 200);
    }
    app.post("/v1/recommend", json!({"customer_id": 5})).await; // a 400
    app.post(
        "/v1/recommend",
        json!({"customer_id": c, "candidates": ["i1"], "budget_ms": 1}),
    )
    .await; // may fall back
    let after = app.metrics().await;
    let delta = |name: &str, labels: &[&str]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    assert!(
        delta(
            "nextbest_http_requests_total",
            &["route=\"/v1/recommend\"", "status=\"200\""]
        ) >= 5.0,
        "{after}"
    );
    assert!(
        delta(
            "nextbest_http_requests_total",
            &["route=\"/v1/recommend\"", "status=\"400\""]
        ) >= 1.0
    );
    assert!(
        delta(
            "nextbest_http_request_duration_seconds_count",
            &["route=\"/v1/recommend\""]
        ) >= 6.0
    );
    for stage in ["features", "matrix", "model", "rules"] {
        assert!(
            delta(
                "nextbest_recommend_stage_seconds_count",
                &[&format!("stage=\"{stage}\"")]
            ) >= 5.0,
            "stage {stage} histogram did not move"
        );
    }
    assert!(
        delta(
            "nextbest_model_scores_total",
            &["model=\"ranker\"", "role=\"primary\""]
        ) >= 10.0
    );
    assert!(delta("nextbest_events_applied_total", &["type=\"add_to_cart\""]) >= 1.0);
    assert!(delta("nextbest_event_freshness_seconds_count", &[]) >= 2.0);
    // a redelivered event counts as a duplicate of its type, not as applied
    let mid = app.metrics().await;
    app.post(
        "/v1/events",
        json!(event("o2", "add_to_cart", &c, Some("i1"), t)),
    )
    .await;
    let end = app.metrics().await;
    let d = |name: &str, labels: &[&str]| {
        metric_sum(&end, name, labels) - metric_sum(&mid, name, labels)
    };
    assert!(
        d("nextbest_events_duplicate_total", &["type=\"add_to_cart\""]) >= 1.0,
        "{end}"
    );
    let serving = format!(
        "nextbest_models_serving{{model=\"ranker\",version=\"{}\"}} 1",
        shipped_ranker_version()
    );
    assert!(after.contains(&serving), "{after}");

    // a request id is returned and is the one given
    let r = app
        .client
        .post(format!("{}/v1/recommend", app.base))
        .header("x-request-id", "req-abc-123")
        .json(&json!({"customer_id": c}))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-abc-123")
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["request_id"], "req-abc-123");
    let _ = tokio::time::timeout(Duration::from_secs(5), app.stop()).await;
}

#[tokio::test]
async fn a_fallback_moves_the_fallback_series_by_reason() {
    // no model to score with: every recommendation falls back, reason no_model
    let mut cfg = base_config();
    let empty = std::env::temp_dir().join(unique("models"));
    std::fs::create_dir_all(&empty).expect("temp dir");
    cfg.models_dir = empty;
    let app = TestApp::spawn(cfg).await;
    let series = |m: &str| {
        metric_sum(
            m,
            "nextbest_recommend_fallbacks_total",
            &["reason=\"no_model\""],
        )
    };
    let before = series(&app.metrics().await);
    for _ in 0..3 {
        let (s, r) = app
            .post(
                "/v1/recommend",
                json!({"customer_id": unique("c"), "candidates": ["i1", "i2"]}),
            )
            .await;
        assert_eq!((s, &r["fallback"]), (200, &json!(true)), "{r}");
    }
    let after = app.metrics().await;
    assert!(
        series(&after) - before >= 3.0,
        "three fallbacks counted under reason=\"no_model\": {after}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), app.stop()).await;
}
