//! `/v1/stream` across instances: two `nextbest serve` processes on one
//! Redis and one broker. Instance A does not consume (`kafka.consume =
//! false`), so it can only hear of a change through the Redis change feed;
//! an event posted to B (produced, consumed and applied by B) must reach
//! the WebSocket on A, carrying what `/v1/recommend` answers (actions
//! included). Also in one process: a client that never reads is dropped
//! (its pushes are not buffered without bound), and a reading one is not.

mod common;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn next_json<S>(ws: &mut S, within: Duration) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(within, ws.next())
            .await
            .expect("a push in time")
            .expect("stream open")
            .expect("valid frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("push is JSON");
        }
    }
}

fn config(prefix: &str, group: &str, consume: bool) -> String {
    format!(
        "[store]\nkey_prefix = \"{prefix}\"\n\
         [kafka]\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\nconsume = {consume}\n\
         [recommend]\npopularity_refresh_secs = 1\n[model]\nwatch = false\n[rules]\nwatch = false\n"
    )
}

#[tokio::test]
async fn a_socket_on_one_instance_hears_an_event_applied_by_another() {
    let redis = RedisProc::start();
    let tansu = TansuProc::start();
    let (prefix, group) = (unique("x"), unique("g"));
    let spec = |consume| ServerSpec {
        redis_url: Some(redis.url()),
        brokers: Some(tansu.brokers()),
        config: config(&prefix, &group, consume),
        log_filter: None,
        env: Vec::new(),
    };
    let a = ServerProc::start(spec(false)).await;
    let b = ServerProc::start(spec(true)).await;
    // A is subscribed to the feed before anything is published
    eventually(
        Duration::from_secs(20),
        "A subscribed to the change feed",
        || async {
            (metric_sum(&a.metrics().await, "nextbest_change_feed_subscribed", &[]) == 1.0)
                .then_some(())
        },
    )
    .await;

    let c = unique("c");
    let url = format!(
        "{}/v1/stream?customer_id={c}&k=5",
        a.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let first = next_json(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(first["customer_id"], c.as_str());
    assert!(
        first["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["item_id"] != "xi-1")),
        "nothing carted yet: {first}"
    );

    let r = b
        .post(
            "/v1/events",
            &json!(event(
                &unique("e"),
                "add_to_cart",
                &c,
                Some("xi-1"),
                now_ms()
            )),
        )
        .await;
    assert_eq!(r.status().as_u16(), 202);
    // B's consumer may need a group join first: bounded, generous
    let pushed = next_json(&mut ws, Duration::from_secs(60)).await;
    assert_ne!(pushed["request_id"], first["request_id"]);
    let carted = pushed["items"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["item_id"] == "xi-1"))
        .unwrap_or_else(|| panic!("the carted item is in A's push: {pushed}"));
    assert_eq!(
        carted["action"], "complete_purchase",
        "the push carries the rules' actions: {pushed}"
    );
    // the same answer /v1/recommend gives (ids and actions; scores may move)
    let r = a
        .post("/v1/recommend", &json!({"customer_id": c, "k": 5}))
        .await;
    let rec: Value = r.json().await.expect("recommend JSON");
    let shape = |v: &Value| -> Vec<(Value, Value)> {
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| (i["item_id"].clone(), i["action"].clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        shape(&pushed),
        shape(&rec),
        "push {pushed} vs recommend {rec}"
    );
    // A applied nothing itself: the push came through Redis
    let am = a.metrics().await;
    assert_eq!(metric_sum(&am, "nextbest_events_applied_total", &[]), 0.0);
    let bm = b.metrics().await;
    assert!(metric_sum(&bm, "nextbest_events_applied_total", &[]) >= 1.0);
    assert!(metric_sum(&bm, "nextbest_change_feed_published_total", &[]) >= 1.0);
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped() {
    let mut cfg = base_config();
    cfg.stream.coalesce_ms = 0;
    cfg.stream.send_timeout_ms = 300;
    cfg.stream.max_write_buffer_bytes = 64 * 1024;
    let app = TestApp::spawn(cfg).await;
    // many items, so each push is large (k = 100)
    let items: Vec<Value> = (0..150)
        .map(|i| {
            event(
                &unique("e"),
                "page_view",
                "crowd",
                Some(&format!("big-item-{i:03}")),
                now_ms(),
            )
        })
        .collect();
    assert_eq!(app.post("/v1/events", json!(items)).await.0, 202);
    let c = unique("slow");
    let url = format!(
        "{}/v1/stream?customer_id={c}&k=100",
        app.base.replace("http://", "ws://")
    );
    // connected, then never read from
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let dropped = || async {
        let m = app.metrics().await;
        metric_sum(
            &m,
            "nextbest_stream_clients_dropped_total",
            &["reason=\"slow\""],
        )
    };
    let before = dropped().await;
    let mut sent = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dropped().await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow client was not dropped after {sent} changes"
        );
        let batch: Vec<Value> = (0..20)
            .map(|i| {
                event(
                    &unique("e"),
                    "click",
                    &c,
                    Some(&format!("big-item-{:03}", (sent + i) % 150)),
                    now_ms(),
                )
            })
            .collect();
        for e in batch {
            app.post("/v1/events", e).await;
            sent += 1;
        }
    }
    // positive control: a reading client on the same server keeps its stream
    let url = format!(
        "{}/v1/stream?customer_id={c}&k=3",
        app.base.replace("http://", "ws://")
    );
    let (mut ok, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let first = next_json(&mut ok, Duration::from_secs(10)).await;
    assert_eq!(first["customer_id"], c.as_str());
    app.post(
        "/v1/events",
        event(&unique("e"), "click", &c, Some("big-item-001"), now_ms()),
    )
    .await;
    let pushed = next_json(&mut ok, Duration::from_secs(10)).await;
    assert_ne!(
        pushed["request_id"], first["request_id"],
        "the reader still gets pushes"
    );
    // the slow socket was closed by the server: read now, it drains and ends
    let mut ws = ws;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the slow socket ends once its buffered pushes are read"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_changes_is_one_push() {
    let mut cfg = base_config();
    // wide enough that the burst below surely falls inside one window
    cfg.stream.coalesce_ms = 2000;
    let app = TestApp::spawn(cfg).await;
    let c = unique("burst");
    let url = format!(
        "{}/v1/stream?customer_id={c}&k=10",
        app.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let first = next_json(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(first["customer_id"], c.as_str());
    // five changes, each its own request (so five publishes)
    for i in 0..5 {
        let e = event(
            &unique("e"),
            "add_to_cart",
            &c,
            Some(&format!("burst-{i}")),
            now_ms(),
        );
        assert_eq!(app.post("/v1/events", e).await.0, 202);
    }
    let pushed = next_json(&mut ws, Duration::from_secs(10)).await;
    let ids: Vec<&str> = pushed["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["item_id"].as_str()).collect())
        .unwrap_or_default();
    for i in 0..5 {
        assert!(
            ids.contains(&format!("burst-{i}").as_str()),
            "one push holds all five: {pushed}"
        );
    }
    // and no second push for the same burst (bounded wait past the window)
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), ws.next())
            .await
            .is_err(),
        "the burst was pushed once"
    );
    // positive control: a later change is pushed again
    let e = event(
        &unique("e"),
        "add_to_cart",
        &c,
        Some("burst-late"),
        now_ms(),
    );
    assert_eq!(app.post("/v1/events", e).await.0, 202);
    let later = next_json(&mut ws, Duration::from_secs(10)).await;
    assert!(later["items"]
        .as_array()
        .is_some_and(|a| a.iter().any(|i| i["item_id"] == "burst-late")));
    app.stop().await;
}
