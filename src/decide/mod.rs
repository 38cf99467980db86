//! Deciding what to show: the recommend pipeline, one stage a file, each
//! handing the next a typed value:
//!
//! 1. [`candidates`]: the request's list, or generated from the customer's
//!    state and the [`popularity`] lists (rules inject more later);
//! 2. [`fetch`]: customer, session and item states in one store round trip
//!    ([`item_cache`] for item states);
//! 3. [`rules`] (eligibility): which candidates may be shown;
//! 4. [`rows`]: the feature matrix for the chosen model;
//! 5. [`score`]: the model on the blocking pool behind admission control
//!    ([`shadow`] models scored off the request path);
//! 6. [`rules`] (actions) and [`arbitrate`]: action and reasons per item,
//!    ordered, top k;
//! 7. [`fallback`]: the answer when any of that failed.
//!
//! The whole pipeline runs under the request's budget minus a small reserve:
//! a store or model error, an overloaded scorer or the deadline give the
//! fallback answer (`fallback: true`) instead of an error. A fallback is
//! built from memory only, so it comes back within the reserve; scoring
//! work already handed to the blocking pool finishes in the background,
//! holding its admission permit.

pub mod arbitrate;
pub mod candidates;
pub mod fallback;
pub mod fetch;
pub mod item_cache;
pub mod popularity;
pub mod request;
pub mod rows;
pub mod rules;
pub mod score;
pub mod shadow;

pub use request::{Label, ModelRef, RankedItem, RecommendRequest, Recommendation};

use crate::features::store::FeatureStore;
use crate::features::FeatureSet;
use crate::model::routing::Routing;
use crate::model::{LoadedModel, Registry};
use arc_swap::ArcSwap;
use candidates::Candidate;
use fetch::{Fetched, Fetcher};
use popularity::Popularity;
use score::Admission;
use shadow::{ShadowJob, Shadows};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the ranked path failed (the request then gets a fallback).
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no model is serving")]
    NoModel,
    #[error("feature store: {0}")]
    Store(#[from] crate::features::store::StoreError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("scoring task failed: {0}")]
    Join(String),
    #[error("too many requests waiting to be scored")]
    Overloaded,
}

impl DecideError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecideError::NoModel => "no_model",
            DecideError::Store(_) => "store",
            DecideError::Model(_) | DecideError::Join(_) => "model",
            DecideError::Overloaded => "overload",
        }
    }
}

/// The recommend pipeline and what it needs.
pub struct Decider {
    pub set: Arc<FeatureSet>,
    pub store: Arc<dyn FeatureStore>,
    pub registry: Arc<ArcSwap<Registry>>,
    pub popularity: Arc<ArcSwap<Popularity>>,
    pub cfg: crate::config::RecommendConfig,
    /// Traffic split, shadow models, default model.
    pub routing: Routing,
    /// Micro-batching window across concurrent requests (None = off).
    pub micro_batch: Option<Duration>,
    /// Item states cache (`None` reads every item every time).
    pub item_cache: Option<item_cache::ItemCache>,
    pub rules: rules::Rules,
    pub admission: Admission,
    pub shadows: Shadows,
}

/// Part of the budget kept for building the fallback and the response.
const RESERVE: Duration = Duration::from_millis(2);

impl Decider {
    /// The pipeline for a configuration: item cache (Redis only), admission
    /// sized to the model session pool, shadow bound, built-in rules.
    pub fn new(
        cfg: &crate::config::Config,
        set: Arc<FeatureSet>,
        store: Arc<dyn FeatureStore>,
        registry: Arc<ArcSwap<Registry>>,
        popularity: Arc<ArcSwap<Popularity>>,
        routing: Routing,
    ) -> Decider {
        let sessions = cfg.model.sessions.max(1);
        Decider {
            rules: rules::Rules::new(&set, cfg.recommend.exclude_purchased),
            set,
            store,
            registry,
            popularity,
            cfg: cfg.recommend.clone(),
            routing,
            micro_batch: (cfg.model.micro_batch_us > 0)
                .then(|| Duration::from_micros(cfg.model.micro_batch_us)),
            item_cache: (cfg.store.redis_url.is_some() && cfg.recommend.item_cache_ms > 0).then(
                || item_cache::ItemCache::new(Duration::from_millis(cfg.recommend.item_cache_ms)),
            ),
            admission: Admission::new(sessions, cfg.model.max_waiting),
            shadows: Shadows::new(sessions),
        }
    }

