//! The event schema (DESIGN.md §2) and its validation.
//!
//! Events arrive as JSON from HTTP bodies, Kafka messages and history files.
//! This module is the boundary: it turns untrusted JSON into a typed [`Event`]
//! or an [`EventError`] that names the offending field. Nothing past this
//! module re-checks event fields.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// Longest accepted id (customer, item, session, event), in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted string prop but the [`LONG_PROPS`], in bytes (`category` and any
/// other categorical value a feature may keep), and longest prop name.
pub const MAX_PROP_LEN: usize = 256;
/// Longest accepted `props.page` (a path or URL) and other [`LONG_PROPS`], in bytes.
pub const MAX_PAGE_LEN: usize = 2048;
/// The string props that may be [`MAX_PAGE_LEN`] long (addresses, search
/// text); every other is at most [`MAX_PROP_LEN`].
pub const LONG_PROPS: [&str; 4] = ["page", "url", "referrer", "query"];
/// Earliest accepted event time: 2000-01-01T00:00:00Z in ms. Anything smaller
/// is almost certainly seconds instead of milliseconds.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// Latest accepted event time: 2200-01-01T00:00:00Z in ms.
pub const MAX_TS_MS: i64 = 7_258_118_400_000;
/// The largest accepted `seq`: 2^53, the largest integer every store keeps
/// exactly (Redis scripts compare numbers as doubles).
pub const MAX_SEQ: i64 = 1 << 53;

/// The event types of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    PageView,
    Click,
    AddToCart,
    RemoveFromCart,
    Purchase,
    Search,
    SessionStart,
}

impl EventType {
    /// Every event type, in a fixed order.
    pub const ALL: [EventType; 7] = [
        EventType::PageView,
        EventType::Click,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::Purchase,
        EventType::Search,
        EventType::SessionStart,
    ];

    /// The wire name (`add_to_cart`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::Click => "click",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
            EventType::Search => "search",
            EventType::SessionStart => "session_start",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the contract requires `item_id` for this type.
    pub fn requires_item(self) -> bool {
        matches!(
            self,
            EventType::Click
                | EventType::AddToCart
                | EventType::RemoveFromCart
                | EventType::Purchase
        )
    }

    /// The Kafka topic this type is produced to.
    pub fn topic(self) -> String {
        format!("events.{}", self.as_str())
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub customer_id: String,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub props: Map<String, Value>,
}

/// How far from the server's clock a live event's `ts` may be
/// ([`Event::check_time`]), in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    pub future_ms: i64,
    pub lateness_ms: i64,
}

/// Why an event was rejected; always names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("event must be a JSON object")]
    NotAnObject,
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("`item_id` is required for `{0}` events")]
    ItemRequired(EventType),
}

impl EventError {
    /// The field the error is about, if any.
    pub fn field(&self) -> Option<String> {
        match self {
            EventError::Missing(f) => Some((*f).to_string()),
            EventError::Invalid { field, .. } => Some(field.clone()),
            EventError::ItemRequired(_) => Some("item_id".to_string()),
            EventError::Json(_) | EventError::NotAnObject => None,
        }
    }

