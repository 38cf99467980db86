//! Deciding what to show: candidates → one store read → feature matrix →
//! model → rules → top-k, inside the request's budget. If the store or the
//! model fails, or the budget runs out, the answer is a fallback list with
//! `fallback: true`, never an error.

pub mod candidates;
pub mod item_cache;
pub mod popularity;
pub mod rules;

use crate::features::aggregate::numeric_value;
use crate::features::store::{FeatureStore, ReadQuery};
use crate::features::vector::RowInputs;
use crate::features::{Entity, FeatureSet};
use crate::model::registry::ModelSpec;
use crate::model::routing::Routing;
use crate::model::{LoadedModel, Registry};
use arc_swap::ArcSwap;
use candidates::Source;
use popularity::Popularity;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A validated recommendation request.
#[derive(Debug, Clone)]
pub struct RecommendRequest {
    pub request_id: String,
    pub customer_id: String,
    pub k: usize,
    pub context: Map<String, Value>,
    pub candidates: Option<Vec<String>>,
    pub budget_ms: u64,
    pub model: Option<ModelSpec>,
    pub now_ms: i64,
}

/// One recommended item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RankedItem {
    pub item_id: String,
    pub score: f32,
    pub action: &'static str,
    pub reasons: Vec<&'static str>,
}

/// The model that produced a ranking.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub version: u32,
}

/// The answer to `/v1/recommend`.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub request_id: String,
    pub customer_id: String,
    pub items: Vec<RankedItem>,
    pub model: Option<ModelRef>,
    pub fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub timings_us: BTreeMap<&'static str, u64>,
}

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
}

impl DecideError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecideError::NoModel => "no_model",
            DecideError::Store(_) => "store",
            DecideError::Model(_) | DecideError::Join(_) => "model",
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
    /// Item states cache (Redis only; `None` reads every item every time).
    pub item_cache: Option<item_cache::ItemCache>,
}

/// Part of the budget kept for building the fallback and the response.
const RESERVE: Duration = Duration::from_millis(2);

impl Decider {
    /// Answers a request; always within its budget, never an error.
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

    fn pick_model(&self, req: &RecommendRequest) -> Option<Arc<LoadedModel>> {
        let reg = self.registry.load();
        self.routing
            .choose(&reg, req.model.as_ref(), &req.customer_id)
    }

    /// Scores the shadow models on the same states, off the request path;
    /// results go to metrics and logs only.
    fn score_shadows(&self, primary: &Arc<LoadedModel>, job: ShadowJob) {
        let reg = self.registry.load();
        let shadows: Vec<Arc<LoadedModel>> = self
            .routing
            .shadow
            .iter()
            .filter_map(|s| reg.resolve(s).cloned())
            .filter(|m| !Arc::ptr_eq(m, primary))
            .collect();
        if shadows.is_empty() {
            return;
        }
        let set = self.set.clone();
        let primary_id = primary.id();
        tokio::task::spawn_blocking(move || {
            let inputs = RowInputs {
                customer: &job.customer,
                session: &job.session,
                context: &job.context,
                now: job.now,
            };
            for m in shadows {
                let mut data = Vec::with_capacity(job.ids.len() * m.plan.width());
                for (id, st) in job.ids.iter().zip(&job.items) {
                    m.plan.push_row(&set, &inputs, id, st, &mut data);
                }
                let t = Instant::now();
                let labels = [
                    ("model", m.manifest.name.clone()),
                    ("version", m.manifest.version.to_string()),
                    ("role", "shadow".to_string()),
                ];
                match m.score(&data, job.ids.len()) {
                    Ok(scores) => {
                        metrics::histogram!(crate::metrics::MODEL_SECONDS, &labels)
                            .record(t.elapsed().as_secs_f64());
                        metrics::counter!(crate::metrics::MODEL_SCORES, &labels)
                            .increment(scores.len() as u64);
                        let overlap = top_overlap(&job.primary_scores, &scores, job.k);
                        metrics::histogram!(crate::metrics::SHADOW_TOPK_OVERLAP, "model" => m.manifest.name.clone(), "version" => m.manifest.version.to_string()).record(overlap);
                        tracing::debug!(request_id = %job.request_id, shadow = %m.id(), primary = %primary_id, top_k_overlap = overlap, "shadow scored");
                    }
                    Err(e) => {
                        metrics::counter!(crate::metrics::MODEL_ERRORS, &labels).increment(1);
                        tracing::warn!(request_id = %job.request_id, shadow = %m.id(), error = %e, "shadow scoring failed");
                    }
                }
            }
        });
    }

