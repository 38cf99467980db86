//! The pure aggregation code: an event becomes a [`Plan`] of updates, updates
//! change an [`EntityState`], and a state read at a time gives feature values.
//!
//! Shared by the streaming consumer, the embedded store, the Redis store (whose
//! Lua script mirrors [`apply_update`] exactly), the backfill and the training
//! export. It knows nothing of Redis, Kafka or HTTP, and never reads a clock:
//! "now" is always an argument.
//!
//! Every update commutes: counts and sums add into time buckets, `last` keeps
//! the value with the greatest `(ts, seq)`, recent lists keep the `cap`
//! members with the latest times, resets win by time. Applying the same set
//! of events in any order gives the same state (up to float rounding of sums),
//! which is what lets stream and backfill agree on out-of-order histories.
//! Idempotence against redelivery comes from event-id dedupe in the stores.

use super::definition::{
    Aggregation, Entity, Factor, FeatureDef, FeatureSet, Field, BUCKETS_PER_WINDOW,
};
use crate::event::Event;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A feature's name in an [`Update`]: inline up to 24 bytes, so folding
/// millions of updates does not allocate a `String` per update.
pub type FeatureName = compact_str::CompactString;

/// One change to one entity's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Lifetime count or sum: field `f` += amount.
    Add { feature: FeatureName, amount: f64 },
    /// Windowed count or sum in bucket `bucket` (see module doc).
    AddWindowed {
        feature: FeatureName,
        bucket: i64,
        amount: f64,
    },
    /// `last`: keep the value with the greatest `(ts, seq)`.
    SetLast {
        feature: FeatureName,
        ts: i64,
        seq: i64,
        value: String,
    },
    /// `time_since_last`: keep the greatest ts.
    MaxTs { feature: FeatureName, ts: i64 },
    /// `distinct_recent`: member seen at ts; keep the `cap` latest.
    PushRecent {
        feature: FeatureName,
        member: String,
        ts: i64,
        cap: usize,
    },
    /// Resettable sum: a contribution at ts (ignored if a later reset exists).
    AddResettable {
        feature: FeatureName,
        ts: i64,
        amount: f64,
    },
    /// Resettable sum: drop contributions at or before ts.
    Reset { feature: FeatureName, ts: i64 },
    /// Static enrichment: overwrite the value (stored like a `last` at ts 0).
    SetStatic { feature: FeatureName, value: String },
}

/// Everything one event changes, grouped by store slot: the customer group
/// (customer and session state) and the item group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub event_id: String,
    pub ts: i64,
    pub customer_id: String,
    pub session_id: Option<String>,
    pub item_id: Option<String>,
    pub customer: Vec<Update>,
    pub session: Vec<Update>,
    pub item: Vec<Update>,
}

/// One change to one feature of one entity, borrowing from the event: an
/// [`Update`] without the feature's name. [`visit_event`] yields them;
/// [`plan_event`] names them. The backfill folds them without allocating.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<'e> {
    Add(f64),
    AddWindowed {
        bucket: i64,
        amount: f64,
    },
    SetLast {
        ts: i64,
        seq: i64,
        value: Text<'e>,
    },
    MaxTs(i64),
    PushRecent {
        member: Cow<'e, str>,
        ts: i64,
        cap: usize,
    },
    AddResettable {
        ts: i64,
        amount: f64,
    },
    Reset(i64),
}

impl Change<'_> {
    /// The [`Update`] of feature `feature`.
    pub fn named(self, feature: FeatureName) -> Update {
        match self {
            Change::Add(amount) => Update::Add { feature, amount },
            Change::AddWindowed { bucket, amount } => Update::AddWindowed {
                feature,
                bucket,
                amount,
            },
            Change::SetLast { ts, seq, value } => Update::SetLast {
                feature,
                ts,
                seq,
                value: value.to_cow().into_owned(),
            },
            Change::MaxTs(ts) => Update::MaxTs { feature, ts },
            Change::PushRecent { member, ts, cap } => Update::PushRecent {
                feature,
                member: member.into_owned(),
                ts,
                cap,
            },
            Change::AddResettable { ts, amount } => Update::AddResettable {
                feature,
                ts,
                amount,
            },
            Change::Reset(ts) => Update::Reset { feature, ts },
        }
    }
}

