//! A replay through Kafka into a `nextbest serve` process that is SIGKILLed
//! at random moments: a history of purchases and page views with
//! redeliveries (same event id) is produced to a broker of its own, the
//! server consumes it and is killed each time the group's committed
//! offsets pass a random fraction of the history (plus a random few ms, so
//! the kill lands anywhere in a batch), then restarted; at the end every
//! customer's purchase count, spend and view count must be exact.
//! `tests/faults.rs` runs it on 20,000 events, `benches/crash_replay.rs` on
//! 100,000.

use super::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;

/// Customers of the history.
pub const REPLAY_CUSTOMERS: u64 = 200;

/// One kill during the replay.
#[derive(Debug)]
pub struct Kill {
    /// Committed messages / all messages when the server was killed.
    pub at: f64,
    /// From the restart until the group committed more than at the kill.
    pub resumed_after: Duration,
}

/// What a replay did and found.
#[derive(Debug)]
pub struct ReplayReport {
    pub events: usize,
    pub redelivered: usize,
    pub produce: Duration,
    pub kills: Vec<Kill>,
    /// From the first start until everything was committed.
    pub consume: Duration,
    /// Customers whose features differ from the history, with both values.
    pub mismatches: Vec<String>,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kills: Vec<String> = self
            .kills
            .iter()
            .map(|k| {
                format!(
                    "at {:.0} % (resumed {:.1} s after the restart)",
                    k.at * 100.0,
                    k.resumed_after.as_secs_f64()
                )
            })
            .collect();
        write!(
            f,
            "{} events + {} redelivered to {REPLAY_CUSTOMERS} customers, produced in {:.1} s; \
             consumed in {:.1} s with {} SIGKILLs ({}); {} customers wrong",
            self.events,
            self.redelivered,
            self.produce.as_secs_f64(),
            self.consume.as_secs_f64(),
            self.kills.len(),
            kills.join(", "),
            self.mismatches.len()
        )
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Expected {
    purchases: f64,
    spend: f64,
    views: f64,
}

/// The history: `n` distinct events (60 % purchases with whole prices, 40 %
/// page views, all within the last 30 minutes) plus 5 % redeliveries,
/// shuffled; and what each customer's features must be.
fn history(
    tag: &str,
    n: usize,
    r: &mut Rng,
) -> (Vec<serde_json::Value>, BTreeMap<String, Expected>) {
    let now = now_ms();
    let mut events = Vec::with_capacity(n + n / 20);
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for i in 0..n {
        let c = format!("{tag}-c{}", r.below(REPLAY_CUSTOMERS));
        let ts = now - r.below(1_800_000) as i64;
        let item = format!("p{}", r.below(500));
        let x = expected.entry(c.clone()).or_default();
        let e = if r.below(10) < 6 {
            let (price, quantity) = (1 + r.below(100), 1 + r.below(3));
            x.purchases += 1.0;
            x.spend += (price * quantity) as f64;
            serde_json::json!({"event_id": format!("{tag}-{i}"), "type": "purchase", "customer_id": c,
                "ts": ts, "item_id": item, "props": {"price": price, "quantity": quantity}})
        } else {
            x.views += 1.0;
            serde_json::json!({"event_id": format!("{tag}-{i}"), "type": "page_view", "customer_id": c,
                "ts": ts, "item_id": item})
        };
        events.push(e);
    }
    redeliver_and_shuffle(&mut events, r, n / 20);
    (events, expected)
}

/// Produces every event to `events.<type>`, key = customer, acks from all.
async fn produce_all(brokers: &str, events: &[serde_json::Value]) {
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("replay producer");
    for chunk in events.chunks(5000) {
        let sends = chunk.iter().map(|e| {
            let topic = format!("events.{}", e["type"].as_str().unwrap_or("?"));
            let key = e["customer_id"].as_str().unwrap_or("?").to_string();
            let payload = serde_json::to_vec(e).expect("json");
            let p = &p;
            async move {
                p.send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| format!("{topic}: {e}"))
            }
        });
        for r in futures::future::join_all(sends).await {
            r.expect("replayed event acknowledged");
        }
    }
}

