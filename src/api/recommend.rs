//! `POST /v1/recommend`: parse the body into [`RecommendBody`] (serde, unknown
//! fields rejected, a type error named by its path such as `candidates[3]`),
//! check ranges, sizes and ids, then let the decider answer (always 200 once
//! valid; failures inside become `fallback: true`). Bounded: `k` by
//! `recommend.max_k`, `candidates` by `recommend.max_candidates`, `context`
//! by `recommend.max_context_keys` keys of at most [`MAX_CONTEXT_KEY_LEN`]
//! bytes and values of at most `recommend.max_context_value_bytes`, the
//! whole body by `http.max_body_bytes`. Every 400 is
//! `{"error": "field `x` ...", "field": "x"}`.

use super::layers::{request_id_str, Queued};
use super::{ApiError, AppStateRef};
use crate::decide::RecommendRequest;
use crate::event::check_id;
use crate::features::vector::ContextValues;
use crate::model::registry::ModelSpec;
use axum::body::Bytes;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Map, Value};
use tower_http::request_id::RequestId;

/// Largest accepted `budget_ms`.
pub const MAX_BUDGET_MS: u64 = 60_000;

/// Longest `context` key, in bytes.
pub const MAX_CONTEXT_KEY_LEN: usize = 128;

/// The fields of [`RecommendBody`], for the message naming an unknown one.
const FIELDS: [&str; 8] = [
    "customer_id",
    "k",
    "context",
    "candidates",
    "budget_ms",
    "model",
    "session_id",
    "explain",
];

/// The request body as sent; [`validate`] checks it into a
/// [`RecommendRequest`]. Every field may be absent or null.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendBody {
    customer_id: Option<String>,
    k: Option<u64>,
    context: Option<Map<String, Value>>,
    candidates: Option<Vec<String>>,
    budget_ms: Option<u64>,
    model: Option<String>,
    session_id: Option<String>,
    explain: Option<bool>,
}

