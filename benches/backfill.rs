//! Backfill throughput on generated history (default 5M events):
//! aggregation (events/s, `select` + `aggregate` on all cores and on one)
//! and the Redis bulk write (keys/s, entities/s). Redis comes from
//! NEXTBEST_TEST_REDIS_URL, else a redis-server is started on a free port.
//!
//!   cargo bench --bench backfill                      # 5M events
//!   NEXTBEST_BENCH_EVENTS=500000 cargo bench --bench backfill
//!   NEXTBEST_BENCH_REDIS_CONFIG="zset-max-listpack-entries 512" cargo bench --bench backfill
//!   NEXTBEST_BENCH_ITEMS=50000 cargo bench --bench backfill   # items (default 20k)
//!
//! The last lines: the stream apply (the consumer's path) and one
//! popularity refresh (`Popularity::build`, as every instance runs it every
//! `recommend.popularity_refresh_secs`) on what the stream wrote, with the
//! Redis commands it cost (`INFO stats` before and after).

#[path = "../tests/common/mod.rs"]
mod common;

use common::Rng;

/// The allocator of the `nextbest` binary (src/main.rs), so the figures are its.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use nextbest::backfill::load::{self, BackfillJob};
use nextbest::backfill::progress::Progress;
use nextbest::backfill::{fold, select::select, write};
use nextbest::event::{Event, EventType};
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::FeatureStore;
use nextbest::features::FeatureSet;
use serde_json::{json, Map};
use std::sync::Arc;
use std::time::Instant;

const T_END: i64 = 1_793_491_200_000;
const DAY: i64 = 24 * 3_600_000;

/// `n` events of `customers` customers over `span_ms` (7 days unless
/// NEXTBEST_BENCH_SPAN_HOURS says), a realistic type mix.
fn generate(n: usize, customers: u64, items: u64, span_ms: i64) -> Vec<Event> {
    let mut r = Rng(0x5EED_1234_ABCD_0001);
    let kinds = [
        (EventType::PageView, 60),
        (EventType::Click, 15),
        (EventType::AddToCart, 10),
        (EventType::RemoveFromCart, 3),
        (EventType::Purchase, 3),
        (EventType::Search, 6),
        (EventType::SessionStart, 3),
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut pick = r.below(100);
        let mut kind = EventType::PageView;
        for (k, w) in kinds {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        let c = r.below(customers);
        let item = (kind != EventType::Search && kind != EventType::SessionStart)
            .then(|| format!("p{}", r.below(items)));
        let mut props = Map::new();
        props.insert("price".into(), json!((r.below(20000) as f64) / 100.0));
        props.insert("quantity".into(), json!(1 + r.below(3)));
        props.insert("category".into(), json!(format!("cat{}", r.below(20))));
        props.insert("dwell_ms".into(), json!(r.below(60000)));
        out.push(Event {
            event_id: format!("b{i}"),
            kind,
            customer_id: format!("c{c}"),
            ts: T_END - r.below(span_ms as u64) as i64,
            session_id: Some(format!("s{c}-{}", r.below(4))),
            item_id: item,
            seq: Some(i as i64),
            props,
        });
    }
    out
}

/// The bench's store on `url` under `key_prefix` (7-day dedupe, keys
/// expiring in an hour).
async fn bench_store(url: &str, key_prefix: String, set: Arc<FeatureSet>) -> RedisStore {
    RedisStore::connect(
        RedisSettings {
            url: url.to_string(),
            key_prefix,
            dedupe_window_ms: 7 * DAY,
            ttl_seconds: 3600,
            timeout_ms: 60_000,
            timer_shards: 16,
        },
        set,
    )
    .await
    .expect("redis connects")
}

/// Resident memory of this process (MiB), from /proc/self/statm; 0 where unknown.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| (pages * 4096) >> 20)
}

