//! Security (SECURITY.md): API keys and roles (401/403), the WebSocket
//! `token`, rate limits (429 + Retry-After), the CORS allowlist, request
//! size limits, and secrets kept out of the logs of a real `nextbest serve`
//! (keys, a Redis password, a Kafka SASL password). Plus the key CLI and
//! the Kafka/Redis TLS settings being taken.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use nextbest::config::{Config, KeyConfig};
use nextbest::keys::{hash_hex, Role};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const ADMIN_KEY: &str = "nbk_admin_4b1d9f0c2e7a45d8b3c6e1f0a9d8c7b6";
const CLIENT_KEY: &str = "nbk_client_7e2c9a1b3d5f4e6a8c0b2d4f6a8c0e1d";
const OTHER_CLIENT_KEY: &str = "nbk_client_second_0f1e2d3c4b5a69788796a5b4";

fn key(name: &str, role: Role, key: &str) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        role,
        sha256: hash_hex(key.as_bytes()),
        per_second: None,
        burst: None,
    }
}

/// The shipped setup with an admin and a client key.
fn keyed_config() -> Config {
    let mut cfg = base_config();
    cfg.security.keys = vec![
        key("ops", Role::Admin, ADMIN_KEY),
        key("shop", Role::Client, CLIENT_KEY),
        key("app", Role::Client, OTHER_CLIENT_KEY),
    ];
    cfg
}

/// How a request presents its key.
enum Auth<'a> {
    None,
    Header(&'a str),
    Bearer(&'a str),
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    auth: Auth<'_>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = app.client.request(method, format!("{}{path}", app.base));
    rb = match auth {
        Auth::None => rb,
        Auth::Header(k) => rb.header("x-api-key", k),
        Auth::Bearer(k) => rb.bearer_auth(k),
    };
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str, auth: Auth<'_>) -> (u16, Value) {
    let (s, _, b) = call(app, reqwest::Method::GET, path, None, auth).await;
    (s, b)
}

fn recommend_body(customer: &str) -> Value {
    json!({"customer_id": customer, "k": 3, "candidates": ["p1", "p2", "p3"]})
}

fn is_error_json(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|e| !e.is_empty())
}

