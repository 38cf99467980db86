//! Watching a folder for changes (models, rules): notify events through
//! notify-debouncer-full, plus a periodic rescan, call a reload.
//!
//! A file change is reloaded `debounce` after it happened, and two reloads
//! are at least `debounce` apart: a folder that never stops changing is
//! still reloaded once per period, never starved. Access events (opens,
//! reads, including the reload's own) trigger nothing. A periodic reload,
//! `rescan_every` after the last reload of any cause, covers file systems
//! that drop events and folders that cannot be watched.

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Shortest debounce used (a zero one would spin the debouncer's thread).
const MIN_DEBOUNCE: Duration = Duration::from_millis(10);

/// Longest debounce used (keeps deadlines computable).
const MAX_DEBOUNCE: Duration = Duration::from_secs(3600);

/// A folder to watch.
pub struct FolderWatch {
    pub dir: PathBuf,
    /// What the folder holds, for logs ("models", "rules").
    pub what: &'static str,
    /// Delay from a file change to its reload, and least time between two.
    pub debounce: Duration,
    /// Zero disables the periodic reload.
    pub rescan_every: Duration,
}

impl FolderWatch {
    /// Calls `reload` on changes until `stop` turns true.
    pub async fn run<F, Fut>(self, mut stop: watch::Receiver<bool>, mut reload: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let debounce = self.debounce.clamp(MIN_DEBOUNCE, MAX_DEBOUNCE);
        let (tx, mut changes) = mpsc::unbounded_channel::<()>();
        // dropping it (when `run` returns) stops its thread
        let _debouncer = self.watch(debounce, tx);
        // false once the channel is closed: no watcher, periodic reloads only
        let mut watching = true;
        // when a change that arrived will be reloaded
        let mut change_due: Option<Instant> = None;
        // no reload for a change before this (one reload per debounce period)
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
            // changes reported up to now are covered by this reload
            while changes.try_recv().is_ok() {}
            change_due = None;
            reload().await;
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
        let what = self.what;
        let on_events = move |res: DebounceEventResult| match res {
            Ok(events) => {
                if events.iter().any(|e| !e.event.kind.is_access()) {
                    let _ = changes.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(folder = what, error = %e, "folder watch error");
                }
            }
        };
        match new_debouncer(debounce, None, on_events) {
            Ok(mut d) => match d.watch(&self.dir, RecursiveMode::Recursive) {
                Ok(()) => Some(d),
                Err(e) => {
                    tracing::warn!(folder = what, dir = %self.dir.display(), error = %e, "cannot watch the folder; relying on periodic rescans");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(folder = what, error = %e, "file watching unavailable; relying on periodic rescans");
                None
            }
        }
    }

    /// When the next periodic reload is due (None: never).
    fn next_periodic(&self) -> Option<Instant> {
        if self.rescan_every.is_zero() {
            return None;
        }
        Instant::now().checked_add(self.rescan_every)
    }
}
