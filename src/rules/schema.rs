//! What rule conditions can read: the variables `customer.*`, `session.*`,
//! `item.*`, `cross.*` and `context.*`, exactly as models see them (the
//! same feature definitions, the same derived features, the same context),
//! plus what models cannot use: text features (`item.brand`,
//! `customer.segment`, text context), the recent lists
//! (`customer.recent_items`) and `item.id`.
//!
//! A [`Schema`] is built once from the [`FeatureSet`]; a [`Plan`] is the
//! part of it one rule set uses, compiled into feature indices, so building
//! the variables of a request ([`Plan::request_vars`]) and of each item
//! ([`Plan::item_vars`]) reads only the referenced features.

use crate::features::aggregate::{numeric_value, EntityState};
use crate::features::definition::{Aggregation, Entity, FeatureSet};
use crate::features::vector::{ContextValues, RowInputs, RowPlan};
use cel::objects::{Key, Map};
use cel::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The variables a condition can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Customer,
    Session,
    Context,
    Item,
    Cross,
}

impl Namespace {
    pub const ALL: [Namespace; 5] = [
        Namespace::Customer,
        Namespace::Session,
        Namespace::Context,
        Namespace::Item,
        Namespace::Cross,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Customer => "customer",
            Namespace::Session => "session",
            Namespace::Context => "context",
            Namespace::Item => "item",
            Namespace::Cross => "cross",
        }
    }

    pub fn parse(s: &str) -> Option<Namespace> {
        Namespace::ALL.into_iter().find(|n| n.as_str() == s)
    }

    /// Whether the variable differs per candidate item (so `when`, which is
    /// evaluated once per request, cannot read it).
    pub fn per_item(self) -> bool {
        matches!(self, Namespace::Item | Namespace::Cross)
    }
}

/// The CEL type of a variable's field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// `double`
    Number,
    /// `string`
    Text,
    /// `list(string)`
    List,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Number => "number",
            FieldType::Text => "text",
            FieldType::List => "list of text",
        }
    }

    /// A value of this type, for checking conditions at load time: numbers
    /// are 1 (so `a / b` is no NaN, which compares with nothing); lists
    /// hold one element so that macros over them (`exists`, `all`) run.
    pub fn probe(self) -> Value {
        match self {
            FieldType::Number => Value::Float(1.0),
            FieldType::Text => Value::String(Arc::new(String::new())),
            FieldType::List => Value::List(Arc::new(vec![Value::String(Arc::new(String::new()))])),
        }
    }
}

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum FieldSource {
    /// A numeric model input (stored, derived or context), by its name.
    Numeric(String),
    /// A stored text feature (`last` or `static`), index into `features`.
    Text(usize),
    /// A stored `distinct_recent` list, index into `features`.
    List(usize),
    /// The item's id.
    ItemId,
    /// A text context feature, index into `FeatureSet::context`.
    ContextText(usize),
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    ty: FieldType,
    source: FieldSource,
}

/// Every variable field the definitions offer.
#[derive(Debug, Clone)]
pub struct Schema {
    fields: BTreeMap<(Namespace, String), Field>,
}

