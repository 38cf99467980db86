//! Deciding what to show: the recommend pipeline, one stage a file, each
//! handing the next a typed value:
//!
//! 1. [`candidates`] and [`fetch`]: the customer's, the session's and the
//!    request's items' states in one store round trip ([`item_cache`] for
//!    item states); candidates are the request's list, or generated from
//!    the customer's state, the items co-visited with their latest ones
//!    (a round trip of its own, also made when the model or a rule reads
//!    `cross.covisit_score`) and the [`popularity`] lists; the rules that
//!    hold for the customer inject more; the items not read yet come in a
//!    second round trip;
//! 2. [`rules`]: each candidate judged by the rule files: excluded or not,
//!    its weight, action and reasons;
//! 3. [`rows`]: the feature matrix of the eligible candidates;
//! 4. [`score`]: the model on the blocking pool behind admission control
//!    ([`shadow`] models scored off the request path);
//! 5. [`arbitrate`]: priority = propensity × value × weight, ordered, top k;
//! 6. [`fallback`]: the answer when any of that failed.
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

pub use request::{ExcludedItem, Label, ModelRef, RankedItem, RecommendRequest, Recommendation};

use crate::features::covisit_score::CoVisitScores;
use crate::features::store::FeatureStore;
use crate::features::FeatureSet;
use crate::model::routing::Routing;
use crate::model::{LoadedModel, Registry};
use crate::rules::eval::{Active, Sourced};
use crate::rules::RuleSet;
use arbitrate::ValueSource;
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
    /// Item states cache (`None` reads every item every time); shared with
    /// the change feed, whose item notices drop items from it.
    pub item_cache: Option<Arc<item_cache::ItemCache>>,
    /// The rule files serving (swapped on reload).
    pub rules: Arc<ArcSwap<RuleSet>>,
    /// Where an item's value in arbitration comes from.
    pub value: ValueSource,
    pub admission: Admission,
    pub shadows: Shadows,
}

/// Part of the budget kept for building the fallback and the response.
const RESERVE: Duration = Duration::from_millis(2);

impl Decider {
    /// The pipeline for a configuration: item cache (Redis only), admission
    /// sized to the model session pool, shadow bound, the rules. An
    /// unknown `recommend.value` is an error.
    pub fn new(
        cfg: &crate::config::Config,
        set: Arc<FeatureSet>,
        store: Arc<dyn FeatureStore>,
        registry: Arc<ArcSwap<Registry>>,
        popularity: Arc<ArcSwap<Popularity>>,
        routing: Routing,
        rules: Arc<ArcSwap<RuleSet>>,
    ) -> Result<Decider, String> {
        let sessions = cfg.model.sessions.max(1);
        Ok(Decider {
            value: ValueSource::new(&set, cfg.recommend.value.as_deref())?,
            rules,
            set,
            store,
            registry,
            popularity,
            cfg: cfg.recommend.clone(),
            routing,
            micro_batch: (cfg.model.micro_batch_us > 0)
                .then(|| Duration::from_micros(cfg.model.micro_batch_us)),
            item_cache: (cfg.store.redis_url.is_some() && cfg.recommend.item_cache_ms > 0).then(
                || {
                    Arc::new(item_cache::ItemCache::new(Duration::from_millis(
                        cfg.recommend.item_cache_ms,
                    )))
                },
            ),
            admission: Admission::new(sessions, cfg.model.max_waiting),
            shadows: Shadows::new(sessions),
        })
    }

