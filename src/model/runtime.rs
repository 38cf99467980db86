//! Finding and starting ONNX Runtime (loaded dynamically, version 1.31.1).
//!
//! Search order: `ORT_DYLIB_PATH` (or the config's `ort_dylib_path`), then the
//! copy `make setup` installs at `.deps/lib/` (relative to the working
//! directory and to the executable's ancestors), then the onnxruntime wheel in
//! the project's `.venv`. The environment is created once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The library file name the project installs.
pub const ORT_LIB: &str = "libonnxruntime.so.1.31.1";

/// Errors starting ONNX Runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot find ONNX Runtime ({ORT_LIB}): set ORT_DYLIB_PATH to its path, or run `make setup` to install it into .deps/lib/")]
    NotFound,
    #[error("ORT_DYLIB_PATH={0} does not exist")]
    Missing(String),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: String, message: String },
}

static ENV: OnceLock<Result<(ort::environment::Environment, PathBuf), RuntimeError>> =
    OnceLock::new();

/// Where ONNX Runtime would be loaded from.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(RuntimeError::Missing(p.display().to_string()))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in &roots {
        let p = root.join(".deps/lib").join(ORT_LIB);
        if p.exists() {
            return Ok(p);
        }
    }
    for root in &roots {
        if let Ok(entries) = std::fs::read_dir(root.join(".venv/lib")) {
            for e in entries.flatten() {
                let p = e
                    .path()
                    .join("site-packages/onnxruntime/capi")
                    .join(ORT_LIB);
                if p.exists() {
                    return Ok(p);
                }
            }
        }
    }
    Err(RuntimeError::NotFound)
}

/// The process-wide ONNX Runtime environment (loaded on first use).
pub fn environment(
    explicit: Option<&Path>,
) -> Result<&'static ort::environment::Environment, RuntimeError> {
    let res = ENV.get_or_init(|| {
        let path = locate(explicit)?;
        let load_err = |message: String| RuntimeError::Load {
            path: path.display().to_string(),
            message,
        };
        let env = ort::init_from(&path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("nextbest")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        Ok((env, path))
    });
    match res {
        Ok((env, _)) => Ok(env),
        Err(e) => Err(e.clone()),
    }
}

/// The path ONNX Runtime was loaded from, once loaded.
pub fn loaded_from() -> Option<PathBuf> {
    ENV.get()
        .and_then(|r| r.as_ref().ok())
        .map(|(_, p)| p.clone())
}
