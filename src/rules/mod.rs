//! Business rules: `rules/*.toml` files of `[[rule]]` tables whose CEL
//! conditions over live features decide what is shown and why.
//!
//! - [`file`]: the file format, parsed with positions;
//! - [`schema`]: the variables conditions read (`customer.*`, `item.*`, …);
//! - [`condition`]: CEL compiled with the `cel` crate and checked (names,
//!   features, types) once, at load;
//! - [`rule`]: a compiled rule;
//! - [`fast`]: the common condition shapes, recognised in cel's parsed
//!   expression, evaluated without cel's interpreter (same results);
//! - [`eval`]: one request's evaluation (eligibility, levers, actions,
//!   injections), synchronous, on the features already read;
//! - [`folder`]: a folder of definition files loaded, each file whole or
//!   rejected (shared with `triggers/`);
//! - [`reload`]: the folder watched and swapped in (rules and triggers).
//!
//! A [`RuleSet`] is what one load of the folder produced: the rules that
//! serve, in file-name then file order, and each file's status. A file
//! with any error is rejected as a whole, with `file:line:column` and the
//! reason; the rules it had in the previous set keep serving.

pub mod condition;
pub mod eval;
pub mod fast;
pub mod file;
pub mod folder;
pub mod reload;
pub mod rule;
pub mod schema;

use crate::features::store::OfferKey;
use crate::features::FeatureSet;
use cel::Env;
use fast::Fast;
use file::FileError;
pub use folder::FileStatus;
use rule::Rule;
use schema::{Namespace, Plan, Schema};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// The rules serving, and what each file's load gave.
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
    pub files: Vec<FileStatus>,
    /// The fields any rule reads, compiled.
    pub plan: Plan,
    /// Whether any serving rule has a contact cap.
    pub has_caps: bool,
    /// The folder loaded.
    pub dir: String,
    /// The CEL environment the conditions were compiled for.
    pub env: Arc<Env>,
    /// Per rule: the positions (in the plan's item fields) of the item
    /// fields its `item_when` reads (the key its results are kept under).
    pub memo_keys: Vec<Vec<usize>>,
    /// Per rule: its `when` and `item_when` in the form evaluated without
    /// cel, where their shape allows ([`fast`]).
    pub fast: Vec<(Option<Fast>, Option<Fast>)>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("dir", &self.dir)
            .field("rules", &self.rules)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// No rules.
    pub fn empty(set: &FeatureSet) -> RuleSet {
        RuleSet::from_rules(
            set,
            &Schema::new(set),
            Arc::new(Env::stdlib()),
            Vec::new(),
            Vec::new(),
            String::new(),
        )
    }

    fn from_rules(
        set: &FeatureSet,
        schema: &Schema,
        env: Arc<Env>,
        rules: Vec<Arc<Rule>>,
        files: Vec<FileStatus>,
        dir: String,
    ) -> RuleSet {
        let used: BTreeSet<(Namespace, String)> = rules
            .iter()
            .flat_map(|r| r.when.iter().chain(r.item_when.iter()))
            .flat_map(|c| c.used.iter().cloned())
            .collect();
        let used: Vec<(Namespace, String)> = used.into_iter().collect();
        let plan = schema.plan(set, &used);
        let item_fields: Vec<(Namespace, String)> = plan
            .item_fields()
            .map(|(ns, f)| (ns, f.to_string()))
            .collect();
        let memo_keys = rules
            .iter()
            .map(|r| {
                r.item_when.as_ref().map_or_else(Vec::new, |c| {
                    item_fields
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| c.used.contains(f))
                        .map(|(i, _)| i)
                        .collect()
                })
            })
            .collect();
        let fast = rules
            .iter()
            .map(|r| {
                let f = |c: &Option<condition::Condition>| {
                    c.as_ref()
                        .and_then(|c| Fast::compile(c.expression(), &plan))
                };
                (f(&r.when), f(&r.item_when))
            })
            .collect();
        RuleSet {
            fast,
            memo_keys,
            plan,
            has_caps: rules.iter().any(|r| r.effects.cap.is_some()),
            rules,
            files,
            dir,
            env,
        }
    }

    /// Loads one rule file alone (for `nextbest rules check <file>`).
    pub fn load_file_only(path: &Path, set: &FeatureSet) -> RuleSet {
        let dir = path.parent().unwrap_or(Path::new("."));
        RuleSet::load_paths(dir, vec![path.to_path_buf()], set, None)
    }

    /// Loads every `*.toml` of `dir` (a missing folder is no rules). A
    /// rejected file keeps serving the rules it had in `previous`.
    pub fn load(dir: &Path, set: &FeatureSet, previous: Option<&RuleSet>) -> RuleSet {
        RuleSet::load_paths(dir, folder::toml_paths(dir, "rules"), set, previous)
    }

    fn load_paths(
        dir: &Path,
        paths: Vec<std::path::PathBuf>,
        set: &FeatureSet,
        previous: Option<&RuleSet>,
    ) -> RuleSet {
        let schema = Schema::new(set);
        let env = Arc::new(Env::stdlib());
        let (rules, files) = folder::load_files(
            paths,
            previous.map(|p| p.rules.as_slice()),
            "rule",
            |path, file| load_file(&env, &schema, path, file),
        );
        let set_ = RuleSet::from_rules(set, &schema, env, rules, files, dir.display().to_string());
        set_.publish_metrics();
        set_
    }

    /// The contact counters the serving rules' caps need, each once.
    pub fn cap_keys(&self) -> Vec<OfferKey> {
        let mut keys: Vec<OfferKey> = Vec::new();
        for r in &self.rules {
            if let Some(k) = r.offer_key() {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    /// The rules whose cap `counts` (of [`Self::cap_keys`], in order) reached.
    pub fn capped(&self, keys: &[OfferKey], counts: &[u64]) -> Vec<usize> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let cap = r.effects.cap?;
                let k = r.offer_key()?;
                let n = keys
                    .iter()
                    .position(|x| *x == k)
                    .and_then(|p| counts.get(p))?;
                (*n >= u64::from(cap.max)).then_some(i)
            })
            .collect()
    }

    /// The files rejected.
    pub fn errors(&self) -> impl Iterator<Item = &FileStatus> {
        folder::rejected(&self.files)
    }

    /// A one-line summary: rules serving, files rejected.
    pub fn summary(&self) -> String {
        folder::summary("rules", self.rules.len(), &self.files, &self.dir)
    }

    fn publish_metrics(&self) {
        metrics::gauge!(crate::metrics::RULES_ACTIVE).set(self.rules.len() as f64);
        metrics::gauge!(crate::metrics::RULE_FILES_REJECTED).set(self.errors().count() as f64);
    }
}

fn load_file(
    env: &Arc<Env>,
    schema: &Schema,
    path: &Path,
    file: &str,
) -> Result<Vec<Rule>, FileError> {
    let text = folder::read_text(path, file)?;
    file::parse(file, &text)?
        .into_iter()
        .map(|spec| Rule::compile(env, schema, file, &text, spec))
        .collect()
}

impl folder::Named for Rule {
    fn name(&self) -> &str {
        &self.name
    }
    fn file(&self) -> &str {
        &self.file
    }
    fn line(&self) -> usize {
        self.line
    }
}

impl reload::Reloadable for RuleSet {
    const WHAT: &'static str = "rules";

    fn reload(&self, dir: &Path, set: &FeatureSet) -> Self {
        RuleSet::load(dir, set, Some(self))
    }

    fn summary(&self) -> String {
        RuleSet::summary(self)
    }

    fn files(&self) -> &[FileStatus] {
        &self.files
    }
}
