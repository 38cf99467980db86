//! One loaded model: its manifest, a compiled row plan and a small pool of
//! ONNX Runtime sessions (`Session::run` needs `&mut`, so each session scores
//! one batch at a time). Loading validates the manifest against the ONNX
//! graph and the feature store, then runs a warm-up batch.

use super::manifest::{Manifest, ManifestError};
use super::runtime::{self, RuntimeError};
use crate::features::vector::{RowPlan, VectorError};
use crate::features::FeatureSet;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Errors loading or running a model; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: manifest says {field} = {manifest:?} but the folder says {folder:?}")]
    FolderMismatch {
        path: String,
        field: &'static str,
        manifest: String,
        folder: String,
    },
    #[error("{path}: cannot load ONNX model: {message}")]
    Onnx { path: String, message: String },
    #[error("{path}: ONNX model has no input `{name}` (it has: {available})")]
    NoInput {
        path: String,
        name: String,
        available: String,
    },
    #[error("{path}: ONNX model has no output `{name}` (it has: {available})")]
    NoOutput {
        path: String,
        name: String,
        available: String,
    },
    #[error(
        "{path}: input `{name}` must be a float32 tensor of shape [N, {width}], found {found}"
    )]
    InputShape {
        path: String,
        name: String,
        width: usize,
        found: String,
    },
    #[error("{path}: {source}")]
    Feature { path: String, source: VectorError },
    #[error(
        "{path}: output `{name}` has {columns} column(s); score_column {column} is out of range"
    )]
    ScoreColumn {
        path: String,
        name: String,
        columns: usize,
        column: usize,
    },
    #[error("{path}: warm-up produced a non-finite score")]
    NonFinite { path: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// A validated, loaded model version.
pub struct LoadedModel {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub plan: RowPlan,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    batcher: std::sync::OnceLock<super::batcher::MicroBatcher>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .finish()
    }
}

/// How a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub sessions: usize,
    pub intra_threads: usize,
    pub ort_dylib_path: Option<PathBuf>,
}

impl LoadedModel {
    /// Loads and validates `dir` (`model.toml` + `model.onnx`). `expect` is
    /// the `(name, version)` the folder layout implies, if any.
    pub fn load(
        dir: &Path,
        expect: Option<(&str, u32)>,
        set: &FeatureSet,
        opts: &LoadOptions,
    ) -> Result<LoadedModel, ModelError> {
        let path = dir.display().to_string();
        let manifest = Manifest::load(&dir.join("model.toml"))?;
        if let Some((name, version)) = expect {
            if manifest.name != name {
                return Err(ModelError::FolderMismatch {
                    path,
                    field: "name",
                    manifest: manifest.name.clone(),
                    folder: name.into(),
                });
            }
            if manifest.version != version {
                return Err(ModelError::FolderMismatch {
                    path,
                    field: "version",
                    manifest: manifest.version.to_string(),
                    folder: version.to_string(),
                });
            }
        }
        let plan =
            RowPlan::compile(set, &manifest.inputs).map_err(|source| ModelError::Feature {
                path: path.clone(),
                source,
            })?;
        let env = runtime::environment(opts.ort_dylib_path.as_deref())?;
        let onnx = dir.join("model.onnx");
        let mut sessions = Vec::new();
        for _ in 0..opts.sessions.max(1) {
            let onnx_err = |message: String| ModelError::Onnx {
                path: onnx.display().to_string(),
                message,
            };
            let session = Session::builder(env)
                .map_err(|e| onnx_err(e.to_string()))?
                .with_intra_threads(opts.intra_threads.max(1))
                .map_err(|e| onnx_err(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| onnx_err(e.to_string()))?
                .commit_from_file(&onnx)
                .map_err(|e| onnx_err(e.to_string()))?;
            sessions.push(Mutex::new(session));
        }
        let model = LoadedModel {
            manifest,
            dir: dir.to_path_buf(),
            plan,
            sessions,
            next: AtomicUsize::new(0),
            batcher: std::sync::OnceLock::new(),
        };
        model.check_signature()?;
        model.warm_up()?;
        Ok(model)
    }

    fn check_signature(&self) -> Result<(), ModelError> {
        let path = self.dir.display().to_string();
        let session = self.lock(0);
        let m = &self.manifest;
        let names = |o: &[ort::value::Outlet]| {
            o.iter()
                .map(|x| x.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == m.input)
            .ok_or_else(|| ModelError::NoInput {
                path: path.clone(),
                name: m.input.clone(),
                available: names(session.inputs()),
            })?;
        let width = m.inputs.len();
        let ok = match input.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                *ty == TensorElementType::Float32
                    && shape.len() == 2
                    && (shape[1] == width as i64 || shape[1] < 0)
            }
            _ => false,
        };
        if !ok {
            return Err(ModelError::InputShape {
                path,
                name: m.input.clone(),
                width,
                found: format!("{:?}", input.dtype()),
            });
        }
        if !session.outputs().iter().any(|o| o.name() == m.output) {
            return Err(ModelError::NoOutput {
                path,
                name: m.output.clone(),
                available: names(session.outputs()),
            });
        }
        Ok(())
    }

