//! `GET /v1/models`: every model, its versions, which serves, why others
//! were rejected, and the traffic share.

use super::AppStateRef;
use axum::Json;
use serde_json::{json, Value};

pub async fn list(state: AppStateRef) -> Json<Value> {
    let reg = state.registry.load();
    let default = reg.default_model(None).map(|m| m.manifest.name.clone());
    let models: Vec<Value> = reg
        .models
        .iter()
        .map(|(name, entry)| {
            let serving = entry.serving.as_ref().map(|m| m.manifest.version);
            let share = if Some(name) == default.as_ref() {
                1.0
            } else {
                0.0
            };
            json!({
                "name": name,
                "serving_version": serving,
                "status": if serving.is_some() { "serving" } else { "rejected" },
                "traffic_share": share,
                "default": Some(name) == default.as_ref(),
                "versions": entry.versions,
            })
        })
        .collect();
    Json(json!({ "default": default, "models": models, "problems": reg.problems }))
}