/// Calls `sink(feature index, change)` for every change an event makes,
/// according to the definitions: customer features always, session features
/// when the event has a session, item features when it has an item.
/// `customer_side` / `item_side` select which entities to visit (the
/// customer side includes the session).
pub fn visit_event<'e>(
    set: &FeatureSet,
    e: &'e Event,
    customer_side: bool,
    item_side: bool,
    sink: impl FnMut(usize, Change<'e>),
) {
    visit_event_with(set, e, &e, customer_side, item_side, sink)
}

/// [`visit_event`] reading the event's props from `props` (the same values,
/// resolved beforehand: [`PropTable`]).
pub fn visit_event_with<'e>(
    set: &FeatureSet,
    e: &'e Event,
    props: &impl Props<'e>,
    customer_side: bool,
    item_side: bool,
    mut sink: impl FnMut(usize, Change<'e>),
) {
    for &i in set.features_for(e.kind) {
        let f = &set.features[i];
        let wanted = match f.entity {
            Entity::Customer => customer_side,
            Entity::Session => customer_side && e.session_id.is_some(),
            Entity::Item => item_side && e.item_id.is_some(),
        };
        if wanted {
            if let Some(c) = change_for(f, e, props) {
                sink(i, c);
            }
        }
    }
}

/// Where [`change_for`] reads an event's props: the event's own map (the
/// stream), or a [`PropRow`] resolved once per event (the backfill's fold,
/// which visits events in group order, where every map lookup would be a
/// cache miss). Both give the same values.
pub trait Props<'e> {
    /// A numeric prop (`None` when absent or not a number).
    fn num(&self, name: &str) -> Option<f64>;
    /// A prop as text: strings as-is, numbers and booleans printed (when
    /// [`Text::to_cow`] asks).
    fn text(&self, name: &str) -> Option<Text<'e>>;
}

/// A text value of an event, printed only when needed: a `last` keeps one
/// value of many, so the backfill's fold prints only the value that wins
/// (printing every event's price was a quarter of the fold's time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Text<'e> {
    Str(&'e str),
    /// A number or boolean prop, printed as serde_json prints it.
    Json(&'e serde_json::Value),
}

impl<'e> Text<'e> {
    pub fn to_cow(self) -> Cow<'e, str> {
        match self {
            Text::Str(s) => Cow::Borrowed(s),
            Text::Json(v) => Cow::Owned(v.to_string()),
        }
    }
}

impl<'e> Props<'e> for &'e Event {
    fn num(&self, name: &str) -> Option<f64> {
        self.prop_f64(name)
    }

    fn text(&self, name: &str) -> Option<Text<'e>> {
        PropVal::of(self.props.get(name)).text()
    }
}