    /// Answers a request; within its budget, never an error.
    #[tracing::instrument(name = "recommend", skip_all, fields(request_id = %req.request_id, customer_id = %req.customer_id))]
    pub async fn recommend(&self, req: &RecommendRequest) -> Recommendation {
        let started = Instant::now();
        // the wait for admission (the HTTP gate) is part of the budget
        let budget = Duration::from_millis(req.budget_ms)
            .saturating_sub(RESERVE)
            .saturating_sub(req.queued)
            .max(Duration::from_millis(1));
        let mut timings = BTreeMap::new();
        if !req.queued.is_zero() {
            timings.insert("queued", req.queued.as_micros() as u64);
        }
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
        let rules = self.rules.load_full();

        let t = Instant::now();
        let (cands, fetched, active, sourced) = self
            .candidates_and_states(req, &rules, model.plan.uses_covisit())
            .await?;
        stage(timings, "features", t);

        let t = Instant::now();
        let inputs = rules::inputs(&self.set, &fetched, &req.context, req.now_ms);
        let (verdicts, cells) =
            rules::judge(&active, &inputs, &cands, &fetched, &sourced, req.explain);
        let eligible: Vec<usize> = (0..cands.len())
            .filter(|&i| verdicts[i].excluded_by.is_none())
            .collect();
        stage(timings, "rules", t);

        let t = Instant::now();
        let known = rows::Known::new(&rules, &model.plan, &cells);
        let matrix = rows::build(
            &self.set,
            &model.plan,
            &fetched,
            &req.context,
            req.now_ms,
            &cands,
            &eligible,
            Some(&known),
        );
        drop(known);
        drop(cells);
        stage(timings, "matrix", t);

        let t = Instant::now();
        let scores = score::score(&model, matrix, &self.admission, self.micro_batch).await?;
        stage(timings, "model", t);
        self.score_shadows(&model, req, &fetched, &cands, &eligible, &scores);

        let t = Instant::now();
        let mut verdicts = verdicts;
        // the rule each item's action came from (for its contact counter)
        let mut action_rule: Vec<(String, usize)> = Vec::new();
        let items: Vec<RankedItem> = eligible
            .iter()
            .zip(scores)
            .map(|(&i, propensity)| {
                let c = &cands[i];
                let v = std::mem::take(&mut verdicts[i]);
                let value = self.value.value(&self.set, &fetched.items[i], req.now_ms);
                let mut reasons = vec!["model_score".into(), c.source.reason()];
                for r in v.reasons {
                    if !reasons.contains(&r) {
                        reasons.push(r);
                    }
                }
                let priority = f64::from(propensity) * value * v.weight;
                if let Some((_, ri)) = &v.action {
                    action_rule.push((c.item_id.clone(), *ri));
                }
                RankedItem {
                    item_id: c.item_id.clone(),
                    score: priority as f32,
                    propensity,
                    value,
                    weight: v.weight,
                    action: v
                        .action
                        .map(|(a, _)| a)
                        .unwrap_or(Label::Borrowed(rules::ACTION_RECOMMEND)),
                    reasons,
                    explain: req.explain.then_some(v.explained),
                }
            })
            .collect();
        let items = arbitrate::top_k(items, req.k, &fetched.customer);
        count_actions(&items);
        self.record_offers(req, &rules, &items, &action_rule);
        let excluded = req.explain.then(|| {
            verdicts
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    v.excluded_by.map(|ri| request::ExcludedItem {
                        item_id: cands[i].item_id.clone(),
                        rule: rules.rules[ri].name.clone(),
                    })
                })
                .collect()
        });
        stage(timings, "arbitrate", t);

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
            excluded,
        })
    }

    /// Counts, off the request path, one offer of each capped action the
    /// answer shows (see `rules`' contact policy).
    fn record_offers(
        &self,
        req: &RecommendRequest,
        rules: &RuleSet,
        items: &[RankedItem],
        action_rule: &[(String, usize)],
    ) {
        if !rules.has_caps {
            return;
        }
        let mut keys = Vec::new();
        for item in items {
            let key = action_rule
                .iter()
                .find(|(id, _)| *id == item.item_id)
                .and_then(|(_, ri)| rules.rules[*ri].offer_key());
            if let Some(k) = key {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        let (store, customer, now) = (self.store.clone(), req.customer_id.clone(), req.now_ms);
        tokio::spawn(async move {
            if let Err(e) = store.record_offers(&customer, &keys, now).await {
                tracing::warn!(error = %e, "contact counters not recorded");
            }
        });
    }

    /// Candidates and states: the customer (with the request's items, if it
    /// lists them, and the contact counters of capped rules) in one round
    /// trip; then, if candidates are generated or rules inject some, the
    /// items not read yet in a second. Also the rules that hold for the
    /// customer (caps applied) and which items the injecting ones gave.
    /// The co-visitation scores are read (a round trip of their own) when
    /// candidates are generated, or the model (`model_covisit`) or a rule
    /// reads `cross.covisit_score`.
    async fn candidates_and_states<'r>(
        &self,
        req: &RecommendRequest,
        rule_set: &'r RuleSet,
        model_covisit: bool,
    ) -> Result<(Vec<Candidate>, Fetched, Active<'r>, Sourced), DecideError> {
        let fetcher = Fetcher {
            store: self.store.as_ref(),
            cache: self.item_cache.as_deref(),
        };
        let session = req.session_id.as_deref();
        let listed: &[String] = req.candidates.as_deref().unwrap_or(&[]);
        let cap_keys = rule_set.cap_keys();
        let mut fetched = fetcher
            .read(&req.customer_id, session, listed, &cap_keys, req.now_ms)
            .await?;
        let capped = rule_set.capped(&cap_keys, &fetched.offers);
        let pop = self.popularity.load();
        if req.candidates.is_none() || model_covisit || rule_set.plan.uses_covisit() {
            fetched.covisit = CoVisitScores::read(self.store.as_ref(), &fetched.customer).await?;
        }
        let mut cands = match &req.candidates {
            Some(list) => candidates::requested(list),
            None => {
                let n = self.cfg.generated_candidates;
                let covisited = fetched.covisit.candidates();
                candidates::generate(&fetched.customer, covisited, &pop, n)
            }
        };
        let inputs = rules::inputs(&self.set, &fetched, &req.context, req.now_ms);
        // the `when`s, once per request
        let active = rule_set.begin(&inputs, &capped);
        let injections = rules::injections(&active, &fetched.customer, &pop);
        for (ids, reason) in &injections.added {
            candidates::inject(&mut cands, ids, reason.clone());
        }
        // states of the candidates not read with the customer
        let have = fetched.items.len();
        if cands.len() > have {
            let ids: Vec<String> = cands[have..].iter().map(|c| c.item_id.clone()).collect();
            let more = fetcher.items(&ids).await?;
            fetched.items.extend(more);
        }
        Ok((cands, fetched, active, injections.sourced))
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
            covisit: fetched.covisit.clone(),
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

/// Counts the actions offered (one metric call per action, not per item).
fn count_actions(items: &[RankedItem]) {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for i in items {
        match counts.iter_mut().find(|(a, _)| *a == i.action.as_ref()) {
            Some((_, n)) => *n += 1,
            None => counts.push((i.action.as_ref(), 1)),
        }
    }
    for (action, n) in counts {
        metrics::counter!(crate::metrics::ACTIONS_OFFERED, "action" => action.to_string())
            .increment(n);
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
mod covisit_tests;
#[cfg(test)]
mod tests;
