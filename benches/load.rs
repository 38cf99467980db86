//! Load test of the running server, end to end over loopback HTTP:
//!
//! 1. `/v1/recommend` with 100 candidates against the Redis store:
//!    sequential requests, then an open-loop 500 req/s schedule (latency is
//!    measured from each request's scheduled start, so queueing counts);
//! 2. event → feature freshness: an event produced to Kafka, until its
//!    feature is visible in Redis.
//!
//! Needs Redis and a Kafka-protocol broker: `make bench` starts both and
//! sets NEXTBEST_TEST_REDIS_URL / NEXTBEST_TEST_KAFKA_BROKERS. The server runs
//! in this process, so client and server share the machine's 2 cores.
//! Knobs: NEXTBEST_BENCH_SECONDS (default 10), NEXTBEST_BENCH_RATE (500),
//! NEXTBEST_BENCH_ITEM_CACHE_MS (the server's `recommend.item_cache_ms`),
//! NEXTBEST_BENCH_MICRO_BATCH_US (`model.micro_batch_us`).

use nextbest::app::App;
use nextbest::config::Config;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::{FeatureStore, ReadQuery};
use nextbest::features::FeatureSet;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; run `make bench`"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let redis_url = env("NEXTBEST_TEST_REDIS_URL");
    let brokers = env("NEXTBEST_TEST_KAFKA_BROKERS");
    let seconds: u64 = std::env::var("NEXTBEST_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rate: u64 = std::env::var("NEXTBEST_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let prefix = format!("bench{}", nextbest::now_ms());
    let mut cfg = Config {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        features: repo.join("feature-store/features.toml"),
        models_dir: repo.join("models"),
        ..Config::default()
    };
    cfg.store.redis_url = Some(redis_url.clone());
    cfg.store.key_prefix = prefix.clone();
    cfg.kafka.brokers = Some(brokers.clone());
    cfg.kafka.group_id = format!("{prefix}-group");
    cfg.kafka.session_timeout_ms = 6000;
    if let Some(ms) = std::env::var("NEXTBEST_BENCH_ITEM_CACHE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        cfg.recommend.item_cache_ms = ms;
    }
    if let Some(us) = std::env::var("NEXTBEST_BENCH_MICRO_BATCH_US")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        cfg.model.micro_batch_us = us;
    }
    println!(
        "item cache: {} ms, micro-batching: {} µs",
        cfg.recommend.item_cache_ms, cfg.model.micro_batch_us
    );
    let app = App::build(cfg).await.expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");

    // seed: 1,000 items and 200 customers with a few events each, in-band over HTTP → Kafka → Redis
    let now = nextbest::now_ms();
    let mut events = Vec::new();
    for i in 0..4000 {
        let kind = ["page_view", "page_view", "click", "add_to_cart"][i % 4];
        events.push(json!({"event_id": format!("{prefix}-seed-{i}"), "type": kind, "customer_id": format!("bc{}", i % 200),
            "ts": now - (i as i64) * 1000, "session_id": format!("bs{}", i % 300), "item_id": format!("bi{}", (i * 7) % 1000),
            "props": {"price": 10.0 + (i % 90) as f64, "quantity": 1, "category": format!("cat{}", i % 20)}}));
    }
    for chunk in events.chunks(1000) {
        let r = client
            .post(format!("{base}/v1/events"))
            .json(&chunk)
            .send()
            .await
            .expect("seed events");
        assert_eq!(
            r.status().as_u16(),
            202,
            "seeding failed: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let set =
        Arc::new(FeatureSet::load(&repo.join("feature-store/features.toml")).expect("features"));
    let store = RedisStore::connect(
        RedisSettings {
            url: redis_url.clone(),
            key_prefix: prefix.clone(),
            dedupe_window_ms: 86_400_000,
            ttl_seconds: 3600,
            timeout_ms: 2000,
            timer_shards: 16,
        },
        set.clone(),
    )
    .await
    .expect("redis");
    let seed_wait = Instant::now();
    loop {
        let n = store.item_ids().await.expect("items").len();
        if n >= 1000 {
            break;
        }
        assert!(
            seed_wait.elapsed() < Duration::from_secs(120),
            "seed events not consumed ({n} items)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "seeded 4,000 events in {:.1} s (HTTP → Kafka → consumer → Redis)",
        seed_wait.elapsed().as_secs_f64()
    );

    let body = |i: usize| {
        let cands: Vec<String> = (0..100)
            .map(|j| format!("bi{}", (i * 13 + j * 10) % 1000))
            .collect();
        json!({"customer_id": format!("bc{}", i % 200), "k": 10, "candidates": cands, "context": {"is_mobile": i.is_multiple_of(2)}})
    };
    // warm up
    for i in 0..200 {
        client
            .post(format!("{base}/v1/recommend"))
            .json(&body(i))
            .send()
            .await
            .expect("warm-up")
            .bytes()
            .await
            .ok();
    }

    // sequential
    let n_seq = (seconds * 200) as usize;
    let mut seq = Vec::with_capacity(n_seq);
    let mut server_total = Vec::with_capacity(n_seq);
    let mut fallbacks = 0;
    for i in 0..n_seq {
        let t = Instant::now();
        let r: serde_json::Value = client
            .post(format!("{base}/v1/recommend"))
            .json(&body(i))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        seq.push(t.elapsed().as_secs_f64() * 1000.0);
        server_total.push(r["timings_us"]["total"].as_f64().unwrap_or(f64::NAN) / 1000.0);
        if r["fallback"] == true {
            fallbacks += 1;
        }
    }

    // open loop at `rate` req/s
    let total = (seconds * rate) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + interval * i as u32;
        let client = client.clone();
        let url = format!("{base}/v1/recommend");
        let b = body(i);
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let r = client.post(url).json(&b).send().await;
            let ok = match r {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .map(|v| v["fallback"] == false)
                    .unwrap_or(false),
                Err(_) => false,
            };
            (at.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let mut open = Vec::with_capacity(total);
    let mut open_fallbacks = 0;
    for h in handles {
        let (ms, ok) = h.await.expect("task");
        open.push(ms);
        if !ok {
            open_fallbacks += 1;
        }
    }
    let achieved = total as f64 / (start.elapsed().as_secs_f64());

    // event → feature freshness (produce → visible in Redis)
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let f = set.stored("customer.views_5m").expect("views_5m").clone();
    let mut fresh = Vec::new();
    for i in 0..200 {
        let c = format!("{prefix}-fresh-{i}");
        let e = json!({"event_id": format!("{c}-e"), "type": "page_view", "customer_id": c, "ts": nextbest::now_ms(), "item_id": "bi1"});
        let payload = serde_json::to_vec(&e).expect("json");
        let t = Instant::now();
        producer
            .send(
                FutureRecord::to("events.page_view")
                    .key(&c)
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .expect("produced");
        loop {
            let r = store
                .read(&ReadQuery {
                    customer_id: &c,
                    session_id: None,
                    item_ids: &[],
                })
                .await
                .expect("read");
            if nextbest::features::aggregate::numeric_value(&f, &r.customer, nextbest::now_ms())
                .unwrap_or(0.0)
                >= 1.0
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "event never became visible"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        fresh.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    println!("\n| measurement (ms) | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
    println!(
        "{}",
        summary("recommend, sequential, 100 candidates, Redis (client)", seq)
    );
    println!(
        "{}",
        summary("  same, server-side `timings_us.total`", server_total)
    );
    println!(
        "{}",
        summary(
            &format!("recommend, open loop {rate} req/s for {seconds} s (client, from schedule)"),
            open
        )
    );
    println!(
        "{}",
        summary(
            "event → feature visible in Redis (Kafka produce → poll)",
            fresh
        )
    );
    println!("\nsequential fallbacks: {fallbacks}; open-loop failures/fallbacks: {open_fallbacks}; achieved rate {achieved:.0} req/s");
    std::process::exit(0);
}
