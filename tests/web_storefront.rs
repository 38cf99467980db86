//! The browser-facing side of the server: `POST /v1/events` with the
//! `text/plain` body of a beacon (no CORS preflight), the demo storefront
//! and the SDK's files served from the binary, and the storefront switched
//! off by `http.storefront`.

mod common;
use common::*;
use serde_json::{json, Value};

async fn post_text(app: &TestApp, body: String, origin: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!("{}/v1/events", app.base))
        // what navigator.sendBeacon sends for a string body
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn beacon_bodies_in_text_plain_are_events() {
    let app = TestApp::spawn(base_config()).await;
    let c = unique("beacon");
    let batch = json!([
        event(&unique("e"), "add_to_cart", &c, Some("p-1"), now_ms()),
        event(&unique("e"), "add_to_cart", &c, Some("p-2"), now_ms()),
    ]);
    let (s, r) = post_text(&app, batch.to_string(), Some("http://127.0.0.1:1")).await;
    assert_eq!((s, r["accepted"].clone()), (202, json!(2)), "{r}");
    assert_eq!(
        app.customer_feature(&c, "cart_items").await,
        json!(2.0),
        "both events applied"
    );
    // the same validation as JSON: a bad event is a 400 naming it, nothing applied
    let bad = json!([
        event(&unique("e"), "add_to_cart", &c, Some("p-3"), now_ms()),
        event(&unique("e"), "click", &c, None, now_ms()),
    ]);
    let (s, r) = post_text(&app, bad.to_string(), None).await;
    assert_eq!((s, r["index"].clone()), (400, json!(1)), "{r}");
    assert_eq!(app.customer_feature(&c, "cart_items").await, json!(2.0));
    let (s, r) = post_text(&app, "not json".into(), None).await;
    assert_eq!(s, 400, "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("JSON")),
        "{r}"
    );
    app.stop().await;
}

async fn fetch(app: &TestApp, path: &str) -> (u16, String, String) {
    let r = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ct, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_storefront_and_sdk_are_served_from_the_binary() {
    let app = TestApp::spawn(base_config()).await;
    for page in ["/", "/p/p-001", "/c/shoes", "/cart", "/search?q=boot"] {
        let (s, ct, body) = fetch(&app, page).await;
        assert_eq!(s, 200, "{page}");
        assert!(ct.starts_with("text/html"), "{page}: {ct}");
        assert!(body.contains(r#"id="recommendations""#), "{page}");
    }
    let (s, ct, body) = fetch(&app, "/store/app.js").await;
    assert_eq!((s, ct.starts_with("text/javascript")), (200, true), "{ct}");
    assert!(body.contains("/sdk/nextbest.js"));
    let (s, _, catalog) = fetch(&app, "/store/catalog.jsonl").await;
    assert_eq!(s, 200);
    let lines: Vec<Value> = catalog
        .lines()
        .map(|l| serde_json::from_str(l).expect("a catalog line is JSON"))
        .collect();
    assert!(lines.len() >= 200, "{} products", lines.len());
    assert!(lines
        .iter()
        .all(|p| p["item_id"].is_string() && p["price"].is_number() && p["name"].is_string()));
    let repo_sdk = std::fs::read_to_string(repo().join("web/sdk/nextbest.js")).expect("sdk file");
    for f in ["nextbest.js", "nextbest.global.js", "nextbest.d.ts"] {
        let (s, _, body) = fetch(&app, &format!("/sdk/{f}")).await;
        assert_eq!(s, 200, "{f}");
        assert!(!body.is_empty());
        if f == "nextbest.js" {
            assert_eq!(body, repo_sdk, "the served SDK is the file in web/sdk");
        }
    }
    let (s, ct, body) = fetch(&app, "/store/../Cargo.toml").await;
    assert_ne!(s, 200, "{ct} {body}");
    let (s, ct, body) = fetch(&app, "/store/nope.js").await;
    assert_eq!(s, 404);
    assert!(ct.starts_with("application/json"), "{body}");
    app.stop().await;

    let mut cfg = base_config();
    cfg.http.storefront = false;
    let app = TestApp::spawn(cfg).await;
    let (s, _, _) = fetch(&app, "/").await;
    assert_eq!(s, 404, "no storefront when switched off");
    let (s, _, _) = fetch(&app, "/sdk/nextbest.js").await;
    assert_eq!(s, 404);
    let (s, _) = app.get("/healthz").await;
    assert_eq!(s, 200, "the API still serves");
    app.stop().await;
}
