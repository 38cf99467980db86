//! The registry: which models and versions exist in the models folder, which
//! serve, and why the others were rejected.
//!
//! Layout: `<models_dir>/<name>/<version>/{model.toml,model.onnx}`; version
//! folders are positive integers (anything else, like `7.tmp` while being
//! copied, is ignored); the highest valid version of each model serves. The
//! default model is the one named `default` in config, else the first by name.

use super::scorer::{LoadOptions, LoadedModel, ModelError};
use crate::features::FeatureSet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The state of one version folder.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    Serving,
    /// Valid, but a higher version serves.
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
    pub versions: Vec<VersionInfo>,
}

/// Everything loaded from the models folder at one moment.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub models: BTreeMap<String, ModelEntry>,
    /// Problems with folders that are not even a model/version (unreadable dir).
    pub problems: Vec<String>,
}

impl Registry {
    /// Scans and loads the models folder.
    pub fn scan(dir: &Path, set: &FeatureSet, opts: &LoadOptions) -> Registry {
        let mut reg = Registry::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                reg.problems
                    .push(format!("cannot read models folder {}: {e}", dir.display()));
                return reg;
            }
        };
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
                versions: Vec::new(),
            };
            for v in versions {
                let vdir = name_dir.path().join(v.to_string());
                if entry.serving.is_some() {
                    // Lower versions are validated lazily: listed as standby
                    // when their manifest reads; loaded if the serving one goes.
                    let info = match super::Manifest::load(&vdir.join("model.toml")) {
                        Ok(m) => VersionInfo {
                            version: v,
                            status: ModelStatus::Standby,
                            reason: None,
                            inputs: Some(m.inputs),
                            training: None,
                        },
                        Err(e) => rejected(v, &e.into()),
                    };
                    entry.versions.push(info);
                    continue;
                }
                match LoadedModel::load(&vdir, Some((&name, v)), set, opts) {
                    Ok(m) => {
                        entry.versions.push(VersionInfo {
                            version: v,
                            status: ModelStatus::Serving,
                            reason: None,
                            inputs: Some(m.manifest.inputs.clone()),
                            training: m
                                .manifest
                                .training
                                .as_ref()
                                .and_then(|t| serde_json::to_value(t).ok()),
                        });
                        entry.serving = Some(Arc::new(m));
                    }
                    Err(e) => {
                        tracing::warn!(model = %name, version = v, error = %e, "model version rejected");
                        entry.versions.push(rejected(v, &e));
                    }
                }
            }
            if !entry.versions.is_empty() {
                reg.models.insert(name, entry);
            }
        }
        reg
    }

    /// The serving version of `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedModel>> {
        self.models.get(name).and_then(|m| m.serving.as_ref())
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
}

fn rejected(version: u32, e: &ModelError) -> VersionInfo {
    VersionInfo {
        version,
        status: ModelStatus::Rejected,
        reason: Some(e.to_string()),
        inputs: None,
        training: None,
    }
}

/// A version folder name: a positive integer without sign or leading zeros.
pub fn parse_version(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn only_positive_integers_are_versions() {
        assert_eq!(parse_version("7"), Some(7));
        assert_eq!(parse_version("12"), Some(12));
        for bad in ["0", "07", "7.tmp", "-1", "v2", "", "+3"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }
}
