//! Feature rows: the ordered numeric inputs of a model for one customer and
//! a list of candidate items, built from entity states read at one instant.
//!
//! A [`RowPlan`] is compiled once per model from its input names into
//! feature indices, so building a 100 × 16 matrix on the request path is
//! lookups and arithmetic only. The columns that do not depend on the item
//! (customer, session and context features) are computed once per request
//! into a [`RequestRow`]; each item row copies it and fills in the item
//! columns. The request's `context` is compiled once, at the API boundary,
//! into [`ContextValues`]: one number per declared context feature.

use super::aggregate::{numeric_value, EntityState};
use super::covisit_score::CoVisitScores;
use super::definition::{DerivedKind, Entity, FeatureSet};
use serde_json::{Map, Value};

/// Errors compiling a row plan: an input the feature store does not know.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VectorError {
    #[error("input `{0}` is not a numeric feature known to the feature store")]
    UnknownFeature(String),
}

/// A declared context feature given a value of the wrong kind.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("field `context.{name}` must be {expected}")]
pub struct ContextError {
    /// The context feature's name (without `context.`).
    pub name: String,
    /// What it must be: "a number or a boolean", or "a string".
    pub expected: &'static str,
}

/// The request's context as models and rules see it: one value per
/// declared context feature of the [`FeatureSet`], in declaration order,
/// defaults filled in (numbers; text features hold "" unless given).
/// Undeclared keys of the request's `context` are not kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContextValues {
    values: Vec<f64>,
    texts: Vec<String>,
}

impl ContextValues {
    /// Compiles a request's `context` object: numbers as they are, booleans
    /// as 0/1, text features as strings, missing or `null` as the declared
    /// default; anything else is an error naming the field.
    pub fn compile(set: &FeatureSet, context: &Map<String, Value>) -> Result<Self, ContextError> {
        let mut out = ContextValues::defaults(set);
        for (i, c) in set.context.iter().enumerate() {
            let wrong = |expected| ContextError {
                name: c.name.clone(),
                expected,
            };
            match (context.get(&c.name), c.numeric) {
                (None | Some(Value::Null), _) => {}
                (Some(Value::Bool(b)), true) => out.values[i] = f64::from(u8::from(*b)),
                (Some(Value::Number(n)), true) => {
                    out.values[i] = n
                        .as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| wrong("a number or a boolean"))?
                }
                (Some(_), true) => return Err(wrong("a number or a boolean")),
                (Some(Value::String(s)), false) => out.texts[i] = s.clone(),
                (Some(_), false) => return Err(wrong("a string")),
            }
        }
        Ok(out)
    }

    /// Every declared context feature at its default.
    pub fn defaults(set: &FeatureSet) -> Self {
        ContextValues {
            values: set
                .context
                .iter()
                .map(|c| if c.numeric { c.default } else { 0.0 })
                .collect(),
            texts: vec![String::new(); set.context.len()],
        }
    }

    /// The value of the `index`-th declared context feature (0 if the set
    /// declares fewer, or it is a text feature).
    pub fn get(&self, index: usize) -> f64 {
        self.values.get(index).copied().unwrap_or(0.0)
    }

    /// The text of the `index`-th declared context feature ("" if none).
    pub fn text(&self, index: usize) -> &str {
        self.texts.get(index).map_or("", String::as_str)
    }

    /// Sets the value of a declared numeric context feature by name; false
    /// if the set declares no such feature.
    pub fn set(&mut self, set: &FeatureSet, name: &str, value: f64) -> bool {
        match set.context.iter().position(|c| c.name == name && c.numeric) {
            Some(i) if i < self.values.len() => {
                self.values[i] = value;
                true
            }
            _ => false,
        }
    }
}

/// A stored feature: its entity and index in `FeatureSet::features`.
type Slot = (Entity, usize);

#[derive(Debug, Clone)]
enum Source {
    Stored(Slot),
    Ratio {
        num: Slot,
        den: Slot,
        prior: f64,
        weight: f64,
    },
    /// Membership of a value in a `distinct_recent` list.
    Member {
        list: Slot,
        value: ContainsValue,
        measure: Measure,
    },
    /// Index into `FeatureSet::context`.
    Context(usize),
    /// The item's `cross.covisit_score` ([`RowInputs::covisit`]).
    CoVisit,
}

