//! Processes a fault test owns: a Tansu broker it may pause, a `nextbest
//! serve` process it may SIGKILL or SIGTERM, and what the broker says of a
//! consumer group (committed and end offsets).

use super::{free_port, repo, unique, wait_port};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Sends `sig` (`STOP`, `CONT`, `TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// CPU time (user + system) a process has used so far, in seconds, from
/// /proc/<pid>/stat (clock ticks of 1/100 s, as on Linux x86-64).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command name, which is in parentheses
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime: fields 14 and 15 of the line, 11 and 12 here
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// A Tansu broker owned by one test (in-memory: a restart would lose its
/// topics and offsets, so outages are SIGSTOP/SIGCONT); killed on drop.
pub struct TansuProc {
    pub port: u16,
    child: Child,
    /// The working directory of a file-backed engine (`sqlite://`), removed
    /// on drop.
    dir: Option<PathBuf>,
}

impl TansuProc {
    /// The broker on its in-memory engine (`memory://tansu/`, what the
    /// tests use).
    pub fn start() -> TansuProc {
        TansuProc::start_with_storage("memory://tansu/")
    }

    /// The broker on the given storage engine (`--storage-engine`); a
    /// `sqlite://<file>` engine (a Tansu built with the `libsql` feature,
    /// `scripts/tansu-sqlite.sh`) keeps its file in a fresh directory of
    /// its own.
    pub fn start_with_storage(storage: &str) -> TansuProc {
        let port = free_port();
        let dir = storage.starts_with("sqlite:").then(|| {
            let d = std::env::temp_dir().join(format!("{}-{port}", unique("tansu")));
            std::fs::create_dir_all(&d).expect("tansu's directory");
            d
        });
        let bin = std::env::var("NEXTBEST_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join(".deps/bin/tansu"));
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .current_dir(dir.clone().unwrap_or_else(std::env::temp_dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu at {} ({e}); run scripts/setup.sh",
                    bin.display()
                )
            });
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "tansu did not listen on {port}"
        );
        TansuProc { port, child, dir }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: connections stay open, nothing answers, nothing is lost.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }
}

impl Drop for TansuProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A `(topic, partition) → offset` map.
pub type Offsets = BTreeMap<(String, i32), i64>;

/// What the broker says of one consumer group about some topics (which
/// must exist): its committed offsets, and where the partitions end.
/// Does not join the group.
pub struct GroupProbe {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
}

impl GroupProbe {
    pub fn new(brokers: &str, group: &str, topics: &[&str]) -> GroupProbe {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("probe consumer");
        let mut partitions = TopicPartitionList::new();
        for topic in topics {
            let meta = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
            for t in meta.topics() {
                for p in t.partitions() {
                    partitions.add_partition(topic, p.id());
                }
            }
        }
        assert!(partitions.count() > 0, "no partitions in {topics:?}");
        GroupProbe {
            consumer,
            partitions,
        }
    }

    /// The group's committed offset per partition (0 if none yet).
    pub fn committed(&self) -> Offsets {
        let tpl = self
            .consumer
            .committed_offsets(self.partitions.clone(), Duration::from_secs(10))
            .expect("committed offsets");
        tpl.elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                ((e.topic().to_string(), e.partition()), o)
            })
            .collect()
    }

    /// Produces one marker (a valid event of customer `marker`) to each
    /// partition, alone, and returns per partition the offset after it:
    /// where the partition ends, marker included. (Tansu 0.6 answers
    /// ListOffsets after a batch of several records with the batch's first
    /// offset + 1, e.g. 11 after records 10..=19, so its high watermarks
    /// cannot say where a partition ends; a lone record's ack can.)
    pub async fn mark_ends(&self, producer: &FutureProducer) -> Offsets {
        let mut ends = Offsets::new();
        for e in self.partitions.elements() {
            let kind = e.topic().strip_prefix("events.").unwrap_or("page_view");
            let marker = serde_json::json!({"event_id": super::unique("marker"), "type": kind,
                "customer_id": "marker", "item_id": "marker", "ts": super::now_ms()});
            let payload = serde_json::to_vec(&marker).expect("json");
            let record = FutureRecord::to(e.topic())
                .partition(e.partition())
                .key("marker")
                .payload(&payload);
            let offset = producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap_or_else(|(err, _)| panic!("marker to {}: {err}", e.topic()))
                .offset;
            ends.insert((e.topic().to_string(), e.partition()), offset + 1);
        }
        ends
    }

    /// Whether the group has committed up to `ends` on every partition.
    pub fn committed_up_to(&self, ends: &Offsets) -> bool {
        let c = self.committed();
        ends.iter()
            .all(|(p, end)| c.get(p).is_some_and(|o| o >= end))
    }
}

