//! A folder of definition files (`rules/`, `triggers/`): every `*.toml`
//! in it, in file-name order, each loaded whole or rejected whole. A
//! rejected file keeps serving what it held in the previous load (the
//! entries of that file whose names no other file took since), and its
//! status says where and why (`file:line:column: reason`). Names are
//! unique across the folder.

use super::file::{FileError, Pos};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An entry of a definition file (a rule, a trigger).
pub trait Named {
    fn name(&self) -> &str;
    /// The file it came from, as loaded.
    fn file(&self) -> &str;
    /// The line of its table in the file.
    fn line(&self) -> usize;
}

/// A definition file's state after a load.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileStatus {
    /// The path as loaded (folder + file name).
    pub file: String,
    /// `active` or `rejected`.
    pub status: &'static str,
    /// Names of the entries it holds (for a rejected file, those of the
    /// version serving). Serialised as `rules` for both kinds of file.
    pub rules: Vec<String>,
    /// For a rejected file: `file:line:column: reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// For a rejected file that served before: its previous entries still serve.
    pub serving_previous: bool,
}

/// The files of a load that were rejected.
pub fn rejected(files: &[FileStatus]) -> impl Iterator<Item = &FileStatus> {
    files.iter().filter(|f| f.status == "rejected")
}

/// A load in one line: `<n> <what> from <files> files in <dir>`, and how
/// many files were rejected if any.
pub fn summary(what: &str, serving: usize, files: &[FileStatus], dir: &str) -> String {
    let rejected = rejected(files).count();
    format!(
        "{serving} {what} from {} files in {}{}",
        files.len() - rejected,
        if dir.is_empty() { "-" } else { dir },
        if rejected > 0 {
            format!(", {rejected} files rejected")
        } else {
            String::new()
        }
    )
}

/// The `*.toml` files of `dir` (a missing folder has none; another read
/// error is logged, naming `what` the folder holds).
pub fn toml_paths(dir: &Path, what: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the {what} folder; none loaded");
            }
            Vec::new()
        }
    }
}

/// Loads `paths` (sorted here) with `load_file(path, file)`; `noun` names
/// an entry in errors (`rule`, `trigger`). A file that fails, or defines
/// a name another file already has, is rejected and keeps its entries of
/// `previous`.
pub fn load_files<T: Named>(
    mut paths: Vec<PathBuf>,
    previous: Option<&[Arc<T>]>,
    noun: &str,
    mut load_file: impl FnMut(&Path, &str) -> Result<Vec<T>, FileError>,
) -> (Vec<Arc<T>>, Vec<FileStatus>) {
    paths.sort();
    let mut entries: Vec<Arc<T>> = Vec::new();
    let mut files = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for path in paths {
        let file = path.display().to_string();
        let loaded = load_file(&path, &file).and_then(|es| {
            // a name must be unique across the folder
            let mut here: BTreeMap<&str, ()> = BTreeMap::new();
            for e in &es {
                let other = names
                    .get(e.name())
                    .cloned()
                    .or_else(|| here.insert(e.name(), ()).map(|()| file.clone()));
                if let Some(other) = other {
                    return Err(FileError {
                        file: file.clone(),
                        pos: Pos {
                            line: e.line(),
                            column: 1,
                        },
                        message: format!("{noun} `{}` is already defined in {other}", e.name()),
                    });
                }
            }
            Ok(es)
        });
        match loaded {
            Ok(es) => {
                for e in &es {
                    names.insert(e.name().to_string(), file.clone());
                }
                files.push(FileStatus {
                    file: file.clone(),
                    status: "active",
                    rules: es.iter().map(|e| e.name().to_string()).collect(),
                    error: None,
                    line: None,
                    column: None,
                    serving_previous: false,
                });
                entries.extend(es.into_iter().map(Arc::new));
            }
            Err(err) => {
                let kept: Vec<Arc<T>> = previous
                    .unwrap_or_default()
                    .iter()
                    .filter(|e| e.file() == file && !names.contains_key(e.name()))
                    .cloned()
                    .collect();
                tracing::error!(error = %err, kept = kept.len(), "{noun} file rejected");
                for e in &kept {
                    names.insert(e.name().to_string(), file.clone());
                }
                files.push(FileStatus {
                    file: file.clone(),
                    status: "rejected",
                    rules: kept.iter().map(|e| e.name().to_string()).collect(),
                    error: Some(err.to_string()),
                    line: Some(err.pos.line),
                    column: Some(err.pos.column),
                    serving_previous: !kept.is_empty(),
                });
                entries.extend(kept);
            }
        }
    }
    (entries, files)
}

/// Reads a definition file's text (an error at 1:1 if it cannot be read).
pub fn read_text(path: &Path, file: &str) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|e| FileError {
        file: file.to_string(),
        pos: Pos { line: 1, column: 1 },
        message: format!("cannot read: {e}"),
    })
}