    fn invalid(field: &str, problem: impl Into<String>) -> Self {
        EventError::Invalid {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

/// Props with a known meaning are type-checked; others pass through.
pub const NUMERIC_PROPS: [&str; 3] = ["price", "quantity", "dwell_ms"];
const STRING_PROPS: [&str; 2] = ["category", "page"];
/// The largest accepted value of a numeric prop: sums of products of them
/// stay finite (a non-finite sum would be refused by Redis).
const MAX_NUMERIC_PROP: f64 = 1e12;

impl Event {
    /// Parses and validates one event from raw bytes (a Kafka message, a line).
    pub fn from_slice(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        Event::from_value(value)
    }

    /// Validates one event already parsed as JSON.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let Value::Object(mut obj) = value else {
            return Err(EventError::NotAnObject);
        };
        let event_id = required_id(&mut obj, "event_id")?;
        let kind_str = required_string(&mut obj, "type")?;
        let kind = EventType::parse(&kind_str).ok_or_else(|| {
            EventError::invalid(
                "type",
                format!(
                    "`{kind_str}` is not an event type (expected one of: {})",
                    EventType::ALL.map(|t| t.as_str()).join(", ")
                ),
            )
        })?;
        let customer_id = required_id(&mut obj, "customer_id")?;
        let ts = match obj.remove("ts") {
            None | Some(Value::Null) => return Err(EventError::Missing("ts")),
            Some(v) => parse_ts(&v)?,
        };
        let session_id = optional_id(&mut obj, "session_id")?;
        let item_id = optional_id(&mut obj, "item_id")?;
        if kind.requires_item() && item_id.is_none() {
            return Err(EventError::ItemRequired(kind));
        }
        let seq = match obj.remove("seq") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .filter(|s| (0..=MAX_SEQ).contains(s))
                    .ok_or_else(|| {
                        EventError::invalid(
                            "seq",
                            format!("must be an integer from 0 to 2^53 ({MAX_SEQ}), got {v}"),
                        )
                    })?,
            ),
        };
        let props = match obj.remove("props") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(EventError::invalid("props", "must be an object")),
        };
        for name in NUMERIC_PROPS {
            if let Some(v) = props.get(name) {
                match v.as_f64() {
                    Some(x) if (0.0..=MAX_NUMERIC_PROP).contains(&x) => {}
                    _ => {
                        return Err(EventError::invalid(
                            &format!("props.{name}"),
                            "must be a number from 0 to 1e12",
                        ))
                    }
                }
            }
        }
        for name in STRING_PROPS {
            if let Some(v) = props.get(name) {
                if !v.is_string() {
                    return Err(EventError::invalid(
                        &format!("props.{name}"),
                        "must be a string",
                    ));
                }
            }
        }
        check_prop_lengths(&props)?;
        Ok(Event {
            event_id,
            kind,
            customer_id,
            ts,
            session_id,
            item_id,
            seq,
            props,
        })
    }

    /// Refuses an event dated too far from `now_ms` for the live paths
    /// (HTTP, Kafka): more than `bounds.future_ms` ahead (a device with a
    /// wrong clock: accepted, it would sit in the customer's state as the
    /// newest event for as long as it is ahead), or more than
    /// `bounds.lateness_ms` behind (its id could not be remembered long
    /// enough to dedupe a redelivery; history goes through the backfill).
    pub fn check_time(&self, now_ms: i64, bounds: TimeBounds) -> Result<(), EventError> {
        let ahead = self.ts.saturating_sub(now_ms);
        if ahead > bounds.future_ms {
            return Err(EventError::invalid(
                "ts",
                format!(
                    "{} is {} ahead of the server's clock (at most {} s is allowed: store.allowed_future_secs); the sender's clock is wrong",
                    self.ts,
                    human_ms(ahead),
                    bounds.future_ms / 1000
                ),
            ));
        }
        let behind = now_ms.saturating_sub(self.ts);
        if behind > bounds.lateness_ms {
            return Err(EventError::invalid(
                "ts",
                format!(
                    "{} is {} old (at most {} s is allowed: store.allowed_lateness_secs); load history with `nextbest backfill`",
                    self.ts,
                    human_ms(behind),
                    bounds.lateness_ms / 1000
                ),
            ));
        }
        Ok(())
    }

    /// The contract JSON of this event (what is produced to Kafka).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and a JSON map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A numeric prop, if present.
    pub fn prop_f64(&self, name: &str) -> Option<f64> {
        self.props.get(name).and_then(Value::as_f64)
    }

    /// A prop rendered as text (strings as-is, numbers and booleans printed).
    pub fn prop_text(&self, name: &str) -> Option<String> {
        match self.props.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A duration for a message: `12 s`, `5 min`, `3 h`, `400 days`.
fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        7_200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

fn parse_ts(v: &Value) -> Result<i64, EventError> {
    let ts = v
        .as_i64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.is_finite())
                .map(|f| f as i64)
        })
        .ok_or_else(|| EventError::invalid("ts", "must be an integer (ms since epoch)"))?;
    if ts < MIN_TS_MS {
        return Err(EventError::invalid(
            "ts",
            format!("{ts} is before 2000-01-01; ts is in milliseconds, not seconds"),
        ));
    }
    if ts > MAX_TS_MS {
        return Err(EventError::invalid(
            "ts",
            format!("{v} is after 2200-01-01"),
        ));
    }
    Ok(ts)
}