/// The sum of a map of offsets (messages, when they start at 0).
pub fn total(o: &Offsets) -> i64 {
    o.values().sum()
}

/// How a `nextbest serve` process is started; restarts reuse it.
#[derive(Clone, Debug, Default)]
pub struct ServerSpec {
    pub redis_url: Option<String>,
    pub brokers: Option<String>,
    /// The text of its `nextbest.toml` (what the environment does not set).
    pub config: String,
    /// `RUST_LOG` (default `info,rdkafka=warn`).
    pub log_filter: Option<String>,
    /// More environment variables (e.g. `NEXTBEST_CART_ABANDONMENT_AFTER_MS`).
    pub env: Vec<(String, String)>,
}

/// The `nextbest` binary running `serve` on a free port, with its stderr
/// (JSON log lines) in a file per start, in a folder removed on drop
/// unless the test panics or `NEXTBEST_KEEP_LOGS` is set. Killed on drop.
pub struct ServerProc {
    pub base: String,
    pub client: reqwest::Client,
    spec: ServerSpec,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl ServerProc {
    /// Starts the server and waits (at most 60 s) until `/healthz` answers.
    pub async fn start(spec: ServerSpec) -> ServerProc {
        let dir = std::env::temp_dir().join(super::unique("nextbest-server"));
        std::fs::create_dir_all(&dir).expect("server folder");
        std::fs::write(dir.join("nextbest.toml"), &spec.config).expect("config written");
        let port = free_port();
        let mut s = ServerProc {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            spec,
            port,
            dir,
            child: None,
            starts: 0,
        };
        s.restart().await;
        s
    }

    /// Starts it again (after a kill or an exit; kills it first if it runs),
    /// on the same port, and waits until `/healthz` answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let ort = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
            repo()
                .join(".deps/lib/libonnxruntime.so.1.31.1")
                .display()
                .to_string()
        });
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nextbest"));
        cmd.current_dir(repo())
            .arg("--config")
            .arg(self.dir.join("nextbest.toml"))
            .arg("serve")
            .env("NEXTBEST_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("NEXTBEST_MODELS_DIR", repo().join("models"))
            .env(
                "NEXTBEST_FEATURES",
                repo().join("feature-store/features.toml"),
            )
            .env("NEXTBEST_RULES_DIR", repo().join("rules"))
            .env("NEXTBEST_TRIGGERS_DIR", repo().join("triggers"))
            .env_remove("NEXTBEST_CART_ABANDONMENT_AFTER_MS")
            .env("ORT_DYLIB_PATH", ort)
            .env(
                "RUST_LOG",
                self.spec
                    .log_filter
                    .as_deref()
                    .unwrap_or("info,rdkafka=warn"),
            )
            .env_remove("NEXTBEST_REDIS_URL")
            .env_remove("NEXTBEST_KAFKA_BROKERS")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(u) = &self.spec.redis_url {
            cmd.env("NEXTBEST_REDIS_URL", u);
        }
        if let Some(b) = &self.spec.brokers {
            cmd.env("NEXTBEST_KAFKA_BROKERS", b);
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("nextbest serve starts"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = self
                .client
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nextbest serve exited ({status}) at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nextbest serve did not answer /healthz within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("stderr-{}.log", self.starts))
    }

    /// The running process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// SIGKILL (no shutdown of any kind), and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: a graceful stop; see [`ServerProc::wait_exit`].
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits for the process to exit, at most `within`; None if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in kB (VmRSS of /proc/<pid>/status).
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// What the current (or last) run wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many log lines of the current run contain every one of `needles`.
    pub fn logged(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// One numeric customer feature (NaN if absent).
    pub async fn customer_feature(&self, customer: &str, name: &str) -> f64 {
        self.get(&format!("/v1/features/customer/{customer}"))
            .await
            .1["features"][name]
            .as_f64()
            .unwrap_or(f64::NAN)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("NEXTBEST_KEEP_LOGS").is_some() {
            eprintln!("nextbest serve logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