    async fn ranked(
        &self,
        req: &RecommendRequest,
        timings: &mut BTreeMap<&'static str, u64>,
    ) -> Result<Recommendation, DecideError> {
        let model = self.pick_model(req).ok_or(DecideError::NoModel)?;
        let session_id = req.context.get("session_id").and_then(Value::as_str);
        let t = Instant::now();
        let (cands, read, items) = match &req.candidates {
            Some(list) => {
                let (cached, missing) = self.cached(list);
                let mut read = self
                    .store
                    .read(&ReadQuery {
                        customer_id: &req.customer_id,
                        session_id,
                        item_ids: &missing,
                    })
                    .await?;
                let fresh = std::mem::take(&mut read.items);
                let items = self.merge(list, cached, missing, fresh);
                (
                    list.iter()
                        .map(|i| (i.clone(), Source::Requested))
                        .collect::<Vec<_>>(),
                    read,
                    items,
                )
            }
            None => {
                let read = self
                    .store
                    .read(&ReadQuery {
                        customer_id: &req.customer_id,
                        session_id,
                        item_ids: &[],
                    })
                    .await?;
                let pop = self.popularity.load();
                let cands =
                    candidates::generate(&read.customer, &pop, self.cfg.generated_candidates);
                let ids: Vec<String> = cands.iter().map(|(i, _)| i.clone()).collect();
                let (cached, missing) = self.cached(&ids);
                let fresh = if missing.is_empty() {
                    Vec::new()
                } else {
                    self.store.read_items(&missing).await?
                };
                let items = self.merge(&ids, cached, missing, fresh);
                (cands, read, items)
            }
        };
        stage(timings, "features", t);

        let t = Instant::now();
        let eligible: Vec<usize> = (0..cands.len())
            .filter(|&i| rules::eligible(&read.customer, &cands[i].0, self.cfg.exclude_purchased))
            .collect();
        let inputs = RowInputs {
            customer: &read.customer,
            session: &read.session,
            context: &req.context,
            now: req.now_ms,
        };
        let mut data = Vec::with_capacity(eligible.len() * model.plan.width());
        for &i in &eligible {
            model
                .plan
                .push_row(&self.set, &inputs, &cands[i].0, &items[i], &mut data);
        }
        stage(timings, "matrix", t);

        let t = Instant::now();
        let rows = eligible.len();
        let m = model.clone();
        let labels = [
            ("model", model.manifest.name.clone()),
            ("version", model.manifest.version.to_string()),
            ("role", "primary".to_string()),
        ];
        let scored = match self.micro_batch {
            Some(window) => m.score_batched(data, rows, window).await,
            None => tokio::task::spawn_blocking(move || m.score(&data, rows))
                .await
                .map_err(|e| DecideError::Join(e.to_string()))?,
        };
        let scores = scored.inspect_err(|_| {
            metrics::counter!(crate::metrics::MODEL_ERRORS, &labels).increment(1)
        })?;
        stage(timings, "model", t);
        metrics::histogram!(crate::metrics::MODEL_SECONDS, &labels)
            .record(t.elapsed().as_secs_f64());
        metrics::counter!(crate::metrics::MODEL_SCORES, &labels).increment(scores.len() as u64);
        if !self.routing.shadow.is_empty() {
            let ids: Vec<String> = eligible.iter().map(|&i| cands[i].0.clone()).collect();
            let states: Vec<Arc<crate::features::EntityState>> =
                eligible.iter().map(|&i| items[i].clone()).collect();
            self.score_shadows(
                &model,
                ShadowJob {
                    request_id: req.request_id.clone(),
                    customer: read.customer.clone(),
                    session: read.session.clone(),
                    context: req.context.clone(),
                    now: req.now_ms,
                    ids,
                    items: states,
                    primary_scores: scores.clone(),
                    k: req.k,
                },
            );
        }

        let t = Instant::now();
        let cart_value = self
            .set
            .of_entity(Entity::Customer)
            .find(|f| f.name == "cart_value")
            .and_then(|f| numeric_value(f, &read.customer, req.now_ms))
            .unwrap_or(0.0);
        let mut items: Vec<RankedItem> = eligible
            .iter()
            .zip(scores)
            .map(|(&i, score)| {
                let (id, src) = &cands[i];
                let (action, extra) = rules::action_for(&read.customer, id, cart_value);
                let mut reasons = vec!["model_score", src.reason()];
                reasons.extend(extra);
                RankedItem {
                    item_id: id.clone(),
                    score,
                    action,
                    reasons,
                }
            })
            .collect();
        items.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        items.truncate(req.k);
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

    /// Cached item states for `ids` (None where not cached) and the ids
    /// that must be read from the store.
    #[allow(clippy::type_complexity)]
    fn cached(
        &self,
        ids: &[String],
    ) -> (Vec<Option<Arc<crate::features::EntityState>>>, Vec<String>) {
        let cached = match &self.item_cache {
            Some(c) => c.get_many(ids),
            None => vec![None; ids.len()],
        };
        let missing = ids
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(i, _)| i.clone())
            .collect();
        (cached, missing)
    }

