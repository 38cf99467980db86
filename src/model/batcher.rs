//! Optional micro-batching across concurrent requests: requests for the same
//! model that arrive within a short window are scored in one ONNX call and
//! their rows split back. Off by default (`model.micro_batch_us = 0`); see
//! benches/RESULTS.md for when it pays.
//!
//! Bounded: at most `QUEUE` requests wait to join a batch (a request finding
//! the queue full is refused at once), and each batch takes a scoring permit
//! (the decider's admission semaphore) before it goes to the blocking pool,
//! so batches never run on more threads than there are sessions.

use super::scorer::{LoadedModel, ModelError};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most rows scored in one batched call.
const MAX_ROWS: usize = 2048;
/// Most requests queued for the next batches.
const QUEUE: usize = 256;

struct Job {
    data: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<f32>, ModelError>>,
}

/// A handle to one model's batching task.
pub struct MicroBatcher {
    tx: mpsc::Sender<Job>,
}

impl MicroBatcher {
    /// Starts the batching task for `model` (holds it weakly: the task ends
    /// when the model is dropped).
    pub fn start(
        model: &Arc<LoadedModel>,
        window: Duration,
        permits: Arc<Semaphore>,
    ) -> MicroBatcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(Arc::downgrade(model), rx, window, permits));
        MicroBatcher { tx }
    }

    /// Scores rows through the batch; same result as `LoadedModel::score`.
    pub async fn score(&self, data: Vec<f32>, rows: usize) -> Result<Vec<f32>, ModelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job { data, rows, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ModelError::Run("micro-batcher queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ModelError::Run("micro-batcher stopped".into())
                }
            })?;
        rx.await
            .map_err(|_| ModelError::Run("micro-batcher dropped the request".into()))?
    }
}

async fn run(
    model: Weak<LoadedModel>,
    mut rx: mpsc::Receiver<Job>,
    window: Duration,
    permits: Arc<Semaphore>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows;
        let deadline = tokio::time::Instant::now() + window;
        while rows < MAX_ROWS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    rows += j.rows;
                    jobs.push(j);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let Some(m) = model.upgrade() else {
            for j in jobs {
                let _ = j.reply.send(Err(ModelError::Run("model unloaded".into())));
            }
            return;
        };
        // score this batch on the blocking pool while the next one collects
        let permits = permits.clone();
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let mut data = Vec::with_capacity(jobs.iter().map(|j| j.data.len()).sum());
            for j in &jobs {
                data.extend_from_slice(&j.data);
            }
            let result = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                m.score(&data, rows)
            })
            .await;
            match result {
                Ok(Ok(scores)) => {
                    let mut at = 0;
                    for j in jobs {
                        let part = scores[at..at + j.rows].to_vec();
                        at += j.rows;
                        let _ = j.reply.send(Ok(part));
                    }
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    for j in jobs {
                        let _ = j.reply.send(Err(ModelError::Run(msg.clone())));
                    }
                }
                Err(e) => {
                    for j in jobs {
                        let _ = j.reply.send(Err(ModelError::Run(e.to_string())));
                    }
                }
            }
        });
    }
}
