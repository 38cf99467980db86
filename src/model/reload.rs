//! Hot reload: watches the models folder (notify, through
//! notify-debouncer-full) and rescans it, swapping the new registry in
//! atomically (arc-swap). Unchanged versions are reused, so a rescan only
//! loads what changed; a broken new version is listed as rejected while the
//! previous one keeps serving.
//!
//! A file change is rescanned `debounce` after it happened, and two rescans
//! are at least `debounce` apart: a folder that never stops changing is
//! still rescanned once per period, never starved. Access events (opens,
//! reads, including the rescan's own) trigger nothing. A periodic rescan,
//! `rescan_every` after the last rescan of any cause, covers file systems
//! that drop events and folders that cannot be watched.

use super::registry::{ModelSpec, Registry};
use super::scorer::LoadOptions;
use crate::features::FeatureSet;
use arc_swap::ArcSwap;
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Shortest debounce used (a zero one would spin the debouncer's thread).
const MIN_DEBOUNCE: Duration = Duration::from_millis(10);

/// Longest debounce used (keeps deadlines computable).
const MAX_DEBOUNCE: Duration = Duration::from_secs(3600);

/// What the reloader needs.
pub struct Reloader {
    pub dir: PathBuf,
    pub set: Arc<FeatureSet>,
    pub opts: LoadOptions,
    pub pinned: Vec<ModelSpec>,
    pub registry: Arc<ArcSwap<Registry>>,
    /// Delay from a file change to its rescan, and least time between two.
    pub debounce: Duration,
    /// Zero disables the periodic rescan.
    pub rescan_every: Duration,
}

impl Reloader {
    /// Rescans once and swaps the result in; returns the serving models.
    pub async fn reload(&self) -> Vec<String> {
        let prev = self.registry.load_full();
        let (dir, set, opts, pinned) = (
            self.dir.clone(),
            self.set.clone(),
            self.opts.clone(),
            self.pinned.clone(),
        );
        let before = prev.serving_summary();
        let next = tokio::task::spawn_blocking(move || {
            Registry::rescan(&dir, &set, &opts, &pinned, Some(&prev))
        })
        .await;
        match next {
            Ok(reg) => {
                let after = reg.serving_summary();
                if after != before {
                    tracing::info!(before = ?before, after = ?after, "models swapped");
                }
                publish_serving(Some(&self.registry.load()), &reg);
                self.registry.store(Arc::new(reg));
                after
            }
            Err(e) => {
                tracing::error!(error = %e, "model rescan failed; keeping the current models");
                before
            }
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let debounce = self.debounce.clamp(MIN_DEBOUNCE, MAX_DEBOUNCE);
        let (tx, mut changes) = mpsc::unbounded_channel::<()>();
        // dropping it (when `run` returns) stops its thread
        let _debouncer = self.watch(debounce, tx);
        // false once the channel is closed: no watcher, periodic rescans only
        let mut watching = true;
        // when a change that arrived will be rescanned
        let mut change_due: Option<Instant> = None;
        // no rescan for a change before this (one rescan per debounce period)
        let mut earliest = Instant::now();
        let mut periodic_due = self.next_periodic();
        loop {
            tokio::select! {
                got = changes.recv(), if watching && change_due.is_none() => {
                    match got {
                        Some(()) => change_due = Some(earliest.max(Instant::now())),
                        None => watching = false,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(change_due.unwrap_or(earliest)), if change_due.is_some() => {}
                _ = tokio::time::sleep_until(periodic_due.unwrap_or(earliest)), if periodic_due.is_some() => {}
                _ = stop.changed() => return,
            }
            // changes reported up to now are covered by this rescan
            while changes.try_recv().is_ok() {}
            change_due = None;
            self.reload().await;
            earliest = Instant::now() + debounce;
            periodic_due = self.next_periodic();
        }
    }

    /// Watches `dir`, sending `()` on `changes` for each debounced batch of
    /// events that holds more than accesses. None (logged) when the folder
    /// cannot be watched.
    fn watch(
        &self,
        debounce: Duration,
        changes: mpsc::UnboundedSender<()>,
    ) -> Option<Debouncer<RecommendedWatcher, RecommendedCache>> {
        let on_events = move |res: DebounceEventResult| match res {
            Ok(events) => {
                if events.iter().any(|e| !e.event.kind.is_access()) {
                    let _ = changes.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "models folder watch error");
                }
            }
        };
        match new_debouncer(debounce, None, on_events) {
            Ok(mut d) => match d.watch(&self.dir, RecursiveMode::Recursive) {
                Ok(()) => Some(d),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the models folder; relying on periodic rescans");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; relying on periodic rescans");
                None
            }
        }
    }

    /// When the next periodic rescan is due (None: never).
    fn next_periodic(&self) -> Option<Instant> {
        if self.rescan_every.is_zero() {
            return None;
        }
        Instant::now().checked_add(self.rescan_every)
    }
}

/// Sets the `nextbest_models_serving` gauge: 1 for serving versions, 0 for
/// versions that served before and no longer do.
pub fn publish_serving(previous: Option<&Registry>, next: &Registry) {
    let serving = |r: &Registry| -> Vec<(String, String)> {
        r.models
            .iter()
            .filter_map(|(n, e)| {
                e.serving
                    .as_ref()
                    .map(|m| (n.clone(), m.manifest.version.to_string()))
            })
            .collect()
    };
    let now = serving(next);
    if let Some(prev) = previous {
        for (n, v) in serving(prev) {
            if !now.contains(&(n.clone(), v.clone())) {
                metrics::gauge!(crate::metrics::MODELS_SERVING, "model" => n, "version" => v)
                    .set(0.0);
            }
        }
    }
    for (n, v) in now {
        metrics::gauge!(crate::metrics::MODELS_SERVING, "model" => n, "version" => v).set(1.0);
    }
}
