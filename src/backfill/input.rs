//! Reading history and enrichment files: the boundary of the batch jobs.
//!
//! Formats, by file extension:
//! - `.jsonl` / `.ndjson` / `.json`: one JSON object per line; for events,
//!   exactly the Kafka message format (parsed by `Event::from_slice`, the
//!   consumer's own decoder).
//! - `.parquet` and `.csv`, read with polars: one column per field; for
//!   events the contract fields (`event_id`, `type`, `customer_id`, `ts`,
//!   `session_id`, `item_id`, `seq`) plus one column per prop, named after the
//!   prop (a `props.` prefix is accepted and stripped). Null cells are absent
//!   fields. CSV types are inferred from the whole file, id columns are read
//!   as text.
//!
//! Every row becomes a JSON object and goes through the same validation as
//! an event arriving over HTTP or Kafka. Any problem — unreadable file,
//! missing column, a cell of the wrong type — is an [`InputError`] naming the
//! file, the column and the line or row; callers read everything before
//! writing anything.
//!
//! Catalog and profile rows become static group writes here too
//! ([`read_static`]), converted by `features::catalog` exactly as an HTTP
//! or Kafka catalog update is: one `SetStatic` update per `static` feature
//! of features.toml, numbers checked to be finite and printed once.

use crate::event::{Event, EventError, NUMERIC_PROPS};
use crate::features::catalog::{Fields, StaticColumns};
use crate::features::definition::{Entity, FeatureSet};
use crate::features::store::GroupWrite;
use polars::prelude::*;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an input file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{pattern}: no such file (or the pattern matched no file)")]
    NoMatch { pattern: String },
    #[error("{pattern}: invalid glob pattern: {message}")]
    Pattern { pattern: String, message: String },
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path}: unknown format (expected .jsonl, .ndjson, .json, .parquet or .csv)")]
    Format { path: String },
    #[error("{path}: missing column `{column}`")]
    MissingColumn { path: String, column: String },
    #[error("{path}: column `{column}` has type {dtype}, which is not text, number or boolean")]
    ColumnType {
        path: String,
        column: String,
        dtype: String,
    },
    #[error("{path}: {at}{}: {message}", column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    Row {
        path: String,
        /// `line 7` (JSON Lines, CSV) or `row 7` (Parquet).
        at: String,
        column: Option<String>,
        message: String,
    },
}

/// The file formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Parquet,
    Csv,
}

impl Format {
    /// The format of a path, by extension.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// The contract fields of an event; every other column is a prop.
const EVENT_FIELDS: [&str; 7] = [
    "event_id",
    "type",
    "customer_id",
    "ts",
    "session_id",
    "item_id",
    "seq",
];
/// Columns read as text whatever they look like (ids).
const TEXT_COLUMNS: [&str; 7] = [
    "event_id",
    "type",
    "customer_id",
    "session_id",
    "item_id",
    "page",
    "category",
];

/// Expands paths and glob patterns into files, in order, each once.
pub fn expand(patterns: &[String]) -> Result<Vec<PathBuf>, InputError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for pat in patterns {
        let is_glob = pat.contains(['*', '?', '[']);
        let mut found = Vec::new();
        if is_glob {
            let paths = glob::glob(pat).map_err(|e| InputError::Pattern {
                pattern: pat.clone(),
                message: e.to_string(),
            })?;
            for p in paths {
                let p = p.map_err(|e| InputError::Unreadable {
                    path: e.path().display().to_string(),
                    message: e.error().to_string(),
                })?;
                if p.is_file() {
                    found.push(p);
                }
            }
        } else if Path::new(pat).is_file() {
            found.push(PathBuf::from(pat));
        }
        if found.is_empty() {
            return Err(InputError::NoMatch {
                pattern: pat.clone(),
            });
        }
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Fails naming the first of `required` that is not among `columns`.
pub fn require_columns<'a>(
    path: &str,
    columns: &[String],
    required: impl IntoIterator<Item = &'a str>,
) -> Result<(), InputError> {
    match required
        .into_iter()
        .find(|c| !columns.iter().any(|x| x == c))
    {
        Some(c) => Err(InputError::MissingColumn {
            path: path.to_string(),
            column: c.to_string(),
        }),
        None => Ok(()),
    }
}

/// One record of a file: its location (`line 3`, `row 3`) and fields.
pub struct Record {
    pub at: String,
    pub fields: Map<String, Value>,
}

/// Reads every event of a file, validated; fails on the first bad row.
pub fn read_events(path: &Path) -> Result<Vec<Event>, InputError> {
    let p = path.display().to_string();
    match Format::of(path) {
        Some(Format::JsonLines) => read_event_lines(path),
        Some(_) => {
            let (columns, records) = read_frame_records(path, None)?;
            require_columns(&p, &columns, ["event_id", "type", "customer_id", "ts"])?;
            records
                .into_iter()
                .map(|r| event_from_record(&p, r))
                .collect()
        }
        None => Err(InputError::Format { path: p }),
    }
}

/// A flat record (CSV/Parquet row) → an event: contract fields stay, every
/// other column becomes a prop.
fn event_from_record(path: &str, r: Record) -> Result<Event, InputError> {
    let mut obj = Map::new();
    let mut props = Map::new();
    let mut prop_columns = Vec::new();
    for (k, v) in r.fields {
        if EVENT_FIELDS.contains(&k.as_str()) {
            let v = if k == "ts" || k == "seq" {
                numeric(v)
            } else {
                v
            };
            obj.insert(k, v);
        } else {
            let name = k.strip_prefix("props.").unwrap_or(&k).to_string();
            prop_columns.push((name.clone(), k.clone()));
            let v = if NUMERIC_PROPS.contains(&name.as_str()) {
                numeric(v)
            } else {
                v
            };
            props.insert(name, v);
        }
    }
    obj.insert("props".into(), Value::Object(props));
    Event::from_value(Value::Object(obj)).map_err(|e| {
        // name the column as it is in the file
        let column = e.field().map(|f| match f.strip_prefix("props.") {
            Some(prop) => prop_columns
                .iter()
                .find(|(n, _)| n == prop)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| prop.to_string()),
            None => f,
        });
        row_error(path, r.at, column, &e)
    })
}

