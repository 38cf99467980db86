//! `POST /v1/recommend`: validate the request, then let the decider answer
//! (always 200 once valid; failures inside become `fallback: true`).

use super::layers::request_id_str;
use super::{parse_json, ApiError, AppStateRef};
use crate::decide::RecommendRequest;
use crate::event::check_id;
use crate::features::vector::ContextValues;
use axum::body::Bytes;
use axum::{Extension, Json};
use serde_json::Value;
use tower_http::request_id::RequestId;

const FIELDS: [&str; 7] = [
    "customer_id",
    "k",
    "context",
    "candidates",
    "budget_ms",
    "model",
    "session_id",
];

/// The handler.
pub async fn recommend(
    state: AppStateRef,
    Extension(id): Extension<RequestId>,
    body: Bytes,
) -> Result<Json<crate::decide::Recommendation>, ApiError> {
    let req = validate(&state, request_id_str(&id), &body)?;
    Ok(Json(state.decider.recommend(&req).await))
}

fn field_err(field: &str, problem: &str) -> ApiError {
    ApiError::bad_request(format!("field `{field}` {problem}"), Some(field), None)
}

/// Turns a body into a [`RecommendRequest`] or a 400 naming the field.
pub fn validate(
    state: &super::AppState,
    request_id: &str,
    body: &[u8],
) -> Result<RecommendRequest, ApiError> {
    let Value::Object(mut obj) = parse_json(body)? else {
        return Err(ApiError::bad_request(
            "body must be a JSON object",
            None,
            None,
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field_err(
            unknown,
            &format!("is not a recommend field (expected: {})", FIELDS.join(", ")),
        ));
    }
    let rc = &state.cfg.recommend;
    let customer_id = match obj.remove("customer_id") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(field_err("customer_id", "is required")),
        Some(_) => return Err(field_err("customer_id", "must be a string")),
    };
    check_id("customer_id", &customer_id)
        .map_err(|e| field_err("customer_id", &strip_field(&e.to_string())))?;
    let k = match obj.remove("k") {
        None | Some(Value::Null) => rc.default_k,
        Some(v) => match v.as_u64() {
            Some(k) if k >= 1 && k as usize <= rc.max_k => k as usize,
            _ => {
                return Err(field_err(
                    "k",
                    &format!("must be an integer from 1 to {}", rc.max_k),
                ))
            }
        },
    };
    let raw_context = match obj.remove("context") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(field_err("context", "must be an object")),
    };
    // declared context features are model inputs: numbers or booleans
    let context = ContextValues::compile(&state.set, &raw_context).map_err(|e| {
        let f = format!("context.{}", e.name);
        field_err(&f, "must be a number or a boolean")
    })?;
    // the session: top-level `session_id`, or (older clients) `context.session_id`
    let session_id = match (obj.remove("session_id"), raw_context.get("session_id")) {
        (Some(v), _) if !v.is_null() => Some(session_field("session_id", &v)?),
        (_, Some(v)) if !v.is_null() => Some(session_field("context.session_id", v)?),
        _ => None,
    };
    let candidates = match obj.remove("candidates") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            if a.len() > rc.max_candidates {
                return Err(field_err(
                    "candidates",
                    &format!("has {} items; the limit is {}", a.len(), rc.max_candidates),
                ));
            }
            let mut out = Vec::with_capacity(a.len());
            let mut seen = std::collections::HashSet::new();
            for (i, v) in a.into_iter().enumerate() {
                let field = format!("candidates[{i}]");
                let Value::String(s) = v else {
                    return Err(field_err(&field, "must be a string (an item id)"));
                };
                check_id(&field, &s)
                    .map_err(|e| field_err(&field, &strip_field(&e.to_string())))?;
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
            Some(out)
        }
        Some(_) => return Err(field_err("candidates", "must be an array of item ids")),
    };
    let budget_ms = match obj.remove("budget_ms") {
        None | Some(Value::Null) => rc.default_budget_ms,
        Some(v) => match v.as_u64() {
            Some(b) if (1..=60_000).contains(&b) => b,
            _ => return Err(field_err("budget_ms", "must be an integer from 1 to 60000")),
        },
    };
    let model = match obj.remove("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            let spec = crate::model::registry::ModelSpec::parse(&m).ok_or_else(|| {
                field_err("model", &format!("`{m}` is not `name` or `name@version`"))
            })?;
            let reg = state.registry.load();
            if !reg.models.contains_key(&spec.name) {
                return Err(field_err(
                    "model",
                    &format!("names no model in the models folder (`{m}`)"),
                ));
            }
            if spec.version.is_some() && reg.resolve(&spec).is_none() {
                return Err(field_err(
                    "model",
                    &format!("`{m}` is not loaded (only serving versions and versions pinned in model.traffic or model.shadow are)"),
                ));
            }
            Some(spec)
        }
        Some(_) => return Err(field_err("model", "must be a string")),
    };
    Ok(RecommendRequest {
        request_id: request_id.to_string(),
        customer_id,
        session_id,
        k,
        context,
        candidates,
        budget_ms,
        model,
        now_ms: state.clock.now_ms(),
    })
}

/// A session id field: a valid id string.
fn session_field(field: &str, v: &Value) -> Result<String, ApiError> {
    let Some(s) = v.as_str() else {
        return Err(field_err(field, "must be a string"));
    };
    check_id(field, s).map_err(|e| field_err(field, &strip_field(&e.to_string())))?;
    Ok(s.to_string())
}

/// `field `x` must ...` → `must ...` (the field is added back by the caller).
fn strip_field(msg: &str) -> String {
    match msg.strip_prefix("field `") {
        Some(rest) => rest
            .split_once("` ")
            .map(|(_, p)| p.to_string())
            .unwrap_or_else(|| msg.to_string()),
        None => msg.to_string(),
    }
}
