//! `nextbest export-training`: point-in-time training rows.
//!
//! Input: events (JSON Lines, the Kafka message format) and labels (CSV with
//! at least `customer_id,item_id,ts,label`; other columns, e.g.
//! `session_id` and `context.*`, pass through and feed context features).
//! Output: CSV with the label columns followed by every numeric feature
//! (`FeatureSet::numeric_names`) not already among them. Each row's features are computed from the
//! events strictly before its `ts`, by replaying events in time order through
//! the same aggregation and row code the server uses, so a model is trained
//! on exactly what it will be served.

use crate::event::Event;
use crate::features::aggregate::plan_event;
use crate::features::store::memory::MemoryState;
use crate::features::vector::{RowInputs, RowPlan};
use crate::features::FeatureSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

/// Errors of the export; each names the file and line or column.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: missing column `{column}`")]
    Column { path: String, column: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("{0}")]
    Feature(#[from] crate::features::vector::VectorError),
}

/// Summary of an export.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    pub events: usize,
    pub rows: usize,
    pub columns: usize,
}

/// Reads a JSON Lines event file, failing on the first bad line.
pub fn read_events(path: &Path) -> Result<Vec<Event>, ExportError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| ExportError::Read {
        path: p.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| ExportError::Read {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let e = Event::from_slice(line.as_bytes()).map_err(|e| ExportError::Line {
            path: p.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(e);
    }
    Ok(out)
}

/// Runs the export.
pub fn export_training(
    set: Arc<FeatureSet>,
    events_paths: &[std::path::PathBuf],
    labels: &Path,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    let mut events = Vec::new();
    for p in events_paths {
        events.extend(read_events(p)?);
    }
    events.sort_by_key(|e| e.ts);
    let lp = labels.display().to_string();
    let mut rdr = csv::Reader::from_path(labels).map_err(|e| ExportError::Read {
        path: lp.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let headers = rdr
        .headers()
        .map_err(|e| ExportError::Line {
            path: lp.clone(),
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ExportError::Column {
                path: lp.clone(),
                column: name.into(),
            })
    };
    let (c_cust, c_item, c_ts) = (col("customer_id")?, col("item_id")?, col("ts")?);
    let c_sess = headers.iter().position(|h| h == "session_id");
    let ctx_cols: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("context.").map(|n| (i, n.to_string())))
        .collect();
    let mut labels_rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| ExportError::Line {
            path: lp.clone(),
            line: i + 2,
            message: e.to_string(),
        })?;
        let ts: i64 = rec
            .get(c_ts)
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| ExportError::Line {
                path: lp.clone(),
                line: i + 2,
                message: "column `ts` is not an integer (ms)".into(),
            })?;
        labels_rows.push((ts, i, rec));
    }
    labels_rows.sort_by_key(|(ts, i, _)| (*ts, *i));

    // features already given as label columns (e.g. `context.is_mobile`) are not repeated
    let names: Vec<String> = set
        .numeric_names()
        .into_iter()
        .filter(|n| !headers.iter().any(|h| h == n))
        .collect();
    let plan = RowPlan::compile(&set, &names)?;
    let mut state = MemoryState::new(set.clone(), i64::MAX / 4);
    let op = out.display().to_string();
    let file = std::fs::File::create(out).map_err(|e| ExportError::Write {
        path: op.clone(),
        message: e.to_string(),
    })?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    let mut header: Vec<String> = headers.iter().map(str::to_string).collect();
    header.extend(names.iter().cloned());
    w.write_record(&header).map_err(|e| ExportError::Write {
        path: op.clone(),
        message: e.to_string(),
    })?;

    let mut next_event = 0;
    let mut row = Vec::with_capacity(names.len());
    let mut rows = 0;
    for (ts, _, rec) in &labels_rows {
        // apply every event strictly before the decision moment
        let start = next_event;
        while next_event < events.len() && events[next_event].ts < *ts {
            next_event += 1;
        }
        if next_event > start {
            let plans: Vec<_> = events[start..next_event]
                .iter()
                .map(|e| plan_event(&set, e))
                .collect();
            state.apply(&plans);
        }
        let customer = rec.get(c_cust).unwrap_or_default();
        let item = rec.get(c_item).unwrap_or_default();
        let session = c_sess.and_then(|c| rec.get(c)).filter(|s| !s.is_empty());
        let mut context = serde_json::Map::new();
        for (c, name) in &ctx_cols {
            if let Some(v) = rec.get(*c).and_then(|v| v.parse::<f64>().ok()) {
                if let Some(n) = serde_json::Number::from_f64(v) {
                    context.insert(name.clone(), serde_json::Value::Number(n));
                }
            }
        }
        let (_, sess_state) = state.session(customer, session);
        let inputs = RowInputs {
            customer: state.customer(customer),
            session: sess_state,
            context: &context,
            now: *ts,
        };
        row.clear();
        plan.push_row(&set, &inputs, item, state.item(item), &mut row);
        let mut record: Vec<String> = rec.iter().map(str::to_string).collect();
        record.extend(row.iter().map(|x| x.to_string()));
        w.write_record(&record).map_err(|e| ExportError::Write {
            path: op.clone(),
            message: e.to_string(),
        })?;
        rows += 1;
    }
    w.flush().map_err(|e| ExportError::Write {
        path: op.clone(),
        message: e.to_string(),
    })?;
    let _ = std::io::stdout().flush();
    Ok(ExportSummary {
        events: events.len(),
        rows,
        columns: names.len(),
    })
}