impl Schema {
    pub fn new(set: &FeatureSet) -> Schema {
        let mut fields = BTreeMap::new();
        for (i, f) in set.features.iter().enumerate() {
            let ns = match f.entity {
                Entity::Customer => Namespace::Customer,
                Entity::Session => Namespace::Session,
                Entity::Item => Namespace::Item,
            };
            let field = if f.is_numeric() {
                Field {
                    ty: FieldType::Number,
                    source: FieldSource::Numeric(f.qualified()),
                }
            } else {
                match f.aggregation {
                    Aggregation::DistinctRecent { .. } => Field {
                        ty: FieldType::List,
                        source: FieldSource::List(i),
                    },
                    _ => Field {
                        ty: FieldType::Text,
                        source: FieldSource::Text(i),
                    },
                }
            };
            fields.insert((ns, f.name.clone()), field);
        }
        for d in &set.derived {
            if let Some((ns, name)) = d.name.split_once('.') {
                if let Some(ns) = Namespace::parse(ns) {
                    fields.insert(
                        (ns, name.to_string()),
                        Field {
                            ty: FieldType::Number,
                            source: FieldSource::Numeric(d.name.clone()),
                        },
                    );
                }
            }
        }
        for (i, c) in set.context.iter().enumerate() {
            let field = if c.numeric {
                Field {
                    ty: FieldType::Number,
                    source: FieldSource::Numeric(format!("context.{}", c.name)),
                }
            } else {
                Field {
                    ty: FieldType::Text,
                    source: FieldSource::ContextText(i),
                }
            };
            fields.insert((Namespace::Context, c.name.clone()), field);
        }
        fields.insert(
            (Namespace::Item, "id".to_string()),
            Field {
                ty: FieldType::Text,
                source: FieldSource::ItemId,
            },
        );
        Schema { fields }
    }

    /// The type of `ns.name`, if the definitions have it.
    pub fn field_type(&self, ns: Namespace, name: &str) -> Option<FieldType> {
        self.fields.get(&(ns, name.to_string())).map(|f| f.ty)
    }

    /// The fields of a namespace, for error messages and docs.
    pub fn names(&self, ns: Namespace) -> Vec<&str> {
        self.fields
            .keys()
            .filter(|(n, _)| *n == ns)
            .map(|(_, f)| f.as_str())
            .collect()
    }

    /// Every field of `ns` at its probe value (see [`FieldType::probe`]).
    pub fn probe(&self, ns: Namespace) -> Value {
        let map: HashMap<Key, Value> = self
            .fields
            .iter()
            .filter(|((n, _), _)| *n == ns)
            .map(|((_, name), f)| (Key::String(Arc::new(name.clone())), f.ty.probe()))
            .collect();
        Value::Map(Map { map: Arc::new(map) })
    }

    /// The plan that reads `used` (fields known to this schema; others are
    /// left out).
    pub fn plan(&self, set: &FeatureSet, used: &[(Namespace, String)]) -> Plan {
        let mut numeric_names = Vec::new();
        let mut slots = Vec::new();
        for key in used {
            let Some(field) = self.fields.get(key) else {
                continue;
            };
            let source = match &field.source {
                FieldSource::Numeric(name) => {
                    numeric_names.push(name.clone());
                    Slot::Column(numeric_names.len() - 1)
                }
                FieldSource::Text(i) => Slot::Text(*i),
                FieldSource::List(i) => Slot::List(*i),
                FieldSource::ItemId => Slot::ItemId,
                FieldSource::ContextText(i) => Slot::ContextText(*i),
            };
            slots.push(PlanField {
                ns: key.0,
                key: Key::String(Arc::new(key.1.clone())),
                slot: source,
            });
        }
        // every name came from the definitions, so this cannot fail; an
        // empty plan reads nothing rather than panicking
        let numeric = RowPlan::compile(set, &numeric_names)
            .unwrap_or_else(|_| RowPlan::compile(set, &[]).expect("an empty plan compiles"));
        Plan {
            numeric,
            fields: slots,
        }
    }
}

#[derive(Debug, Clone)]
enum Slot {
    Column(usize),
    Text(usize),
    List(usize),
    ItemId,
    ContextText(usize),
}

#[derive(Debug, Clone)]
struct PlanField {
    ns: Namespace,
    key: Key,
    slot: Slot,
}

/// The fields one rule set reads, compiled.
#[derive(Debug, Clone)]
pub struct Plan {
    numeric: RowPlan,
    fields: Vec<PlanField>,
}

/// The states variables are built from.
pub struct Inputs<'a> {
    pub set: &'a FeatureSet,
    pub customer: &'a EntityState,
    pub session: &'a EntityState,
    pub context: &'a ContextValues,
    pub now: i64,
}

