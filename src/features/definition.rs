//! Feature definitions: `feature-store/features.toml` parsed and checked
//! into typed [`FeatureSet`] values.
//!
//! This is the boundary for the definitions file: every problem is reported
//! with the feature's name and what is wrong, and nothing downstream
//! re-validates. It knows nothing of Redis, Kafka or HTTP.

use crate::event::EventType;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Errors loading or checking the feature definitions.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read feature definitions {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("feature definitions {path}: {message}")]
    Parse { path: String, message: String },
    #[error("feature `{feature}`: {message}")]
    Invalid { feature: String, message: String },
}

/// The entity a stored feature belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Customer,
    Item,
    /// A session, stored under its customer (same Redis slot).
    Session,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Customer => "customer",
            Entity::Item => "item",
            Entity::Session => "session",
        }
    }
}

/// A factor of a `sum` value: a prop or a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Factor {
    Prop(String),
    Const(f64),
}

/// Where a `last` / `distinct_recent` value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    ItemId,
    SessionId,
    Prop(String),
}

/// How a feature aggregates its events.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregation {
    Count,
    Sum {
        factors: Vec<Factor>,
        /// Sign per event type (absent → +1).
        signs: HashMap<EventType, f64>,
        /// Event types that reset the sum; a resettable sum keeps only the
        /// contributions later than the latest reset.
        reset_on: Vec<EventType>,
        prop_defaults: HashMap<String, f64>,
    },
    Last {
        field: Field,
    },
    DistinctRecent {
        field: Field,
        cap: usize,
    },
    TimeSinceLast,
    /// Static enrichment (item catalog, customer profile): set from the
    /// column `column` by `nextbest backfill --items/--customers` and by
    /// catalog updates while serving (`features::catalog`), never by events;
    /// each write overwrites the previous value.
    Static {
        column: String,
        numeric: bool,
    },
}

/// A sliding window, kept as [`BUCKETS_PER_WINDOW`] time buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub ms: i64,
}

/// Windowed counts and sums keep this many buckets; the window slides in
/// steps of `window / BUCKETS_PER_WINDOW`.
pub const BUCKETS_PER_WINDOW: i64 = 12;

impl Window {
    /// Width of one bucket in ms.
    pub fn bucket_ms(self) -> i64 {
        self.ms / BUCKETS_PER_WINDOW
    }

    fn parse(s: &str) -> Option<Option<Window>> {
        let ms = match s {
            "lifetime" => return Some(None),
            "5m" => 5 * 60_000,
            "15m" => 15 * 60_000,
            "30m" => 30 * 60_000,
            "1h" => 3_600_000,
            "6h" => 6 * 3_600_000,
            "24h" | "1d" => 24 * 3_600_000,
            "7d" => 7 * 24 * 3_600_000,
            "30d" => 30 * 24 * 3_600_000,
            _ => return None,
        };
        Some(Some(Window { ms }))
    }
}

/// One stored feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDef {
    pub name: String,
    pub entity: Entity,
    pub events: Vec<EventType>,
    pub aggregation: Aggregation,
    pub window: Option<Window>,
    pub default: f64,
}

impl FeatureDef {
    /// `<entity>.<name>`, the name models use.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.entity.as_str(), self.name)
    }

    /// Whether the feature's value is a number (usable as a model input).
    pub fn is_numeric(&self) -> bool {
        match &self.aggregation {
            Aggregation::Count | Aggregation::Sum { .. } | Aggregation::TimeSinceLast => true,
            Aggregation::Last { field } => {
                matches!(field, Field::Prop(p) if NUMERIC_PROPS.contains(&p.as_str()))
            }
            Aggregation::DistinctRecent { .. } => false,
            Aggregation::Static { numeric, .. } => *numeric,
        }
    }

    /// Whether this feature is updated by event type `t`.
    pub fn listens_to(&self, t: EventType) -> bool {
        self.events.contains(&t)
            || matches!(&self.aggregation, Aggregation::Sum { reset_on, .. } if reset_on.contains(&t))
    }
}

/// Props known to be numbers (a `last` of one of these is numeric).
const NUMERIC_PROPS: [&str; 3] = ["price", "quantity", "dwell_ms"];

