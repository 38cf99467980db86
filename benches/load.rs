//! Load test of the running server, end to end over loopback HTTP:
//!
//! 1. `/v1/recommend` with 100 candidates against the Redis store:
//!    sequential requests;
//! 2. closed loop at 1, 8, 32 and 128 connections (each connection sends its
//!    next request when the last one is answered): throughput, latency,
//!    fallbacks and 503s (shed requests), so overload shows as shedding or
//!    as a latency collapse;
//! 3. open loop at a fixed rate (default 1,000 req/s for 30 s; latency is
//!    measured from each request's scheduled start, so queueing counts)
//!    while events flow through Kafka at 2,000/s, with event → feature
//!    freshness probes under that load;
//! 4. event → feature freshness on an idle server: an event produced to
//!    Kafka, until its feature is visible in Redis.
//!
//! Needs Redis and a Kafka-protocol broker: `make bench` starts both and
//! sets NEXTBEST_TEST_REDIS_URL / NEXTBEST_TEST_KAFKA_BROKERS, and runs this
//! twice, item cache on (1 s) and off. The server runs in this process, so
//! client and server share the machine's 2 cores with Redis and the broker.
//! Knobs: NEXTBEST_BENCH_SECONDS (open loop, default 30),
//! NEXTBEST_BENCH_RATE (1000), NEXTBEST_BENCH_EVENT_RATE (2000),
//! NEXTBEST_BENCH_CLOSED_SECONDS (per connection count, default 5),
//! NEXTBEST_BENCH_CONNECTIONS (default "1,8,32,128"),
//! NEXTBEST_BENCH_ITEM_CACHE_MS (the server's `recommend.item_cache_ms`),
//! NEXTBEST_BENCH_MICRO_BATCH_US (`model.micro_batch_us`),
//! NEXTBEST_BENCH_CONCURRENCY (`http.recommend_concurrency`),
//! NEXTBEST_BENCH_QUEUE_MS (`http.recommend_queue_ms`).

use nextbest::app::App;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::{FeatureStore, ReadQuery};
use nextbest::features::FeatureSet;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/knobs.rs"]
mod knobs;
use knobs::{env, knob, server_config};

/// The allocator of the `nextbest` binary (src/main.rs), so the server in
/// this process allocates as it ships (glibc malloc took ~20 % of its CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How one request ended.
#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Ranked,
    Fallback(Why),
    Shed,
    Failed,
}

/// Why a request fell back (its `fallback_reason`).
#[derive(Clone, Copy, PartialEq)]
enum Why {
    /// The 200 ms budget ran out.
    Budget,
    /// Refused at once: too many requests waiting to be scored.
    Overload,
    Other,
}

fn why(reason: &serde_json::Value) -> Why {
    let r = reason.as_str().unwrap_or("");
    if r.contains("budget") {
        Why::Budget
    } else if r.contains("too many requests") {
        Why::Overload
    } else {
        Why::Other
    }
}

async fn recommend(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Outcome {
    match client.post(url).json(body).send().await {
        Ok(r) if r.status().as_u16() == 503 => {
            r.bytes().await.ok();
            Outcome::Shed
        }
        Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
            Ok(v) if v["fallback"] == false => Outcome::Ranked,
            Ok(v) => Outcome::Fallback(why(&v["fallback_reason"])),
            Err(_) => Outcome::Failed,
        },
        _ => Outcome::Failed,
    }
}

/// Counts of each outcome, as printed.
fn outcomes(v: &[Outcome]) -> String {
    let n = |o| v.iter().filter(|x| **x == o).count();
    let (budget, overload, other) = (
        n(Outcome::Fallback(Why::Budget)),
        n(Outcome::Fallback(Why::Overload)),
        n(Outcome::Fallback(Why::Other)),
    );
    format!(
        "{} fallbacks ({budget} budget, {overload} overload, {other} other), {} shed (503), {} failed",
        budget + overload + other,
        n(Outcome::Shed),
        n(Outcome::Failed)
    )
}