/// A request's `customer`, `session` and `context` variables.
#[derive(Debug, Clone)]
pub struct RequestVars {
    pub customer: Value,
    pub session: Value,
    pub context: Value,
}

/// One item's `item` and `cross` variables.
#[derive(Debug, Clone)]
pub struct ItemVars {
    pub item: Value,
    pub cross: Value,
}

impl Plan {
    /// The request's variables (fields of the per-request namespaces).
    pub fn request_vars(&self, inp: &Inputs<'_>) -> RequestVars {
        let empty = EntityState::default();
        let mut maps: [HashMap<Key, Value>; 3] = Default::default();
        for f in self.fields.iter().filter(|f| !f.ns.per_item()) {
            let i = match f.ns {
                Namespace::Customer => 0,
                Namespace::Session => 1,
                _ => 2,
            };
            maps[i].insert(f.key.clone(), self.value(f, inp, "", &empty));
        }
        let [customer, session, context] = maps.map(|m| Value::Map(Map { map: Arc::new(m) }));
        RequestVars {
            customer,
            session,
            context,
        }
    }

    /// One item's variables.
    pub fn item_vars(&self, inp: &Inputs<'_>, item_id: &str, item: &EntityState) -> ItemVars {
        let mut maps: [HashMap<Key, Value>; 2] = Default::default();
        for f in self.fields.iter().filter(|f| f.ns.per_item()) {
            let i = usize::from(f.ns == Namespace::Cross);
            maps[i].insert(f.key.clone(), self.value(f, inp, item_id, item));
        }
        let [item, cross] = maps.map(|m| Value::Map(Map { map: Arc::new(m) }));
        ItemVars { item, cross }
    }

    /// Whether any field read is per item.
    pub fn reads_items(&self) -> bool {
        self.fields.iter().any(|f| f.ns.per_item())
    }

    fn value(&self, f: &PlanField, inp: &Inputs<'_>, item_id: &str, item: &EntityState) -> Value {
        let state = |e: Entity| match e {
            Entity::Customer => inp.customer,
            Entity::Session => inp.session,
            Entity::Item => item,
        };
        let text = |s: &str| Value::String(Arc::new(s.to_string()));
        match &f.slot {
            Slot::Column(c) => {
                let rows = RowInputs {
                    customer: inp.customer,
                    session: inp.session,
                    context: inp.context,
                    now: inp.now,
                };
                Value::Float(self.numeric.value(inp.set, *c, &rows, item_id, item))
            }
            Slot::Text(i) => {
                let def = &inp.set.features[*i];
                let st = state(def.entity);
                match st.lasts.get(&def.name) {
                    Some(l) => text(&l.value),
                    None => text(""),
                }
            }
            Slot::List(i) => {
                let def = &inp.set.features[*i];
                let members = state(def.entity)
                    .recent
                    .get(&def.name)
                    .map(|l| l.iter().map(|(m, _)| text(m)).collect())
                    .unwrap_or_default();
                Value::List(Arc::new(members))
            }
            Slot::ItemId => text(item_id),
            Slot::ContextText(i) => text(inp.context.text(*i)),
        }
    }
}

/// The numeric value of `item.<name>` for an item, if the item has it
/// recorded (a static field loaded, an event seen); `None` when it would
/// read as the default only. Used for the arbitration value.
pub fn recorded_item_number(
    set: &FeatureSet,
    index: usize,
    item: &EntityState,
    now: i64,
) -> Option<f64> {
    let def = set.features.get(index)?;
    let recorded = item.lasts.contains_key(&def.name)
        || item.nums.contains_key(&def.name)
        || item.windows.contains_key(&def.name)
        || item.resettable.contains_key(&def.name);
    if !recorded {
        return None;
    }
    numeric_value(def, item, now).filter(|x| x.is_finite())
}
