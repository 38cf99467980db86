//! `model.toml`: what a model expects and produces. The boundary for model
//! folders: a manifest that parses is structurally sound; whether it matches
//! its ONNX file and the feature store is checked by the scorer on load.

use serde::Deserialize;
use std::path::Path;

/// The manifest beside every `model.onnx`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name; must equal its folder name.
    pub name: String,
    /// Positive integer version; must equal its folder name.
    pub version: u32,
    #[serde(default)]
    pub description: String,
    /// Name of the ONNX input (a float32 `[N, inputs.len()]` tensor).
    pub input: String,
    /// Name of the ONNX output holding scores.
    pub output: String,
    /// Column of `output` that is the score (for `[N, C]` outputs; 0 for `[N]` or `[N, 1]`).
    #[serde(default)]
    pub score_column: usize,
    /// Ordered feature names, one per input column.
    pub inputs: Vec<String>,
    /// Free-form training facts (metrics, dates); shown by `GET /v1/models`.
    #[serde(default)]
    pub training: Option<toml::Table>,
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Manifest {
    /// Reads and checks `model.toml`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |message: String| ManifestError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let m: Manifest = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if m.inputs.is_empty() {
            return Err(invalid("`inputs` must list at least one feature".into()));
        }
        if m.version == 0 {
            return Err(invalid("`version` must be a positive integer".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = m.inputs.iter().find(|i| !seen.insert(i.as_str())) {
            return Err(invalid(format!("input `{dup}` is listed twice")));
        }
        Ok(m)
    }
}
