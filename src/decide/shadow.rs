//! Shadow scoring: the routing's shadow models score the same states as the
//! primary, off the request path, and report to metrics and logs only (how
//! much of the primary's top k they share). Bounded: at most `limit` shadow
//! jobs run at once; a request finding no free slot skips its shadows
//! (counted in `nextbest_shadow_skipped_total`) instead of queueing work.

use crate::features::aggregate::EntityState;
use crate::features::covisit_score::CoVisitScores;
use crate::features::vector::{ContextValues, RowInputs};
use crate::features::FeatureSet;
use crate::model::LoadedModel;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// What shadow scoring needs, owned (it runs after the response).
pub struct ShadowJob {
    pub request_id: String,
    pub customer: EntityState,
    pub session: EntityState,
    /// The primary's co-visitation scores (empty if it read none: a shadow
    /// reading `cross.covisit_score` then sees 0 for listed candidates).
    pub covisit: CoVisitScores,
    pub context: ContextValues,
    pub now: i64,
    pub ids: Vec<String>,
    pub items: Vec<Arc<EntityState>>,
    pub primary_scores: Vec<f32>,
    pub k: usize,
}

/// The bound on concurrent shadow jobs.
#[derive(Debug)]
pub struct Shadows {
    slots: Arc<Semaphore>,
}

impl Shadows {
    pub fn new(limit: usize) -> Shadows {
        Shadows {
            slots: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// Scores `job` with each of `models` on the blocking pool, or skips it
    /// if `limit` jobs are already running.
    pub fn spawn(
        &self,
        set: Arc<FeatureSet>,
        primary: &LoadedModel,
        models: Vec<Arc<LoadedModel>>,
        job: ShadowJob,
    ) {
        if models.is_empty() {
            return;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::SHADOW_SKIPPED).increment(1);
            tracing::debug!(request_id = %job.request_id, "shadow scoring skipped: all slots busy");
            return;
        };
        let primary_id = primary.id();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            run(&set, &primary_id, &models, &job)
        });
    }
}

fn run(set: &FeatureSet, primary_id: &str, models: &[Arc<LoadedModel>], job: &ShadowJob) {
    let inputs = RowInputs {
        customer: &job.customer,
        session: &job.session,
        context: &job.context,
        now: job.now,
        covisit: &job.covisit,
    };
    for m in models {
        let request = m.plan.request_row(set, &inputs);
        let mut data = Vec::with_capacity(job.ids.len() * m.plan.width());
        for (id, st) in job.ids.iter().zip(&job.items) {
            m.plan
                .push_item_row(set, &inputs, &request, id, st, &mut data);
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