/// The handler.
pub async fn recommend(
    state: AppStateRef,
    Extension(id): Extension<RequestId>,
    queued: Option<Extension<Queued>>,
    body: Bytes,
) -> Result<Json<crate::decide::Recommendation>, ApiError> {
    let mut req = validate(&state, request_id_str(&id), &body)?;
    if let Some(Extension(Queued(waited))) = queued {
        req.queued = waited;
    }
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
    let rc = &state.cfg.recommend;
    let body = parse_body(body, rc.max_k)?;
    let customer_id = body
        .customer_id
        .ok_or_else(|| field_err("customer_id", "is required"))?;
    check_id("customer_id", &customer_id)
        .map_err(|e| field_err("customer_id", &strip_field(&e.to_string())))?;
    let k = match body.k {
        None => rc.default_k,
        Some(k) if k >= 1 && k <= rc.max_k as u64 => k as usize,
        Some(_) => return Err(field_err("k", &k_range(rc.max_k))),
    };
    let raw_context = body.context.unwrap_or_default();
    check_context_size(&raw_context, rc)?;
    // declared context features: numbers or booleans (text ones: strings)
    let context = ContextValues::compile(&state.set, &raw_context).map_err(|e| {
        let f = format!("context.{}", e.name);
        field_err(&f, &format!("must be {}", e.expected))
    })?;
    // the session: top-level `session_id`, or (older clients) `context.session_id`
    let session_id = match (body.session_id, raw_context.get("session_id")) {
        (Some(s), _) => Some(session_field("session_id", &s)?),
        (None, Some(v)) if !v.is_null() => {
            let s = v
                .as_str()
                .ok_or_else(|| field_err("context.session_id", "must be a string"))?;
            Some(session_field("context.session_id", s)?)
        }
        _ => None,
    };
    let candidates = match body.candidates {
        None => None,
        Some(a) => {
            if a.len() > rc.max_candidates {
                return Err(field_err(
                    "candidates",
                    &format!("has {} items; the limit is {}", a.len(), rc.max_candidates),
                ));
            }
            let mut out = Vec::with_capacity(a.len());
            let mut seen = std::collections::HashSet::new();
            for (i, s) in a.into_iter().enumerate() {
                let field = format!("candidates[{i}]");
                check_id(&field, &s)
                    .map_err(|e| field_err(&field, &strip_field(&e.to_string())))?;
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
            Some(out)
        }
    };
    let budget_ms = match body.budget_ms {
        None => rc.default_budget_ms,
        Some(b) if (1..=MAX_BUDGET_MS).contains(&b) => b,
        Some(_) => return Err(field_err("budget_ms", &budget_range())),
    };
    let model = match body.model {
        None => None,
        Some(m) => {
            let spec = ModelSpec::parse(&m).ok_or_else(|| {
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
    };
    Ok(RecommendRequest {
        request_id: request_id.to_string(),
        customer_id,
        session_id,
        k,
        context,
        candidates,
        budget_ms,
        queued: std::time::Duration::ZERO,
        model,
        now_ms: state.clock.now_ms(),
        explain: body.explain.unwrap_or(false),
    })
}

/// Bounds the context: how many keys, how long each key, how large each
/// value (a string's length, else the length of its JSON text).
fn check_context_size(
    context: &Map<String, Value>,
    rc: &crate::config::RecommendConfig,
) -> Result<(), ApiError> {
    if context.len() > rc.max_context_keys {
        return Err(field_err(
            "context",
            &format!(
                "has {} keys; the limit is {} (recommend.max_context_keys)",
                context.len(),
                rc.max_context_keys
            ),
        ));
    }
    for (k, v) in context {
        if k.len() > MAX_CONTEXT_KEY_LEN {
            return Err(field_err(
                "context",
                &format!(
                    "has a key of {} bytes; the limit is {MAX_CONTEXT_KEY_LEN}",
                    k.len()
                ),
            ));
        }
        let size = match v {
            Value::String(s) => s.len(),
            Value::Array(_) | Value::Object(_) => {
                serde_json::to_string(v).map_or(usize::MAX, |t| t.len())
            }
            _ => 0,
        };
        if size > rc.max_context_value_bytes {
            return Err(field_err(
                &format!("context.{k}"),
                &format!(
                    "is {size} bytes long; the limit is {} (recommend.max_context_value_bytes)",
                    rc.max_context_value_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// Deserialises the body. A syntax error is "not valid JSON"; a type error
/// or an unknown field is a 400 naming the field by its path.
fn parse_body(body: &[u8], max_k: usize) -> Result<RecommendBody, ApiError> {
    let not_json = |e: serde_json::Error| {
        ApiError::bad_request(format!("body is not valid JSON: {e}"), None, None)
    };
    // serde would take a JSON array as the struct's fields in order
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<Value>(body).map_err(not_json)?;
        return Err(ApiError::bad_request(
            "body must be a JSON object",
            None,
            None,
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return not_json(inner);
        }
        match expected(&path, max_k) {
            Some(problem) => field_err(&path, &problem),
            None if path == "." => ApiError::bad_request("body must be a JSON object", None, None),
            None => field_err(
                &path,
                &format!("is not a recommend field (expected: {})", FIELDS.join(", ")),
            ),
        }
    })?;
    de.end().map_err(not_json)?;
    Ok(parsed)
}

/// What a field of the body must be, by its path; None for no such field.
fn expected(path: &str, max_k: usize) -> Option<String> {
    let problem = match path {
        "customer_id" | "model" | "session_id" => "must be a string".to_string(),
        "k" => k_range(max_k),
        "budget_ms" => budget_range(),
        "context" => "must be an object".to_string(),
        "explain" => "must be true or false".to_string(),
        "candidates" => "must be an array of item ids".to_string(),
        p if p.starts_with("candidates[") => "must be a string (an item id)".to_string(),
        _ => return None,
    };
    Some(problem)
}

fn k_range(max_k: usize) -> String {
    format!("must be an integer from 1 to {max_k}")
}

fn budget_range() -> String {
    format!("must be an integer from 1 to {MAX_BUDGET_MS}")
}

/// A session id field: a valid id string.
fn session_field(field: &str, s: &str) -> Result<String, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_list_every_body_field() {
        let all: Map<String, Value> = FIELDS
            .iter()
            .map(|f| (f.to_string(), Value::Null))
            .collect();
        let body = serde_json::to_vec(&all).expect("a map serialises");
        assert!(
            parse_body(&body, 10).is_ok(),
            "FIELDS and RecommendBody agree"
        );
    }

    #[test]
    fn type_errors_name_the_path() {
        let cases = [
            (r#"{"candidates": ["a", "b", "c", 4]}"#, "candidates[3]"),
            (r#"{"k": -1}"#, "k"),
            (r#"{"context": 3}"#, "context"),
            (r#"{"customer_id": "c", "extra": 1}"#, "extra"),
        ];
        for (body, field) in cases {
            match parse_body(body.as_bytes(), 10) {
                Err(ApiError::BadRequest {
                    field: Some(f),
                    message,
                    ..
                }) => {
                    assert_eq!(f, field, "{body}: {message}");
                    assert!(message.contains(field), "{message}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        for body in ["{not json", r#"{"k": 1} x"#, "[1]"] {
            assert!(
                matches!(
                    parse_body(body.as_bytes(), 10),
                    Err(ApiError::BadRequest { field: None, .. })
                ),
                "{body}"
            );
        }
    }
}