/// What a [`Source::Member`] column says of the value's membership.
#[derive(Debug, Clone, Copy)]
enum Measure {
    /// 1 if in the list, else 0.
    Contains,
    /// 1-based position (newest first), else the given value.
    Rank(f64),
    /// Seconds since its latest ts in the list, else the given value.
    Age(f64),
}

#[derive(Debug, Clone)]
enum ContainsValue {
    ItemId,
    Stored(Slot),
}

impl Source {
    /// Whether the column depends on the candidate item (or only on the
    /// customer, session and context, so it is the same for every row).
    fn per_item(&self) -> bool {
        let item = |s: &Slot| s.0 == Entity::Item;
        match self {
            Source::Stored(s) => item(s),
            Source::Ratio { num, den, .. } => item(num) || item(den),
            Source::Member { list, value, .. } => {
                item(list)
                    || match value {
                        ContainsValue::ItemId => true,
                        ContainsValue::Stored(s) => item(s),
                    }
            }
            Source::Context(_) => false,
            Source::CoVisit => true,
        }
    }
}

/// The compiled recipe for one model's input columns.
#[derive(Debug, Clone)]
pub struct RowPlan {
    names: Vec<String>,
    sources: Vec<Source>,
    /// Indices of the columns that depend on the item.
    item_columns: Vec<usize>,
}

/// The states a row is computed from.
pub struct RowInputs<'a> {
    pub customer: &'a EntityState,
    pub session: &'a EntityState,
    pub context: &'a ContextValues,
    pub now: i64,
    /// The customer's co-visitation scores (`cross.covisit_score`); empty
    /// when no column reads them.
    pub covisit: &'a CoVisitScores,
}

/// One request's row with the columns that are the same for every item
/// already computed (item columns hold 0 until [`RowPlan::push_item_row`]).
#[derive(Debug, Clone)]
pub struct RequestRow {
    values: Vec<f32>,
}

