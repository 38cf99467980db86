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
use crate::features::covisit_score::CoVisitScores;
use crate::features::definition::{Aggregation, Entity, FeatureSet};
use crate::features::vector::{ContextValues, RowInputs, RowPlan};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
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
        let by_name = slots
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("{}.{}", f.ns.as_str(), key_str(&f.key)), i))
            .collect();
        let mut per_item = 0..;
        let item_slot = slots
            .iter()
            .map(|f| f.ns.per_item().then(|| per_item.next()).flatten())
            .collect();
        Plan {
            numeric,
            fields: slots,
            by_name,
            item_slot,
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
    /// Qualified name → index into `fields`.
    by_name: rustc_hash::FxHashMap<String, usize>,
    /// Per field: its index among the per-item fields, if it is one.
    item_slot: Vec<Option<usize>>,
}

/// The states variables are built from.
pub struct Inputs<'a> {
    pub set: &'a FeatureSet,
    pub customer: &'a EntityState,
    pub session: &'a EntityState,
    pub context: &'a ContextValues,
    pub now: i64,
    /// The customer's co-visitation scores (`cross.covisit_score`).
    pub covisit: &'a CoVisitScores,
}

/// The request's fields (customer, session, context) bound under their
/// qualified names (`customer.cart_value`): cel resolves
/// `customer.cart_value` as a variable of that name before it tries a field
/// of `customer`, so a condition finds each value with one lookup. One slot
/// per plan field, filled by [`Plan::bind_request`]; the per-item ones stay
/// empty (they are an [`ItemVars`]).
#[derive(Debug)]
pub struct Bound {
    vals: Vec<Option<Box<dyn Val>>>,
    /// The same values as plain data, for [`super::fast`].
    pub(crate) values: Vec<RequestValue>,
}

/// A request field's value as plain data (what [`super::fast`] reads).
#[derive(Debug, Clone, PartialEq)]
pub enum RequestValue {
    /// A per-item field (not bound with the request).
    Null,
    Number(f64),
    Text(String),
    List(Vec<String>),
}

impl From<Cell<'_>> for RequestValue {
    fn from(c: Cell<'_>) -> Self {
        match c {
            Cell::Null => RequestValue::Null,
            Cell::Number(x) => RequestValue::Number(x),
            Cell::Text(t) => RequestValue::Text(t.to_string()),
            Cell::List(l) => RequestValue::List(l.iter().map(|(m, _)| m.clone()).collect()),
        }
    }
}

/// One per-item field's value as read from the states, borrowed: nothing
/// is allocated to read it, compare it or hash it. It is the key under
/// which a condition's result is kept within a request, and becomes a cel
/// value only when a condition must actually run ([`ItemVars`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// A field no condition that holds for this request reads.
    Null,
    Number(f64),
    Text(&'a str),
    /// The members of a recent list (with their times, which conditions do
    /// not see: two lists with the same members at other times are kept
    /// apart, which costs a re-evaluation, never a wrong answer).
    List(&'a [(String, i64)]),
}

impl Cell<'_> {
    fn to_val(self) -> Option<Box<dyn Val>> {
        let text = |s: &str| Value::String(Arc::new(s.to_string()));
        let v = match self {
            Cell::Null => Value::Null,
            Cell::Number(x) => Value::Float(x),
            Cell::Text(t) => text(t),
            Cell::List(l) => Value::List(Arc::new(l.iter().map(|(m, _)| text(m)).collect())),
        };
        v.try_into().ok()
    }
}

/// One item's variables for cel: its [`Cell`]s, each turned into a cel
/// value the first time a condition names it (most conditions read one or
/// two of an item's fields).
pub struct ItemVars<'c> {
    cells: &'c [Cell<'c>],
    vals: Vec<std::sync::OnceLock<Option<Box<dyn Val>>>>,
}

impl<'c> ItemVars<'c> {
    pub fn new(cells: &'c [Cell<'c>]) -> ItemVars<'c> {
        ItemVars {
            cells,
            vals: (0..cells.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    fn get(&self, j: usize) -> Option<&dyn Val> {
        let cell = *self.cells.get(j)?;
        self.vals.get(j)?.get_or_init(|| cell.to_val()).as_deref()
    }
}

/// The variables one evaluation sees: the request's and (for `item_when`)
/// one item's.
pub struct Resolver<'a> {
    pub plan: &'a Plan,
    pub request: &'a Bound,
    pub item: Option<&'a ItemVars<'a>>,
}

impl VariableResolver for Resolver<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let Some(&i) = self.plan.by_name.get(name) else {
            // a namespace alone (`has(item.x)` resolves `item`): a map of
            // what is bound, built on demand
            let ns = Namespace::parse(name)?;
            return self.namespace(ns).map(CowVal::Owned);
        };
        match self.plan.item_slot[i] {
            Some(j) => self.item?.get(j).map(CowVal::Borrowed),
            None => self.request.vals.get(i)?.as_deref().map(CowVal::Borrowed),
        }
    }
}

impl Resolver<'_> {
    fn namespace(&self, ns: Namespace) -> Option<Box<dyn Val>> {
        let map: HashMap<Key, Value> = self
            .plan
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.ns == ns)
            .filter_map(|(i, f)| {
                let v = match self.plan.item_slot[i] {
                    Some(j) => self.item?.get(j)?,
                    None => self.request.vals.get(i)?.as_deref()?,
                };
                Some((f.key.clone(), Value::try_from(v).ok()?))
            })
            .collect();
        Value::Map(Map { map: Arc::new(map) }).try_into().ok()
    }
}

impl Plan {
    /// Whether a rule reads `cross.covisit_score` (so the request needs
    /// the co-visitation scores read).
    pub fn uses_covisit(&self) -> bool {
        self.numeric.uses_covisit()
    }

