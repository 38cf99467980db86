//! Event triggers: `triggers/*.toml` files of `[[trigger]]` tables that
//! watch the live event stream and fire actions (a reminder, an offer) to
//! `nextbest.actions`, each at most once per episode or session.
//!
//! - [`file`]: the file format, parsed with positions;
//! - [`trigger`]: a compiled trigger (conditions checked by the rules'
//!   CEL machinery, `rules::condition`);
//! - [`plan`]: which timer changes an event makes (pure), written with the
//!   event's features (`features::store::timers` has the timers' design);
//! - [`sequence`]: the ordered patterns of `sequence` triggers;
//! - [`action`]: the message a firing sends;
//! - [`deliver`]: where it goes (the actions topic, the webhook, the
//!   recent list); [`webhook`]: signed, retried, dead-lettered;
//! - [`fire`]: one firing decided (`when`, `cancel_when`, contact cap,
//!   `recommend`) and delivered;
//! - [`timer_loop`]: the background task that claims due timers;
//! - [`watch`]: the checks after each applied batch (thresholds, sequences);
//! - [`engine`]: the handle the apply paths call.
//!
//! A [`TriggerSet`] is one load of the folder, like a `RuleSet`: a file
//! with any error is rejected whole with `file:line:column`, and the
//! triggers it had keep running.

pub mod action;
pub mod deliver;
pub mod engine;
pub mod file;
pub mod fire;
pub mod plan;
pub mod sequence;
pub mod timer_loop;
pub mod trigger;
pub mod watch;
pub mod webhook;

use crate::features::FeatureSet;
use crate::rules::file::FileError;
use crate::rules::folder::{self, FileStatus};
use crate::rules::reload::{FolderReloader, Reloadable};
use crate::rules::schema::{Namespace, Plan, Schema};
use cel::Env;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use trigger::Trigger;

pub use engine::Triggers;

/// The name of the shipped trigger whose window
/// `triggers.cart_abandonment_after_ms` (`NEXTBEST_CART_ABANDONMENT_AFTER_MS`)
/// overrides.
pub const CART_ABANDONMENT: &str = "cart_abandonment";

/// Settings a load applies to the files (from the config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// The window of [`CART_ABANDONMENT`], in ms.
    pub cart_abandonment_after_ms: Option<i64>,
}

/// The triggers running, and what each file's load gave.
pub struct TriggerSet {
    pub triggers: Vec<Arc<Trigger>>,
    pub files: Vec<FileStatus>,
    /// The fields any condition or context reads, compiled.
    pub plan: Plan,
    pub env: Arc<Env>,
    pub dir: String,
    pub overrides: Overrides,
}

impl std::fmt::Debug for TriggerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerSet")
            .field("dir", &self.dir)
            .field("triggers", &self.triggers)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TriggerSet {
    /// No triggers.
    pub fn empty(set: &FeatureSet) -> TriggerSet {
        let schema = Schema::new(set);
        TriggerSet::from_triggers(
            set,
            &schema,
            Arc::new(Env::stdlib()),
            Vec::new(),
            Vec::new(),
            String::new(),
            Overrides::default(),
        )
    }

    fn from_triggers(
        set: &FeatureSet,
        schema: &Schema,
        env: Arc<Env>,
        triggers: Vec<Arc<Trigger>>,
        files: Vec<FileStatus>,
        dir: String,
        overrides: Overrides,
    ) -> TriggerSet {
        let used: BTreeSet<(Namespace, String)> = triggers
            .iter()
            .flat_map(|t| {
                t.conditions()
                    .flat_map(|c| c.used.iter().cloned())
                    .chain(t.context.iter().cloned())
                    .collect::<Vec<_>>()
            })
            .collect();
        let used: Vec<(Namespace, String)> = used.into_iter().collect();
        TriggerSet {
            plan: schema.plan(set, &used),
            triggers,
            files,
            env,
            dir,
            overrides,
        }
    }

    /// Loads every `*.toml` of `dir` (a missing folder is no triggers). A
    /// rejected file keeps running the triggers it had in `previous`.
    pub fn load(
        dir: &Path,
        set: &FeatureSet,
        overrides: &Overrides,
        previous: Option<&TriggerSet>,
    ) -> TriggerSet {
        let paths = folder::toml_paths(dir, "triggers");
        TriggerSet::load_paths(dir, paths, set, overrides, previous)
    }

    /// Loads one trigger file alone (for `nextbest triggers check <file>`).
    pub fn load_file_only(path: &Path, set: &FeatureSet, overrides: &Overrides) -> TriggerSet {
        let dir = path.parent().unwrap_or(Path::new("."));
        TriggerSet::load_paths(dir, vec![path.to_path_buf()], set, overrides, None)
    }

    fn load_paths(
        dir: &Path,
        paths: Vec<std::path::PathBuf>,
        set: &FeatureSet,
        overrides: &Overrides,
        previous: Option<&TriggerSet>,
    ) -> TriggerSet {
        let schema = Schema::new(set);
        let env = Arc::new(Env::stdlib());
        let (triggers, files) = folder::load_files(
            paths,
            previous.map(|p| p.triggers.as_slice()),
            "trigger",
            |path, file| load_file(&env, &schema, overrides, path, file),
        );
        let out = TriggerSet::from_triggers(
            set,
            &schema,
            env,
            triggers,
            files,
            dir.display().to_string(),
            overrides.clone(),
        );
        out.publish_metrics();
        out
    }

    /// The trigger named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Trigger>> {
        self.triggers.iter().find(|t| t.name == name)
    }

    /// The files rejected.
    pub fn errors(&self) -> impl Iterator<Item = &FileStatus> {
        folder::rejected(&self.files)
    }

    /// A one-line summary: triggers running, files rejected.
    pub fn summary(&self) -> String {
        folder::summary("triggers", self.triggers.len(), &self.files, &self.dir)
    }

    fn publish_metrics(&self) {
        metrics::gauge!(crate::metrics::TRIGGERS_ACTIVE).set(self.triggers.len() as f64);
        metrics::gauge!(crate::metrics::TRIGGER_FILES_REJECTED).set(self.errors().count() as f64);
    }
}

