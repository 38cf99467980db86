//! `nextbest export-training`: point-in-time training rows.
//!
//! Input: events (JSON Lines, Parquet or CSV, as for `backfill`), labels
//! (CSV or Parquet with at least `customer_id,item_id,ts`, usually `label`;
//! other columns, e.g. `session_id` and `context.*`, pass through and feed
//! context features), and optionally the item catalog / customer profiles
//! of `backfill --items/--customers`.
//! Output: the label columns followed by every numeric feature
//! (`FeatureSet::numeric_names`) not already among them, one row per label
//! row in time order; Parquet when the output ends in `.parquet`, else CSV.
//!
//! Each row's features are computed from the events strictly before its
//! `ts`, by replaying events in time order through the same aggregation and
//! row code the server uses (`MemoryState`, `RowPlan`), so a model is trained
//! on exactly what it will be served. Co-visitation is kept as the store
//! keeps it, so `cross.covisit_score` is the served one
//! (`features::covisit_score`). Static features are not versioned in
//! time: every row sees the catalog/profile files given.

use super::input::read_static;
use super::input::{self, InputError};
use crate::event::Event;
use crate::features::aggregate::plan_event;
use crate::features::covisit_score::CoVisitScores;
use crate::features::store::memory::MemoryState;
use crate::features::vector::{ContextValues, RowInputs, RowPlan};
use crate::features::{Entity, FeatureSet};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of the export; each names the file and row or column.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("{0}")]
    Feature(#[from] crate::features::vector::VectorError),
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportJob {
    /// Event files or glob patterns.
    pub events: Vec<String>,
    pub labels: PathBuf,
    pub out: PathBuf,
    pub items: Option<PathBuf>,
    pub customers: Option<PathBuf>,
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
    Ok(input::read_events(path)?)
}

/// The label columns the export needs, typed.
struct Labels {
    frame: DataFrame,
    customer: Vec<String>,
    item: Vec<String>,
    session: Option<Vec<Option<String>>>,
    ts: Vec<i64>,
    /// `context.<name>` columns: name and values (missing/non-numeric → None).
    context: Vec<(String, Vec<Option<f64>>)>,
}

fn read_labels(path: &Path) -> Result<Labels, ExportError> {
    let p = path.display().to_string();
    let frame = input::read_frame(path, Some(&["customer_id", "item_id", "session_id"]))?;
    let csv = input::Format::of(path) == Some(input::Format::Csv);
    let at = |i: usize| {
        if csv {
            format!("line {}", i + 2)
        } else {
            format!("row {}", i + 1)
        }
    };
    let column = |name: &str| {
        frame.column(name).map_err(|_| InputError::MissingColumn {
            path: p.clone(),
            column: name.into(),
        })
    };
    let row_err = |i: usize, c: &str, message: &str| InputError::Row {
        path: p.clone(),
        at: at(i),
        column: Some(c.to_string()),
        message: message.to_string(),
    };
    let text = |name: &str| -> Result<Vec<Option<String>>, InputError> {
        let c = column(name)?;
        let s = c
            .cast(&DataType::String)
            .map_err(|e| InputError::Unreadable {
                path: p.clone(),
                message: e.to_string(),
            })?;
        let ca = s.str().map_err(|e| InputError::Unreadable {
            path: p.clone(),
            message: e.to_string(),
        })?;
        Ok(ca.iter().map(|v| v.map(str::to_string)).collect())
    };
    let required = |name: &str| -> Result<Vec<String>, InputError> {
        text(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.filter(|s| !s.is_empty())
                    .ok_or_else(|| row_err(i, name, "is empty"))
            })
            .collect()
    };
    let customer = required("customer_id")?;
    let item = required("item_id")?;
    let ts: Vec<i64> = text("ts")?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.and_then(|s| {
                let t = s.trim();
                t.parse::<i64>().ok().or_else(|| {
                    t.parse::<f64>()
                        .ok()
                        .filter(|x| x.fract() == 0.0)
                        .map(|x| x as i64)
                })
            })
            .ok_or_else(|| row_err(i, "ts", "is not an integer (ms since epoch)"))
        })
        .collect::<Result<_, _>>()?;
    let session = match frame.column("session_id") {
        Ok(_) => Some(text("session_id")?),
        Err(_) => None,
    };
    let mut context = Vec::new();
    for c in frame.columns() {
        if let Some(name) = c.name().strip_prefix("context.") {
            let values: Vec<Option<f64>> = match c.dtype() {
                DataType::Boolean => c
                    .bool()
                    .map(|ca| {
                        ca.iter()
                            .map(|v| v.map(|b| f64::from(u8::from(b))))
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => match c.cast(&DataType::Float64) {
                    Ok(f) => f.f64().map(|ca| ca.iter().collect()).unwrap_or_default(),
                    Err(_) => vec![None; frame.height()],
                },
            };
            context.push((name.to_string(), values));
        }
    }
    Ok(Labels {
        frame,
        customer,
        item,
        session,
        ts,
        context,
    })
}

/// Runs the export.
pub fn export_training(
    set: Arc<FeatureSet>,
    job: &ExportJob,
) -> Result<ExportSummary, ExportError> {
    // read and check everything before writing anything
    let mut events = Vec::new();
    for p in input::expand(&job.events)? {
        events.extend(input::read_events(&p)?);
    }
    events.sort_by_key(|e| e.ts);
    let mut statics = Vec::new();
    if let Some(p) = &job.items {
        statics.extend(read_static(&set, Entity::Item, p)?);
    }
    if let Some(p) = &job.customers {
        statics.extend(read_static(&set, Entity::Customer, p)?);
    }
    let labels = read_labels(&job.labels)?;
    let n = labels.ts.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (labels.ts[i], i));

    // features already given as label columns (e.g. `context.is_mobile`) are not repeated
    let headers: Vec<String> = labels
        .frame
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let names: Vec<String> = set
        .numeric_names()
        .into_iter()
        .filter(|n| !headers.contains(n))
        .collect();
    let plan = RowPlan::compile(&set, &names)?;
    // co-visitation kept as the store keeps it, for `cross.covisit_score`
    let mut state = MemoryState::new(set.clone(), i64::MAX / 4);
    if plan.uses_covisit() {
        state = state.keep_covisits();
    }
    state.apply_groups(&statics, 0); // static fields: no clock involved

    let mut columns: Vec<Vec<f32>> = vec![Vec::with_capacity(n); names.len()];
    let mut next_event = 0;
    let mut row = Vec::with_capacity(names.len());
    // the scores of the moment last computed (a moment's rows share them)
    let mut covisit: Option<((&str, i64), CoVisitScores)> = None;
    let no_covisit = CoVisitScores::default();
    for &i in &order {
        let ts = labels.ts[i];
        // apply every event strictly before the decision moment
        let start = next_event;
        while next_event < events.len() && events[next_event].ts < ts {
            next_event += 1;
        }
        if next_event > start {
            let plans: Vec<_> = events[start..next_event]
                .iter()
                .map(|e| plan_event(&set, e))
                .collect();
            // written as of the newest of them: the replay's clock
            state.apply(&plans, events[next_event - 1].ts);
        }
        let customer = labels.customer[i].as_str();
        let item = labels.item[i].as_str();
        let session = labels
            .session
            .as_ref()
            .and_then(|s| s[i].as_deref())
            .filter(|s| !s.is_empty());
        let mut context = ContextValues::defaults(&set);
        for (name, values) in &labels.context {
            if let Some(x) = values[i].filter(|x| x.is_finite()) {
                context.set(&set, name, x);
            }
        }
        if plan.uses_covisit() && covisit.as_ref().is_none_or(|(k, _)| *k != (customer, ts)) {
            let scores = CoVisitScores::of_state(&state, state.customer(customer));
            covisit = Some(((customer, ts), scores));
        }
        let (_, sess_state) = state.session(customer, session);
        let inputs = RowInputs {
            customer: state.customer(customer),
            session: sess_state,
            context: &context,
            now: ts,
            covisit: covisit.as_ref().map_or(&no_covisit, |(_, s)| s),
        };
        row.clear();
        plan.push_row(&set, &inputs, item, state.item(item), &mut row);
        for (col, x) in columns.iter_mut().zip(&row) {
            col.push(*x);
        }
    }

    let op = job.out.display().to_string();
    let write_err = |e: PolarsError| ExportError::Write {
        path: op.clone(),
        message: e.to_string(),
    };
    let idx = IdxCa::from_vec("idx".into(), order.iter().map(|&i| i as IdxSize).collect());
    let mut frame = labels.frame.take(&idx).map_err(write_err)?;
    let features: Vec<Column> = names
        .iter()
        .zip(columns)
        .map(|(name, values)| Column::new(name.as_str().into(), values))
        .collect();
    frame = frame.hstack(&features).map_err(write_err)?;
    let file = std::fs::File::create(&job.out).map_err(|e| ExportError::Write {
        path: op.clone(),
        message: e.to_string(),
    })?;
    let w = std::io::BufWriter::new(file);
    if input::Format::of(&job.out) == Some(input::Format::Parquet) {
        ParquetWriter::new(w)
            .finish(&mut frame)
            .map_err(write_err)?;
    } else {
        CsvWriter::new(w)
            .include_header(true)
            .finish(&mut frame)
            .map_err(write_err)?;
    }
    Ok(ExportSummary {
        events: events.len(),
        rows: n,
        columns: names.len(),
    })
}