/// Produces a page view of the new customer `c` to Kafka, then polls
/// `store` until its `views_5m` counts it: the time from the produce, in ms.
async fn freshness(
    producer: &FutureProducer,
    store: &RedisStore,
    f: &nextbest::features::definition::FeatureDef,
    c: &str,
) -> f64 {
    let e = json!({"event_id": format!("{c}-e"), "type": "page_view", "customer_id": c, "ts": nextbest::now_ms(), "item_id": "bi1"});
    let payload = serde_json::to_vec(&e).expect("json");
    let t = Instant::now();
    producer
        .send(
            FutureRecord::to("events.page_view")
                .key(c)
                .payload(&payload),
            Duration::from_secs(5),
        )
        .await
        .expect("produced");
    loop {
        let r = store
            .read(&ReadQuery {
                customer_id: c,
                session_id: None,
                item_ids: &[],
            })
            .await
            .expect("read");
        let seen = nextbest::features::aggregate::numeric_value(f, &r.customer, nextbest::now_ms());
        if seen.unwrap_or(0.0) >= 1.0 {
            return t.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "event of {c} never became visible"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Request `i`: a customer of the seed and 100 of its items as candidates.
fn body(i: usize) -> serde_json::Value {
    let cands: Vec<String> = (0..100)
        .map(|j| format!("bi{}", (i * 13 + j * 10) % 1000))
        .collect();
    json!({"customer_id": format!("bc{}", i % 200), "k": 10, "candidates": cands, "context": {"is_mobile": i.is_multiple_of(2)}})
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
    let seconds = knob("NEXTBEST_BENCH_SECONDS", 30);
    let rate = knob("NEXTBEST_BENCH_RATE", 1000);
    let event_rate = knob("NEXTBEST_BENCH_EVENT_RATE", 2000);
    let closed_seconds = knob("NEXTBEST_BENCH_CLOSED_SECONDS", 5);
    let connections: Vec<usize> = std::env::var("NEXTBEST_BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "1,8,32,128".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("NEXTBEST_BENCH_CONNECTIONS: numbers")
        })
        .collect();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let prefix = format!("bench{}", nextbest::now_ms());
    let mut cfg = server_config(&redis_url, &brokers, &prefix);
    // each knob unset: the server's default
    cfg.recommend.item_cache_ms = knob("NEXTBEST_BENCH_ITEM_CACHE_MS", cfg.recommend.item_cache_ms);
    cfg.http.recommend_concurrency = knob(
        "NEXTBEST_BENCH_CONCURRENCY",
        cfg.http.recommend_concurrency as u64,
    ) as usize;
    cfg.http.recommend_queue_ms = knob("NEXTBEST_BENCH_QUEUE_MS", cfg.http.recommend_queue_ms);
    cfg.model.micro_batch_us = knob("NEXTBEST_BENCH_MICRO_BATCH_US", cfg.model.micro_batch_us);
    println!(
        "item cache: {} ms, micro-batching: {} µs, recommends in flight: {}, queue: {} ms",
        cfg.recommend.item_cache_ms,
        cfg.model.micro_batch_us,
        cfg.http.recommend_concurrency,
        cfg.http.recommend_queue_ms
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
    let store = Arc::new(
        RedisStore::connect(
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
        .expect("redis"),
    );
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

    let url = format!("{base}/v1/recommend");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let f = set.stored("customer.views_5m").expect("views_5m").clone();
    let mut table = vec![
        "\n| measurement (ms) | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|".to_string(),
    ];
    let mut notes = Vec::new();

    // sequential
    let n_seq = (closed_seconds * 200) as usize;
    let mut seq = Vec::with_capacity(n_seq);
    let mut server_total = Vec::with_capacity(n_seq);
    let mut fallbacks = 0;
    for i in 0..n_seq {
        let t = Instant::now();
        let r: serde_json::Value = client
            .post(&url)
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
    table.push(summary(
        "recommend, sequential, 100 candidates, Redis (client)",
        seq,
    ));
    table.push(summary(
        "  same, server-side `timings_us.total`",
        server_total,
    ));
    notes.push(format!("sequential: {fallbacks} fallbacks"));

    // closed loop at each connection count
    let mut closed = vec![
        "\n| closed loop, connections | req/s | p50 | p99 | max | outcomes |\n|---|---|---|---|---|---|".to_string(),
    ];
    for &conns in &connections {
        let until = Instant::now() + Duration::from_secs(closed_seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..conns {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = c * 7919;
                while Instant::now() < until {
                    let t = Instant::now();
                    let o = recommend(&client, &url, &body(i)).await;
                    out.push((t.elapsed().as_secs_f64() * 1000.0, o));
                    i += 1;
                }
                out
            }));
        }
        let mut lat = Vec::new();
        let mut outs = Vec::new();
        for t in tasks {
            for (ms, o) in t.await.expect("task") {
                lat.push(ms);
                outs.push(o);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let ranked = outs.iter().filter(|o| **o == Outcome::Ranked).count();
        lat.sort_by(f64::total_cmp);
        closed.push(format!(
            "| {conns} | {:.0} ({:.0} ranked) | {:.2} | {:.2} | {:.2} | {} |",
            outs.len() as f64 / secs,
            ranked as f64 / secs,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            outcomes(&outs)
        ));
    }

    // open loop at `rate` req/s, events flowing at `event_rate`/s, and
    // freshness probes (10/s) under that load
    let total = (seconds * rate) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(seconds);
    let flow = {
        let producer = producer.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start, Duration::from_millis(10));
            let per_tick = (event_rate / 100).max(1) as usize;
            let mut pending = Vec::new();
            let mut n = 0usize;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                for _ in 0..per_tick {
                    let kind = ["page_view", "page_view", "click", "add_to_cart"][n % 4];
                    let c = format!("bc{}", n % 200);
                    let e = json!({"event_id": format!("{prefix}-flow-{n}"), "type": kind, "customer_id": c,
                        "ts": nextbest::now_ms(), "session_id": format!("bs{}", n % 300), "item_id": format!("bi{}", (n * 11) % 1000),
                        "props": {"price": 20.0, "quantity": 1, "category": format!("cat{}", n % 20)}});
                    let payload = serde_json::to_vec(&e).expect("json");
                    let topic = format!("events.{kind}");
                    if let Ok(d) =
                        producer.send_result(FutureRecord::to(&topic).key(&c).payload(&payload))
                    {
                        pending.push(d);
                    }
                    n += 1;
                }
            }
            let mut delivered = 0usize;
            for d in pending {
                if matches!(d.await, Ok(Ok(_))) {
                    delivered += 1;
                }
            }
            (n, delivered)
        })
    };
    let probes = {
        let producer = producer.clone();
        let prefix = prefix.clone();
        let store = store.clone();
        let f = f.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            let mut tick = tokio::time::interval_at(start, Duration::from_millis(100));
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let c = format!("{prefix}-lfresh-{i}");
                i += 1;
                out.push(freshness(&producer, &store, &f, &c).await);
            }
            out
        })
    };
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + interval * i as u32;
        let client = client.clone();
        let url = url.clone();
        let b = body(i);
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let o = recommend(&client, &url, &b).await;
            (at.elapsed().as_secs_f64() * 1000.0, o)
        }));
    }
    let mut open = Vec::with_capacity(total);
    let mut open_outs = Vec::with_capacity(total);
    for h in handles {
        let (ms, o) = h.await.expect("task");
        open.push(ms);
        open_outs.push(o);
    }
    let achieved = total as f64 / (start.elapsed().as_secs_f64());
    let (produced, delivered) = flow.await.expect("event flow");
    let loaded_fresh = probes.await.expect("probes");
    table.push(summary(
        &format!("recommend, open loop {rate} req/s for {seconds} s, events {event_rate}/s (client, from schedule)"),
        open,
    ));
    table.push(summary(
        "event → feature visible in Redis under that load (Kafka produce → poll)",
        loaded_fresh,
    ));
    notes.push(format!(
        "open loop: {}; achieved {achieved:.0} req/s; events produced {produced}, delivered {delivered} ({:.0}/s)",
        outcomes(&open_outs),
        delivered as f64 / seconds as f64
    ));

    // event → feature freshness on the idle server (produce → visible in Redis)
    let mut fresh = Vec::new();
    for i in 0..200 {
        let c = format!("{prefix}-fresh-{i}");
        fresh.push(freshness(&producer, &store, &f, &c).await);
    }
    table.push(summary(
        "event → feature visible in Redis, idle (Kafka produce → poll)",
        fresh,
    ));

    for line in table.iter().chain(&closed) {
        println!("{line}");
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    std::process::exit(0);
}