/// A text cell of a numeric field (a CSV column with one bad cell is read as
/// text) as a number when it is one, so only the bad rows fail validation.
fn numeric(v: Value) -> Value {
    match &v {
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Value::from(i)
            } else if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Value::Number(n)
            } else {
                v
            }
        }
        _ => v,
    }
}

fn row_error(path: &str, at: String, column: Option<String>, e: &EventError) -> InputError {
    InputError::Row {
        path: path.to_string(),
        at,
        column,
        message: e.to_string(),
    }
}

/// JSON Lines events, parsed on all cores (order kept).
fn read_event_lines(path: &Path) -> Result<Vec<Event>, InputError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| InputError::Unreadable {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let threads = super::cores();
    // split at line boundaries into roughly equal chunks, remembering the
    // first line number of each
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut line = 1;
    let target = bytes.len() / threads + 1;
    while start < bytes.len() {
        let mut end = (start + target).min(bytes.len());
        while end < bytes.len() && bytes[end - 1] != b'\n' {
            end += 1;
        }
        let slice = &bytes[start..end];
        chunks.push((line, slice));
        line += slice.iter().filter(|b| **b == b'\n').count();
        start = end;
    }
    let results: Vec<Result<Vec<Event>, InputError>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|(first, slice)| {
                let p = &p;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (i, l) in slice.split(|b| *b == b'\n').enumerate() {
                        if l.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let e = Event::from_slice(l).map_err(|e| {
                            row_error(p, format!("line {}", first + i), e.field(), &e)
                        })?;
                        out.push(e);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(InputError::Unreadable {
                        path: p.clone(),
                        message: "a parser thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Reads a table file (items, customers, labels): its column names and its
/// records. JSON Lines records keep nested values; `text` names columns to
/// read as text from CSV whatever they look like.
pub fn read_records(
    path: &Path,
    text: Option<&[&str]>,
) -> Result<(Vec<String>, Vec<Record>), InputError> {
    let p = path.display().to_string();
    match Format::of(path) {
        Some(Format::JsonLines) => {
            let text = std::fs::read_to_string(path).map_err(|e| InputError::Unreadable {
                path: p.clone(),
                message: e.to_string(),
            })?;
            let mut columns: Vec<String> = Vec::new();
            let mut out = Vec::new();
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                let at = format!("line {}", i + 1);
                let fields = match serde_json::from_str::<Value>(l) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => {
                        return Err(InputError::Row {
                            path: p,
                            at,
                            column: None,
                            message: "not a JSON object".into(),
                        })
                    }
                    Err(e) => {
                        return Err(InputError::Row {
                            path: p,
                            at,
                            column: None,
                            message: format!("invalid JSON: {e}"),
                        })
                    }
                };
                for k in fields.keys() {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
                out.push(Record { at, fields });
            }
            Ok((columns, out))
        }
        Some(_) => read_frame_records(path, text),
        None => Err(InputError::Format { path: p }),
    }
}

/// Reads a catalog/profile file into static group writes: every static
/// column must be in the file, each row is converted by
/// [`StaticColumns::write`] (the conversion `PUT /v1/items/{id}` and the
/// catalog topics use too), empty cells set nothing.
pub fn read_static(
    set: &FeatureSet,
    entity: Entity,
    path: &Path,
) -> Result<Vec<GroupWrite>, InputError> {
    let p = path.display().to_string();
    let cols = StaticColumns::of(set, entity);
    let id_col = cols.id_column();
    let (columns, records) = read_records(path, Some(&[id_col]))?;
    let required = std::iter::once(id_col).chain(cols.columns());
    require_columns(&p, &columns, required)?;
    records
        .into_iter()
        .map(|r| static_row(&p, &cols, r))
        .collect()
}

fn static_row(path: &str, cols: &StaticColumns, r: Record) -> Result<GroupWrite, InputError> {
    let err = |column: Option<&str>, message: String| InputError::Row {
        path: path.to_string(),
        at: r.at.clone(),
        column: column.map(str::to_string),
        message,
    };
    let id_col = cols.id_column();
    let id = match r.fields.get(id_col) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(err(Some(id_col), "missing or not text".into())),
    };
    cols.write(&id, &r.fields, Fields::FileRow)
        .map_err(|e| err(e.column(), e.problem()))
}

/// Reads a Parquet or CSV file with polars.
pub fn read_frame(path: &Path, text: Option<&[&str]>) -> Result<DataFrame, InputError> {
    let p = path.display().to_string();
    let unreadable = |e: PolarsError| InputError::Unreadable {
        path: p.clone(),
        message: e.to_string(),
    };
    match Format::of(path) {
        Some(Format::Parquet) => {
            let f = std::fs::File::open(path).map_err(|e| InputError::Unreadable {
                path: p.clone(),
                message: e.to_string(),
            })?;
            ParquetReader::new(f).finish().map_err(unreadable)
        }
        Some(Format::Csv) => {
            // id columns as text: `123` is an id, not a number
            let header = csv_header(path).map_err(|message| InputError::Unreadable {
                path: p.clone(),
                message,
            })?;
            let text = text.unwrap_or(&TEXT_COLUMNS);
            let overwrite: Schema = header
                .iter()
                .filter(|h| text.contains(&h.as_str()))
                .map(|h| Field::new(h.as_str().into(), DataType::String))
                .collect();
            CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(None)
                .with_schema_overwrite(Some(Arc::new(overwrite)))
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(unreadable)
        }
        _ => Err(InputError::Format { path: p }),
    }
}

fn csv_header(path: &Path) -> Result<Vec<String>, String> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut first = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut first)
        .map_err(|e| e.to_string())?;
    Ok(first
        .trim_end_matches(['\r', '\n'])
        .split(',')
        .map(|h| h.trim_matches('"').to_string())
        .collect())
}

/// A column's cells as JSON values.
enum Cells {
    Text(StringChunked),
    Int(Int64Chunked),
    Float(Float64Chunked),
    Bool(BooleanChunked),
    Null,
}

impl Cells {
    fn of(path: &str, c: &Column) -> Result<Cells, InputError> {
        let dt = c.dtype();
        let bad = |e: PolarsError| InputError::Unreadable {
            path: path.to_string(),
            message: e.to_string(),
        };
        Ok(match dt {
            DataType::String => Cells::Text(c.str().map_err(bad)?.clone()),
            DataType::Boolean => Cells::Bool(c.bool().map_err(bad)?.clone()),
            DataType::Null => Cells::Null,
            d if d.is_integer() => Cells::Int(
                c.cast(&DataType::Int64)
                    .map_err(bad)?
                    .i64()
                    .map_err(bad)?
                    .clone(),
            ),
            d if d.is_float() => Cells::Float(
                c.cast(&DataType::Float64)
                    .map_err(bad)?
                    .f64()
                    .map_err(bad)?
                    .clone(),
            ),
            other => {
                return Err(InputError::ColumnType {
                    path: path.to_string(),
                    column: c.name().to_string(),
                    dtype: other.to_string(),
                })
            }
        })
    }

    fn values(&self, n: usize) -> Box<dyn Iterator<Item = Option<Value>> + '_> {
        match self {
            Cells::Text(ca) => Box::new(ca.iter().map(|v| v.map(|s| Value::String(s.into())))),
            Cells::Int(ca) => Box::new(ca.iter().map(|v| v.map(Value::from))),
            Cells::Float(ca) => Box::new(
                ca.iter()
                    .map(|v| v.and_then(serde_json::Number::from_f64).map(Value::Number)),
            ),
            Cells::Bool(ca) => Box::new(ca.iter().map(|v| v.map(Value::Bool))),
            Cells::Null => Box::new(std::iter::repeat_n(None, n)),
        }
    }
}

/// A Parquet/CSV file as records (null cells left out).
fn read_frame_records(
    path: &Path,
    text: Option<&[&str]>,
) -> Result<(Vec<String>, Vec<Record>), InputError> {
    let p = path.display().to_string();
    let df = read_frame(path, text)?;
    let csv = Format::of(path) == Some(Format::Csv);
    let names: Vec<String> = df.columns().iter().map(|c| c.name().to_string()).collect();
    let cells = df
        .columns()
        .iter()
        .map(|c| Cells::of(&p, c))
        .collect::<Result<Vec<_>, _>>()?;
    let n = df.height();
    let mut iters: Vec<_> = cells.iter().map(|c| c.values(n)).collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut fields = Map::new();
        for (name, it) in names.iter().zip(iters.iter_mut()) {
            if let Some(Some(v)) = it.next() {
                fields.insert(name.clone(), v);
            }
        }
        // CSV: header is line 1; Parquet: rows count from 1
        let at = if csv {
            format!("line {}", i + 2)
        } else {
            format!("row {}", i + 1)
        };
        out.push(Record { at, fields });
    }
    Ok((names, out))
}