    fn warm_up(&self) -> Result<(), ModelError> {
        let width = self.manifest.inputs.len();
        let rows = 4;
        let data: Vec<f32> = (0..rows * width).map(|i| (i % 7) as f32).collect();
        let scores = self.score(&data, rows).map_err(|e| match e {
            ModelError::Run(message) => ModelError::Onnx {
                path: self.dir.display().to_string(),
                message,
            },
            other => other,
        })?;
        if scores.len() != rows || scores.iter().any(|s| !s.is_finite()) {
            return Err(ModelError::NonFinite {
                path: self.dir.display().to_string(),
            });
        }
        Ok(())
    }

    fn lock(&self, start: usize) -> std::sync::MutexGuard<'_, Session> {
        let n = self.sessions.len();
        for k in 0..n {
            if let Ok(g) = self.sessions[(start + k) % n].try_lock() {
                return g;
            }
        }
        // All busy: wait for the one we were assigned. A poisoned session
        // (a panic inside ort) is still a valid session object.
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Scores `rows` rows of row-major features (blocking; call from a
    /// blocking thread). Returns one score per row.
    pub fn score(&self, data: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let width = self.manifest.inputs.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        if data.len() != rows * width {
            return Err(ModelError::Run(format!(
                "expected {} values, got {}",
                rows * width,
                data.len()
            )));
        }
        let tensor = Tensor::from_array(([rows, width], data.to_vec()))
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut session = self.lock(start);
        let outputs = session
            .run(ort::inputs![self.manifest.input.as_str() => tensor])
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let out = outputs
            .get(&self.manifest.output)
            .ok_or_else(|| ModelError::Run(format!("output `{}` missing", self.manifest.output)))?;
        let (shape, values) = out
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let cols = match shape.len() {
            1 => 1,
            2 => usize::try_from(shape[1]).unwrap_or(1),
            _ => {
                return Err(ModelError::Run(format!(
                    "output shape {shape:?} is not [N] or [N, C]"
                )))
            }
        };
        let col = self.manifest.score_column;
        if col >= cols {
            return Err(ModelError::ScoreColumn {
                path: self.dir.display().to_string(),
                name: self.manifest.output.clone(),
                columns: cols,
                column: col,
            });
        }
        if values.len() < rows * cols {
            return Err(ModelError::Run(format!(
                "output has {} values for {rows} rows",
                values.len()
            )));
        }
        Ok((0..rows).map(|r| values[r * cols + col]).collect())
    }

    /// Scores through this model's micro-batcher (started on first use; its
    /// batches take a permit of `permits` before they go to the blocking pool).
    pub async fn score_batched(
        self: &Arc<Self>,
        data: Vec<f32>,
        rows: usize,
        window: std::time::Duration,
        permits: &Arc<tokio::sync::Semaphore>,
    ) -> Result<Vec<f32>, ModelError> {
        let batcher = self
            .batcher
            .get_or_init(|| super::batcher::MicroBatcher::start(self, window, permits.clone()));
        batcher.score(data, rows).await
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}