/// A feature computed at read time from stored ones.
#[derive(Debug, Clone, PartialEq)]
pub enum DerivedKind {
    /// `(numerator + prior * prior_weight) / (denominator + prior_weight)`.
    Ratio {
        numerator: String,
        denominator: String,
        prior: f64,
        prior_weight: f64,
    },
    /// 1 when the value of `value` (a text feature, or `item.id`) is in `list`.
    Contains { list: String, value: String },
    /// The value's position in `list` (1 = the newest), `absent` when not in it.
    Rank {
        list: String,
        value: String,
        absent: f64,
    },
    /// Seconds since the value was last added to `list` (its latest ts there),
    /// `absent` when not in it.
    Age {
        list: String,
        value: String,
        absent: f64,
    },
    /// How strongly other shoppers' co-visits tie the item to the
    /// customer's latest items (`features::covisit_score`), 0 when not
    /// among their neighbours.
    CoVisit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DerivedDef {
    /// Qualified name, e.g. `item.conversion_7d`, `cross.viewed_recently`.
    pub name: String,
    pub kind: DerivedKind,
}

/// A value read from the request's `context`: a number (booleans count as
/// 0/1; models and rules use it) or text (`type = "text"`; rules only).
#[derive(Debug, Clone, PartialEq)]
pub struct ContextDef {
    pub name: String,
    pub default: f64,
    pub numeric: bool,
}

/// All definitions, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    pub features: Vec<FeatureDef>,
    pub derived: Vec<DerivedDef>,
    pub context: Vec<ContextDef>,
    /// For each event type, the indices of the features it updates.
    by_type: BTreeMap<EventType, Vec<usize>>,
    /// Every prop a feature reads, each once (see `backfill::props::PropTable`).
    prop_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    feature: Vec<RawFeature>,
    #[serde(default)]
    derived: Vec<RawDerived>,
    #[serde(default)]
    context: Vec<RawContext>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    entity: Entity,
    #[serde(default)]
    events: Vec<String>,
    aggregation: String,
    window: Option<String>,
    value: Option<String>,
    #[serde(default)]
    signs: HashMap<String, f64>,
    #[serde(default)]
    reset_on: Vec<String>,
    #[serde(default)]
    prop_defaults: HashMap<String, f64>,
    cap: Option<usize>,
    default: Option<f64>,
    /// static: the file column holding the value (default: the name).
    column: Option<String>,
    /// static: `number` or `text`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDerived {
    name: String,
    kind: String,
    numerator: Option<String>,
    denominator: Option<String>,
    prior: Option<f64>,
    prior_weight: Option<f64>,
    list: Option<String>,
    value: Option<String>,
    /// `rank` / `age`: the value when not in the list.
    default: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    name: String,
    #[serde(default)]
    default: f64,
    /// `number` (default) or `text`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Aggregation {
    /// The names of the event props this aggregation reads.
    pub fn props(&self) -> Vec<&str> {
        match self {
            Aggregation::Sum { factors, .. } => factors
                .iter()
                .filter_map(|f| match f {
                    Factor::Prop(p) => Some(p.as_str()),
                    Factor::Const(_) => None,
                })
                .collect(),
            Aggregation::Last {
                field: Field::Prop(p),
            }
            | Aggregation::DistinctRecent {
                field: Field::Prop(p),
                ..
            } => vec![p.as_str()],
            _ => Vec::new(),
        }
    }
}

impl FeatureSet {
    /// Every prop a feature reads, each once.
    pub fn prop_names(&self) -> &[String] {
        &self.prop_names
    }

