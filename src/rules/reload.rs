//! Hot reload of the rules folder: watched like `models/`
//! ([`FolderWatch`]), reloaded off the async threads, swapped in
//! atomically (arc-swap) so a request sees the old set or the new one,
//! never a mix. A rejected file keeps serving its previous rules.

use super::RuleSet;
use crate::features::FeatureSet;
use crate::folder_watch::FolderWatch;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the rules reloader needs.
pub struct RulesReloader {
    pub dir: PathBuf,
    pub set: Arc<FeatureSet>,
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub debounce: Duration,
    pub rescan_every: Duration,
}

impl RulesReloader {
    /// Loads the folder once and swaps the result in.
    pub async fn reload(&self) {
        let prev = self.rules.load_full();
        let (dir, set) = (self.dir.clone(), self.set.clone());
        let prev_for_load = prev.clone();
        let next =
            tokio::task::spawn_blocking(move || RuleSet::load(&dir, &set, Some(&prev_for_load)))
                .await;
        match next {
            Ok(next) => {
                let (before, after) = (prev.summary(), next.summary());
                if before != after || prev.files != next.files {
                    tracing::info!(before = %before, after = %after, "rules reloaded");
                }
                self.rules.store(Arc::new(next));
            }
            Err(e) => tracing::error!(error = %e, "rules reload failed; keeping the current rules"),
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let folder = FolderWatch {
            dir: self.dir.clone(),
            what: "rules",
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