/// One prop of one event, resolved.
#[derive(Debug, Clone, Copy)]
enum PropVal<'e> {
    Missing,
    Str(&'e str),
    Num(f64, &'e serde_json::Value),
    Other(&'e serde_json::Value),
}

impl<'e> PropVal<'e> {
    fn of(v: Option<&'e serde_json::Value>) -> PropVal<'e> {
        match v {
            None => PropVal::Missing,
            Some(serde_json::Value::String(s)) => PropVal::Str(s),
            Some(v @ serde_json::Value::Number(n)) => match n.as_f64() {
                Some(x) => PropVal::Num(x, v),
                None => PropVal::Other(v),
            },
            Some(v) => PropVal::Other(v),
        }
    }

    fn num(self) -> Option<f64> {
        match self {
            PropVal::Num(x, _) => Some(x),
            _ => None,
        }
    }

    fn text(self) -> Option<Text<'e>> {
        match self {
            PropVal::Missing => None,
            PropVal::Str(s) => Some(Text::Str(s)),
            PropVal::Num(_, v) | PropVal::Other(v) => match v {
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(Text::Json(v)),
                _ => None,
            },
        }
    }
}

/// The props the features read ([`FeatureSet::prop_names`]), resolved for
/// many events in one pass in input order, one small row per event.
pub struct PropTable<'s, 'e> {
    names: &'s [String],
    vals: Vec<PropVal<'e>>,
    /// Built for some events only: event index → row.
    rows: Option<rustc_hash::FxHashMap<u32, u32>>,
}

impl<'s, 'e> PropTable<'s, 'e> {
    /// Resolves the props of every event, on `threads` threads.
    pub fn build(set: &'s FeatureSet, events: &'e [Event], threads: usize) -> Self {
        let names = set.prop_names();
        let w = names.len();
        let mut vals = vec![PropVal::Missing; events.len() * w];
        if w > 0 {
            let per = events.len().div_ceil(threads.max(1)).max(1);
            std::thread::scope(|s| {
                for (evs, out) in events.chunks(per).zip(vals.chunks_mut(per * w)) {
                    s.spawn(move || {
                        for (e, row) in evs.iter().zip(out.chunks_mut(w)) {
                            resolve(names, e, row);
                        }
                    });
                }
            });
        }
        PropTable {
            names,
            vals,
            rows: None,
        }
    }

    /// Resolves the props of the events `idx` only.
    pub fn build_for(set: &'s FeatureSet, events: &'e [Event], idx: &[u32]) -> Self {
        let names = set.prop_names();
        let w = names.len();
        let mut vals = vec![PropVal::Missing; idx.len() * w];
        let mut rows = rustc_hash::FxHashMap::default();
        for (r, &i) in idx.iter().enumerate() {
            resolve(names, &events[i as usize], &mut vals[r * w..(r + 1) * w]);
            rows.insert(i, r as u32);
        }
        PropTable {
            names,
            vals,
            rows: Some(rows),
        }
    }

    /// The props of event `i` (its index in the events given to `build`);
    /// with `build_for`, `i` must be one of its `idx`.
    pub fn row(&self, i: usize) -> PropRow<'_, 'e> {
        let w = self.names.len();
        let r = match &self.rows {
            None => i,
            Some(rows) => rows.get(&(i as u32)).map_or(usize::MAX, |&r| r as usize),
        };
        PropRow {
            names: self.names,
            vals: self.vals.get(r * w..(r + 1) * w).unwrap_or_default(),
        }
    }
}

/// One pass over the event's props, each matched against the few names
/// (cheaper than one map lookup per name: most compares stop at the length).
fn resolve<'e>(names: &[String], e: &'e Event, row: &mut [PropVal<'e>]) {
    for (key, v) in &e.props {
        if let Some(k) = names.iter().position(|n| n == key) {
            row[k] = PropVal::of(Some(v));
        }
    }
}

/// The resolved props of one event (see [`PropTable`]).
pub struct PropRow<'t, 'e> {
    names: &'t [String],
    vals: &'t [PropVal<'e>],
}

impl<'e> PropRow<'_, 'e> {
    fn get(&self, name: &str) -> PropVal<'e> {
        let k = self.names.iter().position(|n| n == name);
        k.and_then(|k| self.vals.get(k).copied())
            .unwrap_or(PropVal::Missing)
    }
}

impl PropRow<'_, '_> {
    /// Loads the row and the first byte of its text values (to bring them
    /// into the cache ahead of use); the value is meaningless.
    pub fn warm(&self) -> u64 {
        self.vals.iter().fold(0, |acc, v| match v {
            PropVal::Str(s) => acc.wrapping_add(s.as_bytes().first().copied().unwrap_or(0) as u64),
            PropVal::Num(x, _) => acc.wrapping_add(x.to_bits()),
            _ => acc.wrapping_add(1),
        })
    }
}

impl<'e> Props<'e> for PropRow<'_, 'e> {
    fn num(&self, name: &str) -> Option<f64> {
        self.get(name).num()
    }

    fn text(&self, name: &str) -> Option<Text<'e>> {
        self.get(name).text()
    }
}