    /// Reads and checks a definitions file.
    pub fn load(path: &Path) -> Result<FeatureSet, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.display().to_string(),
            source,
        })?;
        FeatureSet::parse(&text).map_err(|e| match e {
            DefinitionError::Parse { message, .. } => DefinitionError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks definitions from TOML text.
    pub fn parse(text: &str) -> Result<FeatureSet, DefinitionError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| DefinitionError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        let mut features = Vec::with_capacity(raw.feature.len());
        let mut seen = std::collections::HashSet::new();
        for f in raw.feature {
            let def = check_feature(f)?;
            if !seen.insert(def.qualified()) {
                return Err(invalid(&def.qualified(), "is defined twice"));
            }
            features.push(def);
        }
        let mut prop_names: Vec<String> = Vec::new();
        for f in &features {
            for name in f.aggregation.props() {
                if !prop_names.iter().any(|n| n == name) {
                    prop_names.push(name.to_string());
                }
            }
        }
        let mut set = FeatureSet {
            features,
            derived: Vec::new(),
            context: Vec::new(),
            by_type: BTreeMap::new(),
            prop_names,
        };
        for c in raw.context {
            let q = format!("context.{}", c.name);
            if !valid_name(&c.name) || !seen.insert(q.clone()) {
                return Err(invalid(&q, "has an invalid or duplicate name"));
            }
            let numeric = match c.kind.as_deref() {
                None | Some("number") => true,
                Some("text") => false,
                Some(other) => {
                    return Err(invalid(
                        &q,
                        format!("has type `{other}`; use `number` or `text`"),
                    ))
                }
            };
            set.context.push(ContextDef {
                name: c.name,
                default: c.default,
                numeric,
            });
        }
        for d in raw.derived {
            let def = set.check_derived(d)?;
            if !seen.insert(def.name.clone()) {
                return Err(invalid(&def.name, "is defined twice"));
            }
            set.derived.push(def);
        }
        for (i, f) in set.features.iter().enumerate() {
            for t in EventType::ALL {
                if f.listens_to(t) {
                    set.by_type.entry(t).or_default().push(i);
                }
            }
        }
        Ok(set)
    }

    /// Indices of the features event type `t` updates.
    pub fn features_for(&self, t: EventType) -> &[usize] {
        self.by_type.get(&t).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Stored features of one entity.
    pub fn of_entity(&self, e: Entity) -> impl Iterator<Item = &FeatureDef> {
        self.features.iter().filter(move |f| f.entity == e)
    }

    /// A stored feature by qualified name.
    pub fn stored(&self, qualified: &str) -> Option<&FeatureDef> {
        let (entity, name) = qualified.split_once('.')?;
        self.features
            .iter()
            .find(|f| f.entity.as_str() == entity && f.name == name)
    }

    /// Every numeric feature name a model may use, in a stable order:
    /// stored numeric features, derived features, then context features.
    pub fn numeric_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .features
            .iter()
            .filter(|f| f.is_numeric())
            .map(FeatureDef::qualified)
            .collect();
        out.extend(self.derived.iter().map(|d| d.name.clone()));
        out.extend(
            self.context
                .iter()
                .filter(|c| c.numeric)
                .map(|c| format!("context.{}", c.name)),
        );
        out
    }

    /// Whether `name` is a numeric feature a model may use.
    pub fn is_known_numeric(&self, name: &str) -> bool {
        if let Some(f) = self.stored(name) {
            return f.is_numeric();
        }
        if let Some(rest) = name.strip_prefix("context.") {
            return self.context.iter().any(|c| c.name == rest && c.numeric);
        }
        self.derived.iter().any(|d| d.name == name)
    }

    /// Static features of an entity (loaded from catalog/profile files).
    pub fn statics(&self, e: Entity) -> impl Iterator<Item = &FeatureDef> {
        self.of_entity(e)
            .filter(|f| matches!(f.aggregation, Aggregation::Static { .. }))
    }

    /// Whether this set has any feature needing a resettable-sum key.
    pub fn has_resettable(&self, e: Entity) -> bool {
        self.of_entity(e).any(is_resettable)
    }

    fn check_derived(&self, d: RawDerived) -> Result<DerivedDef, DefinitionError> {
        let name = d.name.clone();
        let Some((prefix, rest)) = name.split_once('.') else {
            return Err(invalid(
                &name,
                "must be qualified, e.g. `item.conversion_7d`",
            ));
        };
        if !matches!(prefix, "customer" | "item" | "session" | "cross") || !valid_name(rest) {
            return Err(invalid(
                &name,
                "must start with customer., item., session. or cross. followed by a name",
            ));
        }
        let kind = match d.kind.as_str() {
            "ratio" => {
                let numerator = d
                    .numerator
                    .ok_or_else(|| invalid(&name, "ratio needs `numerator`"))?;
                let denominator = d
                    .denominator
                    .ok_or_else(|| invalid(&name, "ratio needs `denominator`"))?;
                for f in [&numerator, &denominator] {
                    match self.stored(f) {
                        Some(def) if def.is_numeric() => {}
                        _ => {
                            return Err(invalid(
                                &name,
                                format!("`{f}` is not a numeric stored feature"),
                            ))
                        }
                    }
                }
                DerivedKind::Ratio {
                    numerator,
                    denominator,
                    prior: d.prior.unwrap_or(0.0),
                    prior_weight: d.prior_weight.unwrap_or(1.0).max(0.0),
                }
            }
            "contains" | "rank" | "age" => {
                let kind = d.kind.as_str();
                let list = d
                    .list
                    .ok_or_else(|| invalid(&name, format!("{kind} needs `list`")))?;
                let value = d
                    .value
                    .ok_or_else(|| invalid(&name, format!("{kind} needs `value`")))?;
                match self.stored(&list) {
                    Some(def) if matches!(def.aggregation, Aggregation::DistinctRecent { .. }) => {}
                    _ => {
                        return Err(invalid(
                            &name,
                            format!("`{list}` is not a distinct_recent feature"),
                        ))
                    }
                }
                if value != "item.id" && self.stored(&value).is_none() {
                    return Err(invalid(
                        &name,
                        format!("`{value}` is neither `item.id` nor a stored feature"),
                    ));
                }
                match kind {
                    "contains" if d.default.is_some() => {
                        return Err(invalid(&name, "contains takes no `default` (it is 0 or 1)"))
                    }
                    "contains" => DerivedKind::Contains { list, value },
                    "rank" => DerivedKind::Rank {
                        list,
                        value,
                        absent: d.default.unwrap_or(0.0),
                    },
                    _ => DerivedKind::Age {
                        list,
                        value,
                        absent: d.default.unwrap_or(1_000_000.0),
                    },
                }
            }
            "covisit" => {
                if prefix != "cross" {
                    return Err(invalid(&name, "covisit is a cross. feature"));
                }
                if d.list.is_some() || d.value.is_some() || d.default.is_some() {
                    return Err(invalid(
                        &name,
                        "covisit takes no `list`, `value` or `default` (it reads the customer's latest items' neighbours; 0 when not among them)",
                    ));
                }
                DerivedKind::CoVisit
            }
            other => {
                return Err(invalid(
                    &name,
                    format!("unknown derived kind `{other}` (ratio, contains, rank, age, covisit)"),
                ))
            }
        };
        Ok(DerivedDef { name, kind })
    }
}

