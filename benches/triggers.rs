//! Trigger timers at scale: NEXTBEST_BENCH_TIMERS (10,000) abandoned carts
//! pending at once in a `nextbest serve` process on its own Redis and
//! Tansu, their deadlines spread over NEXTBEST_BENCH_SPREAD_MS (10,000),
//! each NEXTBEST_BENCH_WINDOW_MS (30,000; `NEXTBEST_CART_ABANDONMENT_AFTER_MS`)
//! after its add_to_cart. The shipped `cart_abandonment` trigger runs as
//! shipped (its `when`, contact cap and `recommend = 3` included).
//!
//! Reports: timers pending when the first deadline came, then from the
//! actions read back off `nextbest.actions`: fire lag (the message's
//! `fired_at` − `deadline`: claim + checks + recommend + broker ack) p50 /
//! p99 / max, and timers fired per second (first to last `fired_at`).
//! Exactly once is checked too (one action per customer).
//!
//! `cargo bench --bench triggers` (needs nothing running; results with the
//! command in benches/RESULTS.md, from a quiet machine).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{RedisProc, ServerProc, ServerSpec, TansuProc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n = knob("NEXTBEST_BENCH_TIMERS", 10_000) as i64;
    let spread = knob("NEXTBEST_BENCH_SPREAD_MS", 10_000) as i64;
    let window = knob("NEXTBEST_BENCH_WINDOW_MS", 30_000) as i64;
    let redis = RedisProc::start();
    let tansu = TansuProc::start();
    let prefix = common::unique("bt");
    let server = ServerProc::start(ServerSpec {
        redis_url: Some(redis.url()),
        brokers: Some(tansu.brokers()),
        config: format!(
            "[store]\nkey_prefix = \"{prefix}\"\n[kafka]\ngroup_id = \"bench\"\nsession_timeout_ms = 6000\n\
             [model]\nwatch = false\n[rules]\nwatch = false\n[triggers]\nwatch = false\n"
        ),
        log_filter: Some("warn,rdkafka=warn".into()),
        env: vec![(
            "NEXTBEST_CART_ABANDONMENT_AFTER_MS".into(),
            window.to_string(),
        )],
    })
    .await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("group.id", "bench-tap")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let meta = consumer
        .fetch_metadata(Some("nextbest.actions"), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset("nextbest.actions", p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");

    // the carts, deadlines spread evenly after the window
    let t0 = common::now_ms();
    let started = Instant::now();
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"event_id": format!("b{i}"), "type": "add_to_cart", "customer_id": format!("c{i}"),
                   "item_id": format!("p{}", i % 500), "session_id": format!("s{i}"),
                   "ts": t0 + i * spread / n.max(1), "props": {"price": 20.0, "quantity": 1}})
        })
        .collect();
    for chunk in events.chunks(1000) {
        let r = server
            .post("/v1/events", &Value::Array(chunk.to_vec()))
            .await;
        assert_eq!(r.status().as_u16(), 202, "events accepted");
    }
    println!(
        "{n} carts produced in {:.1} s; first deadline in {:.1} s",
        started.elapsed().as_secs_f64(),
        (t0 + window - common::now_ms()) as f64 / 1000.0
    );
    let first_due = Duration::from_millis((t0 + window - common::now_ms()).max(0) as u64);
    tokio::time::sleep(first_due.saturating_sub(Duration::from_millis(200))).await;
    let at_first = common::pending_timers(&redis.url(), &prefix).await;
    println!("timers pending at the first deadline: {at_first} (of {n})");

    let mut lags: Vec<i64> = Vec::with_capacity(n as usize);
    let mut fired: HashMap<String, u32> = HashMap::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let give_up = Instant::now() + Duration::from_millis((spread + 120_000) as u64);
    while (lags.len() as i64) < n && Instant::now() < give_up {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        let (Some(d), Some(f)) = (v["deadline"].as_i64(), v["fired_at"].as_i64()) else {
            continue;
        };
        *fired
            .entry(v["customer_id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
        lags.push(f - d);
        first = first.min(f);
        last = last.max(f);
    }
    lags.sort_unstable();
    let repeats = fired.values().filter(|c| **c > 1).count();
    println!(
        "fired {} of {n} ({} customers, {repeats} more than once)",
        lags.len(),
        fired.len()
    );
    println!(
        "fire lag ms: p50 {} p99 {} max {}",
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags.last().copied().unwrap_or(-1)
    );
    if last > first {
        println!(
            "timers/s: {:.0} (first to last fired_at, {:.1} s; deadlines spread over {:.1} s)",
            lags.len() as f64 * 1000.0 / (last - first) as f64,
            (last - first) as f64 / 1000.0,
            spread as f64 / 1000.0
        );
    }
}