impl RowPlan {
    /// Compiles input names against the definitions.
    pub fn compile(set: &FeatureSet, names: &[String]) -> Result<RowPlan, VectorError> {
        let stored = |q: &str| -> Option<Slot> {
            let (e, n) = q.split_once('.')?;
            set.features
                .iter()
                .enumerate()
                .find(|(_, f)| f.entity.as_str() == e && f.name == n)
                .map(|(i, f)| (f.entity, i))
        };
        let member = |list: &str, value: &str, measure: Measure| -> Option<Source> {
            Some(Source::Member {
                list: stored(list)?,
                value: if value == "item.id" {
                    ContainsValue::ItemId
                } else {
                    ContainsValue::Stored(stored(value)?)
                },
                measure,
            })
        };
        let mut sources = Vec::with_capacity(names.len());
        for name in names {
            let unknown = || VectorError::UnknownFeature(name.clone());
            let src = if let Some(rest) = name.strip_prefix("context.") {
                Source::Context(
                    set.context
                        .iter()
                        .position(|c| c.name == rest && c.numeric)
                        .ok_or_else(unknown)?,
                )
            } else if let Some(d) = set.derived.iter().find(|d| &d.name == name) {
                match &d.kind {
                    DerivedKind::Ratio {
                        numerator,
                        denominator,
                        prior,
                        prior_weight,
                    } => Source::Ratio {
                        num: stored(numerator).ok_or_else(unknown)?,
                        den: stored(denominator).ok_or_else(unknown)?,
                        prior: *prior,
                        weight: *prior_weight,
                    },
                    DerivedKind::Contains { list, value } => {
                        member(list, value, Measure::Contains).ok_or_else(unknown)?
                    }
                    DerivedKind::Rank {
                        list,
                        value,
                        absent,
                    } => member(list, value, Measure::Rank(*absent)).ok_or_else(unknown)?,
                    DerivedKind::Age {
                        list,
                        value,
                        absent,
                    } => member(list, value, Measure::Age(*absent)).ok_or_else(unknown)?,
                    DerivedKind::CoVisit => Source::CoVisit,
                }
            } else {
                let slot = stored(name).ok_or_else(unknown)?;
                if !set.features[slot.1].is_numeric() {
                    return Err(unknown());
                }
                Source::Stored(slot)
            };
            sources.push(src);
        }
        let item_columns = (0..sources.len())
            .filter(|&i| sources[i].per_item())
            .collect();
        Ok(RowPlan {
            names: names.to_vec(),
            sources,
            item_columns,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn width(&self) -> usize {
        self.sources.len()
    }

    /// Whether a column reads the co-visitation scores (so the request
    /// needs [`RowInputs::covisit`] filled).
    pub fn uses_covisit(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::CoVisit))
    }

    /// Whether column `col` depends on the item (false: the same for every
    /// item of a request).
    pub fn is_per_item(&self, col: usize) -> bool {
        self.sources.get(col).is_some_and(Source::per_item)
    }

    /// Column `col`'s value in full precision (what rules compare; model
    /// rows hold it rounded to f32). 0 for a column out of range.
    pub fn value(
        &self,
        set: &FeatureSet,
        col: usize,
        inp: &RowInputs<'_>,
        item_id: &str,
        item: &EntityState,
    ) -> f64 {
        self.sources
            .get(col)
            .map_or(0.0, |src| column(set, src, inp, item_id, item))
    }

    /// Computes the columns that are the same for every item of a request.
    pub fn request_row(&self, set: &FeatureSet, inp: &RowInputs<'_>) -> RequestRow {
        let empty = EntityState::default();
        let values = self
            .sources
            .iter()
            .map(|src| {
                if src.per_item() {
                    0.0
                } else {
                    column(set, src, inp, "", &empty) as f32
                }
            })
            .collect();
        RequestRow { values }
    }

    /// Appends one item's row (for `item_id` with state `item`) to `out`:
    /// the request's row with the item columns filled in.
    pub fn push_item_row(
        &self,
        set: &FeatureSet,
        inp: &RowInputs<'_>,
        request: &RequestRow,
        item_id: &str,
        item: &EntityState,
        out: &mut Vec<f32>,
    ) {
        self.push_item_row_with(set, inp, request, item_id, item, |_| None, out)
    }

    /// [`Self::push_item_row`] with some item columns already computed
    /// elsewhere: `known(col)` is column `col`'s value in full precision if
    /// another stage computed it from the same definitions (the rules read
    /// the same features, see [`Self::value`]), else `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn push_item_row_with(
        &self,
        set: &FeatureSet,
        inp: &RowInputs<'_>,
        request: &RequestRow,
        item_id: &str,
        item: &EntityState,
        known: impl Fn(usize) -> Option<f64>,
        out: &mut Vec<f32>,
    ) {
        let start = out.len();
        out.extend_from_slice(&request.values);
        for &c in &self.item_columns {
            let x = match known(c) {
                Some(x) => x,
                None => column(set, &self.sources[c], inp, item_id, item),
            };
            out[start + c] = x as f32;
        }
    }

    /// The item columns (those that depend on the item), by index.
    pub fn item_columns(&self) -> &[usize] {
        &self.item_columns
    }

    /// Appends one row, computing every column (for one-off rows, e.g. the
    /// training export; the request path uses [`Self::request_row`] once and
    /// [`Self::push_item_row`] per item).
    pub fn push_row(
        &self,
        set: &FeatureSet,
        inp: &RowInputs<'_>,
        item_id: &str,
        item: &EntityState,
        out: &mut Vec<f32>,
    ) {
        out.extend(
            self.sources
                .iter()
                .map(|src| column(set, src, inp, item_id, item) as f32),
        );
    }
}

