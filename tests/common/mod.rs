//! Test helpers: real Redis and Tansu (from `make test`'s env, else started
//! here on free ports), an app on port 0, bounded polling.
#![allow(dead_code)]

use nextbest::api::AppState;
use nextbest::app::App;
use nextbest::config::Config;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod procs;
pub use procs::*;
pub mod replay;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether a Redis on `port` answers PING with PONG (not `-LOADING`)
/// within `within`.
fn redis_answers(port: u16, within: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut reply = [0u8; 64];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut reply)
                    .is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A redis-server owned by one test (killed on drop, restartable, and
/// pausable with SIGSTOP/SIGCONT).
pub struct RedisProc {
    pub port: u16,
    child: Option<Child>,
    /// With an append-only file in this folder (`start_persistent`): what
    /// Redis acknowledged survives a SIGKILL and restart.
    dir: Option<PathBuf>,
    /// Its `appendfsync` policy, with `dir`.
    fsync: &'static str,
}

impl RedisProc {
    /// A Redis without persistence: a restart starts it empty.
    pub fn start() -> RedisProc {
        let mut r = RedisProc {
            port: free_port(),
            child: None,
            dir: None,
            fsync: "no",
        };
        r.restart();
        r
    }

    /// A Redis with an append-only file, fsynced before each reply
    /// (`appendfsync always`): a SIGKILLed and restarted Redis still holds
    /// every write it acknowledged.
    pub fn start_persistent() -> RedisProc {
        RedisProc::start_with_aof("always")
    }

    /// A Redis with an append-only file and the given `appendfsync` policy
    /// (`always`, `everysec`). With `everysec` (Redis's default, fsync on a
    /// background thread) a SIGKILL loses nothing Redis wrote to the file
    /// before answering, which it does unless a slow fsync made it postpone
    /// the write (up to 2 s).
    pub fn start_with_aof(fsync: &'static str) -> RedisProc {
        let dir = std::env::temp_dir().join(unique("nextbest-redis"));
        std::fs::create_dir_all(&dir).expect("redis data folder");
        let mut r = RedisProc {
            port: free_port(),
            child: None,
            dir: Some(dir),
            fsync,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The running redis-server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// SIGKILL: the process dies at once, mid-command if it was in one.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`RedisProc::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        let dir;
        match &self.dir {
            Some(d) => {
                dir = d.display().to_string();
                args.extend([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    &dir,
                ]);
            }
            None => args.extend(["--appendonly", "no"]),
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "redis-server did not listen on {}",
            self.port
        );
        assert!(
            redis_answers(self.port, Duration::from_secs(10)),
            "redis-server on {} did not answer PING (still loading its file?)",
            self.port
        );
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

struct Shared {
    url: String,
    _keep: Option<RedisProc>,
}

static REDIS: OnceLock<Shared> = OnceLock::new();

/// The shared test Redis URL (keys are isolated by a unique prefix per test).
pub fn redis_url() -> String {
    REDIS
        .get_or_init(|| match std::env::var("NEXTBEST_TEST_REDIS_URL") {
            Ok(u) if !u.is_empty() => Shared {
                url: u,
                _keep: None,
            },
            _ => {
                let r = RedisProc::start();
                Shared {
                    url: r.url(),
                    _keep: Some(r),
                }
            }
        })
        .url
        .clone()
}

static TANSU: OnceLock<(String, Option<u32>)> = OnceLock::new();

/// The shared test broker (Tansu).
pub fn kafka_brokers() -> String {
    TANSU
        .get_or_init(|| match std::env::var("NEXTBEST_TEST_KAFKA_BROKERS") {
            Ok(b) if !b.is_empty() => (b, None),
            _ => {
                // left running for the life of the test process
                let t = std::mem::ManuallyDrop::new(TansuProc::start());
                (t.brokers(), Some(t.pid()))
            }
        })
        .0
        .clone()
}

/// A plain Kafka producer to the test broker (acks from all, no linger).
pub fn producer() -> rdkafka::producer::FutureProducer {
    producer_for(&kafka_brokers())
}

/// A plain Kafka producer to `brokers` (acks from all, no linger).
pub fn producer_for(brokers: &str) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("test producer")
}

/// Produces one message and waits for the broker's ack.
pub async fn produce(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    payload: impl AsRef<[u8]>,
) {
    p.send(
        rdkafka::producer::FutureRecord::to(topic)
            .key(key)
            .payload(payload.as_ref()),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// A unique name for isolating keys, groups and ids between tests.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Index entries (pending timers) under `prefix`, over all 16 shards.
pub async fn pending_timers(redis_url: &str, prefix: &str) -> i64 {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut n = 0;
    for k in 0..16 {
        let z: i64 = redis::cmd("ZCARD")
            .arg(format!("{{{prefix}:timers:{k}}}"))
            .query_async(&mut c)
            .await
            .expect("zcard");
        n += z;
    }
    n
}

/// The newest version in the shipped `models/ranker/` (the one that serves).
pub fn shipped_ranker_version() -> u64 {
    std::fs::read_dir(repo().join("models/ranker"))
        .expect("models/ranker")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("a shipped ranker version")
}

/// A config for tests: port 0, the shipped features and model.
pub fn base_config() -> Config {
    let mut cfg = Config {
        http_addr: "127.0.0.1:0".parse().expect("valid addr"),
        features: repo().join("feature-store/features.toml"),
        models_dir: repo().join("models"),
        ..Config::default()
    };
    cfg.rules.dir = repo().join("rules");
    cfg.triggers.dir = repo().join("triggers");
    cfg.store.key_prefix = unique("t");
    cfg.kafka.group_id = unique("g");
    cfg.kafka.session_timeout_ms = 6000;
    cfg.recommend.popularity_refresh_secs = 1;
    cfg
}

/// A running app on a free port.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The running app's shared state (for looking inside, e.g. its caches).
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(cfg: Config) -> TestApp {
        let app = App::build(cfg).await.expect("app builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = app
                .run_until_stopped(async move {
                    let _ = rx.await;
                })
                .await;
        });
        TestApp {
            base,
            client: reqwest::Client::new(),
            state,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// PUTs `body` as it is (JSON or not) to `path`.
    pub async fn put(&self, path: &str, body: impl Into<String>) -> (u16, serde_json::Value) {
        let r = self
            .client
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Posts each body to `path` and checks the 400 names its field, in
    /// `field` and in the message.
    pub async fn assert_field_errors(&self, path: &str, cases: &[(serde_json::Value, &str)]) {
        for (body, field) in cases {
            let (s, r) = self.post(path, body.clone()).await;
            assert_eq!(s, 400, "{body} → {r}");
            assert_eq!(r["field"], *field, "{body} → {r}");
            assert!(
                r["error"].as_str().is_some_and(|e| e.contains(field)),
                "{r}"
            );
        }
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn customer_feature(&self, customer: &str, name: &str) -> serde_json::Value {
        self.get(&format!("/v1/features/customer/{customer}"))
            .await
            .1["features"][name]
            .clone()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
        }
    }
}

/// Polls `check` until it returns Some, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn now_ms() -> i64 {
    nextbest::now_ms()
}

/// A contract event as JSON.
pub fn event(
    id: &str,
    kind: &str,
    customer: &str,
    item: Option<&str>,
    ts: i64,
) -> serde_json::Value {
    let mut e = serde_json::json!({
        "event_id": id, "type": kind, "customer_id": customer, "ts": ts, "session_id": format!("s-{customer}"),
        "props": {"price": 25.0, "quantity": 1, "category": "shoes"}
    });
    if let Some(i) = item {
        e["item_id"] = serde_json::json!(i);
    }
    e
}

/// Sums the samples of `name` (exact series name) whose labels contain every
/// `key="value"` in `labels`, from Prometheus text.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl TestApp {
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// A small deterministic generator (xorshift) for generated histories.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Appends `repeats` redeliveries (copies of random events, same id) and
/// shuffles the whole history.
pub fn redeliver_and_shuffle<T: Clone>(out: &mut Vec<T>, r: &mut Rng, repeats: usize) {
    let n = out.len();
    for _ in 0..repeats {
        let j = r.below(n as u64) as usize;
        out.push(out[j].clone());
    }
    for i in (1..out.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
}

/// The item ids of a `/v1/recommend` answer, in order.
pub fn answer_ids(r: &serde_json::Value) -> Vec<String> {
    r["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["item_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
