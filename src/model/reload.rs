//! Hot reload: the models folder watched ([`FolderWatch`]: debounced file
//! events plus a periodic rescan) and rescanned, the new registry swapped in
//! atomically (arc-swap). Unchanged versions are reused, so a rescan only
//! loads what changed; a broken new version is listed as rejected while the
//! previous one keeps serving.

use super::registry::{ModelSpec, Registry};
use super::scorer::LoadOptions;
use crate::features::FeatureSet;
use crate::folder_watch::FolderWatch;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let folder = FolderWatch {
            dir: self.dir.clone(),
            what: "models",
            debounce: self.debounce,
            rescan_every: self.rescan_every,
        };
        folder
            .run(stop, || async {
                self.reload().await;
            })
            .await;
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
