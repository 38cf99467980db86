//! Soak: a `nextbest serve` process under steady load for minutes, with
//! Redis killed and restarted once in the middle.
//!
//! - events produced to Kafka at NEXTBEST_SOAK_EVENT_RATE (2,000/s) by a
//!   plain producer batching 50 ms (2,000 customers, 5,000 items, page
//!   views, clicks, cart changes and purchases);
//! - `/v1/recommend` open loop at NEXTBEST_SOAK_RATE (500/s), 20 explicit
//!   candidates each, latency measured from each request's scheduled start;
//! - at half time Redis (append-only file, `everysec`) is SIGKILLed and
//!   started again after NEXTBEST_SOAK_OUTAGE_MS (2,000).
//!
//! Reports: recommends by outcome (ranked, fallback, error) inside and
//! outside the outage window (kill → `/readyz` 200 again + 2 s), latency
//! percentiles of each part, the server's resident memory (after the
//! warm-up, at the end, highest), the consumer lag (highest, and how long
//! after the last event the group had committed everything).
//!
//! It owns its Redis, its Tansu broker and the server process (the release
//! binary), so it needs nothing running:
//! `cargo bench --bench soak` (NEXTBEST_SOAK_SECONDS, default 600;
//! NEXTBEST_SOAK_PRODUCER_LINGER_MS, the load generator's `linger.ms`, 50:
//! at 5 ms its many small produce requests kept Tansu at 100 % of a core
//! and the consumer starved (benches/RESULTS.md);
//! NEXTBEST_SOAK_SERVER_TOML, config text appended to the server's).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{total, GroupProbe, RedisProc, ServerProc, ServerSpec, TansuProc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const CUSTOMERS: u64 = 2_000;
const ITEMS: u64 = 5_000;
const CANDIDATES: u64 = 20;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One recommend's outcome: when it was scheduled (s since start), its
/// latency from the schedule (ms), and what came back.
struct Outcome {
    at_s: f64,
    ms: f64,
    kind: Kind,
    /// The answer's `timings_us` (server-side stage times).
    stages: Vec<(String, u64)>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Ranked,
    Fallback,
    Error,
}

/// The `i`-th event of the run: a fixed mix of kinds over the customers
/// and items, dated now.
fn event(i: u64, run: &str) -> (String, &'static str, Vec<u8>) {
    let kind = match i % 20 {
        0..=13 => "page_view",
        14..=16 => "click",
        17 => "add_to_cart",
        18 => "remove_from_cart",
        _ => "purchase",
    };
    let c = (i * 7919) % CUSTOMERS;
    let item = (i * 104_729 + i / 3) % ITEMS;
    let customer = format!("sc{c}");
    let e = json!({"event_id": format!("{run}-{i}"), "type": kind, "customer_id": customer,
        "ts": nextbest::now_ms(), "session_id": format!("ss{c}-{}", i / 50_000), "item_id": format!("si{item}"),
        "props": {"price": 5.0 + (item % 150) as f64, "quantity": 1, "category": format!("cat{}", item % 25)}});
    (customer, kind, serde_json::to_vec(&e).expect("event json"))
}

