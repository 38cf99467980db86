//! Hot reload of a folder of definition files (`rules/`, `triggers/`):
//! watched like `models/` ([`FolderWatch`]), reloaded off the async
//! threads, swapped in atomically (arc-swap) so a reader sees the old set
//! or the new one, never a mix. A rejected file keeps serving its
//! previous entries (the set's own `reload` keeps them).

use super::folder::FileStatus;
use crate::features::FeatureSet;
use crate::folder_watch::FolderWatch;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A set loaded from a folder, which can load its successor.
pub trait Reloadable: Send + Sync + 'static {
    /// What the folder holds, for logs (`rules`, `triggers`).
    const WHAT: &'static str;
    /// The folder loaded again, `self` being what serves now.
    fn reload(&self, dir: &Path, set: &FeatureSet) -> Self;
    /// A one-line summary, logged when a reload changed it.
    fn summary(&self) -> String;
    fn files(&self) -> &[FileStatus];
}

/// What a folder's reloader needs.
pub struct FolderReloader<T> {
    pub dir: PathBuf,
    pub set: Arc<FeatureSet>,
    pub current: Arc<ArcSwap<T>>,
    pub debounce: Duration,
    pub rescan_every: Duration,
}

/// The rules folder's reloader.
pub type RulesReloader = FolderReloader<super::RuleSet>;

impl<T: Reloadable> FolderReloader<T> {
    /// Loads the folder once and swaps the result in.
    pub async fn reload(&self) {
        let prev = self.current.load_full();
        let (dir, set) = (self.dir.clone(), self.set.clone());
        let prev_for_load = prev.clone();
        let next = tokio::task::spawn_blocking(move || prev_for_load.reload(&dir, &set)).await;
        match next {
            Ok(next) => {
                let (before, after) = (prev.summary(), next.summary());
                if before != after || prev.files() != next.files() {
                    tracing::info!(before = %before, after = %after, "{} reloaded", T::WHAT);
                }
                self.current.store(Arc::new(next));
            }
            Err(e) => {
                tracing::error!(error = %e, "{} reload failed; keeping the current set", T::WHAT)
            }
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let folder = FolderWatch {
            dir: self.dir.clone(),
            what: T::WHAT,
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
