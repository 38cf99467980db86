//! Catalog and profile fields: a record of `static` columns → the
//! `SetStatic` updates of one item or customer, as a [`GroupWrite`].
//!
//! The one conversion behind every way a static field changes:
//! `nextbest backfill --items/--customers` (a file row, [`Fields::FileRow`]),
//! `PUT /v1/items/{id}` / `PUT /v1/customers/{id}` and the topics
//! `catalog.items` / `catalog.customers` (a partial update,
//! [`Fields::Update`]). So a value is checked and stored the same way
//! whichever path brought it: fields are keyed by the file column
//! (`column` in features.toml, default the feature name); numbers must be
//! finite (`true`/`false` count as 1/0, numeric text is parsed) and are
//! stored printed once; text is kept as given (a number or boolean given
//! for a text field is stored as its JSON text); `null` sets nothing. A
//! write overwrites the previous value and is not deduped, so applying it
//! twice is harmless.
//!
//! Pure: knows nothing of files, HTTP, Kafka or Redis.

use super::aggregate::Update;
use super::definition::{Aggregation, Entity, FeatureSet};
use super::store::{EventIds, Group, GroupWrite};
use crate::event::{check_id, EventError};
use serde_json::{Map, Value};

/// Why a catalog/profile record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("must be a JSON object of {entity} fields ({known})")]
    NotAnObject { entity: &'static str, known: String },
    /// A value (or the id) that cannot be stored.
    #[error("field `{column}` {problem}")]
    Field { column: String, problem: String },
    #[error("unknown field `{column}`; {entity} fields are {known}")]
    Unknown {
        column: String,
        entity: &'static str,
        known: String,
    },
    #[error("sets no field; {entity} fields are {known}")]
    Empty { entity: &'static str, known: String },
}

impl CatalogError {
    /// The field (file column) the error is about, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            CatalogError::Field { column, .. } | CatalogError::Unknown { column, .. } => {
                Some(column)
            }
            _ => None,
        }
    }

    /// What is wrong, without the field name (for messages that name the
    /// column apart, like the backfill's `file: line, column: ...`).
    pub fn problem(&self) -> String {
        match self {
            CatalogError::Field { problem, .. } => problem.clone(),
            other => other.to_string(),
        }
    }
}

/// How a record's fields are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// A row of a catalog/profile file (the file was checked to hold every
    /// static column): other columns are ignored, empty cells set nothing.
    FileRow,
    /// A partial update (HTTP, catalog topic): only the fields present are
    /// set; a field that is neither a static column nor the id is refused,
    /// and at least one field must be set. The id may be repeated in the
    /// object (`"item_id"`) if it is the id being updated.
    Update,
}

/// One static feature and the column that feeds it.
#[derive(Debug, Clone)]
struct StaticColumn {
    feature: String,
    column: String,
    numeric: bool,
}

/// The static columns of one entity (item or customer), read from the
/// feature definitions once.
#[derive(Debug, Clone)]
pub struct StaticColumns {
    entity: Entity,
    defs: Vec<StaticColumn>,
}

impl StaticColumns {
    /// The `static` features of `entity` in `set`.
    pub fn of(set: &FeatureSet, entity: Entity) -> StaticColumns {
        let defs = set
            .statics(entity)
            .filter_map(|f| match &f.aggregation {
                Aggregation::Static { column, numeric } => Some(StaticColumn {
                    feature: f.name.clone(),
                    column: column.clone(),
                    numeric: *numeric,
                }),
                _ => None,
            })
            .collect();
        StaticColumns { entity, defs }
    }

    pub fn entity(&self) -> Entity {
        self.entity
    }