/// Turns an event into updates according to the definitions.
pub fn plan_event(set: &FeatureSet, e: &Event) -> Plan {
    let mut plan = Plan {
        event_id: e.event_id.clone(),
        ts: e.ts,
        customer_id: e.customer_id.clone(),
        session_id: e.session_id.clone(),
        item_id: e.item_id.clone(),
        ..Plan::default()
    };
    visit_event(set, e, true, true, |i, c| {
        let f = &set.features[i];
        let target = match f.entity {
            Entity::Customer => &mut plan.customer,
            Entity::Session => &mut plan.session,
            Entity::Item => &mut plan.item,
        };
        target.push(c.named(f.name.as_str().into()));
    });
    plan
}

/// The largest contribution of one event to a sum (see `change_for`).
pub const MAX_CONTRIBUTION: f64 = 1e18;

fn change_for<'e>(f: &FeatureDef, e: &'e Event, props: &impl Props<'e>) -> Option<Change<'e>> {
    let additive = |amount: f64| match f.window {
        Some(w) => Change::AddWindowed {
            bucket: e.ts.div_euclid(w.bucket_ms()),
            amount,
        },
        None => Change::Add(amount),
    };
    match &f.aggregation {
        Aggregation::Count => f.events.contains(&e.kind).then(|| additive(1.0)),
        Aggregation::Sum {
            factors,
            signs,
            reset_on,
            prop_defaults,
        } => {
            if reset_on.contains(&e.kind) {
                return Some(Change::Reset(e.ts));
            }
            if !f.events.contains(&e.kind) {
                return None;
            }
            let mut amount = signs.get(&e.kind).copied().unwrap_or(1.0);
            for factor in factors {
                amount *= match factor {
                    Factor::Const(x) => *x,
                    Factor::Prop(p) => props.num(p).or_else(|| prop_defaults.get(p).copied())?,
                };
            }
            // an absurd contribution (a custom prop of 1e300, say) is left
            // out rather than turning the sum into inf, which Redis refuses
            if !amount.is_finite() || amount.abs() > MAX_CONTRIBUTION {
                return None;
            }
            if reset_on.is_empty() {
                Some(additive(amount))
            } else {
                Some(Change::AddResettable { ts: e.ts, amount })
            }
        }
        Aggregation::Last { field } => field_value(field, e, props).map(|value| Change::SetLast {
            ts: e.ts,
            seq: e.seq.unwrap_or(0),
            value,
        }),
        Aggregation::DistinctRecent { field, cap } => {
            field_value(field, e, props).map(|member| Change::PushRecent {
                member: member.to_cow(),
                ts: e.ts,
                cap: *cap,
            })
        }
        Aggregation::TimeSinceLast => Some(Change::MaxTs(e.ts)),
        // never listed for an event type (a static feature has no `events`)
        Aggregation::Static { .. } => None,
    }
}

fn field_value<'e>(field: &Field, e: &'e Event, props: &impl Props<'e>) -> Option<Text<'e>> {
    match field {
        Field::ItemId => e.item_id.as_deref().map(Text::Str),
        Field::SessionId => e.session_id.as_deref().map(Text::Str),
        Field::Prop(p) => props.text(p),
    }
}

/// A resettable sum: contributions after the latest reset, by event time.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resettable {
    pub reset_ts: i64,
    pub parts: BTreeMap<i64, f64>,
}

/// A windowed count or sum: time buckets and the newest bucket seen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windowed {
    pub max: i64,
    pub buckets: BTreeMap<i64, f64>,
}

/// A `last` value with the `(ts, seq)` that set it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LastValue {
    pub ts: i64,
    pub seq: i64,
    pub value: String,
}

/// The stored state of one entity, in the same shape as its Redis keys
/// (feature-store/README.md): the main hash holds `nums`, `windows` and
/// `lasts`; recent lists are sorted sets; resettable sums are hashes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityState {
    /// Lifetime counts and sums; the max ts of `time_since_last`.
    pub nums: BTreeMap<String, f64>,
    pub windows: BTreeMap<String, Windowed>,
    pub lasts: BTreeMap<String, LastValue>,
    /// `distinct_recent` members with their latest ts, newest first.
    pub recent: BTreeMap<String, Vec<(String, i64)>>,
    pub resettable: BTreeMap<String, Resettable>,
}