/// Waits (polling every 5 ms, at most `within`) until the group has
/// committed at least `at_least` messages; returns how many.
async fn committed_at_least(probe: &GroupProbe, at_least: i64, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let done = total(&tokio::task::block_in_place(|| probe.committed()));
        if done >= at_least {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "the group committed {done} of the {at_least} messages waited for within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The replay: `n` events (+5 % redelivered) against Redis at `redis_url`
/// (a fresh key prefix) and a broker of its own, `kills` SIGKILLs.
/// Needs a multi-threaded runtime (it polls the broker in `block_in_place`).
pub async fn crash_replay(redis_url: &str, n: usize, kills: usize, seed: u64) -> ReplayReport {
    let tansu = TansuProc::start();
    let brokers = tansu.brokers();
    let tag = unique("replay");
    let mut r = Rng(seed);
    let (events, expected) = history(&tag, n, &mut r);
    let topics = ["events.purchase", "events.page_view"];
    nextbest::ingest::kafka::ensure_topics(&brokers, &nextbest::config::KafkaConfig::default())
        .await
        .expect("topics created");
    let t = Instant::now();
    produce_all(&brokers, &events).await;
    let produce = t.elapsed();
    let group = unique("g");
    let probe = GroupProbe::new(&brokers, &group, &topics);
    // offsets start at 0 on each partition: all committed = this sum
    let end = events.len() as i64;

    // batches of 500 (the default is 5,000): the replay then takes many
    // batches and commits, so the kills land between and inside them
    let spec = ServerSpec {
        redis_url: Some(redis_url.to_string()),
        brokers: Some(brokers.clone()),
        config: format!(
            "[store]\nkey_prefix = \"{tag}\"\n[kafka]\ngroup_id = \"{group}\"\nsession_timeout_ms = 3000\nbatch_size = 500\n\
             [model]\nwatch = false\n[rules]\nwatch = false\n"
        ),
        log_filter: None,
        env: Vec::new(),
    };
    let started = Instant::now();
    let mut server = ServerProc::start(spec).await;
    // kill k when a random fraction within the k-th of `kills` equal
    // slices of 10..90 % of the history is committed
    let slice = 0.8 / kills.max(1) as f64;
    let thresholds: Vec<f64> = (0..kills)
        .map(|k| 0.1 + slice * (k as f64 + r.below(1000) as f64 / 1000.0))
        .collect();
    let mut done = Vec::new();
    for th in thresholds {
        committed_at_least(&probe, (th * end as f64) as i64, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(r.below(40))).await;
        server.kill();
        let at = total(&tokio::task::block_in_place(|| probe.committed()));
        assert!(
            at < end,
            "the kill came after the replay had ended; a kill must land mid-replay"
        );
        server.restart().await;
        let t = Instant::now();
        committed_at_least(&probe, at + 1, Duration::from_secs(120)).await;
        done.push(Kill {
            at: at as f64 / end as f64,
            resumed_after: t.elapsed(),
        });
    }
    committed_at_least(&probe, end, Duration::from_secs(300)).await;
    let consume = started.elapsed();

    let mut mismatches = Vec::new();
    for (c, want) in &expected {
        let (s, body) = server.get(&format!("/v1/features/customer/{c}")).await;
        assert_eq!(s, 200, "{body}");
        let f = &body["features"];
        let got = Expected {
            purchases: f["purchases_lifetime"].as_f64().unwrap_or(f64::NAN),
            spend: f["spend_lifetime"].as_f64().unwrap_or(f64::NAN),
            views: f["views_24h"].as_f64().unwrap_or(f64::NAN),
        };
        if got != *want {
            mismatches.push(format!("{c}: want {want:?}, got {got:?}"));
        }
    }
    ReplayReport {
        events: n,
        redelivered: events.len() - n,
        produce,
        kills: done,
        consume,
        mismatches,
    }
}
