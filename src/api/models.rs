//! `GET /v1/models`: every model, its versions, which serves, why others
//! were rejected, and the traffic share.

use super::AppStateRef;
use axum::Json;
use serde_json::{json, Value};

pub async fn list(state: AppStateRef) -> Json<Value> {
    let reg = state.registry.load();
    let routing = &state.decider.routing;
    let default = reg
        .default_model(routing.default.as_deref())
        .map(|m| m.manifest.name.clone());
    let shares = routing.shares();
    let models: Vec<Value> = reg
        .models
        .iter()
        .map(|(name, entry)| {
            let serving = entry.serving.as_ref().map(|m| m.manifest.version);
            // with a split, a model's share is the sum of its targets' shares;
            // without one, the default model takes all traffic
            let share: f64 = if shares.is_empty() {
                if Some(name) == default.as_ref() {
                    1.0
                } else {
                    0.0
                }
            } else {
                shares
                    .iter()
                    .filter(|(s, _)| &s.name == name)
                    .map(|(_, w)| w)
                    .sum()
            };
            let split: Vec<Value> = shares
                .iter()
                .filter(|(s, _)| &s.name == name)
                .map(|(s, w)| json!({"target": s.to_string(), "share": w}))
                .collect();
            let shadow = routing.shadow.iter().any(|s| &s.name == name);
            json!({
                "name": name,
                "serving_version": serving,
                "status": if serving.is_some() { "serving" } else { "rejected" },
                "traffic_share": share,
                "default": Some(name) == default.as_ref(),
                "split": split,
                "shadow": shadow,
                "versions": entry.versions,
            })
        })
        .collect();
    Json(json!({ "default": default, "models": models, "problems": reg.problems }))
}
