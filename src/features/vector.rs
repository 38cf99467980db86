//! Feature rows: the ordered numeric inputs of a model for one customer and
//! a list of candidate items, built from entity states read at one instant.
//!
//! A [`RowPlan`] is compiled once per model from its input names, so building
//! a 100 × 16 matrix on the request path is lookups and arithmetic only.

use super::aggregate::{numeric_value, EntityState};
use super::definition::{DerivedKind, Entity, FeatureSet};
use serde_json::{Map, Value};

/// Errors compiling a row plan: an input the feature store does not know.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VectorError {
    #[error("input `{0}` is not a numeric feature known to the feature store")]
    UnknownFeature(String),
}

#[derive(Debug, Clone)]
enum Source {
    Stored {
        entity: Entity,
        index: usize,
    },
    Ratio {
        num: (Entity, usize),
        den: (Entity, usize),
        prior: f64,
        weight: f64,
    },
    Contains {
        list: (Entity, usize),
        value: ContainsValue,
    },
    Context {
        name: String,
        default: f64,
    },
}

#[derive(Debug, Clone)]
enum ContainsValue {
    ItemId,
    Stored(Entity, usize),
}

/// The compiled recipe for one model's input columns.
#[derive(Debug, Clone)]
pub struct RowPlan {
    names: Vec<String>,
    sources: Vec<Source>,
}

/// The states a row is computed from.
pub struct RowInputs<'a> {
    pub customer: &'a EntityState,
    pub session: &'a EntityState,
    pub context: &'a Map<String, Value>,
    pub now: i64,
}

impl RowPlan {
    /// Compiles input names against the definitions.
    pub fn compile(set: &FeatureSet, names: &[String]) -> Result<RowPlan, VectorError> {
        let stored = |q: &str| -> Option<(Entity, usize)> {
            let (e, n) = q.split_once('.')?;
            set.features
                .iter()
                .enumerate()
                .find(|(_, f)| f.entity.as_str() == e && f.name == n)
                .map(|(i, f)| (f.entity, i))
        };
        let mut sources = Vec::with_capacity(names.len());
        for name in names {
            let unknown = || VectorError::UnknownFeature(name.clone());
            let src = if let Some(rest) = name.strip_prefix("context.") {
                let c = set
                    .context
                    .iter()
                    .find(|c| c.name == rest)
                    .ok_or_else(unknown)?;
                Source::Context {
                    name: c.name.clone(),
                    default: c.default,
                }
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
                    DerivedKind::Contains { list, value } => Source::Contains {
                        list: stored(list).ok_or_else(unknown)?,
                        value: if value == "item.id" {
                            ContainsValue::ItemId
                        } else {
                            let (e, i) = stored(value).ok_or_else(unknown)?;
                            ContainsValue::Stored(e, i)
                        },
                    },
                }
            } else {
                let (entity, index) = stored(name).ok_or_else(unknown)?;
                if !set.features[index].is_numeric() {
                    return Err(unknown());
                }
                Source::Stored { entity, index }
            };
            sources.push(src);
        }
        Ok(RowPlan {
            names: names.to_vec(),
            sources,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn width(&self) -> usize {
        self.sources.len()
    }

    /// Appends one row (for `item_id` with state `item`) to `out`.
    pub fn push_row(
        &self,
        set: &FeatureSet,
        inp: &RowInputs<'_>,
        item_id: &str,
        item: &EntityState,
        out: &mut Vec<f32>,
    ) {
        let pick = |e: Entity| match e {
            Entity::Customer => inp.customer,
            Entity::Session => inp.session,
            Entity::Item => item,
        };
        let num = |(e, i): (Entity, usize)| {
            numeric_value(&set.features[i], pick(e), inp.now).unwrap_or(0.0)
        };
        for src in &self.sources {
            let x = match src {
                Source::Stored { entity, index } => num((*entity, *index)),
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
                Source::Contains { list, value } => {
                    let target: Option<&str> = match value {
                        ContainsValue::ItemId => Some(item_id),
                        ContainsValue::Stored(e, i) => pick(*e)
                            .lasts
                            .get(&set.features[*i].name)
                            .map(|l| l.value.as_str()),
                    };
                    let members = pick(list.0).recent.get(&set.features[list.1].name);
                    match (target, members) {
                        (Some(t), Some(m)) if m.iter().any(|(x, _)| x == t) => 1.0,
                        _ => 0.0,
                    }
                }
                Source::Context { name, default } => match inp.context.get(name) {
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(*default),
                    Some(Value::Bool(b)) => f64::from(u8::from(*b)),
                    _ => *default,
                },
            };
            out.push(if x.is_finite() { x as f32 } else { 0.0 });
        }
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
}
