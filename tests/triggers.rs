//! Triggers end to end, against `nextbest serve` processes on a real
//! Redis and a real broker (Tansu), reading what they send on
//! `nextbest.actions`:
//! - a cart abandoned fires exactly once after its window
//!   (`NEXTBEST_CART_ABANDONMENT_AFTER_MS`), and a bought cart never (the
//!   other customer's firing is the positive control);
//! - the server SIGKILLed in the middle of the window and restarted still
//!   fires it once;
//! - two servers in one consumer group fire each customer's once;
//! - the dwell (threshold) and sequence triggers fire once per session;
//! - a broken trigger file is rejected (GET /v1/triggers, and `nextbest
//!   triggers check` exits non-zero) while the previous triggers keep
//!   firing (embedded mode: `GET /v1/actions`).
//!
//! Each test has a broker of its own (Tansu), so its servers see only its
//! events; Redis is shared, keys isolated by prefix.
//!
//! "Exactly once" is read off the topic after the timers' index is empty
//! (nothing can fire any more) and a marker on every partition came back,
//! so every action produced before it was read.

mod common;
use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ACTIONS: &str = "nextbest.actions";

/// Everything on `nextbest.actions`, read from the start of every
/// partition in the background (assigned, no group to join).
struct ActionsTap {
    brokers: String,
    seen: Arc<Mutex<Vec<Value>>>,
    markers: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
    partitions: Vec<i32>,
}

impl ActionsTap {
    fn start(brokers: &str) -> ActionsTap {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("tap"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("tap consumer");
        let meta = consumer
            .fetch_metadata(Some(ACTIONS), Duration::from_secs(10))
            .expect("actions topic metadata");
        let partitions: Vec<i32> = meta
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        assert!(!partitions.is_empty(), "{ACTIONS} has partitions");
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(ACTIONS, *p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let markers = Arc::new(Mutex::new(HashSet::new()));
        let (s, m) = (seen.clone(), markers.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok(msg) = consumer.recv().await else {
                    continue;
                };
                let Some(payload) = msg.payload() else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    continue;
                };
                if let Some(id) = v["marker"].as_str() {
                    m.lock().expect("markers").insert(id.to_string());
                    continue;
                }
                // the message key is the customer id
                assert_eq!(
                    msg.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    v["customer_id"].as_str().map(str::to_string),
                    "key = customer_id: {v}"
                );
                s.lock().expect("seen").push(v);
            }
        });
        ActionsTap {
            brokers: brokers.to_string(),
            seen,
            markers,
            task,
            partitions,
        }
    }

    /// The actions of `trigger` for `customer` read so far.
    fn of(&self, trigger: &str, customer: &str) -> Vec<Value> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|v| v["trigger"] == trigger && v["customer_id"] == customer)
            .cloned()
            .collect()
    }

    /// Waits for one action of `trigger` for `customer`.
    async fn first(&self, trigger: &str, customer: &str, within: Duration) -> Value {
        eventually(within, &format!("{trigger} for {customer}"), || async {
            self.of(trigger, customer).into_iter().next()
        })
        .await
    }

    /// Returns once everything produced to the topic before the call has
    /// been read: a marker sent to each partition came back.
    async fn drain(&self) {
        let p = producer_for(&self.brokers);
        let mut ids = Vec::new();
        for part in &self.partitions {
            let id = unique("marker");
            let payload = serde_json::to_vec(&json!({ "marker": id })).expect("json");
            p.send(
                FutureRecord::to(ACTIONS)
                    .partition(*part)
                    .key("marker")
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("marker: {e}"));
            ids.push(id);
        }
        eventually(Duration::from_secs(30), "the markers read back", || async {
            let m = self.markers.lock().expect("markers");
            ids.iter().all(|i| m.contains(i)).then_some(())
        })
        .await;
    }
}

