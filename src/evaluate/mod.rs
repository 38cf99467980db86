//! `nextbest evaluate`: replays a history through the served path and
//! reports where each decision's target landed, beside simple baselines on
//! the same decisions. It answers "is this model (with these rules and
//! candidate settings) better than what serves now, on my data?".
//!
//! The replay: events (the backfill's readers: JSON Lines, Parquet, CSV)
//! in time order (file order within a millisecond) are applied to a private
//! embedded store through the same apply step as `POST /v1/events`, on an
//! event-time clock ([`Clock::Event`], the one `serve --clock event` runs
//! on), so windows and recency are what they were live. A decision is every
//! event of the decision types (default `add_to_cart`, `purchase`) with an
//! item at or after the split; just before it is applied, the customer gets
//! a `/v1/recommend` answer from the real [`Decider`] (candidates generated
//! from the store, the models folder's serving model, the rule files) at the
//! event's time, for the event's session, and the event's item is the
//! target. The popularity snapshot is rebuilt every
//! `recommend.popularity_refresh_secs` of event time, as `serve` does.
//!
//! Nothing is written anywhere but the private store; the online store and
//! the broker of the config are never touched.

pub mod baselines;
pub mod labels;
pub mod ranking;
pub mod report;

use crate::backfill::input::{self, InputError};
use crate::backfill::progress::Progress;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::popularity::Popularity;
use crate::decide::{Decider, RecommendRequest};
use crate::event::{Event, EventType};
use crate::features::store::memory::{MemoryLimits, MemoryStore};
use crate::features::store::FeatureStore;
use crate::features::vector::ContextValues;
use crate::features::{Entity, FeatureSet};
use crate::ingest::apply::apply_events_at;
use crate::model::registry::{ModelSpec, Registry};
use crate::model::routing::Routing;
use crate::model::runtime;
use crate::model::scorer::LoadOptions;
use crate::rules::RuleSet;
use arc_swap::ArcSwap;
use baselines::{CoVisitation, RecentItems};
use labels::LabelRows;
use ranking::{rank_of, Tally};
use report::{LabelSummary, Report, SourceShare};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Errors of an evaluation; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Features(#[from] crate::features::definition::DefinitionError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Routing(#[from] crate::model::routing::RoutingError),
    #[error("config: {0}")]
    Config(String),
    #[error("no model serves from {dir} (check it with `nextbest models check {dir}`)")]
    NoModel { dir: String },
    #[error("model {0} is not serving from the models folder")]
    UnknownModel(String),
    #[error("store: {0}")]
    Store(#[from] crate::features::store::StoreError),
    #[error("apply: {0}")]
    Apply(#[from] crate::ingest::apply::ApplyError),
    #[error("the history has no events")]
    Empty,
    #[error("no decisions: no {kinds} event with an item at or after the split ({split_at} ms)")]
    NoDecisions { kinds: String, split_at: i64 },
    #[error("cannot write the labels to {path}: {message}")]
    Labels { path: String, message: String },
}

/// Where decisions start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// At this share of the history's time span (`time=80%`).
    TimeShare(f64),
    /// At this time (ms since the epoch).
    At(i64),
}

impl std::str::FromStr for Split {
    type Err = String;
    /// `time=80%` (or `time=0.8`).
    fn from_str(s: &str) -> Result<Split, String> {
        let bad = || format!("split {s:?}: expected time=<share>, e.g. time=80% or time=0.8");
        let share = s.strip_prefix("time=").ok_or_else(bad)?;
        let x: f64 = match share.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
            None => share.trim().parse().map_err(|_| bad())?,
        };
        if !(0.0..=1.0).contains(&x) {
            return Err(format!(
                "split {s:?}: the share must be between 0% and 100%"
            ));
        }
        Ok(Split::TimeShare(x))
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvaluateJob {
    /// Event files or glob patterns.
    pub events: Vec<String>,
    pub items: Option<PathBuf>,
    pub customers: Option<PathBuf>,
    pub split: Split,
    /// The cut-off of HR@k, NDCG@k, MRR@k.
    pub k: usize,
    /// Event types that are decisions.
    pub decisions: Vec<EventType>,
    /// A model of the folder other than the one serving (`name[@version]`).
    pub model: Option<ModelSpec>,
    /// Also write training labels of the moments before the split here
    /// (see [`labels`]).
    pub labels_out: Option<PathBuf>,
    /// Negatives kept per labelled moment (a stable sample).
    pub max_negatives: usize,
    /// Show a progress bar / progress lines on stderr.
    pub progress: bool,
}

impl EvaluateJob {
    /// The default decision types.
    pub const DECISIONS: [EventType; 2] = [EventType::AddToCart, EventType::Purchase];
}

/// Budget per replayed request: generous, so a slow machine measures the
/// ranking, not the deadline.
const REPLAY_BUDGET_MS: u64 = 60_000;

/// Runs the evaluation (reads everything first, then replays).
pub async fn evaluate(cfg: &Config, job: &EvaluateJob) -> Result<Report, EvaluateError> {
    let started = Instant::now();
    let set = Arc::new(FeatureSet::load(&cfg.features)?);
    let mut events = Vec::new();
    for p in input::expand(&job.events)? {
        events.extend(input::read_events(&p)?);
    }
    if events.is_empty() {
        return Err(EvaluateError::Empty);
    }
    events.sort_by_key(|e| e.ts); // stable: file order within a millisecond
    let mut statics = Vec::new();
    if let Some(p) = &job.items {
        statics.extend(input::read_static(&set, Entity::Item, p)?);
    }
    if let Some(p) = &job.customers {
        statics.extend(input::read_static(&set, Entity::Customer, p)?);
    }
    let (first, last) = (events[0].ts, events[events.len() - 1].ts);
    let split_at = match job.split {
        Split::At(t) => t,
        Split::TimeShare(x) => first + ((last - first) as f64 * x).round() as i64,
    };
    let is_moment = |e: &Event| e.item_id.is_some() && job.decisions.contains(&e.kind);
    let is_decision = |e: &Event| e.ts >= split_at && is_moment(e);
    // before the split, moments give training labels (when asked for)
    let is_label = |e: &Event| job.labels_out.is_some() && e.ts < split_at && is_moment(e);
    let total_decisions = events.iter().filter(|e| is_decision(e)).count();
    if total_decisions == 0 {
        let kinds: Vec<&str> = job.decisions.iter().map(|k| k.as_str()).collect();
        return Err(EvaluateError::NoDecisions {
            kinds: kinds.join("/"),
            split_at,
        });
    }

    // the served path, on a private embedded store and the event clock
    let store: Arc<dyn FeatureStore> = Arc::new(MemoryStore::with_limits(
        set.clone(),
        cfg.store.dedupe_window_ms(),
        MemoryLimits::of(&cfg.store),
    ));
    if !statics.is_empty() {
        store.apply_groups(&statics, 0).await?;
    }
    let decider = build_decider(cfg, set.clone(), store.clone(), job.model.as_ref())?;
    let model = decider
        .routing
        .choose(&decider.registry.load(), job.model.as_ref(), "")
        .map(|m| format!("{}@{}", m.manifest.name, m.manifest.version))
        .ok_or_else(|| match &job.model {
            Some(m) => EvaluateError::UnknownModel(m.to_string()),
            None => EvaluateError::NoModel {
                dir: cfg.models_dir.display().to_string(),
            },
        })?;
    let clock = Clock::of(crate::clock::ClockMode::Event);
    let refresh_ms = (cfg.recommend.popularity_refresh_secs.max(1) * 1000) as i64;
    let full_k = job.k.max(cfg.recommend.generated_candidates).max(1);

    let mut served = Tally::new(job.k);
    let mut recent_tally = Tally::new(job.k);
    let mut covisit_tally = Tally::new(job.k);
    let mut popular_tally = Tally::new(job.k);
    let mut recent = RecentItems::new(job.k);
    // a longer memory for "was the target in the customer's history"
    let mut history = RecentItems::new(1000);
    let mut covisit = CoVisitation::default();
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    // the top-k slots of the served answers, by candidate source
    let mut slots: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fallbacks = 0u64;
    let mut in_history = 0u64;
    let mut catalog: HashSet<&str> = HashSet::new();
    let mut pop_built: Option<i64> = None;
    let mut labels = LabelRows::new(job.max_negatives);

    let progress = if job.progress {
        Progress::new("evaluate", events.len() as u64)
    } else {
        Progress::hidden("evaluate", events.len() as u64)
    }
    .with_unit("events");
    let mut pending = 0usize; // events[pending..i] not applied yet
    for i in 0..events.len() {
        let e = &events[i];
        if let Some(item) = &e.item_id {
            catalog.insert(item.as_str());
        }
        let (decision, label) = (is_decision(e), is_label(e));
        if decision || label {
            // everything before the moment, then its answer
            apply(&set, store.as_ref(), &clock, &events[pending..i]).await?;
            progress.advance((i - pending) as u64, 0);
            pending = i;
            let now = clock.now_ms().max(e.ts);
            if pop_built.is_none_or(|t| now - t >= refresh_ms) {
                let p = Popularity::build(store.as_ref(), now).await?;
                decider.popularity.store(Arc::new(p));
                pop_built = Some(now);
            }
            let target = e.item_id.as_deref().unwrap_or_default();
            let req = RecommendRequest {
                request_id: format!("evaluate-{i}"),
                customer_id: e.customer_id.clone(),
                session_id: e.session_id.clone(),
                k: full_k,
                context: ContextValues::defaults(&set),
                candidates: None,
                budget_ms: REPLAY_BUDGET_MS,
                queued: std::time::Duration::ZERO,
                model: job.model.clone(),
                now_ms: now,
                explain: true,
            };
            let rec = decider.recommend(&req).await;
            if label {
                labels.add(e, &rec);
            } else {
                if rec.fallback {
                    fallbacks += 1;
                }
                let ranked: Vec<&str> = rec.items.iter().map(|x| x.item_id.as_str()).collect();
                let excluded_by = rec
                    .excluded
                    .iter()
                    .flatten()
                    .find(|x| x.item_id == target)
                    .map(|x| format!("excluded by {}", x.rule));
                let source = rec
                    .items
                    .iter()
                    .find(|x| x.item_id == target)
                    .map(|x| source_of(x).to_string())
                    .or(excluded_by);
                for x in rec.items.iter().take(job.k) {
                    *slots.entry(source_of(x).to_string()).or_default() += 1;
                }
                served.add(&ranked, target, source.is_some());
                if let Some(s) = source {
                    *sources.entry(s).or_default() += 1;
                }
                // a baseline's candidates are its list
                let recent_list = recent.of(&e.customer_id);
                let recent_hit = rank_of(&recent_list, target).is_some();
                recent_tally.add(&recent_list, target, recent_hit);
                let co = covisit.recommend(&recent_list, job.k);
                covisit_tally.add(&co, target, rank_of(&co, target).is_some());
                let pop = decider.popularity.load();
                let pop_list: Vec<&str> = pop
                    .global
                    .iter()
                    .take(job.k)
                    .map(|(id, _)| id.as_str())
                    .collect();
                popular_tally.add(&pop_list, target, rank_of(&pop_list, target).is_some());
                if history.contains(&e.customer_id, target) {
                    in_history += 1;
                }
                *by_kind.entry(e.kind.as_str()).or_default() += 1;
            }
        }
        recent.observe(e);
        history.observe(e);
        covisit.observe(e);
    }
    apply(&set, store.as_ref(), &clock, &events[pending..]).await?;
    progress.advance((events.len() - pending) as u64, 0);
    progress.finish();
    let label_summary = match &job.labels_out {
        Some(path) => {
            let summary = LabelSummary {
                path: path.display().to_string(),
                rows: labels.rows(),
                moments: labels.moments,
                without_positive: labels.without_positive,
            };
            labels
                .write(path)
                .map_err(|message| EvaluateError::Labels {
                    path: path.display().to_string(),
                    message,
                })?;
            Some(summary)
        }
        None => None,
    };

    let n = catalog.len();
    let served = served.figures(n);
    let d = served.decisions.max(1) as f64;
    Ok(Report {
        k: job.k,
        events: events.len(),
        customers: events
            .iter()
            .map(|e| e.customer_id.as_str())
            .collect::<HashSet<_>>()
            .len(),
        items: n,
        split_at,
        decisions: by_kind
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        model,
        rules: decider.rules.load().summary(),
        candidates: full_k.min(cfg.recommend.generated_candidates),
        served,
        fallbacks,
        target_in_history: in_history as f64 / d,
        sources: sources
            .into_iter()
            .map(|(source, c)| SourceShare {
                source,
                share: c as f64 / d,
            })
            .collect(),
        slots: {
            let total = slots.values().sum::<u64>().max(1) as f64;
            slots
                .into_iter()
                .map(|(source, c)| SourceShare {
                    source,
                    share: c as f64 / total,
                })
                .collect()
        },
        baselines: vec![
            ("recently_viewed".into(), recent_tally.figures(n)),
            ("co_visitation".into(), covisit_tally.figures(n)),
            ("popularity".into(), popular_tally.figures(n)),
        ],
        labels: label_summary,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The candidate source of a ranked item (its second reason, after
/// `model_score`).
fn source_of(x: &crate::decide::RankedItem) -> &str {
    x.reasons.get(1).map_or("", |r| r.as_ref())
}

/// Applies `events` (in time order) at the newest of them, moving the clock.
async fn apply(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    clock: &Clock,
    events: &[Event],
) -> Result<(), EvaluateError> {
    if events.is_empty() {
        return Ok(());
    }
    let newest = crate::event::newest_ts(events);
    let at = clock.write_time(newest);
    apply_events_at(set, store, events, at).await?;
    clock.observe(newest);
    Ok(())
}

/// The recommend pipeline of `serve` for `cfg`, on `store`: its models
/// folder (no watching), its rules folder, no micro-batching or shadows
/// (requests come one at a time; shadows are not the answer).
fn build_decider(
    cfg: &Config,
    set: Arc<FeatureSet>,
    store: Arc<dyn FeatureStore>,
    model: Option<&ModelSpec>,
) -> Result<Decider, EvaluateError> {
    runtime::environment(cfg.ort_dylib_path.as_deref())?;
    let mut cfg = cfg.clone();
    cfg.model.micro_batch_us = 0;
    cfg.model.shadow.clear();
    cfg.store.redis_url = None;
    let opts = LoadOptions {
        sessions: cfg.model.sessions,
        intra_threads: cfg.model.intra_threads,
        ort_dylib_path: cfg.ort_dylib_path.clone(),
    };
    let routing = Routing::new(&cfg.model.traffic, &[], cfg.model.default.clone())?;
    let mut pinned = routing.pinned();
    pinned.extend(model.cloned());
    let reg = Registry::rescan(&cfg.models_dir, &set, &opts, &pinned, None);
    let rules = RuleSet::load(&cfg.rules.dir, &set, None);
    Decider::new(
        &cfg,
        set,
        store,
        Arc::new(ArcSwap::from_pointee(reg)),
        Arc::new(ArcSwap::from_pointee(Popularity::default())),
        routing,
        Arc::new(ArcSwap::from_pointee(rules)),
    )
    .map_err(EvaluateError::Config)
}

#[cfg(test)]
mod tests {
    use super::Split;

    #[test]
    fn splits_parse_as_shares() {
        assert_eq!("time=80%".parse::<Split>(), Ok(Split::TimeShare(0.8)));
        assert_eq!("time=0.5".parse::<Split>(), Ok(Split::TimeShare(0.5)));
        for bad in ["80%", "time=", "time=120%", "time=x"] {
            assert!(bad.parse::<Split>().is_err(), "{bad}");
        }
    }
}
