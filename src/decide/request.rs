//! What a recommendation is asked for and what the answer looks like: the
//! typed request the API builds at its boundary, and the response types.

use crate::features::vector::ContextValues;
use crate::model::registry::ModelSpec;
use crate::rules::eval::Explained;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A short text code in an answer (an action or a reason): the built-in ones
/// are static, rule-defined ones owned.
pub type Label = Cow<'static, str>;

/// A validated recommendation request.
#[derive(Debug, Clone)]
pub struct RecommendRequest {
    pub request_id: String,
    pub customer_id: String,
    /// The session to read; `None` → the customer's latest session.
    pub session_id: Option<String>,
    pub k: usize,
    /// The declared context features, compiled from the request's `context`.
    pub context: ContextValues,
    pub candidates: Option<Vec<String>>,
    pub budget_ms: u64,
    /// How long it waited for admission before the pipeline (the HTTP
    /// gate, `api::layers::InFlight`); it counts against `budget_ms`.
    pub queued: std::time::Duration,
    pub model: Option<ModelSpec>,
    /// The time features are read at (ms since the epoch).
    pub now_ms: i64,
    /// Say per item which rules matched and what each did.
    pub explain: bool,
}

/// One recommended item. `score` is its final priority: `propensity`
/// (the model's score) × `value` × `weight` (the product of the matching
/// rules' levers).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RankedItem {
    pub item_id: String,
    pub score: f32,
    pub propensity: f32,
    pub value: f64,
    pub weight: f64,
    pub action: Label,
    pub reasons: Vec<Label>,
    /// With `explain`: the rules that matched and what each did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Vec<Explained>>,
}

impl RankedItem {
    /// An item with no rule applied: priority = propensity = `score`.
    pub fn plain(item_id: String, score: f32, reasons: Vec<Label>) -> RankedItem {
        RankedItem {
            item_id,
            score,
            propensity: score,
            value: 1.0,
            weight: 1.0,
            action: super::rules::ACTION_RECOMMEND.into(),
            reasons,
            explain: None,
        }
    }
}

/// With `explain`: a candidate a rule removed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExcludedItem {
    pub item_id: String,
    pub rule: String,
}

/// The model that produced a ranking.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub version: u32,
}

/// The answer to `/v1/recommend`.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub request_id: String,
    pub customer_id: String,
    pub items: Vec<RankedItem>,
    pub model: Option<ModelRef>,
    pub fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub timings_us: BTreeMap<&'static str, u64>,
    /// With `explain`: the candidates rules excluded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<Vec<ExcludedItem>>,
}
