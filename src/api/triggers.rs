//! `GET /v1/triggers`: every trigger running (file, kind, what starts,
//! cancels and fires it) and every trigger file's status, a rejected one
//! with `file:line:column` and the reason; `GET /v1/actions?customer_id=`:
//! the actions this instance fired recently (all of them without
//! `customer_id`), newest first.

use super::{ApiError, AppStateRef};
use crate::event::check_id;
use crate::triggers::trigger::{Kind, Trigger};
use axum::extract::Query;
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Most actions one `GET /v1/actions` lists.
pub const MAX_ACTIONS: usize = 1000;

pub async fn list(state: AppStateRef) -> Json<Value> {
    let set = state.triggers.current.load();
    let triggers: Vec<Value> = set.triggers.iter().map(|t| describe(t)).collect();
    let files: Vec<Value> = set
        .files
        .iter()
        .map(|f| {
            json!({
                "file": f.file,
                "status": f.status,
                "triggers": f.rules,
                "error": f.error,
                "line": f.line,
                "column": f.column,
                "serving_previous": f.serving_previous,
            })
        })
        .collect();
    Json(json!({ "dir": set.dir, "triggers": triggers, "files": files }))
}

fn names(kinds: &[crate::event::EventType]) -> Vec<&'static str> {
    kinds.iter().map(|k| k.as_str()).collect()
}

fn describe(t: &Trigger) -> Value {
    let kind = match &t.kind {
        Kind::Inactivity {
            start_on,
            cancel_on,
            cancel_when,
            restart_on,
            after_ms,
        } => json!({
            "start_on": names(start_on),
            "cancel_on": names(cancel_on),
            "cancel_when": cancel_when.as_ref().map(|c| c.source.clone()),
            "restart_on": names(restart_on),
            "after_ms": after_ms,
        }),
        Kind::Threshold { condition, on } => json!({
            "condition": condition.source,
            "on": names(on),
        }),
        Kind::Sequence(s) => json!({
            "steps": names(&s.steps),
            "same": s.same,
            "within_ms": s.within_ms,
            "without": s.without.map(|k| k.as_str()),
        }),
    };
    json!({
        "name": t.name,
        "file": t.file,
        "line": t.line,
        "status": "active",
        "description": t.description,
        "kind": t.kind.name(),
        "pattern": kind,
        "when": t.when.as_ref().map(|c| c.source.clone()),
        "action": t.action,
        "reason": t.reason,
        "recommend": t.recommend,
        "context": t.context.iter().map(|(ns, f)| format!("{}.{f}", ns.as_str())).collect::<Vec<_>>(),
        "max_per_customer": t.cap.map(|c| c.max),
        "period_ms": t.cap.map(|c| c.period_ms),
    })
}

pub async fn actions(
    state: AppStateRef,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let customer = q.get("customer_id").map(String::as_str);
    if let Some(c) = customer {
        check_id("customer_id", c)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("customer_id"), None))?;
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ACTIONS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    format!("limit must be 1..={MAX_ACTIONS}"),
                    Some("limit"),
                    None,
                )
            })?,
    };
    let recent = state.triggers.recent.of(customer, limit);
    let actions: Vec<&crate::triggers::action::Action> = recent.iter().map(|a| &**a).collect();
    Ok(Json(json!({ "customer_id": customer, "actions": actions })))
}
