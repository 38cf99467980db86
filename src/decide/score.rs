//! The score stage: the primary model scores the matrix on the blocking
//! pool, behind admission control.
//!
//! Scoring takes a permit of [`Admission`] (sized to the model's session
//! pool) before it goes to `spawn_blocking`, and keeps it until the blocking
//! work ends, also when the request gave up waiting for it: so no more ONNX
//! runs are in flight than there are sessions, and blocked threads never
//! pile up. Requests wait for a permit within their own deadline (the
//! caller's timeout); when `max_waiting` requests already wait, the next one
//! is refused at once ([`DecideError::Overloaded`]) and gets a fallback.
//! The micro-batched path hands the same permits to the model's batcher.

use super::rows::Matrix;
use super::DecideError;
use crate::model::LoadedModel;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits for concurrent scoring, and how many requests may wait for one.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Decrements the waiting count when a waiter stops waiting (got a permit,
/// or its request was cancelled by the deadline).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(permits: usize, max_waiting: usize) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// The semaphore itself (shared with the micro-batcher).
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// A permit: at once if one is free, else after waiting (cancellable),
    /// unless too many already wait.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, DecideError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(DecideError::Overloaded);
        }
        let _waiting = Waiting(&self.waiting);
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DecideError::Overloaded)
    }
}

/// Scores `matrix` with `model`; one score per row.
pub async fn score(
    model: &Arc<LoadedModel>,
    matrix: Matrix,
    admission: &Admission,
    micro_batch: Option<Duration>,
) -> Result<Vec<f32>, DecideError> {
    let t = Instant::now();
    let labels = [
        ("model", model.manifest.name.clone()),
        ("version", model.manifest.version.to_string()),
        ("role", "primary".to_string()),
    ];
    let Matrix { data, rows } = matrix;
    let scored = match micro_batch {
        Some(window) => {
            model
                .score_batched(data, rows, window, admission.semaphore())
                .await
        }
        None => {
            let permit = admission.acquire().await?;
            let m = model.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                m.score(&data, rows)
            })
            .await
            .map_err(|e| DecideError::Join(e.to_string()))?
        }
    };
    let scores = scored
        .inspect_err(|_| metrics::counter!(crate::metrics::MODEL_ERRORS, &labels).increment(1))?;
    metrics::histogram!(crate::metrics::MODEL_SECONDS, &labels).record(t.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::MODEL_SCORES, &labels).increment(scores.len() as u64);
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_beyond_the_limit_are_refused_at_once() {
        let a = Arc::new(Admission::new(1, 1));
        let held = a.acquire().await.expect("a free permit");
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.acquire().await.map(drop) })
        };
        // wait (bounded) until the first waiter is counted
        for _ in 0..1000 {
            if a.waiting.load(Ordering::Acquire) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(a.waiting.load(Ordering::Acquire), 1, "the waiter waits");
        assert!(matches!(a.acquire().await, Err(DecideError::Overloaded)));
        drop(held);
        waiter
            .await
            .expect("waiter task")
            .expect("the waiter gets the released permit");
        assert_eq!(a.waiting.load(Ordering::Acquire), 0);
        assert!(a.acquire().await.is_ok(), "free again after the waiter");
    }
}