    /// Puts freshly read item states (for `missing`, in order) into the
    /// cache and returns states for every id of `ids`.
    fn merge(
        &self,
        ids: &[String],
        cached: Vec<Option<Arc<crate::features::EntityState>>>,
        missing: Vec<String>,
        fresh: Vec<crate::features::EntityState>,
    ) -> Vec<Arc<crate::features::EntityState>> {
        let fresh: Vec<Arc<_>> = fresh.into_iter().map(Arc::new).collect();
        if let Some(c) = &self.item_cache {
            c.put_many(missing.into_iter().zip(fresh.iter().cloned()));
        }
        let mut it = fresh.into_iter();
        ids.iter()
            .zip(cached)
            .map(|(_, c)| c.or_else(|| it.next()).unwrap_or_default())
            .collect()
    }

    /// The answer when ranking failed: the request's candidates in order, or
    /// the popular items, scored by rank.
    pub fn fallback(&self, req: &RecommendRequest, reason: String) -> Recommendation {
        let items: Vec<RankedItem> = match &req.candidates {
            Some(list) => list
                .iter()
                .take(req.k)
                .enumerate()
                .map(|(r, id)| RankedItem {
                    item_id: id.clone(),
                    score: 1.0 / (r as f32 + 1.0),
                    action: rules::ACTION_RECOMMEND,
                    reasons: vec!["fallback", "requested"],
                })
                .collect(),
            None => self
                .popularity
                .load()
                .global
                .iter()
                .take(req.k)
                .enumerate()
                .map(|(r, (id, _))| RankedItem {
                    item_id: id.clone(),
                    score: 1.0 / (r as f32 + 1.0),
                    action: rules::ACTION_RECOMMEND,
                    reasons: vec!["fallback", "popular"],
                })
                .collect(),
        };
        Recommendation {
            request_id: req.request_id.clone(),
            customer_id: req.customer_id.clone(),
            items,
            model: None,
            fallback: true,
            fallback_reason: Some(reason),
            timings_us: BTreeMap::new(),
        }
    }
}

/// Records a stage's time in the response timings and the stage histogram.
fn stage(timings: &mut BTreeMap<&'static str, u64>, name: &'static str, since: Instant) {
    let d = since.elapsed();
    timings.insert(name, d.as_micros() as u64);
    metrics::histogram!(crate::metrics::RECOMMEND_STAGE_SECONDS, "stage" => name)
        .record(d.as_secs_f64());
}

/// What shadow scoring needs, owned (it runs after the response).
struct ShadowJob {
    request_id: String,
    customer: crate::features::EntityState,
    session: crate::features::EntityState,
    context: Map<String, Value>,
    now: i64,
    ids: Vec<String>,
    items: Vec<Arc<crate::features::EntityState>>,
    primary_scores: Vec<f32>,
    k: usize,
}

/// Share of the primary's top k rows that are also in the other's top k.
fn top_overlap(a: &[f32], b: &[f32], k: usize) -> f64 {
    let top = |s: &[f32]| {
        let mut idx: Vec<usize> = (0..s.len()).collect();
        idx.sort_by(|&x, &y| s[y].total_cmp(&s[x]).then(x.cmp(&y)));
        idx.truncate(k);
        idx
    };
    let (ta, tb) = (top(a), top(b));
    if ta.is_empty() {
        return 1.0;
    }
    ta.iter().filter(|i| tb.contains(i)).count() as f64 / ta.len() as f64
}