impl Drop for ActionsTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until no timer under `prefix` is pending (nothing more can fire).
async fn until_no_timers(redis_url: &str, prefix: &str, within: Duration) {
    eventually(within, "no timer pending", || async {
        (pending_timers(redis_url, prefix).await == 0).then_some(())
    })
    .await;
}

fn config(prefix: &str, group: &str) -> String {
    format!(
        "[store]\nkey_prefix = \"{prefix}\"\n\
         [kafka]\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\n\
         [recommend]\npopularity_refresh_secs = 1\n[model]\nwatch = false\n[rules]\nwatch = false\n\
         [triggers]\nwatch = false\ntick_ms = 100\n"
    )
}

fn spec(redis: &str, brokers: &str, prefix: &str, group: &str, window_ms: u64) -> ServerSpec {
    ServerSpec {
        redis_url: Some(redis.to_string()),
        brokers: Some(brokers.to_string()),
        config: config(prefix, group),
        log_filter: None,
        env: vec![(
            "NEXTBEST_CART_ABANDONMENT_AFTER_MS".into(),
            window_ms.to_string(),
        )],
    }
}

async fn post(s: &ServerProc, events: Value) {
    let r = s.post("/v1/events", &events).await;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
}

fn cart(id: &str, customer: &str, ts: i64) -> Value {
    event(id, "add_to_cart", customer, Some("p-cart"), ts)
}

/// Waits until the consumer applies what is posted to `s` (its group joined).
async fn warm_up(s: &ServerProc) {
    let w = unique("warm");
    post(
        s,
        json!([event(&format!("{w}-1"), "search", &w, None, now_ms())]),
    )
    .await;
    eventually(Duration::from_secs(90), "the consumer applying", || async {
        (s.customer_feature(&w, "searches_1h").await >= 1.0).then_some(())
    })
    .await;
}