#[tokio::test]
async fn admin_routes_need_an_admin_key() {
    let app = TestApp::spawn(keyed_config()).await;
    let c = unique("c");
    let admin_gets = [
        "/v1/models".to_string(),
        "/v1/rules".to_string(),
        format!("/v1/features/customer/{c}"),
    ];
    for path in &admin_gets {
        let (s, headers, body) = call(&app, reqwest::Method::GET, path, None, Auth::None).await;
        assert_eq!(s, 401, "{path} without a key: {body}");
        assert!(is_error_json(&body), "{body}");
        assert!(headers.contains_key("www-authenticate"), "{path}");
        let (s, body) = get(&app, path, Auth::Header("nbk_not_a_configured_key")).await;
        assert_eq!(s, 401, "{path} with an unknown key: {body}");
        let (s, body) = get(&app, path, Auth::Header(CLIENT_KEY)).await;
        assert_eq!(s, 403, "{path} with a client key: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("admin")),
            "{body}"
        );
        let (s, body) = get(&app, path, Auth::Header(ADMIN_KEY)).await;
        assert_eq!(s, 200, "{path} with the admin key: {body}");
        let (s, body) = get(&app, path, Auth::Bearer(ADMIN_KEY)).await;
        assert_eq!(
            s, 200,
            "{path} with the admin key as a bearer token: {body}"
        );
    }
    // catalog writes
    let put = |auth| {
        call(
            &app,
            reqwest::Method::PUT,
            "/v1/items/sec-p1",
            Some(json!({"in_stock": 1})),
            auth,
        )
    };
    assert_eq!(put(Auth::None).await.0, 401);
    assert_eq!(put(Auth::Bearer(CLIENT_KEY)).await.0, 403);
    let (s, _, body) = put(Auth::Bearer(ADMIN_KEY)).await;
    assert_eq!(s, 200, "{body}");
    // an admin key may call the client routes too
    let (s, _, body) = call(
        &app,
        reqwest::Method::POST,
        "/v1/recommend",
        Some(recommend_body(&c)),
        Auth::Header(ADMIN_KEY),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // health and (by default) metrics stay open; unknown routes stay 404
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let (s, body) = get(&app, "/v1/nope", Auth::None).await;
    assert_eq!((s, is_error_json(&body)), (404, true), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn client_routes_need_a_client_key_once_configured() {
    let app = TestApp::spawn(keyed_config()).await;
    let c = unique("c");
    let post = |path: &'static str, body: Value, auth| {
        call(&app, reqwest::Method::POST, path, Some(body), auth)
    };
    let (s, _, body) = post("/v1/recommend", recommend_body(&c), Auth::None).await;
    assert_eq!(s, 401, "{body}");
    assert!(is_error_json(&body), "{body}");
    let (s, _, _) = post(
        "/v1/recommend",
        recommend_body(&c),
        Auth::Bearer("wrong-key"),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _, body) = post(
        "/v1/recommend",
        recommend_body(&c),
        Auth::Header(CLIENT_KEY),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["customer_id"], c.as_str());
    let (s, _, body) = post(
        "/v1/recommend",
        recommend_body(&c),
        Auth::Bearer(CLIENT_KEY),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let ev = event(&unique("e"), "page_view", &c, Some("p1"), now_ms());
    assert_eq!(post("/v1/events", ev.clone(), Auth::None).await.0, 401);
    let (s, _, body) = post("/v1/events", ev, Auth::Bearer(OTHER_CLIENT_KEY)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(get(&app, "/v1/features/item/p1", Auth::None).await.0, 401);
    assert_eq!(
        get(&app, "/v1/features/item/p1", Auth::Header(CLIENT_KEY))
            .await
            .0,
        200
    );
    // the `token` parameter is for the WebSocket only
    let r = app
        .client
        .post(format!("{}/v1/recommend?token={CLIENT_KEY}", app.base))
        .json(&recommend_body(&c))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 401);

    // the WebSocket: refused without a key, opened with `?token=` or a header
    let ws_base = format!(
        "{}/v1/stream?customer_id={c}",
        app.base.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(ws_base.clone()).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        Err(e) => panic!("expected a 401 answer to the upgrade, got {e}"),
        Ok(_) => panic!("the WebSocket opened without a key"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}&token={CLIENT_KEY}"))
        .await
        .expect("the WebSocket opens with ?token=");
    let first = next_json(&mut ws).await;
    assert_eq!(first["customer_id"], c.as_str());
    let mut req = ws_base.clone().into_client_request().expect("a request");
    req.headers_mut()
        .insert("x-api-key", CLIENT_KEY.parse().expect("a header value"));
    let (mut ws2, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the WebSocket opens with x-api-key");
    assert_eq!(next_json(&mut ws2).await["customer_id"], c.as_str());
    app.stop().await;
}

#[tokio::test]
async fn with_admin_keys_only_client_routes_stay_open_and_metrics_can_be_closed() {
    let mut cfg = base_config();
    cfg.security.keys = vec![key("ops", Role::Admin, ADMIN_KEY)];
    cfg.security.metrics_admin = true;
    let app = TestApp::spawn(cfg).await;
    let c = unique("c");
    let (s, _, body) = call(
        &app,
        reqwest::Method::POST,
        "/v1/recommend",
        Some(recommend_body(&c)),
        Auth::None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(get(&app, "/v1/models", Auth::None).await.0, 401);
    let metrics = |auth| {
        let rb = app.client.get(format!("{}/metrics", app.base));
        let rb = match auth {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        };
        async move { rb.send().await.expect("sent").status().as_u16() }
    };
    assert_eq!(metrics(None).await, 401);
    assert_eq!(metrics(Some(ADMIN_KEY)).await, 200);
    assert_eq!(get(&app, "/healthz", Auth::None).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn without_keys_everything_is_open() {
    let app = TestApp::spawn(base_config()).await;
    let c = unique("c");
    for path in [
        "/v1/models".to_string(),
        "/v1/rules".to_string(),
        format!("/v1/features/customer/{c}"),
        "/v1/features/item/p1".to_string(),
        "/metrics".to_string(),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    // a key sent anyway changes nothing
    let (s, _, body) = call(
        &app,
        reqwest::Method::POST,
        "/v1/recommend",
        Some(recommend_body(&c)),
        Auth::Header("whatever"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_past_the_burst() {
    let mut cfg = keyed_config();
    // one request back every 100 s: nothing refills during the test
    cfg.security.rate_limit.per_second = 0.01;
    cfg.security.rate_limit.burst = 3;
    let app = TestApp::spawn(cfg).await;
    let path = "/v1/features/item/p1";
    // the burst passes (positive control), the next is limited
    for i in 0..3 {
        let (s, body) = get(&app, path, Auth::Header(CLIENT_KEY)).await;
        assert_eq!(s, 200, "request {i} of the burst: {body}");
    }
    let (s, headers, body) = call(
        &app,
        reqwest::Method::GET,
        path,
        None,
        Auth::Header(CLIENT_KEY),
    )
    .await;
    assert_eq!(s, 429, "{body}");
    assert!(is_error_json(&body), "{body}");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=100).contains(&retry), "Retry-After: {retry}");
    assert_eq!(body["retry_after_secs"], retry);
    // limited on every route of the key, not per route
    let (s, _, _) = call(
        &app,
        reqwest::Method::POST,
        "/v1/recommend",
        Some(recommend_body("c1")),
        Auth::Header(CLIENT_KEY),
    )
    .await;
    assert_eq!(s, 429);
    // another key has its own bucket
    assert_eq!(get(&app, path, Auth::Header(OTHER_CLIENT_KEY)).await.0, 200);
    // requests without a valid key share their address's bucket: guessing
    // keys is limited too
    for i in 0..3 {
        let (s, _) = get(&app, path, Auth::Header(&format!("guess-{i}"))).await;
        assert_eq!(s, 401, "guess {i}");
    }
    assert_eq!(get(&app, path, Auth::Header("guess-3")).await.0, 429);
    let text = app.metrics().await;
    let limited = |caller: &str| {
        metric_sum(
            &text,
            "nextbest_http_rate_limited_total",
            &[&format!("caller=\"{caller}\"")],
        )
    };
    assert!(limited("shop") >= 2.0, "{text}");
    assert!(limited("peer") >= 1.0);
    assert_eq!(limited("app"), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn cors_answers_allowlisted_origins_only() {
    let mut cfg = keyed_config();
    cfg.security.cors_origins = vec!["https://shop.example".into()];
    let app = TestApp::spawn(cfg).await;
    let allow_origin = |origin: &'static str, key: Option<&'static str>| {
        let mut rb = app
            .client
            .post(format!("{}/v1/recommend", app.base))
            .header("origin", origin)
            .json(&recommend_body("c1"));
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        async move {
            let r = rb.send().await.expect("sent");
            (
                r.status().as_u16(),
                r.headers()
                    .get("access-control-allow-origin")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            )
        }
    };
    assert_eq!(
        allow_origin("https://shop.example", Some(CLIENT_KEY)).await,
        (200, Some("https://shop.example".into()))
    );
    // errors carry it too, so the page can read them
    assert_eq!(
        allow_origin("https://shop.example", None).await,
        (401, Some("https://shop.example".into()))
    );
    assert_eq!(
        allow_origin("https://evil.example", Some(CLIENT_KEY)).await,
        (200, None)
    );
    // a preflight from the allowed origin may send the key header
    let r = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/recommend", app.base),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key,content-type")
        .send()
        .await
        .expect("sent");
    assert!(r.status().is_success(), "{}", r.status());
    let allowed = r
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-api-key"), "{allowed}");
    app.stop().await;

    // without an allowlist: same origin only (no CORS header for any
    // other origin); `["*"]`: any origin
    for (origins, want) in [(vec![], None), (vec!["*".to_string()], Some("*"))] {
        let mut cfg = base_config();
        cfg.security.cors_origins = origins;
        let app = TestApp::spawn(cfg).await;
        let r = app
            .client
            .get(format!("{}/healthz", app.base))
            .header("origin", "https://anywhere.example")
            .send()
            .await
            .expect("sent");
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            want
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn request_sizes_are_bounded() {
    let mut cfg = base_config();
    cfg.http.max_body_bytes = 64 * 1024;
    let app = TestApp::spawn(cfg).await;
    let c = unique("c");
    // tens of thousands of candidates: 400 naming the field
    let many: Vec<String> = (0..20_000).map(|i| format!("p{i}")).collect();
    let mut cfg_big = base_config();
    cfg_big.http.max_body_bytes = 8 * 1024 * 1024;
    let big_app = TestApp::spawn(cfg_big).await;
    let (s, r) = big_app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "candidates": many}),
        )
        .await;
    assert_eq!((s, r["field"].as_str()), (400, Some("candidates")), "{r}");
    big_app.stop().await;
    // a body over http.max_body_bytes: 413 with a JSON body naming the limit
    let (s, r) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "candidates": many}),
        )
        .await;
    assert_eq!(s, 413, "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("65536")),
        "{r}"
    );
    // context: too many keys, a key or a value too long
    let keys: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!(1))).collect();
    let long_key: serde_json::Map<String, Value> =
        [("k".repeat(129), json!(1))].into_iter().collect();
    app.assert_field_errors(
        "/v1/recommend",
        &[
            (json!({"customer_id": c, "context": keys}), "context"),
            (json!({"customer_id": c, "context": long_key}), "context"),
            (
                json!({"customer_id": c, "context": {"page_category": "x".repeat(1025)}}),
                "context.page_category",
            ),
            (
                json!({"customer_id": c, "context": {"blob": vec!["abcdefgh"; 200]}}),
                "context.blob",
            ),
        ],
    )
    .await;
    // positive control: at the limits the request is answered
    let at_limit: serde_json::Map<String, Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (s, r) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "context": at_limit}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": c, "context": {"page_category": "x".repeat(1024)}}),
        )
        .await;
    assert_eq!(s, 200, "{r}");

    // the WebSocket: a small message is ignored, one over the limit closes it
    let url = format!(
        "{}/v1/stream?customer_id={c}",
        app.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    next_json(&mut ws).await;
    ws.send(Message::Text("hello".into())).await.expect("sent");
    let (s, _) = app
        .post(
            "/v1/events",
            json!(event(
                &unique("e"),
                "add_to_cart",
                &c,
                Some("ws-p"),
                now_ms()
            )),
        )
        .await;
    assert_eq!(s, 202);
    let pushed = next_json(&mut ws).await;
    assert_eq!(
        pushed["customer_id"],
        c.as_str(),
        "still open after a small message"
    );
    ws.send(Message::Text("x".repeat(100 * 1024).into()))
        .await
        .expect("sent");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a message over the limit closes the socket");
    app.stop().await;
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a push within 10 s")
            .expect("stream open")
            .expect("valid frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("push is JSON");
        }
    }
}

/// A redis-server that wants a password (killed on drop).
struct PasswordRedis {
    port: u16,
    child: Child,
}

impl PasswordRedis {
    fn start(password: &str) -> PasswordRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        PasswordRedis { port, child }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `nextbest serve` subprocess with its output captured.
struct Served {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    seen_stdout: String,
}

impl Served {
    fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Served {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nextbest"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .env_remove("NEXTBEST_REDIS_URL")
            .env_remove("NEXTBEST_KAFKA_BROKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("nextbest serve starts");
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Served {
            child,
            stdout: rx,
            stderr,
            seen_stdout: String::new(),
        }
    }

    /// The base URL once the summary printed it; None if the process ended first.
    fn base_url(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen_stdout.push_str(&line);
                    self.seen_stdout.push('\n');
                    if let Some(url) = line.trim().strip_prefix("url:") {
                        return Some(url.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no url within {within:?}; stdout so far:\n{}",
                        self.seen_stdout
                    )
                }
            }
        }
    }

    /// SIGTERM, a bounded wait for the exit (SIGKILL past it), then all its
    /// output: (exit success, stdout, stderr).
    fn finish(mut self, term: bool) -> (bool, String, String) {
        if term {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = std::mem::take(&mut self.seen_stdout);
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            out.push_str(&line);
            out.push('\n');
        }
        let err = self.stderr.join().unwrap_or_default();
        (status.is_some_and(|s| s.success()), out, err)
    }
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("temp dir");
    let p = dir.join("nextbest.toml");
    let mut f = std::fs::File::create(&p).expect("config file");
    f.write_all(text.as_bytes()).expect("written");
    p
}

#[test]
fn secrets_never_reach_the_logs() {
    let redis_pw = "redis-pw-5f0c3a9e71";
    let kafka_pw = "kafka-pw-81d2c4e6b0";
    let redis = PasswordRedis::start(redis_pw);
    let brokers = kafka_brokers();
    let repo = repo();
    let dir = std::env::temp_dir().join(unique("nextbest-security"));
    let config = write_config(
        &dir,
        &format!(
            r#"
http_addr = "127.0.0.1:0"
models_dir = "{models}"
features = "{features}"
[rules]
dir = "{rules}"
[store]
key_prefix = "{prefix}"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
consume = false
[kafka.properties]
"sasl.username" = "nextbest"
"sasl.password" = "{kafka_pw}"
[[security.keys]]
name = "ops"
role = "admin"
sha256 = "{admin}"
[[security.keys]]
name = "shop"
role = "client"
sha256 = "{client}"
"#,
            models = repo.join("models").display(),
            features = repo.join("feature-store/features.toml").display(),
            rules = repo.join("rules").display(),
            prefix = unique("sec"),
            group = unique("g"),
            admin = hash_hex(ADMIN_KEY.as_bytes()),
            client = hash_hex(CLIENT_KEY.as_bytes()),
        ),
    );
    // the password comes in the URL, through the environment as in production
    let url = format!("redis://:{redis_pw}@127.0.0.1:{}/", redis.port);
    let mut served = Served::start(&config, &[("NEXTBEST_REDIS_URL", &url)]);
    let base = served
        .base_url(Duration::from_secs(90))
        .expect("the server starts");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = unique("c");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let send = |rb: reqwest::RequestBuilder| async move {
            rb.send().await.expect("sent").status().as_u16()
        };
        let ev = event(&unique("e"), "page_view", &c, Some("p1"), now_ms());
        assert_eq!(
            send(
                client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(CLIENT_KEY)
                    .json(&ev)
            )
            .await,
            202
        );
        assert_eq!(
            send(
                client
                    .post(format!("{base}/v1/recommend"))
                    .header("x-api-key", CLIENT_KEY)
                    .json(&recommend_body(&c))
            )
            .await,
            200
        );
        assert_eq!(
            send(
                client
                    .get(format!("{base}/v1/models"))
                    .header("x-api-key", ADMIN_KEY)
            )
            .await,
            200
        );
        assert_eq!(
            send(
                client
                    .get(format!("{base}/v1/models"))
                    .header("x-api-key", CLIENT_KEY)
            )
            .await,
            403
        );
        assert_eq!(
            send(
                client
                    .get(format!("{base}/v1/models"))
                    .header("x-api-key", "nbk_wrong_guess")
            )
            .await,
            401
        );
        let readyz = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text");
        assert!(readyz.contains("\"store_ok\":true"), "{readyz}");
        assert!(!readyz.contains(redis_pw), "{readyz}");
        let ws = format!(
            "{}/v1/stream?customer_id={c}&token={CLIENT_KEY}",
            base.replace("http://", "ws://")
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(ws)
            .await
            .expect("ws opens");
        next_json(&mut socket).await;
    });
    let (_, stdout, stderr) = served.finish(true);
    let all = format!("{stdout}\n{stderr}");
    // positive controls: the output was captured, at debug level, and
    // names the store and the refusals without their secrets
    assert!(
        stdout.contains(&format!("redis://***@127.0.0.1:{}/", redis.port)),
        "{stdout}"
    );
    assert!(stderr.contains("request refused"), "{stderr}");
    assert!(stderr.contains("shutdown signal received"), "{stderr}");
    for secret in [ADMIN_KEY, CLIENT_KEY, "nbk_wrong_guess", redis_pw, kafka_pw] {
        assert!(!all.contains(secret), "`{secret}` was logged:\n{all}");
    }

    // a wrong password: the start-up error names the store, not the password
    let wrong = "wrong-pw-c39d1e7a55";
    let url = format!("redis://:{wrong}@127.0.0.1:{}/", redis.port);
    let mut failed = Served::start(&config, &[("NEXTBEST_REDIS_URL", &url)]);
    assert_eq!(
        failed.base_url(Duration::from_secs(60)),
        None,
        "it must not start"
    );
    let (ok, stdout, stderr) = failed.finish(false);
    assert!(!ok);
    assert!(
        stderr.contains("cannot connect to Redis at redis://***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains(wrong), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_cli_hashes_and_generates() {
    let bin = env!("CARGO_BIN_EXE_nextbest");
    let mut child = Command::new(bin)
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"test\n")
        .expect("written");
    let out = child.wait_with_output().expect("exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // printf %s test | sha256sum
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let out = Command::new(bin)
        .args(["keys", "generate", "--name", "storefront"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text.lines().next().expect("the key first").trim();
    assert!(key.starts_with("nbk_"), "{text}");
    let entry = text.split_once("[[security.keys]]").expect("an entry").1;
    let cfg: Config =
        toml::from_str(&format!("[[security.keys]]{entry}")).expect("the entry parses");
    assert_eq!(cfg.security.keys[0].sha256, hash_hex(key.as_bytes()));
    assert_eq!(cfg.security.keys[0].role, Role::Client);
}

#[test]
fn kafka_properties_and_rediss_urls_are_taken() {
    let mut cfg = nextbest::config::KafkaConfig::default();
    for (k, v) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "nextbest"),
        ("sasl.password", "pw"),
        ("client.id", "shop-eu-1"),
    ] {
        cfg.properties.0.insert(k.into(), v.into());
    }
    let c = nextbest::ingest::kafka::client_config("127.0.0.1:1", &cfg);
    assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(c.get("sasl.password"), Some("pw"));
    // a property overrides a base setting; the other base settings stay
    assert_eq!(c.get("client.id"), Some("shop-eu-1"));
    assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:1"));
    // librdkafka takes them: built with SSL and SCRAM (creating a client
    // does not connect yet)
    let producer: Result<rdkafka::producer::BaseProducer, _> = c.create();
    assert!(producer.is_ok(), "{:?}", producer.err());
    // rediss:// is understood (TLS compiled in); no connection is made here
    assert!(redis::Client::open("rediss://:pw@cache.example:6380/0").is_ok());
}