    /// `item` or `customer`, for messages and metric labels.
    pub fn entity_name(&self) -> &'static str {
        match self.entity {
            Entity::Item => "item",
            _ => "customer",
        }
    }

    /// The id column of a file and of an update object (`item_id`, `customer_id`).
    pub fn id_column(&self) -> &'static str {
        match self.entity {
            Entity::Item => "item_id",
            _ => "customer_id",
        }
    }

    /// The columns, in definition order (a column feeding two features once).
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.defs.len());
        for d in &self.defs {
            if !out.contains(&d.column.as_str()) {
                out.push(&d.column);
            }
        }
        out
    }

    /// A JSON object (an HTTP body, a catalog message) → the write of a
    /// partial update of `id` ([`Fields::Update`]).
    pub fn parse_update(&self, id: &str, json: &[u8]) -> Result<GroupWrite, CatalogError> {
        match serde_json::from_slice::<Value>(json) {
            Ok(Value::Object(fields)) => self.write(id, &fields, Fields::Update),
            Ok(_) => Err(CatalogError::NotAnObject {
                entity: self.entity_name(),
                known: self.known(),
            }),
            Err(e) => Err(CatalogError::Json(e.to_string())),
        }
    }

    /// The write setting `fields` of `id`: one `SetStatic` per static field
    /// present, validated as the module doc says.
    pub fn write(
        &self,
        id: &str,
        fields: &Map<String, Value>,
        shape: Fields,
    ) -> Result<GroupWrite, CatalogError> {
        let id_col = self.id_column();
        check_id(id_col, id).map_err(|e| field_error(id_col, e))?;
        if shape == Fields::Update {
            self.check_names(id, fields)?;
        }
        let mut updates = Vec::new();
        for d in &self.defs {
            let Some(v) = fields.get(&d.column) else {
                continue;
            };
            if let Some(value) =
                stored_value(v, d.numeric).map_err(|problem| CatalogError::Field {
                    column: d.column.clone(),
                    problem,
                })?
            {
                updates.push(Update::SetStatic {
                    feature: d.feature.as_str().into(),
                    value,
                });
            }
        }
        if shape == Fields::Update && updates.is_empty() {
            return Err(CatalogError::Empty {
                entity: self.entity_name(),
                known: self.known(),
            });
        }
        Ok(GroupWrite {
            group: match self.entity {
                Entity::Item => Group::Item(id.to_string()),
                _ => Group::Customer(id.to_string()),
            },
            events: EventIds::default(),
            updates,
            sessions: Vec::new(),
        })
    }

    /// Every key of an update is a static column, or the id itself.
    fn check_names(&self, id: &str, fields: &Map<String, Value>) -> Result<(), CatalogError> {
        let id_col = self.id_column();
        for (k, v) in fields {
            if k == id_col {
                let given = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if given != id {
                    return Err(CatalogError::Field {
                        column: id_col.to_string(),
                        problem: format!("is `{given}`, but the update is for `{id}`"),
                    });
                }
            } else if !self.defs.iter().any(|d| &d.column == k) {
                return Err(CatalogError::Unknown {
                    column: k.clone(),
                    entity: self.entity_name(),
                    known: self.known(),
                });
            }
        }
        Ok(())
    }

    /// The columns as a list for messages.
    fn known(&self) -> String {
        let cols = self.columns();
        if cols.is_empty() {
            "none (features.toml declares no static feature)".into()
        } else {
            cols.join(", ")
        }
    }
}

fn field_error(column: &str, e: EventError) -> CatalogError {
    let problem = match e {
        EventError::Invalid { problem, .. } => problem,
        other => other.to_string(),
    };
    CatalogError::Field {
        column: column.to_string(),
        problem,
    }
}

