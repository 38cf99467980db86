//! Event → updates: [`plan_event`] turns an event into a [`Plan`] of
//! [`Update`]s according to the feature definitions; [`visit_event_with`]
//! yields the same changes unnamed and borrowed ([`Change`]) for the
//! backfill's fold, reading props through [`Props`] (the event's map, or
//! values resolved beforehand). Pure: no store, no clock.

use crate::event::Event;
use crate::features::definition::{Aggregation, Entity, Factor, FeatureDef, FeatureSet, Field};
use std::borrow::Cow;

/// A feature's name in an [`Update`]: inline up to 24 bytes, so folding
/// millions of updates does not allocate a `String` per update.
pub type FeatureName = compact_str::CompactString;

/// One change to one entity's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Lifetime count or sum: field `f` += amount.
    Add { feature: FeatureName, amount: f64 },
    /// Windowed count or sum in bucket `bucket` of width `bucket_ms` (the
    /// window's; [`apply_update`](super::apply_update) prunes relative to
    /// "now" with it).
    AddWindowed {
        feature: FeatureName,
        bucket: i64,
        bucket_ms: i64,
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
    /// Changes to the customer's trigger timers, written with the customer
    /// group's updates (not features: `plan_event` leaves it empty; the
    /// triggers add them, see `features::store::timers`).
    pub timers: Vec<crate::features::store::timers::TimerOp>,
}

/// One change to one feature of one entity, borrowing from the event: an
/// [`Update`] without the feature's name. [`visit_event`] yields them;
/// [`plan_event`] names them. The backfill folds them without allocating.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<'e> {
    Add(f64),
    AddWindowed {
        bucket: i64,
        bucket_ms: i64,
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
            Change::AddWindowed {
                bucket,
                bucket_ms,
                amount,
            } => Update::AddWindowed {
                feature,
                bucket,
                bucket_ms,
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
/// resolved beforehand: the backfill's `PropTable`).
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
/// stream), or a `PropRow` resolved once per event (the backfill's fold,
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

/// One prop of one event, resolved (also the cells of the backfill's
/// `PropTable`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PropVal<'e> {
    Missing,
    Str(&'e str),
    Num(f64, &'e serde_json::Value),
    Other(&'e serde_json::Value),
}

impl<'e> PropVal<'e> {
    #[inline]
    pub(crate) fn of(v: Option<&'e serde_json::Value>) -> PropVal<'e> {
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

    #[inline]
    pub(crate) fn num(self) -> Option<f64> {
        match self {
            PropVal::Num(x, _) => Some(x),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn text(self) -> Option<Text<'e>> {
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
            bucket_ms: w.bucket_ms(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::aggregate::fixtures::{ev, T0};
    use serde_json::json;

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
}