fn recommend_body(i: u64) -> serde_json::Value {
    let cands: Vec<String> = (0..CANDIDATES)
        .map(|j| format!("si{}", (i * 31 + j * 211) % ITEMS))
        .collect();
    json!({"customer_id": format!("sc{}", i % CUSTOMERS), "k": 10, "candidates": cands})
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = knob("NEXTBEST_SOAK_SECONDS", 600);
    let rate = knob("NEXTBEST_SOAK_RATE", 500);
    let event_rate = knob("NEXTBEST_SOAK_EVENT_RATE", 2_000);
    let outage = Duration::from_millis(knob("NEXTBEST_SOAK_OUTAGE_MS", 2_000));
    let run = common::unique("soak");

    let mut redis = RedisProc::start_with_aof("everysec");
    // NEXTBEST_SOAK_TANSU_STORAGE: the broker's storage engine (memory by
    // default; `sqlite://tansu.db` with a Tansu built with libsql,
    // NEXTBEST_TANSU: see benches/RESULTS.md, "Soak")
    let tansu = match std::env::var("NEXTBEST_SOAK_TANSU_STORAGE") {
        Ok(storage) => TansuProc::start_with_storage(&storage),
        Err(_) => TansuProc::start(),
    };
    let group = format!("{run}-group");
    // NEXTBEST_SOAK_SERVER_TOML: more of the server's config (appended)
    let config = format!(
        "[store]\nkey_prefix = \"{run}\"\n[kafka]\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\n\
         [model]\nwatch = false\n[rules]\nwatch = false\n{}",
        std::env::var("NEXTBEST_SOAK_SERVER_TOML").unwrap_or_default()
    );
    let server = ServerProc::start(ServerSpec {
        redis_url: Some(redis.url()),
        brokers: Some(tansu.brokers()),
        config,
        log_filter: Some("warn,rdkafka=warn".into()),
        env: Vec::new(),
    })
    .await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set(
            "linger.ms",
            knob("NEXTBEST_SOAK_PRODUCER_LINGER_MS", 50).to_string(),
        )
        .set("acks", "all")
        .create()
        .expect("producer");
    // every topic exists before the group subscribes to the pattern and
    // the probe asks for partitions: one event of each kind
    let kinds = [
        "page_view",
        "click",
        "add_to_cart",
        "remove_from_cart",
        "purchase",
    ];
    for (n, kind) in kinds.iter().enumerate() {
        let (c, _, _) = event(n as u64, &run);
        let e = json!({"event_id": format!("{run}-init-{kind}"), "type": kind, "customer_id": c,
            "ts": nextbest::now_ms(), "item_id": "si0"});
        let payload = serde_json::to_vec(&e).expect("json");
        producer
            .send(
                FutureRecord::to(&format!("events.{kind}"))
                    .key(&c)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("first events produced");
    }
    let topics: Vec<String> = kinds.iter().map(|k| format!("events.{k}")).collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let probe = GroupProbe::new(&tansu.brokers(), &group, &topic_refs);
    println!(
        "soak: {seconds} s, events {event_rate}/s through Kafka, recommends {rate}/s ({CANDIDATES} candidates), \
         Redis killed at {} s for {} ms",
        seconds / 2,
        outage.as_millis()
    );

    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let produced = Arc::new(AtomicU64::new(0));
    let produce_errors = Arc::new(AtomicU64::new(0));

    // events: every 10 ms the batch due by then, sent without waiting for
    // the acks one by one
    let producing = {
        let producer = producer.clone();
        let produced = produced.clone();
        let errors = produce_errors.clone();
        let run = run.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut next = 0u64;
            let mut acks = tokio::task::JoinSet::new();
            while Instant::now() < end {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * event_rate as f64) as u64;
                while next < due {
                    let (key, kind, payload) = event(next, &run);
                    let producer = producer.clone();
                    let errors = errors.clone();
                    let produced = produced.clone();
                    acks.spawn(async move {
                        let topic = format!("events.{kind}");
                        let r = producer
                            .send(
                                FutureRecord::to(&topic).key(&key).payload(&payload),
                                Duration::from_secs(30),
                            )
                            .await;
                        match r {
                            Ok(_) => produced.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                    next += 1;
                }
                while acks.try_join_next().is_some() {}
            }
            while acks.join_next().await.is_some() {}
        })
    };

    // recommends, open loop
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let requesting = {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let url = format!("{}/v1/recommend", server.base);
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut i = 0u64;
            loop {
                let at = start + interval * i as u32;
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut stages = Vec::new();
                    let kind = match client.post(url).json(&recommend_body(i)).send().await {
                        Ok(r) if r.status().is_success() => {
                            match r.json::<serde_json::Value>().await {
                                Ok(v) => {
                                    if let Some(t) = v["timings_us"].as_object() {
                                        stages = t
                                            .iter()
                                            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                                            .collect();
                                    }
                                    if v["fallback"] == false {
                                        Kind::Ranked
                                    } else {
                                        Kind::Fallback
                                    }
                                }
                                Err(_) => Kind::Error,
                            }
                        }
                        _ => Kind::Error,
                    };
                    let _ = tx.send(Outcome {
                        at_s: (at - start).as_secs_f64(),
                        ms: at.elapsed().as_secs_f64() * 1000.0,
                        kind,
                        stages,
                    });
                });
                i += 1;
            }
        })
    };

    // the outage, and samples of memory and lag meanwhile
    let warm = start + Duration::from_secs((seconds / 10).clamp(5, 60));
    let kill_at = start + Duration::from_secs(seconds / 2);
    let mut rss = Vec::new();
    let mut rss_after_warmup = None;
    let mut max_lag = 0f64;
    let mut lag_now = 0f64;
    let mut outage_window = (f64::INFINITY, f64::INFINITY);
    let mut recovery = None;
    let mut sample = tokio::time::interval(Duration::from_secs(5));
    let mut killed = false;
    // the broker's and the server's CPU (share of one core) per minute line
    let cpu_of = |pid: u32| common::cpu_seconds(pid).unwrap_or(0.0);
    let mut cpu_mark = (
        Instant::now(),
        cpu_of(tansu.pid()),
        cpu_of(server.pid()),
        cpu_of(redis.pid()),
    );
    while Instant::now() < end {
        sample.tick().await;
        if let Some(kb) = server.rss_kb() {
            rss.push(kb);
            if rss_after_warmup.is_none() && Instant::now() >= warm {
                rss_after_warmup = Some(kb);
            }
        }
        if let Ok(text) = server
            .client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
        {
            let text = text.text().await.unwrap_or_default();
            let lag = common::metric_sum(&text, "nextbest_consumer_lag", &[]);
            max_lag = max_lag.max(lag);
            lag_now = lag;
        }
        let t = start.elapsed().as_secs();
        if t % 60 < 5 && t >= 60 {
            let (at, broker, srv, store) = (
                Instant::now(),
                cpu_of(tansu.pid()),
                cpu_of(server.pid()),
                cpu_of(redis.pid()),
            );
            let span = at.duration_since(cpu_mark.0).as_secs_f64().max(1e-3);
            // a restarted Redis counts from its start
            let store_used = if store >= cpu_mark.3 {
                store - cpu_mark.3
            } else {
                store
            };
            eprintln!(
                "  {t} s: {} events produced, RSS {} MB, consumer lag {lag_now:.0} ({max_lag:.0} highest so far), \
                 CPU broker {:.0} %, server {:.0} %, Redis {:.0} %",
                produced.load(Ordering::Relaxed),
                rss.last().copied().unwrap_or(0) / 1024,
                (broker - cpu_mark.1) / span * 100.0,
                (srv - cpu_mark.2) / span * 100.0,
                store_used / span * 100.0,
            );
            cpu_mark = (at, broker, srv, store);
        }
        if !killed && Instant::now() >= kill_at {
            killed = true;
            let t0 = Instant::now();
            redis.kill();
            tokio::time::sleep(outage).await;
            redis.restart();
            let back = t0.elapsed();
            let ready = loop {
                let ok = server
                    .client
                    .get(format!("{}/readyz", server.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break t0.elapsed();
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "/readyz not 200 within 60 s of the Redis restart"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            outage_window = (
                (t0 - start).as_secs_f64(),
                (t0 - start).as_secs_f64() + ready.as_secs_f64() + 2.0,
            );
            recovery = Some((back, ready));
        }
    }
    producing.await.expect("producer task");
    requesting.await.expect("request task");
    let last_event = Instant::now();
    let ends = probe.mark_ends(&producer).await;
    // bounded: a consumer that cannot keep up is a finding, reported below
    let caught_up = loop {
        if probe.committed_up_to(&ends) {
            break Some(last_event.elapsed());
        }
        if last_event.elapsed() > Duration::from_secs(300) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rss_end = server.rss_kb();
    // every request task has finished (5 s client timeout) once the
    // channel is closed
    let mut outcomes = Vec::new();
    while let Some(o) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten()
    {
        outcomes.push(o);
    }

    let inside = |o: &Outcome| o.at_s >= outage_window.0 && o.at_s < outage_window.1;
    let report = |name: &str, sel: &dyn Fn(&Outcome) -> bool| {
        let part: Vec<&Outcome> = outcomes.iter().filter(|o| sel(o)).collect();
        let count = |k: Kind| part.iter().filter(|o| o.kind == k).count();
        let mut ms: Vec<f64> = part.iter().map(|o| o.ms).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            part.len(),
            count(Kind::Ranked),
            count(Kind::Fallback),
            count(Kind::Error),
            pct(&ms, 0.5),
            pct(&ms, 0.9),
            pct(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN)
        );
    };
    println!("\n| recommends | n | ranked | fallback | error | p50 ms | p90 | p99 | max |\n|---|---|---|---|---|---|---|---|---|");
    report("outside the outage", &|o| !inside(o));
    report(
        &format!(
            "outage window ({:.0}–{:.0} s)",
            outage_window.0, outage_window.1
        ),
        &inside,
    );
    report("all", &|_| true);
    // when the fallbacks and errors outside the outage came (s since start)
    let odd: Vec<String> = outcomes
        .iter()
        .filter(|o| !inside(o) && o.kind != Kind::Ranked)
        .take(20)
        .map(|o| format!("{:.1} s ({:?}, {:.0} ms)", o.at_s, o.kind, o.ms))
        .collect();
    if !odd.is_empty() {
        println!(
            "\nnot ranked outside the outage (first 20): {}",
            odd.join(", ")
        );
    }
    // where the time of the ranked answers outside the outage went
    let mut stages: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for o in outcomes
        .iter()
        .filter(|o| !inside(o) && o.kind == Kind::Ranked)
    {
        for (k, us) in &o.stages {
            stages.entry(k).or_default().push(*us as f64 / 1000.0);
        }
    }
    println!(
        "\n| server stage, ranked outside the outage (ms) | p50 | p90 | p99 |\n|---|---|---|---|"
    );
    for (k, mut v) in stages {
        v.sort_by(f64::total_cmp);
        println!(
            "| {k} | {:.2} | {:.2} | {:.2} |",
            pct(&v, 0.5),
            pct(&v, 0.9),
            pct(&v, 0.99)
        );
    }
    let mb = |kb: Option<u64>| kb.map_or(f64::NAN, |k| k as f64 / 1024.0);
    println!(
        "\nevents produced: {} (errors {}), committed by the group: {}",
        produced.load(Ordering::Relaxed),
        produce_errors.load(Ordering::Relaxed),
        total(&probe.committed())
    );
    if let Some((back, ready)) = recovery {
        println!(
            "Redis killed, restarted after {:.1} s; /readyz 200 {:.0} ms after the kill",
            back.as_secs_f64(),
            ready.as_secs_f64() * 1000.0
        );
    }
    println!(
        "server RSS: {:.0} MB after warm-up, {:.0} MB at the end, {:.0} MB highest",
        mb(rss_after_warmup),
        mb(rss_end),
        mb(rss.iter().max().copied())
    );
    match caught_up {
        Some(d) => println!(
            "consumer lag: highest sampled {max_lag:.0} messages; everything committed {:.1} s after the last event",
            d.as_secs_f64()
        ),
        None => println!(
            "consumer lag: highest sampled {max_lag:.0} messages; NOT caught up 300 s after the last event \
             ({} of {} committed)",
            total(&probe.committed()),
            total(&ends)
        ),
    }
    // what the server says it dropped or skipped under the load
    let text = server.metrics().await;
    for name in [
        "nextbest_trigger_checks_skipped_total",
        "nextbest_events_dead_lettered_total",
        "nextbest_trigger_fired_total",
    ] {
        println!("{name}: {:.0}", common::metric_sum(&text, name, &[]));
    }
    // stop what it started (exit skips destructors), then exit at once
    // (the producer's and client's background threads need not wind down)
    drop(server);
    drop(tansu);
    drop(redis);
    std::process::exit(0);
}