impl EntityState {
    pub fn is_empty(&self) -> bool {
        self.nums.is_empty()
            && self.windows.is_empty()
            && self.lasts.is_empty()
            && self.recent.is_empty()
            && self.resettable.is_empty()
    }
}

/// Whether a `last` value `(ts, seq, value)` replaces the current one: the
/// greater `(ts, seq)`, and on a tie the greater value (by bytes), so the
/// outcome does not depend on the order updates arrive in. `apply.lua`
/// implements the same rule.
pub fn last_wins(new: (i64, i64, &str), cur: (i64, i64, &str)) -> bool {
    (new.0, new.1) > (cur.0, cur.1)
        || ((new.0, new.1) == (cur.0, cur.1) && new.2.as_bytes() > cur.2.as_bytes())
}

/// [`last_wins`] for [`Text`] values, printed only on a `(ts, seq)` tie
/// (otherwise the value does not matter).
pub fn last_text_wins(new: (i64, i64, Text<'_>), cur: (i64, i64, Text<'_>)) -> bool {
    if (new.0, new.1) != (cur.0, cur.1) {
        return last_wins((new.0, new.1, ""), (cur.0, cur.1, ""));
    }
    last_wins(
        (new.0, new.1, &new.2.to_cow()),
        (cur.0, cur.1, &cur.2.to_cow()),
    )
}

/// Orders a recent list as Redis orders the sorted set: by score, then
/// member bytes, newest first (also the backfill fold's order).
pub fn sort_newest_first<M: AsRef<str>>(list: &mut [(M, i64)]) {
    list.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| b.0.as_ref().as_bytes().cmp(a.0.as_ref().as_bytes()))
    });
}

/// Applies one update. This is the reference semantics; the Redis Lua script
/// in `store/apply.lua` does exactly the same.
pub fn apply_update(state: &mut EntityState, u: &Update) {
    match u {
        Update::Add { feature, amount } => {
            *state.nums.entry(feature.to_string()).or_insert(0.0) += amount;
        }
        Update::AddWindowed {
            feature,
            bucket,
            amount,
        } => {
            let b = *bucket;
            let w = match state.windows.get_mut(feature.as_str()) {
                Some(w) => w,
                None => state
                    .windows
                    .entry(feature.to_string())
                    .or_insert(Windowed {
                        max: b,
                        buckets: BTreeMap::new(),
                    }),
            };
            if b <= w.max - BUCKETS_PER_WINDOW {
                return;
            }
            if b > w.max {
                let cut = b - BUCKETS_PER_WINDOW;
                w.buckets.retain(|i, _| *i > cut);
                w.max = b;
            }
            *w.buckets.entry(b).or_insert(0.0) += amount;
        }
        Update::SetLast {
            feature,
            ts,
            seq,
            value,
        } => {
            let newer = state
                .lasts
                .get(feature.as_str())
                .is_none_or(|cur| last_wins((*ts, *seq, value), (cur.ts, cur.seq, &cur.value)));
            if newer {
                state.lasts.insert(
                    feature.to_string(),
                    LastValue {
                        ts: *ts,
                        seq: *seq,
                        value: value.clone(),
                    },
                );
            }
        }
        Update::MaxTs { feature, ts } => {
            let cur = state.nums.entry(feature.to_string()).or_insert(*ts as f64);
            if (*ts as f64) > *cur {
                *cur = *ts as f64;
            }
        }
        Update::PushRecent {
            feature,
            member,
            ts,
            cap,
        } => {
            let list = state.recent.entry(feature.to_string()).or_default();
            match list.iter_mut().find(|(m, _)| m == member) {
                Some(entry) => entry.1 = entry.1.max(*ts),
                None => list.push((member.clone(), *ts)),
            }
            sort_newest_first(list);
            list.truncate(*cap);
        }
        Update::AddResettable {
            feature,
            ts,
            amount,
        } => {
            let r = state.resettable.entry(feature.to_string()).or_default();
            if *ts > r.reset_ts {
                *r.parts.entry(*ts).or_insert(0.0) += amount;
            }
        }
        Update::Reset { feature, ts } => {
            let r = state.resettable.entry(feature.to_string()).or_default();
            if *ts > r.reset_ts {
                r.reset_ts = *ts;
                r.parts.retain(|t, _| *t > *ts);
            }
        }
        Update::SetStatic { feature, value } => {
            state.lasts.insert(
                feature.to_string(),
                LastValue {
                    ts: 0,
                    seq: 0,
                    value: value.clone(),
                },
            );
        }
    }
}

