//! `GET /v1/rules`: every rule serving (file, status, what it does) and
//! every rule file's status; a rejected file with `file:line:column` and
//! the reason.

use super::AppStateRef;
use crate::rules::file::InjectSource;
use crate::rules::rule::Rule;
use axum::Json;
use serde_json::{json, Value};

pub async fn list(state: AppStateRef) -> Json<Value> {
    let set = state.rules.load();
    let rules: Vec<Value> = set.rules.iter().map(|r| describe(r)).collect();
    Json(json!({
        "dir": set.dir,
        "rules": rules,
        "files": set.files,
    }))
}

fn describe(r: &Rule) -> Value {
    let e = &r.effects;
    json!({
        "name": r.name,
        "file": r.file,
        "line": r.line,
        "status": "active",
        "description": r.description,
        "when": r.when.as_ref().map(|c| c.source.clone()),
        "item_when": r.item_when.as_ref().map(|c| c.source.clone()),
        "exclude": e.exclude,
        "weight": e.weight,
        "action": e.action.as_ref().map(|(_, a)| a.to_string()),
        "priority": e.action.as_ref().map(|(p, _)| *p),
        "inject": e.inject.as_ref().map(|i| json!({
            "source": i.source.name(),
            "items": match &i.source {
                InjectSource::Items(ids) => Some(ids),
                _ => None,
            },
            "limit": i.limit,
        })),
        "reason": r.reason.to_string(),
        "max_per_customer": e.cap.map(|c| c.max),
        "period_ms": e.cap.map(|c| c.period_ms),
    })
}
