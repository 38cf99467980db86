//! The registry: which models and versions exist in the models folder, which
//! serve, and why the others were rejected.
//!
//! Layout: `<models_dir>/<name>/<version>/{model.toml,model.onnx}`; version
//! folders are positive integers (anything else, like `7.tmp` while being
//! copied, is ignored); the highest valid version of each model serves.
//! Versions pinned by the traffic split or shadow list (`name@version`) are
//! loaded too. A registry is immutable: a rescan builds a new one (reusing
//! every version whose files did not change) and the server swaps it in
//! atomically, so in-flight requests finish on the version they started with.

use super::scorer::{LoadOptions, LoadedModel, ModelError};
use crate::features::FeatureSet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The state of one version folder.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    /// The highest valid version: answers requests for the model's name.
    Serving,
    /// Loaded because the traffic split or shadow list pins it.
    Pinned,
    /// Valid manifest, not loaded: a higher version serves.
    Standby,
    Rejected,
}

/// One version as listed by `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub status: ModelStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

/// One model name with its versions.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub serving: Option<Arc<LoadedModel>>,
    /// Every loaded version (serving and pinned).
    pub loaded: BTreeMap<u32, Arc<LoadedModel>>,
    pub versions: Vec<VersionInfo>,
}

/// What a version folder's files looked like when it was last examined.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, Option<SystemTime>)>);