    /// The request's fields bound (customer, session, context).
    pub fn bind_request(&self, inp: &Inputs<'_>) -> Bound {
        let empty = EntityState::default();
        let cells: Vec<Cell<'_>> = self
            .fields
            .iter()
            .map(|f| {
                if f.ns.per_item() {
                    Cell::Null
                } else {
                    self.cell(f, inp, "", &empty)
                }
            })
            .collect();
        Bound {
            vals: cells
                .iter()
                .map(|c| (!matches!(c, Cell::Null)).then(|| c.to_val()).flatten())
                .collect(),
            values: cells.into_iter().map(RequestValue::from).collect(),
        }
    }

    /// Request variables of the values `value` gives each request field
    /// (for tests that bind values directly).
    #[cfg(test)]
    pub(crate) fn bind_values(
        &self,
        mut value: impl FnMut(Namespace, &str, FieldType) -> RequestValue,
    ) -> Bound {
        let values: Vec<RequestValue> = self
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| match self.place(f.ns, key_str(&f.key)) {
                Some((_, ty)) if self.item_slot[i].is_none() => value(f.ns, key_str(&f.key), ty),
                _ => RequestValue::Null,
            })
            .collect();
        let vals = values
            .iter()
            .map(|v| {
                let text = |s: &str| Value::String(Arc::new(s.to_string()));
                let v = match v {
                    RequestValue::Null => return None,
                    RequestValue::Number(x) => Value::Float(*x),
                    RequestValue::Text(t) => text(t),
                    RequestValue::List(l) => {
                        Value::List(Arc::new(l.iter().map(|m| text(m)).collect()))
                    }
                };
                v.try_into().ok()
            })
            .collect();
        Bound { vals, values }
    }

    /// Where `ns.name` is (an item cell or a request value) and its type,
    /// if this plan reads it.
    pub fn place(&self, ns: Namespace, name: &str) -> Option<(super::fast::Var, FieldType)> {
        let i = self
            .fields
            .iter()
            .position(|f| f.ns == ns && key_str(&f.key) == name)?;
        let ty = match self.fields[i].slot {
            Slot::Column(_) => FieldType::Number,
            Slot::Text(_) | Slot::ItemId | Slot::ContextText(_) => FieldType::Text,
            Slot::List(_) => FieldType::List,
        };
        let var = match self.item_slot[i] {
            Some(j) => super::fast::Var::Item(j),
            None => super::fast::Var::Request(i),
        };
        Some((var, ty))
    }

    /// The per-item fields read, in [`Self::item_fields`] order, appended
    /// to `out`; those not `needed` (read by no rule that holds for this
    /// request) are [`Cell::Null`].
    pub fn item_cells<'a>(
        &self,
        inp: &Inputs<'a>,
        item_id: &'a str,
        item: &'a EntityState,
        needed: &[bool],
        out: &mut Vec<Cell<'a>>,
    ) {
        let per_item = self.fields.iter().filter(|f| f.ns.per_item());
        for (i, f) in per_item.enumerate() {
            out.push(if needed.get(i).copied().unwrap_or(true) {
                self.cell(f, inp, item_id, item)
            } else {
                Cell::Null
            });
        }
    }

    /// The per-item field (its position in [`Self::item_fields`]) whose
    /// value is the numeric model input `name` (`item.price`,
    /// `cross.viewed_recently`): computed from the same definitions as a
    /// model's column of that name, so the same number.
    pub fn item_field_of_input(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .filter(|f| f.ns.per_item())
            .position(|f| match f.slot {
                Slot::Column(c) => self.numeric.names().get(c).is_some_and(|n| n == name),
                _ => false,
            })
    }

    /// The per-item fields read, in order.
    pub fn item_fields(&self) -> impl Iterator<Item = (Namespace, &str)> {
        self.fields
            .iter()
            .filter(|f| f.ns.per_item())
            .map(|f| (f.ns, key_str(&f.key)))
    }

    /// Field `f`'s value for the request `inp` and (for per-item fields)
    /// the item `item_id` with state `item`, borrowed from them.
    fn cell<'a>(
        &self,
        f: &PlanField,
        inp: &Inputs<'a>,
        item_id: &'a str,
        item: &'a EntityState,
    ) -> Cell<'a> {
        let state = |e: Entity| match e {
            Entity::Customer => inp.customer,
            Entity::Session => inp.session,
            Entity::Item => item,
        };
        match &f.slot {
            Slot::Column(c) => {
                let rows = RowInputs {
                    customer: inp.customer,
                    session: inp.session,
                    context: inp.context,
                    now: inp.now,
                    covisit: inp.covisit,
                };
                Cell::Number(self.numeric.value(inp.set, *c, &rows, item_id, item))
            }
            Slot::Text(k) => {
                let def = &inp.set.features[*k];
                let st = state(def.entity);
                Cell::Text(st.lasts.get(&def.name).map_or("", |l| l.value.as_str()))
            }
            Slot::List(k) => {
                let def = &inp.set.features[*k];
                let st = state(def.entity);
                Cell::List(st.recent.get(&def.name).map_or(&[], |l| l.as_slice()))
            }
            Slot::ItemId => Cell::Text(item_id),
            Slot::ContextText(k) => Cell::Text(inp.context.text(*k)),
        }
    }
}

impl super::fast::Fields for Plan {
    fn field(&self, ns: Namespace, name: &str) -> Option<(super::fast::Var, FieldType)> {
        self.place(ns, name)
    }
}

fn key_str(k: &Key) -> &str {
    match k {
        Key::String(s) => s.as_str(),
        _ => "",
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