/// Whether a feature is a sum with `reset_on` (kept in its own store key).
pub fn is_resettable(f: &FeatureDef) -> bool {
    matches!(&f.aggregation, Aggregation::Sum { reset_on, .. } if !reset_on.is_empty())
}

fn invalid(feature: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid {
        feature: feature.to_string(),
        message: message.into(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_types(
    feature: &str,
    what: &str,
    names: &[String],
) -> Result<Vec<EventType>, DefinitionError> {
    names
        .iter()
        .map(|n| {
            EventType::parse(n)
                .ok_or_else(|| invalid(feature, format!("{what}: `{n}` is not an event type")))
        })
        .collect()
}

fn parse_field(feature: &str, s: &str) -> Result<Field, DefinitionError> {
    match s {
        "item_id" => Ok(Field::ItemId),
        "session_id" => Ok(Field::SessionId),
        _ => match s.strip_prefix("props.") {
            Some(p) if !p.is_empty() => Ok(Field::Prop(p.to_string())),
            _ => Err(invalid(
                feature,
                format!("value `{s}` must be `item_id`, `session_id` or `props.<name>`"),
            )),
        },
    }
}

fn check_feature(f: RawFeature) -> Result<FeatureDef, DefinitionError> {
    let q = format!("{}.{}", f.entity.as_str(), f.name);
    if !valid_name(&f.name) {
        return Err(invalid(
            &q,
            "name must be lowercase letters, digits and `_`",
        ));
    }
    let events = parse_types(&q, "events", &f.events)?;
    let is_static = f.aggregation == "static";
    if is_static {
        if !f.events.is_empty() || f.window.is_some() || f.entity == Entity::Session {
            return Err(invalid(
                &q,
                "a static feature belongs to `customer` or `item` and takes no `events` or `window`",
            ));
        }
    } else if events.is_empty() {
        return Err(invalid(&q, "`events` must list at least one event type"));
    }
    if !is_static && (f.column.is_some() || f.kind.is_some()) {
        return Err(invalid(
            &q,
            "`column` and `type` are for static features only",
        ));
    }
    let window = match f.window.as_deref() {
        None => None,
        Some(w) => Window::parse(w).ok_or_else(|| {
            invalid(
                &q,
                format!("window `{w}` is not one of 5m, 15m, 30m, 1h, 6h, 24h, 7d, 30d, lifetime"),
            )
        })?,
    };
    let aggregation = match f.aggregation.as_str() {
        "count" => Aggregation::Count,
        "sum" => {
            let expr = f.value.as_deref().ok_or_else(|| invalid(&q, "sum needs `value`"))?;
            let factors = expr
                .split('*')
                .map(|t| {
                    let t = t.trim();
                    let t = t.strip_prefix("props.").unwrap_or(t);
                    if let Ok(x) = t.parse::<f64>() {
                        Ok(Factor::Const(x))
                    } else if valid_name(t) {
                        Ok(Factor::Prop(t.to_string()))
                    } else {
                        Err(invalid(
                            &q,
                            format!("`{t}` in value `{expr}` is neither a prop name nor a number"),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut signs = HashMap::new();
            for (t, s) in &f.signs {
                let et =
                    EventType::parse(t).ok_or_else(|| invalid(&q, format!("signs: `{t}` is not an event type")))?;
                signs.insert(et, *s);
            }
            let reset_on = parse_types(&q, "reset_on", &f.reset_on)?;
            if !reset_on.is_empty() && window.is_some() {
                return Err(invalid(&q, "a sum with `reset_on` cannot also have a window"));
            }
            Aggregation::Sum {
                factors,
                signs,
                reset_on,
                prop_defaults: f.prop_defaults.clone(),
            }
        }
        "last" => Aggregation::Last {
            field: parse_field(&q, f.value.as_deref().ok_or_else(|| invalid(&q, "last needs `value`"))?)?,
        },
        "distinct_recent" => Aggregation::DistinctRecent {
            field: parse_field(
                &q,
                f.value
                    .as_deref()
                    .ok_or_else(|| invalid(&q, "distinct_recent needs `value`"))?,
            )?,
            cap: match f.cap {
                Some(c) if (1..=1000).contains(&c) => c,
                _ => return Err(invalid(&q, "distinct_recent needs `cap` between 1 and 1000")),
            },
        },
        "time_since_last" => Aggregation::TimeSinceLast,
        "static" => Aggregation::Static {
            column: f.column.clone().unwrap_or_else(|| f.name.clone()),
            numeric: match f.kind.as_deref() {
                Some("number") => true,
                Some("text") => false,
                other => {
                    return Err(invalid(
                        &q,
                        format!("static needs `type` = \"number\" or \"text\", got {other:?}"),
                    ))
                }
            },
        },
        other => {
            return Err(invalid(
                &q,
                format!("unknown aggregation `{other}` (count, sum, last, distinct_recent, time_since_last, static)"),
            ))
        }
    };
    if window.is_some() && !matches!(aggregation, Aggregation::Count | Aggregation::Sum { .. }) {
        return Err(invalid(&q, "only count and sum take a window"));
    }
    Ok(FeatureDef {
        name: f.name,
        entity: f.entity,
        events,
        aggregation,
        window,
        default: f.default.unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definitions_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped features.toml is valid");
        assert!(set.features.len() > 20);
        assert!(set.is_known_numeric("customer.views_1h"));
        assert!(set.is_known_numeric("item.conversion_7d"));
        assert!(set.is_known_numeric("context.is_mobile"));
        assert!(!set.is_known_numeric("customer.recent_items"));
        assert!(!set.is_known_numeric("customer.nope"));
        assert!(set.is_known_numeric("cross.covisit_score"));
    }

    #[test]
    fn covisit_is_a_cross_feature_without_parameters() {
        let ok = "[[derived]]\nname = 'cross.cv'\nkind = 'covisit'\n";
        let set = FeatureSet::parse(ok).expect("covisit needs nothing else");
        assert_eq!(set.derived[0].kind, DerivedKind::CoVisit);
        let err = FeatureSet::parse("[[derived]]\nname = 'item.cv'\nkind = 'covisit'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("item.cv") && err.contains("cross."), "{err}");
        let err =
            FeatureSet::parse("[[derived]]\nname = 'cross.cv'\nkind = 'covisit'\ndefault = 1\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("takes no"), "{err}");
    }

    #[test]
    fn errors_name_the_feature() {
        let bad = r#"
            [[feature]]
            name = "x"
            entity = "customer"
            events = ["page_view"]
            aggregation = "count"
            window = "3 weeks"
        "#;
        let err = FeatureSet::parse(bad).unwrap_err().to_string();
        assert!(
            err.contains("customer.x") && err.contains("3 weeks"),
            "{err}"
        );

        let bad = r#"
            [[feature]]
            name = "x"
            entity = "customer"
            events = ["teleport"]
            aggregation = "count"
        "#;
        let err = FeatureSet::parse(bad).unwrap_err().to_string();
        assert!(err.contains("teleport"), "{err}");

        let bad = "[[feature]]\nname='x'\nentity='customer'\nevents=['click']\naggregation='count'\nbogus=1\n";
        assert!(FeatureSet::parse(bad)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }
}