fn load_file(
    env: &Arc<Env>,
    schema: &Schema,
    overrides: &Overrides,
    path: &Path,
    file: &str,
) -> Result<Vec<Trigger>, FileError> {
    let text = folder::read_text(path, file)?;
    file::parse(file, &text)?
        .into_iter()
        .map(|spec| {
            let after = (spec.name == CART_ABANDONMENT)
                .then_some(overrides.cart_abandonment_after_ms)
                .flatten();
            Trigger::compile(env, schema, file, &text, spec, after)
        })
        .collect()
}

impl Reloadable for TriggerSet {
    const WHAT: &'static str = "triggers";

    fn reload(&self, dir: &Path, set: &FeatureSet) -> Self {
        TriggerSet::load(dir, set, &self.overrides.clone(), Some(self))
    }

    fn summary(&self) -> String {
        TriggerSet::summary(self)
    }

    fn files(&self) -> &[FileStatus] {
        &self.files
    }
}

/// The triggers folder's reloader.
pub type TriggersReloader = FolderReloader<TriggerSet>;

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> FeatureSet {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        FeatureSet::load(&path).expect("definitions")
    }

    #[test]
    fn the_shipped_triggers_load_and_the_window_is_overridden() {
        let set = set();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("triggers");
        let ts = TriggerSet::load(&dir, &set, &Overrides::default(), None);
        assert_eq!(ts.errors().count(), 0, "{:?}", ts.files);
        let cart = ts.get(CART_ABANDONMENT).expect("cart_abandonment ships");
        assert!(matches!(
            cart.kind,
            trigger::Kind::Inactivity {
                after_ms: 1_800_000,
                ..
            }
        ));
        assert!(ts.triggers.iter().any(|t| t.kind.name() == "threshold"));
        assert!(ts.triggers.iter().any(|t| t.kind.name() == "sequence"));
        let o = Overrides {
            cart_abandonment_after_ms: Some(2_000),
        };
        let ts = TriggerSet::load(&dir, &set, &o, None);
        let cart = ts.get(CART_ABANDONMENT).expect("cart_abandonment ships");
        assert!(matches!(
            cart.kind,
            trigger::Kind::Inactivity {
                after_ms: 2_000,
                ..
            }
        ));
    }

    #[test]
    fn a_broken_file_is_rejected_and_its_previous_triggers_keep_running() {
        let set = set();
        let dir = std::env::temp_dir().join(format!("nextbest-triggers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        let good = "[[trigger]]\nname = \"a\"\nkind = \"threshold\"\ncondition = \"session.dwell_ms > 1.0\"\n";
        std::fs::write(dir.join("a.toml"), good).expect("write");
        let first = TriggerSet::load(&dir, &set, &Overrides::default(), None);
        assert_eq!(first.triggers.len(), 1);
        let broken =
            "[[trigger]]\nname = \"a\"\nkind = \"threshold\"\ncondition = \"session.dwell_ms >\"\n";
        std::fs::write(dir.join("a.toml"), broken).expect("write");
        let second = first.reload(&dir, &set);
        assert_eq!(
            second.triggers.len(),
            1,
            "the previous version keeps running"
        );
        let f = &second.files[0];
        assert_eq!(f.status, "rejected");
        assert!(f.serving_previous);
        assert_eq!(f.line, Some(4), "{f:?}");
        assert!(
            f.error.as_deref().is_some_and(|e| e.contains("a.toml:4:")),
            "{f:?}"
        );
        let fresh = TriggerSet::load(&dir, &set, &Overrides::default(), None);
        assert!(
            fresh.triggers.is_empty(),
            "without a previous set nothing runs"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
