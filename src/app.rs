//! Wiring: config → feature set, store, models, ingestion, router, background
//! tasks. `App::build` does everything that can fail before serving;
//! `run_until_stopped` serves until the shutdown signal, then stops the
//! consumer between batches so its last commit covers what it applied.

use crate::api::{self, Access, AppState, Ingest};
use crate::change_feed::ChangeFeed;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::popularity::Popularity;
use crate::decide::Decider;
use crate::features::store;
use crate::features::FeatureSet;
use crate::ingest::consumer::EventConsumer;
use crate::ingest::kafka::{create_topics, ensure_topics};
use crate::ingest::order::SeqCheck;
use crate::ingest::producer::EventProducer;
use crate::model::registry::Registry;
use crate::model::reload::{publish_serving, Reloader};
use crate::model::routing::Routing;
use crate::model::runtime;
use crate::model::scorer::LoadOptions;
use crate::rules::reload::RulesReloader;
use crate::rules::RuleSet;
use crate::triggers::deliver::{RecentActions, Sink};
use crate::triggers::engine::AppliedBatch;
use crate::triggers::fire::Firer;
use crate::triggers::sequence::Progress;
use crate::triggers::timer_loop::TimerLoop;
use crate::triggers::watch::{Marked, Watcher};
use crate::triggers::webhook::Webhook;
use crate::triggers::{Overrides, TriggerSet, Triggers, TriggersReloader};
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors starting the server; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Features(#[from] crate::features::definition::DefinitionError),
    /// `url` is shown without its password.
    #[error("cannot connect to Redis at {url}: {source}")]
    Redis {
        url: String,
        source: crate::features::store::StoreError,
    },
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Kafka(#[from] crate::ingest::kafka::KafkaSetupError),
    #[error(transparent)]
    Consumer(#[from] crate::ingest::consumer::ConsumeError),
    #[error(transparent)]
    Routing(#[from] crate::model::routing::RoutingError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("config: {0}")]
    Config(String),
    #[error("config: {0}")]
    Access(#[from] api::AccessError),
}

/// A built, not yet running, server.
pub struct App {
    listener: TcpListener,
    state: Arc<AppState>,
    popularity: Arc<ArcSwap<Popularity>>,
    consumer: Option<EventConsumer>,
    reloader: Option<Reloader>,
    rules_reloader: Option<RulesReloader>,
    triggers_reloader: Option<TriggersReloader>,
    /// The threshold and sequence checks, and their queue.
    watcher: (Watcher, tokio::sync::mpsc::UnboundedReceiver<AppliedBatch>),
    timer_loop: TimerLoop,
}

impl App {
    /// Builds everything that can fail before serving.
    pub async fn build(cfg: Config) -> Result<App, AppError> {
        let metrics = crate::metrics::install();
        let access = Access::build(&cfg.security)?;
        for warning in access.warnings() {
            tracing::warn!("{warning}");
        }
        let set = Arc::new(FeatureSet::load(&cfg.features)?);
        // only connecting to Redis can fail
        let store = store::open(&cfg.store, set.clone())
            .await
            .map_err(|source| AppError::Redis {
                url: cfg.store.redis_url_for_logs().unwrap_or_default(),
                source,
            })?;
        runtime::environment(cfg.ort_dylib_path.as_deref())?;
        let opts = LoadOptions {
            sessions: cfg.model.sessions,
            intra_threads: cfg.model.intra_threads,
            ort_dylib_path: cfg.ort_dylib_path.clone(),
        };
        let routing = Routing::new(
            &cfg.model.traffic,
            &cfg.model.shadow,
            cfg.model.default.clone(),
        )?;
        let reg = Registry::rescan(&cfg.models_dir, &set, &opts, &routing.pinned(), None);
        publish_serving(None, &reg);
        let registry = Arc::new(ArcSwap::from_pointee(reg));
        let reloader = cfg.model.watch.then(|| Reloader {
            dir: cfg.models_dir.clone(),
            set: set.clone(),
            opts: opts.clone(),
            pinned: routing.pinned(),
            registry: registry.clone(),
            debounce: Duration::from_millis(cfg.model.reload_debounce_ms),
            rescan_every: Duration::from_secs(cfg.model.rescan_secs),
        });
        let popularity = Arc::new(ArcSwap::from_pointee(Popularity::default()));
        // a rejected rule file is logged by the load
        let rules = Arc::new(ArcSwap::from_pointee(RuleSet::load(
            &cfg.rules.dir,
            &set,
            None,
        )));
        let rules_reloader = cfg.rules.watch.then(|| RulesReloader {
            dir: cfg.rules.dir.clone(),
            set: set.clone(),
            current: rules.clone(),
            debounce: Duration::from_millis(cfg.rules.reload_debounce_ms),
            rescan_every: Duration::from_secs(cfg.rules.rescan_secs),
        });

        let overrides = Overrides {
            cart_abandonment_after_ms: cfg
                .triggers
                .cart_abandonment_after_ms
                .map(|ms| ms.min(i64::MAX as u64) as i64),
        };
        // a rejected trigger file is logged by the load
        let trigger_set = Arc::new(ArcSwap::from_pointee(TriggerSet::load(
            &cfg.triggers.dir,
            &set,
            &overrides,
            None,
        )));
        let triggers_reloader = cfg.triggers.watch.then(|| TriggersReloader {
            dir: cfg.triggers.dir.clone(),
            set: set.clone(),
            current: trigger_set.clone(),
            debounce: Duration::from_millis(cfg.triggers.reload_debounce_ms),
            rescan_every: Duration::from_secs(cfg.triggers.rescan_secs),
        });
        let recent = Arc::new(RecentActions::new(cfg.triggers.recent_actions));
        let (triggers, checks) =
            Triggers::new(trigger_set.clone(), recent.clone(), cfg.triggers.queue);
        let triggers = Arc::new(triggers);

        let seq_check = SeqCheck::default();
        let clock = Clock::of(cfg.clock);
        let (ingest, consumer) = match &cfg.kafka.brokers {
            Some(brokers) => {
                if cfg.kafka.create_topics {
                    ensure_topics(brokers, &cfg.kafka).await?;
                }
                let producer = EventProducer::new(brokers, &cfg.kafka)?;
                let consumer = if cfg.kafka.consume {
                    Some(
                        EventConsumer::new(
                            brokers,
                            &cfg.kafka,
                            set.clone(),
                            store.clone(),
                            producer.clone(),
                        )?
                        .with_checks(cfg.store.time_bounds(), seq_check.clone())
                        .with_clock(clock.clone())
                        .with_triggers(triggers.clone()),
                    )
                } else {
                    None
                };
                (Ingest::Kafka(producer), consumer)
            }
            None => (Ingest::InProcess, None),
        };
        let decider = Arc::new(
            Decider::new(
                &cfg,
                set.clone(),
                store.clone(),
                registry.clone(),
                popularity.clone(),
                routing,
                rules.clone(),
            )
            .map_err(AppError::Config)?,
        );
        let producer = match &ingest {
            Ingest::Kafka(p) => Some(p.clone()),
            Ingest::InProcess => None,
        };
        let webhook = match &cfg.triggers.webhook {
            Some(w) => {
                // a firing holds its claim while the webhook retries: past
                // the lease another instance would claim and send it again
                let worst_ms = w.attempts as u64 * w.timeout_ms
                    + w.attempts.saturating_sub(1) as u64 * 2 * w.max_backoff_ms;
                if worst_ms >= cfg.triggers.lease_ms {
                    tracing::warn!(
                        worst_ms,
                        lease_ms = cfg.triggers.lease_ms,
                        "triggers.webhook may retry for longer than triggers.lease_ms: a slow webhook's actions can be sent twice (same action_id); raise the lease or lower attempts/timeouts"
                    );
                }
                if let (Some(brokers), true) = (&cfg.kafka.brokers, cfg.kafka.create_topics) {
                    create_topics(brokers, &cfg.kafka, std::slice::from_ref(&w.dlq_topic)).await?;
                }
                Some(Arc::new(
                    Webhook::new(w, producer.clone())
                        .map_err(|e| AppError::Config(e.to_string()))?,
                ))
            }
            None => None,
        };
        let sink = Sink {
            kafka: producer.map(|p| (p, cfg.kafka.actions_topic.clone())),
            webhook,
            recent,
        };
        let firer = Arc::new(Firer {
            set: set.clone(),
            store: store.clone(),
            decider: decider.clone(),
            sink,
            clock: clock.clone(),
            budget_ms: cfg.recommend.default_budget_ms,
        });
        // partial patterns are kept at least as long as the longest window
        let longest = trigger_set
            .load()
            .triggers
            .iter()
            .filter_map(|t| match &t.kind {
                crate::triggers::trigger::Kind::Sequence(s) => Some(s.within_ms),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let marker_ttl = Duration::from_secs(cfg.triggers.session_marker_secs.max(1));
        let watcher = Watcher {
            triggers: trigger_set.clone(),
            firer: firer.clone(),
            progress: Progress::new(
                cfg.triggers.max_sequences,
                Duration::from_millis(longest.max(3_600_000) as u64),
            ),
            marker_ttl,
            marked: Marked::new(cfg.triggers.max_sequences, marker_ttl),
        };
        let timer_loop = TimerLoop {
            triggers: trigger_set.clone(),
            firer,
            tick: Duration::from_millis(cfg.triggers.tick_ms),
            lease_ms: cfg.triggers.lease_ms.min(i64::MAX as u64) as i64,
            claim_batch: cfg.triggers.claim_batch,
            retry_ms: cfg.triggers.retry_ms.min(i64::MAX as u64) as i64,
        };
        // with Redis, a change applied by any instance reaches every socket,
        // and a catalog write every instance's item cache
        let item_cache = decider.item_cache.clone();
        let changes = match (&cfg.store.redis_url, cfg.stream.redis_feed) {
            (Some(url), true) => ChangeFeed::redis(url, &cfg.store.key_prefix, item_cache)
                .map_err(|e| AppError::Config(e.to_string()))?,
            _ => ChangeFeed::in_process(item_cache),
        };
        let listener = TcpListener::bind(cfg.http_addr)
            .await
            .map_err(|source| AppError::Bind {
                addr: cfg.http_addr.to_string(),
                source,
            })?;
        let state = Arc::new(AppState {
            cfg: Arc::new(cfg),
            set,
            store,
            decider,
            registry,
            ingest,
            metrics,
            changes,
            clock,
            rules,
            seq_check,
            access,
            triggers,
        });
        Ok(App {
            listener,
            state,
            popularity,
            consumer,
            reloader,
            rules_reloader,
            triggers_reloader,
            watcher: (watcher, checks),
            timer_loop,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state (for tests and the CLI summary).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// A short startup summary: store, broker, models, features, URL.
    pub fn summary(&self) -> String {
        let s = &self.state;
        let reg = s.registry.load();
        let mut models: Vec<String> = Vec::new();
        for (name, e) in &reg.models {
            let rejected = e
                .versions
                .iter()
                .filter(|v| v.status == crate::model::ModelStatus::Rejected)
                .count();
            match &e.serving {
                Some(m) => models.push(format!(
                    "{name} v{} ({} inputs){}",
                    m.manifest.version,
                    m.manifest.inputs.len(),
                    if rejected > 0 {
                        format!(", {rejected} rejected")
                    } else {
                        String::new()
                    }
                )),
                None => models.push(format!("{name}: no valid version ({rejected} rejected)")),
            }
        }
        if models.is_empty() {
            models.push(format!(
                "none found in {} (recommendations will fall back to popular items)",
                s.cfg.models_dir.display()
            ));
        }
        let broker = match &s.cfg.kafka.brokers {
            Some(b) => format!(
                "kafka {b} (group {}, consumer {})",
                s.cfg.kafka.group_id,
                if self.consumer.is_some() { "on" } else { "off" }
            ),
            None => "none (events applied in-process)".to_string(),
        };
        let addr = self
            .listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        format!(
            "nextbest {}\n  store:    {}\n  broker:   {}\n  models:   {}\n  rules:    {}\n  triggers: {}\n  features: {} stored, {} derived, {} context (from {})\n  onnx:     {}\n  access:   {}\n  url:      http://{}",
            env!("CARGO_PKG_VERSION"),
            s.store.describe(),
            broker,
            models.join("; "),
            s.rules.load().summary(),
            s.triggers.current.load().summary(),
            s.set.features.len(),
            s.set.derived.len(),
            s.set.context.len(),
            s.cfg.features.display(),
            runtime::loaded_from().map(|p| p.display().to_string()).unwrap_or_else(|| "not loaded".into()),
            s.access.describe(),
            addr,
        )
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        tasks.push(tokio::spawn(refresh_popularity(
            self.state.clone(),
            self.popularity.clone(),
            stop_rx.clone(),
        )));
        if let Some(r) = self.reloader {
            tasks.push(tokio::spawn(r.run(stop_rx.clone())));
        }
        if let Some(r) = self.rules_reloader {
            tasks.push(tokio::spawn(r.run(stop_rx.clone())));
        }
        if let Some(r) = self.triggers_reloader {
            tasks.push(tokio::spawn(r.run(stop_rx.clone())));
        }
        let (watcher, checks) = self.watcher;
        tasks.push(tokio::spawn(watcher.run(checks, stop_rx.clone())));
        tasks.push(tokio::spawn(self.timer_loop.run(stop_rx.clone())));
        if let Some(consumer) = self.consumer {
            let changes = self.state.changes.clone();
            tasks.push(tokio::spawn(consumer.run(stop_rx.clone(), move |out| {
                changes.publish(&out.changed_customers);
                // catalog writes take effect at once here, and on the other
                // instances as the feed's notice reaches them
                changes.publish_items(&out.changed_items);
            })));
        }
        let router = api::router(self.state.clone());
        let stop = stop_tx.clone();
        // the peer address keys the rate limit of requests without a key
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        served.map_err(AppError::Serve)
    }
}

async fn refresh_popularity(
    state: Arc<AppState>,
    target: Arc<ArcSwap<Popularity>>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(state.cfg.recommend.popularity_refresh_secs.max(1));
    loop {
        match Popularity::build(state.store.as_ref(), state.clock.now_ms()).await {
            Ok(p) => target.store(Arc::new(p)),
            Err(e) => {
                tracing::warn!(error = %e, "popularity refresh failed; keeping the previous lists")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}