/// A feature's value as read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Num(f64),
    Text(String),
    List(Vec<String>),
    Missing,
}

impl FeatureValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Num(x) => Some(*x),
            FeatureValue::Text(t) => t.parse().ok(),
            _ => None,
        }
    }
}

/// The value of one stored feature of an entity at time `now` (ms).
pub fn feature_value(f: &FeatureDef, state: &EntityState, now: i64) -> FeatureValue {
    match numeric_value(f, state, now) {
        Some(x) => FeatureValue::Num(x),
        None => match &f.aggregation {
            Aggregation::Last { .. } | Aggregation::Static { .. } => state
                .lasts
                .get(&f.name)
                .map(|l| FeatureValue::Text(l.value.clone()))
                .unwrap_or(FeatureValue::Missing),
            Aggregation::DistinctRecent { .. } => FeatureValue::List(
                state
                    .recent
                    .get(&f.name)
                    .map(|l| l.iter().map(|(m, _)| m.clone()).collect())
                    .unwrap_or_default(),
            ),
            _ => FeatureValue::Missing,
        },
    }
}

/// Sums are rounded to this many decimal places when read, so that float
/// drift from adding and removing the same amounts (in any order) reads as
/// exactly zero, and stores agree on the last digit.
const SUM_DECIMALS: f64 = 1e6;