/// One column's value; non-finite values become 0.
fn column(
    set: &FeatureSet,
    src: &Source,
    inp: &RowInputs<'_>,
    item_id: &str,
    item: &EntityState,
) -> f64 {
    let pick = |e: Entity| match e {
        Entity::Customer => inp.customer,
        Entity::Session => inp.session,
        Entity::Item => item,
    };
    let num = |(e, i): Slot| numeric_value(&set.features[i], pick(e), inp.now).unwrap_or(0.0);
    let x = match src {
        Source::Stored(slot) => num(*slot),
        Source::Ratio {
            num: n,
            den,
            prior,
            weight,
        } => {
            let denom = num(*den) + weight;
            if denom > 0.0 {
                (num(*n) + prior * weight) / denom
            } else {
                *prior
            }
        }
        Source::Member {
            list,
            value,
            measure,
        } => {
            let target: Option<&str> = match value {
                ContainsValue::ItemId => Some(item_id),
                ContainsValue::Stored((e, i)) => pick(*e)
                    .lasts
                    .get(&set.features[*i].name)
                    .map(|l| l.value.as_str()),
            };
            let members = pick(list.0).recent.get(&set.features[list.1].name);
            let found = match (target, members) {
                (Some(t), Some(m)) => m.iter().position(|(x, _)| x == t).map(|i| (i, m[i].1)),
                _ => None,
            };
            match (measure, found) {
                (Measure::Contains, f) => f64::from(u8::from(f.is_some())),
                (Measure::Rank(_), Some((i, _))) => (i + 1) as f64,
                (Measure::Age(_), Some((_, ts))) => ((inp.now - ts) as f64 / 1000.0).max(0.0),
                (Measure::Rank(absent) | Measure::Age(absent), None) => *absent,
            }
        }
        Source::Context(i) => inp.context.get(*i),
        Source::CoVisit => inp.covisit.get(item_id),
    };
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_inputs_are_named() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped definitions load");
        let err = RowPlan::compile(
            &set,
            &["customer.views_1h".into(), "customer.shoe_size".into()],
        )
        .unwrap_err();
        assert_eq!(
            err,
            VectorError::UnknownFeature("customer.shoe_size".into())
        );
        assert!(RowPlan::compile(&set, &["customer.recent_items".into()]).is_err());
        let plan = RowPlan::compile(&set, &set.numeric_names()).expect("all numeric names compile");
        assert_eq!(plan.width(), set.numeric_names().len());
    }

    #[test]
    fn request_row_plus_item_columns_equals_a_full_row() {
        use crate::event::Event;
        use crate::features::aggregate::plan_event;
        use crate::features::store::memory::MemoryState;
        use std::sync::Arc;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = Arc::new(FeatureSet::load(&path).expect("shipped definitions load"));
        let mut st = MemoryState::new(set.clone(), 3_600_000);
        let t0 = 1_764_355_200_000i64;
        let kinds = ["page_view", "click", "add_to_cart", "purchase", "page_view"];
        let plans: Vec<_> = (0..40)
            .map(|i| {
                let e = Event::from_value(serde_json::json!({
                    "event_id": format!("e{i}"), "type": kinds[i % kinds.len()],
                    "customer_id": "c1", "session_id": "s1", "ts": t0 + i as i64 * 1000,
                    "item_id": format!("p{}", i % 7),
                    "props": {"price": 10.0 + i as f64, "quantity": 1, "category": format!("k{}", i % 3)}
                }))
                .expect("valid event");
                plan_event(&set, &e)
            })
            .collect();
        st.apply(&plans, t0 + 1_000_000);
        let mut raw = Map::new();
        if let Some(c) = set.context.first() {
            raw.insert(c.name.clone(), Value::Bool(true));
        }
        let context = ContextValues::compile(&set, &raw).expect("valid context");
        let plan = RowPlan::compile(&set, &set.numeric_names()).expect("all numeric names compile");
        let (_, session) = st.session("c1", None);
        let inp = RowInputs {
            customer: st.customer("c1"),
            session,
            context: &context,
            now: t0 + 60_000,
            covisit: &CoVisitScores::default(),
        };
        let req = plan.request_row(&set, &inp);
        let (mut fast, mut full) = (Vec::new(), Vec::new());
        for i in 0..8 {
            let id = format!("p{i}");
            plan.push_item_row(&set, &inp, &req, &id, st.item(&id), &mut fast);
            plan.push_row(&set, &inp, &id, st.item(&id), &mut full);
        }
        assert_eq!(fast, full);
        assert!(full.iter().any(|x| *x != 0.0), "the states are not empty");
    }

    #[test]
    fn rank_and_age_say_where_and_when_the_item_is_in_the_recent_list() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped definitions load");
        let names = vec![
            "cross.recent_rank".to_string(),
            "cross.since_interacted_s".to_string(),
            "cross.viewed_recently".to_string(),
        ];
        let plan = RowPlan::compile(&set, &names).expect("compiles");
        let mut customer = EntityState::default();
        // newest first: b seen at 9,000 ms, a at 4,000 ms
        customer.recent.insert(
            "recent_items".into(),
            vec![("b".into(), 9_000), ("a".into(), 4_000)],
        );
        let (session, context) = (EntityState::default(), ContextValues::defaults(&set));
        let inp = RowInputs {
            customer: &customer,
            session: &session,
            context: &context,
            now: 10_000,
            covisit: &CoVisitScores::default(),
        };
        let row = |id: &str| {
            let mut out = Vec::new();
            plan.push_row(&set, &inp, id, &EntityState::default(), &mut out);
            out
        };
        assert_eq!(row("b"), [1.0, 1.0, 1.0]);
        assert_eq!(row("a"), [2.0, 6.0, 1.0]);
        // not in the list: the declared defaults
        assert_eq!(row("z"), [1000.0, 1_000_000.0, 0.0]);
    }

    #[test]
    fn the_covisit_column_is_the_requests_score_of_the_item() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped definitions load");
        let plan = RowPlan::compile(&set, &["cross.covisit_score".to_string()]).expect("compiles");
        assert!(plan.uses_covisit() && plan.is_per_item(0));
        assert!(!RowPlan::compile(&set, &["cross.recent_rank".to_string()])
            .expect("compiles")
            .uses_covisit());
        let seeds = vec!["a".to_string()];
        let lists = vec![vec![("x".to_string(), 3.0), ("y".to_string(), 1.0)]];
        let scores = CoVisitScores::from_lists(&seeds, &lists);
        let (state, context) = (EntityState::default(), ContextValues::defaults(&set));
        let inp = RowInputs {
            customer: &state,
            session: &state,
            context: &context,
            now: 0,
            covisit: &scores,
        };
        let req = plan.request_row(&set, &inp);
        let mut out = Vec::new();
        for id in ["x", "y", "z"] {
            plan.push_item_row(&set, &inp, &req, id, &state, &mut out);
        }
        assert_eq!(out, [0.75, 0.25, 0.0]);
    }

    #[test]
    fn context_is_compiled_to_declared_features() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped definitions load");
        let Some(first) = set.context.first() else {
            return;
        };
        let mut raw = Map::new();
        raw.insert(first.name.clone(), Value::String("yes".into()));
        assert_eq!(
            ContextValues::compile(&set, &raw).unwrap_err(),
            ContextError {
                name: first.name.clone(),
                expected: "a number or a boolean",
            }
        );
        raw.insert(first.name.clone(), serde_json::json!(2.5));
        raw.insert("not_declared".into(), serde_json::json!("kept out"));
        let c = ContextValues::compile(&set, &raw).expect("valid context");
        assert_eq!(c.get(0), 2.5);
        // a text context feature takes a string, nothing else
        if let Some(t) = set.context.iter().position(|c| !c.numeric) {
            let name = set.context[t].name.clone();
            raw.insert(name.clone(), serde_json::json!("shoes"));
            let c = ContextValues::compile(&set, &raw).expect("text context");
            assert_eq!(c.text(t), "shoes");
            raw.insert(name.clone(), serde_json::json!(3));
            assert_eq!(
                ContextValues::compile(&set, &raw).unwrap_err(),
                ContextError {
                    name,
                    expected: "a string"
                }
            );
        }
        assert_eq!(
            ContextValues::compile(&set, &Map::new()).expect("empty context"),
            ContextValues::defaults(&set)
        );
    }
}