    /// Answers a request; within its budget, never an error.
    #[tracing::instrument(name = "recommend", skip_all, fields(request_id = %req.request_id, customer_id = %req.customer_id))]
    pub async fn recommend(&self, req: &RecommendRequest) -> Recommendation {
        let started = Instant::now();
        let budget = Duration::from_millis(req.budget_ms)
            .saturating_sub(RESERVE)
            .max(Duration::from_millis(1));
        let mut timings = BTreeMap::new();
        let outcome = tokio::time::timeout(budget, self.ranked(req, &mut timings)).await;
        let mut rec = match outcome {
            Ok(Ok(rec)) => rec,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recommend fell back");
                metrics::counter!(crate::metrics::FALLBACKS, "reason" => e.kind()).increment(1);
                self.fallback(req, e.to_string())
            }
            Err(_) => {
                tracing::warn!(
                    budget_ms = req.budget_ms,
                    "recommend budget exceeded, fell back"
                );
                metrics::counter!(crate::metrics::FALLBACKS, "reason" => "budget").increment(1);
                self.fallback(req, format!("budget of {} ms exceeded", req.budget_ms))
            }
        };
        timings.insert("total", started.elapsed().as_micros() as u64);
        rec.timings_us = timings;
        rec
    }

    /// The fallback answer (see [`fallback`]).
    pub fn fallback(&self, req: &RecommendRequest, reason: String) -> Recommendation {
        fallback::answer(req, &self.popularity.load(), reason)
    }

    fn pick_model(&self, req: &RecommendRequest) -> Option<Arc<LoadedModel>> {
        let reg = self.registry.load();
        self.routing
            .choose(&reg, req.model.as_ref(), &req.customer_id)
    }

    /// The stages, in order.
    async fn ranked(
        &self,
        req: &RecommendRequest,
        timings: &mut BTreeMap<&'static str, u64>,
    ) -> Result<Recommendation, DecideError> {
        let model = self.pick_model(req).ok_or(DecideError::NoModel)?;

        let t = Instant::now();
        let (cands, fetched) = self.candidates_and_states(req).await?;
        stage(timings, "features", t);

        let t = Instant::now();
        let eligible = self.rules.eligible(&fetched.customer, &cands);
        let matrix = rows::build(
            &self.set,
            &model.plan,
            &fetched,
            &req.context,
            req.now_ms,
            &cands,
            &eligible,
        );
        stage(timings, "matrix", t);

        let t = Instant::now();
        let scores = score::score(&model, matrix, &self.admission, self.micro_batch).await?;
        stage(timings, "model", t);
        self.score_shadows(&model, req, &fetched, &cands, &eligible, &scores);

        let t = Instant::now();
        let facts = self.rules.facts(&self.set, &fetched.customer, req.now_ms);
        let items: Vec<RankedItem> = eligible
            .iter()
            .zip(scores)
            .map(|(&i, score)| {
                let c = &cands[i];
                let (action, extra) = self.rules.action(&facts, &fetched.customer, &c.item_id);
                let mut reasons = vec!["model_score".into(), c.source.reason()];
                reasons.extend(extra);
                RankedItem {
                    item_id: c.item_id.clone(),
                    score,
                    action,
                    reasons,
                }
            })
            .collect();
        let items = arbitrate::top_k(items, req.k, &fetched.customer);
        stage(timings, "rules", t);

        Ok(Recommendation {
            request_id: req.request_id.clone(),
            customer_id: req.customer_id.clone(),
            items,
            model: Some(ModelRef {
                name: model.manifest.name.clone(),
                version: model.manifest.version,
            }),
            fallback: false,
            fallback_reason: None,
            timings_us: BTreeMap::new(),
        })
    }

    /// Candidates and states: with the request's list, one round trip for
    /// everything; otherwise the customer first (candidates are generated
    /// from it), then the generated items.
    async fn candidates_and_states(
        &self,
        req: &RecommendRequest,
    ) -> Result<(Vec<Candidate>, Fetched), DecideError> {
        let fetcher = Fetcher {
            store: self.store.as_ref(),
            cache: self.item_cache.as_ref(),
        };
        let session = req.session_id.as_deref();
        Ok(match &req.candidates {
            Some(list) => {
                let fetched = fetcher.read(&req.customer_id, session, list).await?;
                (candidates::requested(list), fetched)
            }
            None => {
                let mut fetched = fetcher.read(&req.customer_id, session, &[]).await?;
                let pop = self.popularity.load();
                let cands =
                    candidates::generate(&fetched.customer, &pop, self.cfg.generated_candidates);
                let ids: Vec<String> = cands.iter().map(|c| c.item_id.clone()).collect();
                fetched.items = fetcher.items(&ids).await?;
                (cands, fetched)
            }
        })
    }

    /// Hands the shadow models (if any) the same states, off the request path.
    fn score_shadows(
        &self,
        primary: &Arc<LoadedModel>,
        req: &RecommendRequest,
        fetched: &Fetched,
        cands: &[Candidate],
        eligible: &[usize],
        scores: &[f32],
    ) {
        if self.routing.shadow.is_empty() {
            return;
        }
        let reg = self.registry.load();
        let models: Vec<Arc<LoadedModel>> = self
            .routing
            .shadow
            .iter()
            .filter_map(|s| reg.resolve(s).cloned())
            .filter(|m| !Arc::ptr_eq(m, primary))
            .collect();
        if models.is_empty() {
            return;
        }
        let job = ShadowJob {
            request_id: req.request_id.clone(),
            customer: fetched.customer.clone(),
            session: fetched.session.clone(),
            context: req.context.clone(),
            now: req.now_ms,
            ids: eligible.iter().map(|&i| cands[i].item_id.clone()).collect(),
            items: eligible.iter().map(|&i| fetched.items[i].clone()).collect(),
            primary_scores: scores.to_vec(),
            k: req.k,
        };
        self.shadows.spawn(self.set.clone(), primary, models, job);
    }
}

/// Records a stage's time in the response timings and the stage histogram.
fn stage(timings: &mut BTreeMap<&'static str, u64>, name: &'static str, since: Instant) {
    let d = since.elapsed();
    timings.insert(name, d.as_micros() as u64);
    metrics::histogram!(crate::metrics::RECOMMEND_STAGE_SECONDS, "stage" => name)
        .record(d.as_secs_f64());
}

#[cfg(test)]
mod tests;