impl Fingerprint {
    fn of(dir: &Path) -> Fingerprint {
        Fingerprint(
            ["model.toml", "model.onnx"]
                .iter()
                .map(|f| match std::fs::metadata(dir.join(f)) {
                    Ok(m) => (m.len(), m.modified().ok()),
                    Err(_) => (u64::MAX, None),
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone)]
enum Examined {
    Loaded(Arc<LoadedModel>),
    Rejected(String),
}

/// Everything loaded from the models folder at one moment.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub models: BTreeMap<String, ModelEntry>,
    /// Problems with folders that are not even a model/version (unreadable dir).
    pub problems: Vec<String>,
    /// Results of examining version folders, reused while their files are unchanged.
    cache: BTreeMap<PathBuf, (Fingerprint, Examined)>,
}

/// A model reference: `name` (its serving version) or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModelSpec {
    pub name: String,
    pub version: Option<u32>,
}

impl ModelSpec {
    pub fn parse(s: &str) -> Option<ModelSpec> {
        match s.split_once('@') {
            None if !s.is_empty() => Some(ModelSpec {
                name: s.to_string(),
                version: None,
            }),
            Some((n, v)) if !n.is_empty() => parse_version(v).map(|v| ModelSpec {
                name: n.to_string(),
                version: Some(v),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Registry {
    /// Scans and loads the models folder.
    pub fn scan(dir: &Path, set: &FeatureSet, opts: &LoadOptions) -> Registry {
        Registry::rescan(dir, set, opts, &[], None)
    }

    /// Scans the folder, loading the serving version of each model and the
    /// `pinned` versions; versions whose files are unchanged since `previous`
    /// are reused, not reloaded.
    pub fn rescan(
        dir: &Path,
        set: &FeatureSet,
        opts: &LoadOptions,
        pinned: &[ModelSpec],
        previous: Option<&Registry>,
    ) -> Registry {
        let mut reg = Registry::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                reg.problems
                    .push(format!("cannot read models folder {}: {e}", dir.display()));
                return reg;
            }
        };
        let pinned: BTreeSet<(String, u32)> = pinned
            .iter()
            .filter_map(|p| p.version.map(|v| (p.name.clone(), v)))
            .collect();
        let mut names: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
        names.sort_by_key(|e| e.file_name());
        for name_dir in names {
            let Some(name) = name_dir.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let mut versions: Vec<u32> = match std::fs::read_dir(name_dir.path()) {
                Ok(v) => v
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().and_then(parse_version))
                    .collect(),
                Err(e) => {
                    reg.problems
                        .push(format!("cannot read {}: {e}", name_dir.path().display()));
                    continue;
                }
            };
            versions.sort_unstable_by(|a, b| b.cmp(a));
            let mut entry = ModelEntry {
                serving: None,
                loaded: BTreeMap::new(),
                versions: Vec::new(),
            };
            for v in versions {
                let vdir = name_dir.path().join(v.to_string());
                let is_pinned = pinned.contains(&(name.clone(), v));
                if entry.serving.is_some() && !is_pinned {
                    let info = match super::Manifest::load(&vdir.join("model.toml")) {
                        Ok(m) => VersionInfo {
                            version: v,
                            status: ModelStatus::Standby,
                            reason: None,
                            inputs: Some(m.inputs),
                            training: None,
                        },
                        Err(e) => rejected(v, e.to_string()),
                    };
                    entry.versions.push(info);
                    continue;
                }
                match reg.examine(&vdir, &name, v, set, opts, previous) {
                    Examined::Loaded(m) => {
                        let status = if entry.serving.is_none() {
                            ModelStatus::Serving
                        } else {
                            ModelStatus::Pinned
                        };
                        entry.versions.push(VersionInfo {
                            version: v,
                            status: status.clone(),
                            reason: None,
                            inputs: Some(m.manifest.inputs.clone()),
                            training: m
                                .manifest
                                .training
                                .as_ref()
                                .and_then(|t| serde_json::to_value(t).ok()),
                        });
                        if status == ModelStatus::Serving {
                            entry.serving = Some(m.clone());
                        }
                        entry.loaded.insert(v, m);
                    }
                    Examined::Rejected(reason) => entry.versions.push(rejected(v, reason)),
                }
            }
            if !entry.versions.is_empty() {
                reg.models.insert(name, entry);
            }
        }
        reg
    }

    fn examine(
        &mut self,
        vdir: &Path,
        name: &str,
        v: u32,
        set: &FeatureSet,
        opts: &LoadOptions,
        previous: Option<&Registry>,
    ) -> Examined {
        let fp = Fingerprint::of(vdir);
        if let Some((old_fp, result)) = previous.and_then(|p| p.cache.get(vdir)) {
            if *old_fp == fp {
                self.cache.insert(vdir.to_path_buf(), (fp, result.clone()));
                return result.clone();
            }
        }
        let result = match LoadedModel::load(vdir, Some((name, v)), set, opts) {
            Ok(m) => {
                tracing::info!(model = %name, version = v, "model version loaded");
                Examined::Loaded(Arc::new(m))
            }
            Err(e) => {
                tracing::warn!(model = %name, version = v, error = %e, "model version rejected");
                Examined::Rejected(e.to_string())
            }
        };
        self.cache.insert(vdir.to_path_buf(), (fp, result.clone()));
        result
    }

    /// The serving version of `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedModel>> {
        self.models.get(name).and_then(|m| m.serving.as_ref())
    }

    /// A loaded model by spec (`name` → serving version, `name@v` → that version if loaded).
    pub fn resolve(&self, spec: &ModelSpec) -> Option<&Arc<LoadedModel>> {
        let entry = self.models.get(&spec.name)?;
        match spec.version {
            None => entry.serving.as_ref(),
            Some(v) => entry.loaded.get(&v),
        }
    }

    /// The default model: `preferred` if it serves, else the first serving by name.
    pub fn default_model(&self, preferred: Option<&str>) -> Option<&Arc<LoadedModel>> {
        preferred
            .and_then(|p| self.get(p))
            .or_else(|| self.models.values().find_map(|m| m.serving.as_ref()))
    }

    /// Whether any model serves.
    pub fn any_serving(&self) -> bool {
        self.models.values().any(|m| m.serving.is_some())
    }

    /// `name vN` of every serving model, for change logs.
    pub fn serving_summary(&self) -> Vec<String> {
        self.models
            .iter()
            .filter_map(|(n, e)| {
                e.serving
                    .as_ref()
                    .map(|m| format!("{n} v{}", m.manifest.version))
            })
            .collect()
    }
}

fn rejected(version: u32, reason: String) -> VersionInfo {
    VersionInfo {
        version,
        status: ModelStatus::Rejected,
        reason: Some(reason),
        inputs: None,
        training: None,
    }
}

/// Keeps `ModelError` in this module's public surface for callers matching on it.
pub type LoadError = ModelError;

/// A version folder name: a positive integer without sign or leading zeros.
pub fn parse_version(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::{parse_version, ModelSpec};

    #[test]
    fn only_positive_integers_are_versions() {
        assert_eq!(parse_version("7"), Some(7));
        assert_eq!(parse_version("12"), Some(12));
        for bad in ["0", "07", "7.tmp", "-1", "v2", "", "+3"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            ModelSpec::parse("ranker"),
            Some(ModelSpec {
                name: "ranker".into(),
                version: None
            })
        );
        assert_eq!(
            ModelSpec::parse("ranker@3"),
            Some(ModelSpec {
                name: "ranker".into(),
                version: Some(3)
            })
        );
        assert_eq!(ModelSpec::parse("ranker@x"), None);
        assert_eq!(ModelSpec::parse("@3"), None);
    }
}