fn required_string(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, EventError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Err(EventError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(EventError::invalid(field, "must be a string")),
    }
}

fn required_id(obj: &mut Map<String, Value>, field: &'static str) -> Result<String, EventError> {
    let s = required_string(obj, field)?;
    check_id(field, &s)?;
    Ok(s)
}

fn optional_id(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, EventError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_id(field, &s)?;
            Ok(Some(s))
        }
        Some(_) => Err(EventError::invalid(field, "must be a string")),
    }
}

/// Checks an id: non-empty, at most [`MAX_ID_LEN`] bytes, no braces (they
/// would break the Redis hash tags that keep an entity in one slot) and no
/// control characters.
/// The newest `ts` of `events` (None for none): where an event-time clock
/// goes once they are applied ([`crate::clock::Clock::observe`]).
pub fn newest_ts(events: &[Event]) -> Option<i64> {
    events.iter().map(|e| e.ts).max()
}

pub fn check_id(field: &str, s: &str) -> Result<(), EventError> {
    if s.trim().is_empty() {
        return Err(EventError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(EventError::invalid(
            field,
            format!("is {} bytes long; the limit is {MAX_ID_LEN}", s.len()),
        ));
    }
    if s.chars().any(|c| c == '{' || c == '}' || c.is_control()) {
        return Err(EventError::invalid(
            field,
            "must not contain `{`, `}` or control characters",
        ));
    }
    Ok(())
}

/// Checks the props' names (at most [`MAX_PROP_LEN`] bytes) and string
/// values (at most [`MAX_PAGE_LEN`] bytes for [`LONG_PROPS`], [`MAX_PROP_LEN`] for
/// the others): a value can become a feature value in the store.
fn check_prop_lengths(props: &Map<String, Value>) -> Result<(), EventError> {
    for (name, v) in props {
        if name.len() > MAX_PROP_LEN {
            return Err(EventError::invalid(
                "props",
                format!(
                    "holds a prop name {} bytes long; the limit is {MAX_PROP_LEN}",
                    name.len()
                ),
            ));
        }
        let Value::String(s) = v else { continue };
        let limit = if LONG_PROPS.contains(&name.as_str()) {
            MAX_PAGE_LEN
        } else {
            MAX_PROP_LEN
        };
        if s.len() > limit {
            return Err(EventError::invalid(
                &format!("props.{name}"),
                format!("is {} bytes long; the limit is {limit}", s.len()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({"event_id":"e-1","type":"add_to_cart","customer_id":"c42","ts":1764355200000i64,
               "session_id":"s-9","item_id":"p7","seq":17,
               "props":{"price":59.9,"quantity":1,"category":"shoes","page":"/p/7","dwell_ms":5400}})
    }

    #[test]
    fn contract_example_parses_and_round_trips() {
        let e = Event::from_value(good()).expect("contract example is valid");
        assert_eq!(e.kind, EventType::AddToCart);
        assert_eq!(e.prop_f64("price"), Some(59.9));
        let again = Event::from_slice(&e.to_json_bytes()).expect("round trip");
        assert_eq!(e, again);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = good();
        v.as_object_mut().map(|o| o.remove("customer_id"));
        assert_eq!(
            Event::from_value(v).unwrap_err().field().as_deref(),
            Some("customer_id")
        );

        let mut v = good();
        v["item_id"] = Value::Null;
        assert_eq!(
            Event::from_value(v).unwrap_err(),
            EventError::ItemRequired(EventType::AddToCart)
        );

        let mut v = good();
        v["ts"] = json!(1764355200);
        let err = Event::from_value(v).unwrap_err();
        assert!(err.to_string().contains("milliseconds"), "{err}");

        let mut v = good();
        v["type"] = json!("teleport");
        assert_eq!(
            Event::from_value(v).unwrap_err().field().as_deref(),
            Some("type")
        );

        let mut v = good();
        v["props"]["price"] = json!("cheap");
        assert_eq!(
            Event::from_value(v).unwrap_err().field().as_deref(),
            Some("props.price")
        );

        let mut v = good();
        v["customer_id"] = json!("a{b}");
        assert_eq!(
            Event::from_value(v).unwrap_err().field().as_deref(),
            Some("customer_id")
        );

        assert!(matches!(
            Event::from_slice(b"{nope"),
            Err(EventError::Json(_))
        ));
        assert_eq!(Event::from_slice(b"[1]"), Err(EventError::NotAnObject));
    }

    #[test]
    fn prop_strings_and_ids_are_bounded() {
        let with = |name: &str, v: Value| {
            let mut e = good();
            e["props"][name] = v;
            Event::from_value(e)
        };
        let text = |n: usize| json!("x".repeat(n));
        assert!(with("category", text(MAX_PROP_LEN)).is_ok());
        let err = with("category", text(300)).expect_err("category of 300 bytes");
        assert_eq!(err.field().as_deref(), Some("props.category"));
        assert_eq!(
            err.to_string(),
            "field `props.category` is 300 bytes long; the limit is 256"
        );
        assert!(with("page", text(MAX_PAGE_LEN)).is_ok());
        let err = with("page", text(MAX_PAGE_LEN + 1)).expect_err("page over 2 KiB");
        assert_eq!(err.field().as_deref(), Some("props.page"));
        // any string prop, counted in bytes (é is two)
        assert!(with("brand", json!("é".repeat(MAX_PROP_LEN / 2))).is_ok());
        let err = with("brand", json!("é".repeat(MAX_PROP_LEN / 2 + 1))).expect_err("brand");
        assert_eq!(err.field().as_deref(), Some("props.brand"));
        // names too; numbers and other values are not strings
        let mut e = good();
        e["props"]["n".repeat(MAX_PROP_LEN + 1)] = json!(1);
        let err = Event::from_value(e).expect_err("a prop name over the limit");
        assert_eq!(err.field().as_deref(), Some("props"));
        assert!(with("flags", json!([1, 2, 3])).is_ok());

        // the ids keep their limit (MAX_ID_LEN bytes)
        for field in ["event_id", "customer_id", "session_id", "item_id"] {
            let mut e = good();
            e[field] = text(MAX_ID_LEN);
            assert!(Event::from_value(e).is_ok(), "{field} at the limit");
            let mut e = good();
            e[field] = text(MAX_ID_LEN + 1);
            let err = Event::from_value(e).expect_err("an id over the limit");
            assert_eq!(err.field().as_deref(), Some(field));
        }
    }

    #[test]
    fn page_view_needs_no_item() {
        let v = json!({"event_id":"e","type":"page_view","customer_id":"c","ts":1764355200000i64});
        assert!(Event::from_value(v).is_ok());
    }

    #[test]
    fn events_ahead_of_the_clock_are_refused_and_seq_is_bounded() {
        let e = Event::from_value(good()).expect("valid");
        let now = e.ts;
        let bounds = TimeBounds {
            future_ms: 300_000,
            lateness_ms: 7 * 86_400_000,
        };
        assert!(
            e.check_time(now - 60_000, bounds).is_ok(),
            "a minute ahead is fine"
        );
        assert!(
            e.check_time(now + 6 * 86_400_000, bounds).is_ok(),
            "six days late is fine"
        );
        let err = e
            .check_time(now + 8 * 86_400_000, bounds)
            .expect_err("eight days late");
        assert!(err.to_string().contains("8 days old"), "{err}");
        let err = e
            .check_time(now - 10 * 365 * 86_400_000, bounds)
            .expect_err("ten years ahead");
        assert_eq!(err.field().as_deref(), Some("ts"));
        assert!(err.to_string().contains("3650 days ahead"), "{err}");

        let mut v = good();
        v["seq"] = json!(MAX_SEQ);
        assert!(Event::from_value(v).is_ok());
        let mut v = good();
        v["seq"] = json!(MAX_SEQ + 1);
        let err = Event::from_value(v).expect_err("seq beyond 2^53");
        assert_eq!(err.field().as_deref(), Some("seq"));
    }
}