/// A JSON value → the stored text of a static field (`None` for `null`),
/// or what is wrong with it.
fn stored_value(v: &Value, numeric: bool) -> Result<Option<String>, String> {
    Ok(Some(match (v, numeric) {
        (Value::Null, _) => return Ok(None),
        (Value::Bool(b), true) => u8::from(*b).to_string(),
        (Value::Number(n), true) => match n.as_f64() {
            Some(x) if x.is_finite() => format!("{x}"),
            _ => return Err("must be a finite number".into()),
        },
        (Value::String(s), true) => match s.trim() {
            "true" => "1".into(),
            "false" => "0".into(),
            t => match t.parse::<f64>() {
                Ok(x) if x.is_finite() => format!("{x}"),
                _ => return Err(format!("must be a number, got `{s}`")),
            },
        },
        (Value::String(s), false) => s.clone(),
        (v @ (Value::Number(_) | Value::Bool(_)), false) => v.to_string(),
        (other, _) => return Err(format!("must be a number or text, got {other}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> FeatureSet {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/feature-store/features.toml");
        FeatureSet::load(std::path::Path::new(path)).expect("shipped features load")
    }

    fn items() -> StaticColumns {
        StaticColumns::of(&set(), Entity::Item)
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn statics(w: &GroupWrite) -> Vec<(String, String)> {
        w.updates
            .iter()
            .map(|u| match u {
                Update::SetStatic { feature, value } => (feature.to_string(), value.clone()),
                other => panic!("not a static update: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn columns_map_to_features_and_values_are_normalised() {
        let w = items()
            .write(
                "p1",
                &obj(
                    json!({"price": "59.90", "category": "shoes", "in_stock": false,
                             "brand": 7, "margin": 0.25, "colour": "red"}),
                ),
                Fields::FileRow,
            )
            .expect("a valid row");
        assert_eq!(w.group, Group::Item("p1".into()));
        assert!(w.events.is_empty() && w.sessions.is_empty());
        assert_eq!(
            statics(&w),
            vec![
                ("list_price".into(), "59.9".into()),
                ("catalog_category".into(), "shoes".into()),
                ("brand".into(), "7".into()),
                ("margin".into(), "0.25".into()),
                ("in_stock".into(), "0".into()),
            ],
            "a file row ignores the extra column"
        );
    }

    #[test]
    fn an_update_sets_only_the_fields_present() {
        let w = items()
            .parse_update("p1", br#"{"in_stock": 0, "brand": null, "item_id": "p1"}"#)
            .expect("a partial update");
        assert_eq!(statics(&w), vec![("in_stock".into(), "0".into())]);
        let c = StaticColumns::of(&set(), Entity::Customer)
            .parse_update("c1", br#"{"segment": "vip"}"#)
            .expect("a profile update");
        assert_eq!(c.group, Group::Customer("c1".into()));
        assert_eq!(statics(&c), vec![("segment".into(), "vip".into())]);
    }

    #[test]
    fn bad_updates_name_the_field() {
        let cols = items();
        let cases: [(&[u8], Option<&str>, &str); 8] = [
            (
                br#"{"colour": "red"}"#,
                Some("colour"),
                "unknown field `colour`",
            ),
            (br#"{"price": "cheap"}"#, Some("price"), "must be a number"),
            (
                br#"{"in_stock": [0]}"#,
                Some("in_stock"),
                "must be a number or text",
            ),
            (
                br#"{"brand": {"x": 1}}"#,
                Some("brand"),
                "must be a number or text",
            ),
            (br#"{"item_id": "p2", "price": 1}"#, Some("item_id"), "`p2`"),
            (br#"{}"#, None, "sets no field"),
            (br#"{"price": null}"#, None, "sets no field"),
            (br#"[1]"#, None, "JSON object"),
        ];
        for (body, column, says) in cases {
            let text = String::from_utf8_lossy(body);
            let e = cols.parse_update("p1", body).expect_err(&text);
            assert_eq!(e.column(), column, "{text} → {e}");
            assert!(e.to_string().contains(says), "{text} → {e}");
            if let Some(c) = column {
                assert!(e.to_string().contains(c), "{text} → {e}");
            }
        }
        let e = cols.parse_update("p1", b"{not json").expect_err("not JSON");
        assert!(matches!(e, CatalogError::Json(_)), "{e}");
        // positive control for the list of known fields in the message
        assert!(cols
            .parse_update("p1", b"{}")
            .expect_err("empty")
            .to_string()
            .contains("price, category, brand, margin, in_stock"),);
    }

    #[test]
    fn a_bad_id_is_refused_whatever_the_shape() {
        for id in ["", "a{b", "x\ny"] {
            for shape in [Fields::FileRow, Fields::Update] {
                let e = items()
                    .write(id, &obj(json!({"price": 1})), shape)
                    .expect_err(id);
                assert_eq!(e.column(), Some("item_id"), "{id:?} → {e}");
            }
        }
        assert!(items()
            .write("ok", &obj(json!({"price": 1})), Fields::Update)
            .is_ok());
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let e = items()
            .write("p1", &obj(json!({"margin": "inf"})), Fields::FileRow)
            .expect_err("inf");
        assert_eq!(e.column(), Some("margin"));
        assert_eq!(e.problem(), "must be a number, got `inf`");
    }
}