fn main() {
    let n: usize = std::env::var("NEXTBEST_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let customers = (n / 50).max(10) as u64;
    let items: u64 = std::env::var("NEXTBEST_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let set = Arc::new(
        FeatureSet::load(&common::repo().join("feature-store/features.toml"))
            .expect("features load"),
    );
    let t = Instant::now();
    // NEXTBEST_BENCH_SPAN_HOURS: how far back the events go (168, a week;
    // 24 puts every event in a live popularity bucket, as on a live stream)
    let span_ms: i64 = std::env::var("NEXTBEST_BENCH_SPAN_HOURS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(7 * DAY, |h| h.max(1) * 3_600_000);
    let events = Arc::new(generate(n, customers, items, span_ms));
    println!(
        "generated {n} events ({customers} customers, {items} items) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let threads = nextbest::backfill::cores();

    let t = Instant::now();
    let mut sum = 0.0;
    for e in events.iter() {
        sum += e.prop_f64("price").unwrap_or(0.0) + e.customer_id.len() as f64;
    }
    println!(
        "touching each event once: {:.2} M events/s ({sum:.0})",
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    let t = Instant::now();
    let mut updates = 0usize;
    for e in events.iter() {
        let p = nextbest::features::aggregate::plan_event(&set, e);
        updates += p.customer.len() + p.session.len() + p.item.len();
    }
    println!(
        "plan_event alone: {:.2} M events/s, {:.1} updates/event",
        n as f64 / t.elapsed().as_secs_f64() / 1e6,
        updates as f64 / n as f64
    );
    // The headline: the fold on all cores as `nextbest backfill` runs it,
    // each group handed on as soon as it is folded (here dropped at once,
    // as the writer drops it once written), so its memory is reused. First
    // in the process, so it pays for whatever fresh memory it needs.
    let rss_before = rss_mib();
    let t = Instant::now();
    let (idx, _, _) = select(&events, T_END, threads);
    let select_secs = t.elapsed().as_secs_f64();
    let handed = std::sync::atomic::AtomicUsize::new(0);
    fold::aggregate_each(&set, &events, &idx, threads, &|_| {}, &|g| {
        handed.fetch_add(g.events.len(), std::sync::atomic::Ordering::Relaxed);
        true
    });
    let stream_secs = t.elapsed().as_secs_f64();
    println!(
        "aggregate, streamed: {:.2} M events/s on {threads} threads ({stream_secs:.2} s, select {select_secs:.2} s); resident memory {rss_before} -> {} MiB",
        n as f64 / stream_secs / 1e6,
        rss_mib()
    );
    // every group held at once (what the write-only figure below needs)
    let rss_before = rss_mib();
    let t = Instant::now();
    let (idx, _, _) = select(&events, T_END, threads);
    let agg = fold::aggregate(&set, &events, &idx, threads);
    let agg_secs = t.elapsed().as_secs_f64();
    let groups = agg.len();
    println!(
        "aggregate, all groups held: {:.2} M events/s on {threads} threads ({agg_secs:.2} s); resident memory {rss_before} -> {} MiB",
        n as f64 / agg_secs / 1e6,
        rss_mib()
    );
    let t = Instant::now();
    let (idx, _, _) = select(&events, T_END, 1);
    let one = fold::aggregate(&set, &events, &idx, 1);
    let one_secs = t.elapsed().as_secs_f64();
    drop(one);
    println!(
        "aggregate, all groups held: {:.2} M events/s on 1 thread; {groups} entity groups",
        n as f64 / one_secs / 1e6,
    );

    if std::env::var_os("NEXTBEST_BENCH_SKIP_REDIS").is_some() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // NEXTBEST_TEST_REDIS_URL, else a redis-server of our own (stopped on drop)
        // (on a Redis of its own, the default key prefix, so keys are as
        // long as a default deployment's: Redis hashes every key several
        // times per write; on a shared one, a unique prefix)
        let mut own = None;
        let (url, key_prefix) = match std::env::var("NEXTBEST_TEST_REDIS_URL") {
            Ok(u) if !u.is_empty() => (u, common::unique("bench")),
            _ => {
                let r = common::RedisProc::start();
                let u = r.url();
                own = Some(r);
                (u, nextbest::config::StoreConfig::default().key_prefix)
            }
        };
        // NEXTBEST_BENCH_REDIS_CONFIG="name value ...": CONFIG SET first
        // (e.g. "zset-max-listpack-entries 512", feature-store/README.md)
        if let Ok(cfg) = std::env::var("NEXTBEST_BENCH_REDIS_CONFIG") {
            let words: Vec<&str> = cfg.split_whitespace().collect();
            let mut conn = redis::Client::open(url.as_str())
                .expect("redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("redis connects");
            for pair in words.chunks(2) {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(pair)
                    .query_async(&mut conn)
                    .await
                    .expect("CONFIG SET");
                println!("redis: CONFIG SET {}", pair.join(" "));
            }
        }
        let store = bench_store(&url, key_prefix.clone(), set.clone()).await;
        let job = BackfillJob {
            batch: std::env::var("NEXTBEST_BENCH_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
            in_flight: 4,
            as_of: T_END,
            ..BackfillJob::default()
        };
        let progress = Progress::hidden("bench", groups as u64);
        let t = Instant::now();
        let totals = write::write(&set, &store, &events, agg, &job, &progress)
            .await
            .expect("write");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "redis write: {:.0} keys/s ({} keys), {:.0} entities/s ({} entities), {:.0} events/s, {secs:.1} s; redis {}",
            totals.keys as f64 / secs,
            totals.keys,
            totals.entities as f64 / secs,
            totals.entities,
            n as f64 / secs,
            store.describe(),
        );
        println!(
            "aggregate, then write: {:.0} events/s",
            n as f64 / (secs + agg_secs)
        );
        // end to end as `nextbest backfill` runs it: the fold and the write
        // at once, into an empty keyspace again
        drop(store);
        let prefix = if own.is_some() {
            // (a plain connection: no response timeout, FLUSHALL of a
            // million keys takes seconds)
            let mut conn = redis::Client::open(url.as_str())
                .expect("redis url")
                .get_connection()
                .expect("redis connects");
            let _: () = redis::cmd("FLUSHALL").query(&mut conn).expect("flushall");
            key_prefix
        } else {
            common::unique("bench")
        };
        let store = bench_store(&url, prefix, set.clone()).await;
        let (idx, _, _) = select(&events, T_END, threads);
        let progress = Arc::new(Progress::hidden("bench", 0));
        let t = Instant::now();
        let done = load::aggregate_and_write(
            set.clone(),
            &store,
            events.clone(),
            idx,
            Vec::new(),
            &job,
            progress,
        )
        .await
        .expect("aggregate and write");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "end to end (aggregate and write at once): {:.0} events/s, {:.0} keys/s ({} keys, {secs:.1} s; fold done after {:.1} s)",
            n as f64 / secs,
            done.totals.keys as f64 / secs,
            done.totals.keys,
            done.aggregate_secs,
        );
        // the consumer's path: one update.lua call per event and entity
        // group, 500 events a pipeline, into an empty keyspace
        let stream_n = std::env::var("NEXTBEST_BENCH_STREAM_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000)
            .min(n);
        let store = bench_store(&url, common::unique("stream"), set.clone()).await;
        let plans: Vec<_> = events[..stream_n]
            .iter()
            .map(|e| nextbest::features::aggregate::plan_event(&set, e))
            .collect();
        let t = Instant::now();
        for chunk in plans.chunks(500) {
            store.apply(chunk, T_END).await.expect("stream apply");
        }
        println!(
            "stream apply (update.lua, 500 events a pipeline): {:.0} events/s ({stream_n} events)",
            stream_n as f64 / t.elapsed().as_secs_f64()
        );
        // one popularity refresh on what the stream wrote (as of its clock)
        let commands = || async {
            let mut conn = redis::Client::open(url.as_str())
                .expect("redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("redis connects");
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut conn)
                .await
                .expect("INFO stats");
            info.lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        // (the longest single command of the refreshes, from the slow log
        // with every command logged)
        let slowlog = |args: &'static [&'static str]| {
            let url = url.clone();
            async move {
                let mut conn = redis::Client::open(url.as_str())
                    .expect("redis url")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis connects");
                let v: redis::Value = redis::cmd(args[0])
                    .arg(&args[1..])
                    .query_async(&mut conn)
                    .await
                    .expect("slowlog");
                v
            }
        };
        slowlog(&["CONFIG", "SET", "slowlog-max-len", "100000"]).await;
        slowlog(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]).await;
        slowlog(&["SLOWLOG", "RESET"]).await;
        let mut best = f64::MAX;
        let mut calls = 0;
        let mut listed = 0;
        for _ in 0..3 {
            let before = commands().await;
            let t = Instant::now();
            let pop = nextbest::decide::popularity::Popularity::build(&store, T_END)
                .await
                .expect("popularity refresh");
            best = best.min(t.elapsed().as_secs_f64());
            // (the INFO call itself counts one)
            calls = commands().await.saturating_sub(before + 1);
            listed = pop.global.len() + pop.by_category.values().map(Vec::len).sum::<usize>();
        }
        let log = slowlog(&["SLOWLOG", "GET", "100000"]).await;
        slowlog(&["CONFIG", "SET", "slowlog-log-slower-than", "10000"]).await;
        let longest_us = match log {
            redis::Value::Array(entries) => entries
                .iter()
                .filter_map(|e| match e {
                    redis::Value::Array(f) => match f.get(2) {
                        Some(redis::Value::Int(us)) => Some(*us),
                        _ => None,
                    },
                    _ => None,
                })
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        println!(
            "popularity refresh: {:.1} ms (best of 3), {calls} redis commands, longest {longest_us} us, {listed} entries listed ({items} items)",
            best * 1e3
        );
        drop(own);
    });
}