/// Waits until the consumer applied `n` add_to_cart events of `customer`.
async fn until_carted(s: &ServerProc, customer: &str, n: f64) {
    eventually(Duration::from_secs(90), "the cart applied", || async {
        (s.customer_feature(customer, "carts_24h").await >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_cart_fires_exactly_once_and_a_bought_one_never() {
    let (prefix, group) = (unique("ta"), unique("g"));
    // a broker of its own: every server consuming a shared one would
    // apply (and fire for) every test's events
    let tansu = TansuProc::start();
    let (redis, brokers) = (redis_url(), tansu.brokers());
    let s = ServerProc::start(spec(&redis, &brokers, &prefix, &group, 1_500)).await;
    let tap = ActionsTap::start(&brokers);
    warm_up(&s).await;
    let (left, bought) = (unique("left"), unique("bought"));
    let t = now_ms();
    post(
        &s,
        json!([
            cart(&format!("{left}-1"), &left, t),
            cart(&format!("{bought}-1"), &bought, t),
            event(
                &format!("{bought}-2"),
                "purchase",
                &bought,
                Some("p-cart"),
                t + 1
            ),
        ]),
    )
    .await;
    let a = tap
        .first("cart_abandonment", &left, Duration::from_secs(90))
        .await;
    assert_eq!(a["action"], "cart_reminder", "{a}");
    assert_eq!(a["reason"], "cart_abandoned", "{a}");
    assert_eq!(a["action_id"].as_str().map(str::len), Some(32), "{a}");
    let deadline = a["deadline"].as_i64().expect("deadline");
    assert_eq!(deadline, t + 1_500, "the window after the add_to_cart: {a}");
    assert!(a["fired_at"].as_i64().expect("fired_at") >= deadline, "{a}");
    assert!(a["items"].as_array().is_some_and(|i| i.len() <= 3), "{a}");
    assert_eq!(a["context"]["kind"], "inactivity", "{a}");
    assert_eq!(a["context"]["episode"], format!("{left}-1"), "{a}");
    assert_eq!(a["context"]["features"]["customer.cart_items"], 1.0, "{a}");
    until_no_timers(&redis, &prefix, Duration::from_secs(30)).await;
    tap.drain().await;
    assert_eq!(tap.of("cart_abandonment", &left).len(), 1, "exactly once");
    assert!(
        tap.of("cart_abandonment", &bought).is_empty(),
        "a bought cart is never abandoned"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "nextbest_trigger_fired_total",
            &["trigger=\"cart_abandonment\""]
        ),
        1.0
    );
    assert!(
        metric_sum(
            &m,
            "nextbest_trigger_cancelled_total",
            &["trigger=\"cart_abandonment\"", "by=\"event\""]
        ) >= 1.0
    );
    let (_, list) = s.get("/v1/triggers").await;
    let cart = list["triggers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "cart_abandonment"))
        .cloned()
        .expect("listed");
    assert_eq!(
        cart["pattern"]["after_ms"], 1_500,
        "the env override: {cart}"
    );
}

#[tokio::test]
async fn a_server_killed_mid_window_and_restarted_still_fires_once() {
    let (prefix, group) = (unique("tk"), unique("g"));
    // a broker of its own: every server consuming a shared one would
    // apply (and fire for) every test's events
    let tansu = TansuProc::start();
    let (redis, brokers) = (redis_url(), tansu.brokers());
    let mut s = ServerProc::start(spec(&redis, &brokers, &prefix, &group, 10_000)).await;
    let tap = ActionsTap::start(&brokers);
    warm_up(&s).await;
    let c = unique("c");
    let t = now_ms();
    post(&s, json!([cart(&format!("{c}-1"), &c, t)])).await;
    until_carted(&s, &c, 1.0).await;
    assert_eq!(pending_timers(&redis, &prefix).await, 1, "scheduled");
    assert!(now_ms() < t + 10_000, "killed before the deadline");
    s.kill();
    assert!(
        tap.of("cart_abandonment", &c).is_empty(),
        "not fired before the kill"
    );
    s.restart().await;
    let a = tap
        .first("cart_abandonment", &c, Duration::from_secs(60))
        .await;
    assert_eq!(a["deadline"].as_i64(), Some(t + 10_000), "{a}");
    until_no_timers(&redis, &prefix, Duration::from_secs(30)).await;
    tap.drain().await;
    assert_eq!(
        tap.of("cart_abandonment", &c).len(),
        1,
        "once across the restart"
    );
}

#[tokio::test]
async fn two_servers_in_one_group_fire_each_abandonment_once() {
    let (prefix, group) = (unique("t2"), unique("g"));
    // a broker of its own: every server consuming a shared one would
    // apply (and fire for) every test's events
    let tansu = TansuProc::start();
    let (redis, brokers) = (redis_url(), tansu.brokers());
    let a = ServerProc::start(spec(&redis, &brokers, &prefix, &group, 2_000)).await;
    let b = ServerProc::start(spec(&redis, &brokers, &prefix, &group, 2_000)).await;
    let tap = ActionsTap::start(&brokers);
    warm_up(&a).await;
    warm_up(&b).await;
    let customers: Vec<String> = (0..20).map(|i| unique(&format!("c{i}"))).collect();
    let t = now_ms();
    let events: Vec<Value> = customers
        .iter()
        .map(|c| cart(&format!("{c}-1"), c, t))
        .collect();
    // half posted to each; either may apply and either may fire
    post(&a, json!(events[..10])).await;
    post(&b, json!(events[10..])).await;
    for c in &customers {
        tap.first("cart_abandonment", c, Duration::from_secs(90))
            .await;
    }
    until_no_timers(&redis, &prefix, Duration::from_secs(30)).await;
    tap.drain().await;
    for c in &customers {
        assert_eq!(tap.of("cart_abandonment", c).len(), 1, "{c}: exactly once");
    }
    let fired = |m: &str| {
        metric_sum(
            m,
            "nextbest_trigger_fired_total",
            &["trigger=\"cart_abandonment\""],
        )
    };
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(fired(&ma) + fired(&mb), 20.0, "fired by the two together");
}

fn view(id: &str, customer: &str, session: &str, ts: i64, category: &str, dwell_ms: u64) -> Value {
    json!({
        "event_id": id, "type": "page_view", "customer_id": customer, "ts": ts,
        "session_id": session, "item_id": format!("p-{category}"),
        "props": {"category": category, "dwell_ms": dwell_ms, "price": 20.0}
    })
}

#[tokio::test]
async fn dwell_and_sequence_triggers_fire_once_per_session() {
    let (prefix, group) = (unique("ts"), unique("g"));
    // a broker of its own: every server consuming a shared one would
    // apply (and fire for) every test's events
    let tansu = TansuProc::start();
    let (redis, brokers) = (redis_url(), tansu.brokers());
    let s = ServerProc::start(spec(&redis, &brokers, &prefix, &group, 600_000)).await;
    let tap = ActionsTap::start(&brokers);
    warm_up(&s).await;
    let t = now_ms();
    // dwell: 70 s over two views in s1 (different categories: no sequence)
    let d = unique("dwell");
    post(
        &s,
        json!([
            view(&format!("{d}-1"), &d, "s1", t, "a", 30_000),
            view(&format!("{d}-2"), &d, "s1", t + 1, "b", 40_000),
        ]),
    )
    .await;
    let a = tap.first("help_offer", &d, Duration::from_secs(90)).await;
    assert_eq!(a["session_id"], "s1", "{a}");
    assert_eq!(
        a["context"]["features"]["session.dwell_ms"], 70_000.0,
        "{a}"
    );
    // more dwell in s1 (still over the threshold), then a new session over it
    post(
        &s,
        json!([view(&format!("{d}-3"), &d, "s1", t + 2, "c", 5_000)]),
    )
    .await;
    post(
        &s,
        json!([view(&format!("{d}-4"), &d, "s2", t + 3, "d", 61_000)]),
    )
    .await;
    eventually(Duration::from_secs(60), "help_offer in s2", || async {
        tap.of("help_offer", &d)
            .into_iter()
            .find(|a| a["session_id"] == "s2")
    })
    .await;

    // sequence: three views of shoes in s1, then a fourth; then three in s2
    let q = unique("seq");
    let views: Vec<Value> = (0..4)
        .map(|i| view(&format!("{q}-{i}"), &q, "s1", t + i, "shoes", 100))
        .collect();
    post(&s, json!(views)).await;
    let a = tap.first("size_guide", &q, Duration::from_secs(90)).await;
    assert_eq!(a["session_id"], "s1", "{a}");
    assert_eq!(
        a["context"]["event_id"],
        format!("{q}-2"),
        "the third view completes it: {a}"
    );
    let views: Vec<Value> = (0..3)
        .map(|i| view(&format!("{q}-s2-{i}"), &q, "s2", t + 10 + i, "hats", 100))
        .collect();
    post(&s, json!(views)).await;
    eventually(Duration::from_secs(60), "size_guide in s2", || async {
        tap.of("size_guide", &q)
            .into_iter()
            .find(|a| a["session_id"] == "s2")
    })
    .await;
    // the checks run in order: the s2 firings came after every s1 check
    tap.drain().await;
    let sessions = |trigger: &str, c: &str| -> Vec<String> {
        let mut s: Vec<String> = tap
            .of(trigger, c)
            .iter()
            .map(|a| a["session_id"].as_str().unwrap_or("").to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(sessions("help_offer", &d), ["s1", "s2"], "once per session");
    assert_eq!(sessions("size_guide", &q), ["s1", "s2"], "once per session");
    assert!(
        tap.of("size_guide", &d).is_empty(),
        "different categories are no sequence"
    );
}

const GOOD: &str = "[[trigger]]\nname = \"hello\"\nkind = \"threshold\"\ncondition = \"session.page_views >= 1.0\"\naction = \"hello_v1\"\n";
const BROKEN: &str = "[[trigger]]\nname = \"hello\"\nkind = \"threshold\"\ncondition = \"session.page_views >= \"\naction = \"hello_v2\"\n";
const FIXED: &str = "[[trigger]]\nname = \"hello\"\nkind = \"threshold\"\ncondition = \"session.page_views >= 1.0\"\naction = \"hello_v3\"\n";

#[tokio::test]
async fn a_broken_trigger_file_is_rejected_and_the_previous_triggers_keep_firing() {
    let dir = std::env::temp_dir().join(unique("nextbest-triggers"));
    std::fs::create_dir_all(&dir).expect("folder");
    let file = dir.join("hello.toml");
    std::fs::write(&file, GOOD).expect("write");
    let mut cfg = base_config();
    cfg.triggers.dir = dir.clone();
    cfg.triggers.reload_debounce_ms = 50;
    cfg.triggers.rescan_secs = 1;
    let app = TestApp::spawn(cfg).await;
    let fired = |c: String| {
        let app = &app;
        async move {
            let (_, r) = app.get(&format!("/v1/actions?customer_id={c}")).await;
            r["actions"]
                .as_array()
                .and_then(|a| a.first())
                .map(|a| a["action"].as_str().unwrap_or("").to_string())
        }
    };
    let t = now_ms();
    let c1 = unique("c");
    let (s, _) = app
        .post(
            "/v1/events",
            view(&format!("{c1}-1"), &c1, "s1", t, "a", 10),
        )
        .await;
    assert_eq!(s, 202);
    let got = eventually(Duration::from_secs(10), "hello for c1", || {
        fired(c1.clone())
    })
    .await;
    assert_eq!(got, "hello_v1");

    std::fs::write(&file, BROKEN).expect("write");
    let listed = eventually(
        Duration::from_secs(20),
        "the broken file rejected",
        || async {
            let (_, r) = app.get("/v1/triggers").await;
            (r["files"][0]["status"] == "rejected").then_some(r)
        },
    )
    .await;
    let f = &listed["files"][0];
    assert_eq!(f["line"], 4, "{f}");
    assert!(
        f["error"]
            .as_str()
            .is_some_and(|e| e.contains("hello.toml:4:")),
        "{f}"
    );
    assert_eq!(f["serving_previous"], true, "{f}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .current_dir(repo())
        .args(["triggers", "check"])
        .arg(&dir)
        .output()
        .expect("nextbest triggers check runs");
    assert!(!out.status.success(), "a broken file fails the check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hello.toml:4:"), "{stdout}");
    // the previous version still fires
    let c2 = unique("c");
    app.post(
        "/v1/events",
        view(&format!("{c2}-1"), &c2, "s1", t, "a", 10),
    )
    .await;
    let got = eventually(Duration::from_secs(10), "hello for c2", || {
        fired(c2.clone())
    })
    .await;
    assert_eq!(got, "hello_v1", "the previous trigger keeps firing");

    std::fs::write(&file, FIXED).expect("write");
    eventually(Duration::from_secs(20), "the fixed file loaded", || async {
        let (_, r) = app.get("/v1/triggers").await;
        (r["files"][0]["status"] == "active" && r["triggers"][0]["action"] == "hello_v3")
            .then_some(())
    })
    .await;
    let c3 = unique("c");
    app.post(
        "/v1/events",
        view(&format!("{c3}-1"), &c3, "s1", t, "a", 10),
    )
    .await;
    let got = eventually(Duration::from_secs(10), "hello for c3", || {
        fired(c3.clone())
    })
    .await;
    assert_eq!(got, "hello_v3");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .current_dir(repo())
        .args(["triggers", "check"])
        .arg(repo().join("triggers"))
        .output()
        .expect("nextbest triggers check runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook receiver: records each request (signature header, body) and
/// answers 500 to the first two of a `flaky` customer's, 200 after; 503
/// always to a `down` customer's.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let sig = headers
                    .get("x-nextbest-signature")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                // the signature is checked against the raw body here
                let valid = sig == nextbest::triggers::webhook::signature(b"hook-secret", &body);
                let customer = v["customer_id"].as_str().unwrap_or("").to_string();
                let mut l = g.lock().expect("requests");
                let before = l
                    .iter()
                    .filter(|(_, x)| x["customer_id"] == customer)
                    .count();
                l.push((if valid { "valid".into() } else { sig }, v));
                if customer.starts_with("down") {
                    StatusCode::SERVICE_UNAVAILABLE
                } else if before < 2 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

#[tokio::test]
async fn a_webhook_failing_twice_gets_one_signed_delivery_and_one_never_answering_a_dead_letter() {
    let (url, got) = webhook_receiver().await;
    let tansu = TansuProc::start();
    let (prefix, group) = (unique("tw"), unique("g"));
    let (redis, brokers) = (redis_url(), tansu.brokers());
    let mut sp = spec(&redis, &brokers, &prefix, &group, 1_000);
    sp.config.push_str(&format!(
        "[triggers.webhook]\nurl = \"{url}\"\nattempts = 3\nbackoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 2000\n"
    ));
    sp.env.push((
        "NEXTBEST_TRIGGERS_WEBHOOK_SECRET".into(),
        "hook-secret".into(),
    ));
    let s = ServerProc::start(sp).await;
    let tap = ActionsTap::start(&brokers);
    warm_up(&s).await;
    let (flaky, down) = (unique("flaky"), unique("down"));
    let t = now_ms();
    post(
        &s,
        json!([
            cart(&format!("{flaky}-1"), &flaky, t),
            cart(&format!("{down}-1"), &down, t)
        ]),
    )
    .await;
    let on_topic = tap
        .first("cart_abandonment", &flaky, Duration::from_secs(90))
        .await;
    // the dead letter of the one never answered
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("dlq"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("dlq consumer");
    let meta = dlq
        .fetch_metadata(Some("nextbest.actions.dlq"), Duration::from_secs(10))
        .expect("dlq topic exists");
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset("nextbest.actions.dlq", p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    dlq.assign(&tpl).expect("assign");
    let dead = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let m = dlq.recv().await.expect("dlq message");
            let v: Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null);
            if v["customer_id"] == down.as_str() {
                use rdkafka::message::Headers;
                let error = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "error"))
                    .and_then(|h| h.value)
                    .map(|b| String::from_utf8_lossy(b).to_string());
                return (v, error);
            }
        }
    })
    .await
    .expect("the never-answered action dead-lettered");
    assert_eq!(dead.0["trigger"], "cart_abandonment");
    assert!(
        dead.1
            .as_deref()
            .is_some_and(|e| e.contains("3 times") && e.contains("503")),
        "{:?}",
        dead.1
    );
    until_no_timers(&redis, &prefix, Duration::from_secs(30)).await;
    let requests = got.lock().expect("requests").clone();
    let of = |c: &str| -> Vec<&(String, Value)> {
        requests
            .iter()
            .filter(|(_, v)| v["customer_id"] == c)
            .collect()
    };
    let f = of(&flaky);
    assert_eq!(f.len(), 3, "two failures, then the one delivery");
    assert!(
        f.iter().all(|(sig, _)| sig == "valid"),
        "every attempt signed: {f:?}"
    );
    assert!(
        f.iter()
            .all(|(_, v)| v["action_id"] == on_topic["action_id"]),
        "the same action each time"
    );
    assert_eq!(of(&down).len(), 3, "three attempts, then the dead letter");
    tap.drain().await;
    assert_eq!(
        tap.of("cart_abandonment", &flaky).len(),
        1,
        "on the topic once"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "nextbest_trigger_webhook_attempts_total",
            &["result=\"ok\""]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "nextbest_trigger_webhook_dead_lettered_total", &[]),
        1.0
    );
}