fn round_sum(x: f64) -> f64 {
    let r = (x * SUM_DECIMALS).round() / SUM_DECIMALS;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// The numeric value of a numeric feature at `now` without allocating;
/// `None` for text and list features.
pub fn numeric_value(f: &FeatureDef, state: &EntityState, now: i64) -> Option<f64> {
    match &f.aggregation {
        Aggregation::Count | Aggregation::Sum { .. } => {
            if let Some(r) = state.resettable.get(&f.name) {
                return Some(round_sum(r.parts.values().fold(0.0, |a, x| a + x)));
            }
            Some(match f.window {
                None => state
                    .nums
                    .get(&f.name)
                    .map(|x| round_sum(*x))
                    .unwrap_or(f.default),
                Some(w) => match state.windows.get(&f.name) {
                    None => f.default,
                    Some(win) => {
                        let nb = now.div_euclid(w.bucket_ms());
                        round_sum(
                            win.buckets
                                .range((nb - BUCKETS_PER_WINDOW + 1)..=nb)
                                .fold(0.0, |a, (_, x)| a + x),
                        )
                    }
                },
            })
        }
        Aggregation::Last { .. } | Aggregation::Static { .. } if f.is_numeric() => Some(
            state
                .lasts
                .get(&f.name)
                .and_then(|l| l.value.parse().ok())
                .unwrap_or(f.default),
        ),
        Aggregation::TimeSinceLast => Some(match state.nums.get(&f.name) {
            Some(ts) => ((now as f64 - ts) / 1000.0).max(0.0),
            None => f.default,
        }),
        Aggregation::Last { .. }
        | Aggregation::Static { .. }
        | Aggregation::DistinctRecent { .. } => None,
    }
}

/// All stored features of one entity at `now`, by feature name.
pub fn entity_values(
    set: &FeatureSet,
    entity: Entity,
    state: &EntityState,
    now: i64,
) -> BTreeMap<String, FeatureValue> {
    set.of_entity(entity)
        .map(|f| (f.name.clone(), feature_value(f, state, now)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use serde_json::json;

    fn set() -> FeatureSet {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        FeatureSet::load(&path).expect("shipped definitions load")
    }

    fn ev(id: &str, kind: &str, ts: i64, item: Option<&str>, props: serde_json::Value) -> Event {
        let mut v = json!({"event_id": id, "type": kind, "customer_id": "c1", "ts": ts, "session_id": "s1", "props": props});
        if let Some(i) = item {
            v["item_id"] = json!(i);
        }
        Event::from_value(v).expect("test event is valid")
    }

    fn apply_all(set: &FeatureSet, events: &[Event]) -> (EntityState, EntityState) {
        let mut c = EntityState::default();
        let mut i = EntityState::default();
        for e in events {
            let p = plan_event(set, e);
            p.customer.iter().for_each(|u| apply_update(&mut c, u));
            p.item.iter().for_each(|u| apply_update(&mut i, u));
        }
        (c, i)
    }

    const T0: i64 = 1_764_355_200_000;

    #[test]
    fn absurd_contributions_never_reach_a_sum() {
        let set = FeatureSet::parse(
            r#"
[[feature]]
name = "spent"
entity = "customer"
events = ["purchase"]
aggregation = "sum"
value = "props.amount"
"#,
        )
        .expect("definitions parse");
        let spent = |amount: f64| {
            plan_event(
                &set,
                &ev("e", "purchase", T0, Some("p1"), json!({"amount": amount})),
            )
            .customer
        };
        assert_eq!(spent(5.0).len(), 1);
        assert!(spent(1e300).is_empty(), "1e300 would make the sum inf");
        // known numeric props are bounded at the door
        let too_big = json!({"event_id": "e", "type": "purchase", "customer_id": "c1", "ts": T0,
            "item_id": "p1", "props": {"price": 1e13}});
        let err = Event::from_value(too_big).expect_err("price above 1e12 is refused");
        assert!(err.to_string().contains("props.price"), "{err}");
    }

    fn history() -> Vec<Event> {
        vec![
            ev(
                "1",
                "page_view",
                T0,
                Some("p1"),
                json!({"category":"shoes","price":10.0}),
            ),
            ev(
                "2",
                "add_to_cart",
                T0 + 1000,
                Some("p1"),
                json!({"category":"shoes","price":10.0,"quantity":2}),
            ),
            ev(
                "3",
                "add_to_cart",
                T0 + 2000,
                Some("p2"),
                json!({"category":"hats","price":5.0}),
            ),
            ev(
                "4",
                "purchase",
                T0 + 3000,
                Some("p1"),
                json!({"price":10.0,"quantity":2}),
            ),
            ev(
                "5",
                "add_to_cart",
                T0 + 4000,
                Some("p3"),
                json!({"category":"bags","price":7.5}),
            ),
            ev(
                "6",
                "page_view",
                T0 - 2 * 3_600_000,
                Some("p9"),
                json!({"category":"old"}),
            ),
        ]
    }

    #[test]
    fn values_follow_the_definitions() {
        let set = set();
        let (c, _) = apply_all(&set, &history());
        let now = T0 + 5000;
        let v = entity_values(&set, Entity::Customer, &c, now);
        assert_eq!(v["views_1h"], FeatureValue::Num(1.0));
        assert_eq!(v["views_24h"], FeatureValue::Num(2.0));
        assert_eq!(v["carts_1h"], FeatureValue::Num(3.0));
        // purchase at T0+3000 resets the cart; only p3 (7.5) remains.
        assert_eq!(v["cart_value"], FeatureValue::Num(7.5));
        assert_eq!(v["cart_items"], FeatureValue::Num(1.0));
        assert_eq!(v["since_last_cart_s"], FeatureValue::Num(1.0));
        assert_eq!(
            v["recent_items"],
            FeatureValue::List(vec!["p3".into(), "p2".into(), "p1".into(), "p9".into()])
        );
        // two hours later the 1h window no longer holds the events
        let later = entity_values(&set, Entity::Customer, &c, T0 + 2 * 3_600_000);
        assert_eq!(later["carts_1h"], FeatureValue::Num(0.0));
        assert_eq!(later["carts_24h"], FeatureValue::Num(3.0));
    }

    #[test]
    fn order_does_not_matter() {
        let set = set();
        let h = history();
        let (c1, i1) = apply_all(&set, &h);
        let mut rev = h.clone();
        rev.reverse();
        let (c2, i2) = apply_all(&set, &rev);
        assert_eq!(c1, c2);
        assert_eq!(i1, i2);
    }
}
