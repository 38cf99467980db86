//! The HTTP layer over a real server: JSON error bodies for what axum and
//! tower answer themselves (413, 405, 408), request ids, serde's field paths,
//! and load shedding on `/v1/recommend`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a request whose body never finishes arriving (it announces more
/// bytes than it sends), so its handler waits in the body extractor.
async fn held_open(app: &TestApp, path: &str) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"customer_id\": "
    );
    s.write_all(head.as_bytes()).await.expect("writes");
    s
}

/// Reads one response off a raw connection: status and JSON body.
async fn read_response(s: &mut TcpStream) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("reads");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len || n == 0 {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return (status, serde_json::from_str(body).unwrap_or(Value::Null));
            }
        }
        assert!(n > 0, "connection closed before a response: {text}");
    }
}

#[tokio::test]
async fn layer_answers_are_json() {
    let mut cfg = base_config();
    cfg.http.request_timeout_ms = 300;
    let app = TestApp::spawn(cfg).await;

    // a body over the 8 MiB limit: 413
    let big = format!(
        "{{\"customer_id\": \"{}\"}}",
        "x".repeat(8 * 1024 * 1024 + 1)
    );
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.expect("a JSON body");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{body}"
    );

    // a method the route lacks: 405, Allow kept
    let r = app
        .client
        .get(format!("{}/v1/recommend", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 405);
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(allow.contains("POST"), "Allow: {allow:?}");
    let body: Value = r.json().await.expect("a JSON body");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("method not allowed")),
        "{body}"
    );

    // a request slower than http.request_timeout_ms: 408
    let mut slow = held_open(&app, "/v1/events").await;
    let (s, body) = read_response(&mut slow).await;
    assert_eq!(s, 408, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout")),
        "{body}"
    );

    // unknown routes stay 404 JSON
    let (s, body) = app.get("/v1/nope").await;
    assert_eq!((s, body["error"].is_string()), (404, true), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn recommend_bodies_name_the_field_path() {
    let app = TestApp::spawn(base_config()).await;
    let cases = [
        (json!({"customer_id": "c", "colour": "red"}), "colour"),
        (
            json!({"customer_id": "c", "candidates": ["a", "b", "c", {"id": 1}]}),
            "candidates[3]",
        ),
        (
            json!({"customer_id": "c", "budget_ms": "soon"}),
            "budget_ms",
        ),
        (json!({"customer_id": "c", "session_id": 9}), "session_id"),
        (
            json!({"customer_id": "c", "context": {"session_id": 9}}),
            "context.session_id",
        ),
    ];
    app.assert_field_errors("/v1/recommend", &cases).await;
    // a session id at top level or (older clients) in the context
    for body in [
        json!({"customer_id": "c", "session_id": "s-1"}),
        json!({"customer_id": "c", "context": {"session_id": "s-1"}}),
    ] {
        let (s, r) = app.post("/v1/recommend", body.clone()).await;
        assert_eq!(s, 200, "{body} → {r}");
    }
    let (s, r) = app.post("/v1/recommend", json!([1])).await;
    assert_eq!((s, r["error"].is_string()), (400, true), "{r}");
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_and_generated_otherwise() {
    let app = TestApp::spawn(base_config()).await;
    let send = |id: Option<&'static str>| {
        let mut r = app.client.post(format!("{}/v1/recommend", app.base));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.json(&json!({"customer_id": "rid"})).send()
    };
    let r = send(Some("abc-123")).await.expect("sent");
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["request_id"], "abc-123");

    let too_long: &'static str = Box::leak("a".repeat(129).into_boxed_str());
    for bad in ["has space", too_long] {
        let r = send(Some(bad)).await.expect("sent");
        let echoed = r.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_ne!(echoed, bad);
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["request_id"], echoed.as_str());
    }
    let r = send(None).await.expect("sent");
    assert!(r.headers().get("x-request-id").is_some());
    app.stop().await;
}

#[tokio::test]
async fn recommend_sheds_past_its_concurrency() {
    let mut cfg = base_config();
    cfg.http.recommend_concurrency = 1;
    let app = TestApp::spawn(cfg).await;
    // one request holds the only slot: its body never completes
    let _held = held_open(&app, "/v1/recommend").await;
    let shed = eventually(Duration::from_secs(10), "a shed request", || async {
        let r = app
            .client
            .post(format!("{}/v1/recommend", app.base))
            .json(&json!({"customer_id": "shed"}))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 503).then_some(r)
    })
    .await;
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("overloaded")),
        "{body}"
    );
    // other routes are not limited
    assert_eq!(app.get("/healthz").await.0, 200);
    drop(_held);
    // the slot frees when the held request goes away
    eventually(Duration::from_secs(10), "the slot back", || async {
        let (s, _) = app
            .post("/v1/recommend", json!({"customer_id": "shed"}))
            .await;
        (s == 200).then_some(())
    })
    .await;
    app.stop().await;
}

/// Past `recommend_concurrency` a request waits its turn for up to
/// `recommend_queue_ms` and is then served, not shed; the wait is reported
/// in its timings (and counts against its budget).
#[tokio::test]
async fn recommend_waits_for_a_slot_within_its_queue_time() {
    let mut cfg = base_config();
    cfg.http.recommend_concurrency = 1;
    cfg.http.recommend_queue_ms = 30_000;
    let app = TestApp::spawn(cfg).await;
    let held = held_open(&app, "/v1/recommend").await;
    let url = format!("{}/v1/recommend", app.base);
    let client = app.client.clone();
    let waiter = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"customer_id": "queued", "budget_ms": 60000}))
            .send()
            .await
    });
    // the gate says a request waits (the slot is held)
    eventually(Duration::from_secs(10), "a request waiting", || async {
        let m = app.metrics().await;
        m.lines()
            .any(|l| l.starts_with("nextbest_http_recommend_waiting ") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    assert!(!waiter.is_finished(), "served while the only slot was held");
    drop(held);
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("served within 10 s of the slot freeing")
        .expect("joins")
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["timings_us"]["queued"].as_u64().is_some_and(|q| q > 0),
        "{body}"
    );
    app.stop().await;
}

/// With the broker unreachable, events are refused with 503 and
/// `Retry-After` (nothing is accepted), as JSON; a valid body is what got
/// that far (positive control: a bad one is still a 400 first).
#[tokio::test]
async fn events_with_the_broker_down_are_503_with_retry_after() {
    let mut cfg = base_config();
    cfg.kafka.brokers = Some(format!("127.0.0.1:{}", free_port()));
    cfg.kafka.create_topics = false;
    cfg.kafka.consume = false;
    cfg.kafka.produce_timeout_ms = 500;
    let app = TestApp::spawn(cfg).await;
    let c = unique("c");
    let (s, r) = app.post("/v1/events", json!({"type": "page_view"})).await;
    assert_eq!(s, 400, "{r}");
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .json(&event(&unique("e"), "page_view", &c, Some("p1"), now_ms()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.expect("json body");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not accepted")),
        "{body}"
    );
    app.stop().await;
}
