//! `/v1/stream`: a WebSocket that pushes a fresh recommendation when the
//! customer's features change.

mod common;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
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

#[tokio::test]
async fn feature_changes_push_fresh_recommendations() {
    let app = TestApp::spawn(base_config()).await;
    let c = unique("c");
    let url = format!(
        "{}/v1/stream?customer_id={c}&k=3",
        app.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let first = next_json(&mut ws).await;
    assert_eq!(first["customer_id"], c.as_str());
    let (s, _) = app
        .post(
            "/v1/events",
            json!(event("w1", "add_to_cart", &c, Some("ws-item"), now_ms())),
        )
        .await;
    assert_eq!(s, 202);
    let pushed = next_json(&mut ws).await;
    assert_ne!(pushed["request_id"], first["request_id"]);
    assert!(
        pushed["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["item_id"] == "ws-item")),
        "the carted item is recommended after the change: {pushed}"
    );
    // another customer's events push nothing to this socket
    app.post(
        "/v1/events",
        json!(event(
            "w2",
            "page_view",
            "someone-else",
            Some("x"),
            now_ms()
        )),
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err(),
        "no push for other customers"
    );
    let (s, r) = app.get("/v1/stream").await;
    assert_eq!((s, r["field"].clone()), (400, json!("customer_id")));
    app.stop().await;
}
