//! Trigger files as written: `*.toml` with one or more `[[trigger]]`
//! tables, parsed into [`TriggerSpec`] values that keep where each
//! condition was written, so every later error names `file:line:column`.
//! The conventions are the rule files' (`rules::file`: names, periods,
//! contact caps, positions); this module checks the shape (known keys for
//! the trigger's kind, event types, durations, ranges). Conditions are
//! checked against the features by `trigger::Trigger::compile`.

use crate::event::EventType;
use crate::rules::file::{
    error_at, from_toml, located, parse_period, position, valid_name, ContactCap, FileError,
    Located, Pos,
};
use serde::Deserialize;
use toml::Spanned;

/// Most items `recommend = N` attaches.
pub const MAX_RECOMMEND: usize = 20;

/// What makes a trigger fire.
#[derive(Debug, Clone, PartialEq)]
pub enum KindSpec {
    /// A window of inactivity: started by `start_on`, ended by `cancel_on`
    /// (or `cancel_when` holding when it is due), its clock restarted by
    /// `restart_on`, fired `after_ms` after the last of those.
    Inactivity {
        start_on: Vec<EventType>,
        cancel_on: Vec<EventType>,
        cancel_when: Option<Located<String>>,
        restart_on: Vec<EventType>,
        after_ms: i64,
    },
    /// A condition checked after each applied event (of the `on` types;
    /// empty: any), at most once per session.
    Threshold {
        condition: Located<String>,
        on: Vec<EventType>,
    },
    /// Events of `steps` in that order within `within_ms`, sharing the
    /// value of prop `same` if given, with no `without` event among them;
    /// at most once per session.
    Sequence(SequenceSpec),
}

/// A `sequence` trigger's pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSpec {
    pub steps: Vec<EventType>,
    pub same: Option<String>,
    pub within_ms: i64,
    pub without: Option<EventType>,
}

impl KindSpec {
    pub fn name(&self) -> &'static str {
        match self {
            KindSpec::Inactivity { .. } => "inactivity",
            KindSpec::Threshold { .. } => "threshold",
            KindSpec::Sequence(_) => "sequence",
        }
    }
}

/// One trigger as written.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    pub name: String,
    pub description: String,
    pub kind: KindSpec,
    /// Checked when it fires, on the features then: false → not sent.
    pub when: Option<Located<String>>,
    /// The action named in the message (default: the trigger's name).
    pub action: String,
    /// The message's reason (default: the trigger's name).
    pub reason: String,
    /// Items attached from the recommend pipeline at fire time (0: none).
    pub recommend: usize,
    /// Features copied into the message's `context` (`customer.x`, `session.x`).
    pub context: Vec<Located<String>>,
    pub cap: Option<ContactCap>,
    /// Where the `[[trigger]]` table starts.
    pub at: Pos,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    trigger: Vec<Spanned<RawTrigger>>,
}

type Types = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    kind: Spanned<String>,
    // inactivity
    start_on: Option<Types>,
    cancel_on: Option<Types>,
    cancel_when: Option<Spanned<String>>,
    restart_on: Option<Types>,
    after: Option<Spanned<String>>,
    // threshold
    condition: Option<Spanned<String>>,
    on: Option<Types>,
    // sequence
    steps: Option<Types>,
    same: Option<Spanned<String>>,
    within: Option<Spanned<String>>,
    without: Option<Spanned<String>>,
    // all
    when: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    reason: Option<Spanned<String>>,
    recommend: Option<Spanned<i64>>,
    context: Option<Vec<Spanned<String>>>,
    max_per_customer: Option<Spanned<u32>>,
    period: Option<Spanned<String>>,
}

/// Parses one trigger file's text.
pub fn parse(file: &str, text: &str) -> Result<Vec<TriggerSpec>, FileError> {
    let err = error_at(file, text);
    let raw: RawFile = from_toml(file, text)?;
    let mut out = Vec::with_capacity(raw.trigger.len());
    for t in raw.trigger {
        let start = t.span().start;
        let t = t.into_inner();
        out.push(one(&err, start, text, t)?);
    }
    if out.is_empty() {
        return Err(err(0, "no [[trigger]] in the file".to_string()));
    }
    Ok(out)
}

fn one(
    err: &impl Fn(usize, String) -> FileError,
    start: usize,
    text: &str,
    t: RawTrigger,
) -> Result<TriggerSpec, FileError> {
    let name_at = t.name.span().start;
    let name = t.name.into_inner();
    if !valid_name(&name) {
        return Err(err(
            name_at,
            format!("trigger name `{name}` must be lower-case letters, digits and `_`, starting with a letter"),
        ));
    }
    let label = |key: &str, v: Option<Spanned<String>>| -> Result<String, FileError> {
        match v {
            None => Ok(name.clone()),
            Some(x) => {
                let at = x.span().start;
                let x = x.into_inner();
                if valid_name(&x) {
                    Ok(x)
                } else {
                    Err(err(at, format!("trigger `{name}`: {key} `{x}` must be lower-case letters, digits and `_`")))
                }
            }
        }
    };
    let action = label("action", t.action)?;
    let reason = label("reason", t.reason)?;
    let types = |key: &str, v: Option<Types>| -> Result<Vec<EventType>, FileError> {
        let Some(v) = v else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for s in v.into_inner() {
            let at = s.span().start;
            let s = s.into_inner();
            match EventType::parse(&s) {
                Some(k) if !out.contains(&k) => out.push(k),
                Some(_) => {}
                None => {
                    return Err(err(
                        at,
                        format!(
                            "trigger `{name}`: {key}: unknown event type `{s}`; known: {}",
                            EventType::ALL.map(|k| k.as_str()).join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(out)
    };
    let duration = |key: &str, v: Spanned<String>| -> Result<i64, FileError> {
        let at = v.span().start;
        let v = v.into_inner();
        parse_period(&v).ok_or_else(|| {
            err(at, format!("trigger `{name}`: {key} `{v}` is not a duration like `500ms`, `90s`, `30m` or `24h`"))
        })
    };
    let kind_at = t.kind.span().start;
    let kind_name = t.kind.into_inner();
    // keys that belong to other kinds
    let present: [(&str, bool, &str); 11] = [
        ("start_on", t.start_on.is_some(), "inactivity"),
        ("cancel_on", t.cancel_on.is_some(), "inactivity"),
        ("cancel_when", t.cancel_when.is_some(), "inactivity"),
        ("restart_on", t.restart_on.is_some(), "inactivity"),
        ("after", t.after.is_some(), "inactivity"),
        ("condition", t.condition.is_some(), "threshold"),
        ("on", t.on.is_some(), "threshold"),
        ("steps", t.steps.is_some(), "sequence"),
        ("same", t.same.is_some(), "sequence"),
        ("within", t.within.is_some(), "sequence"),
        ("without", t.without.is_some(), "sequence"),
    ];
    if !["inactivity", "threshold", "sequence"].contains(&kind_name.as_str()) {
        return Err(err(
            kind_at,
            format!("trigger `{name}`: unknown kind `{kind_name}`; use inactivity, threshold or sequence"),
        ));
    }
    if let Some((key, _, for_kind)) = present.iter().find(|(_, p, k)| *p && *k != kind_name) {
        return Err(err(
            start,
            format!(
                "trigger `{name}`: `{key}` is for {for_kind} triggers, this one is {kind_name}"
            ),
        ));
    }
    let missing = |key: &str| {
        err(
            start,
            format!("trigger `{name}`: a {kind_name} trigger needs `{key}`"),
        )
    };
    let kind = match kind_name.as_str() {
        "inactivity" => {
            let start_at = t.start_on.as_ref().map_or(start, |s| s.span().start);
            let start_on = types("start_on", t.start_on)?;
            if start_on.is_empty() {
                return Err(missing("start_on"));
            }
            let cancel_at = t.cancel_on.as_ref().map_or(start, |s| s.span().start);
            let cancel_on = types("cancel_on", t.cancel_on)?;
            if let Some(both) = cancel_on.iter().find(|k| start_on.contains(k)) {
                return Err(err(
                    cancel_at.max(start_at),
                    format!(
                        "trigger `{name}`: `{}` both starts and cancels it",
                        both.as_str()
                    ),
                ));
            }
            let restart_on = types("restart_on", t.restart_on)?;
            let after_ms = duration("after", t.after.ok_or_else(|| missing("after"))?)?;
            KindSpec::Inactivity {
                start_on,
                cancel_on,
                cancel_when: t.cancel_when.map(located),
                restart_on,
                after_ms,
            }
        }
        "threshold" => KindSpec::Threshold {
            condition: t
                .condition
                .map(located)
                .ok_or_else(|| missing("condition"))?,
            on: types("on", t.on)?,
        },
        _ => {
            let steps_at = t.steps.as_ref().map_or(start, |s| s.span().start);
            let steps: Vec<EventType> = match t.steps {
                None => return Err(missing("steps")),
                // repeated steps are the point here: no dedup
                Some(v) => {
                    let mut out = Vec::new();
                    for s in v.into_inner() {
                        let at = s.span().start;
                        let s = s.into_inner();
                        out.push(EventType::parse(&s).ok_or_else(|| {
                            err(
                                at,
                                format!("trigger `{name}`: steps: unknown event type `{s}`"),
                            )
                        })?);
                    }
                    out
                }
            };
            if steps.len() < 2 || steps.len() > 16 {
                return Err(err(
                    steps_at,
                    format!(
                        "trigger `{name}`: a sequence has 2 to 16 steps, this one {}",
                        steps.len()
                    ),
                ));
            }
            let without = match t.without {
                None => None,
                Some(w) => {
                    let at = w.span().start;
                    let w = w.into_inner();
                    let k = EventType::parse(&w).ok_or_else(|| {
                        err(
                            at,
                            format!("trigger `{name}`: without: unknown event type `{w}`"),
                        )
                    })?;
                    if steps.contains(&k) {
                        return Err(err(
                            at,
                            format!("trigger `{name}`: `{w}` is both a step and `without`"),
                        ));
                    }
                    Some(k)
                }
            };
            let same = match t.same {
                None => None,
                Some(s) => {
                    let at = s.span().start;
                    let s = s.into_inner();
                    if s.is_empty() || s.len() > 64 {
                        return Err(err(
                            at,
                            format!(
                                "trigger `{name}`: same names an event prop, like \"category\""
                            ),
                        ));
                    }
                    Some(s)
                }
            };
            KindSpec::Sequence(SequenceSpec {
                steps,
                same,
                within_ms: duration("within", t.within.ok_or_else(|| missing("within"))?)?,
                without,
            })
        }
    };
    let recommend = match t.recommend {
        None => 0,
        Some(n) => {
            let at = n.span().start;
            let n = n.into_inner();
            if !(0..=MAX_RECOMMEND as i64).contains(&n) {
                return Err(err(
                    at,
                    format!("trigger `{name}`: recommend must be 0..={MAX_RECOMMEND}, got {n}"),
                ));
            }
            n as usize
        }
    };
    let cap = match (t.max_per_customer, t.period) {
        (None, None) => None,
        (Some(m), Some(p)) => {
            let m_at = m.span().start;
            let max = m.into_inner();
            if max == 0 {
                return Err(err(
                    m_at,
                    format!("trigger `{name}`: max_per_customer must be at least 1"),
                ));
            }
            Some(ContactCap {
                max,
                period_ms: duration("period", p)?,
            })
        }
        (Some(m), None) => {
            return Err(err(
                m.span().start,
                format!("trigger `{name}`: max_per_customer needs a `period` (e.g. \"24h\")"),
            ))
        }
        (None, Some(p)) => {
            return Err(err(
                p.span().start,
                format!("trigger `{name}`: period needs `max_per_customer`"),
            ))
        }
    };
    Ok(TriggerSpec {
        description: t.description,
        kind,
        when: t.when.map(located),
        action,
        reason,
        recommend,
        context: t
            .context
            .unwrap_or_default()
            .into_iter()
            .map(located)
            .collect(),
        cap,
        at: position(text, start),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_parse() {
        let text = r#"
[[trigger]]
name = "cart_abandonment"
kind = "inactivity"
start_on = ["add_to_cart"]
cancel_on = ["purchase"]
cancel_when = "customer.cart_items <= 0.0"
restart_on = ["page_view", "add_to_cart"]
after = "30m"
action = "cart_reminder"
recommend = 3
max_per_customer = 1
period = "24h"

[[trigger]]
name = "help_offer"
kind = "threshold"
condition = "session.dwell_ms > 60000.0"
on = ["page_view"]

[[trigger]]
name = "size_guide"
kind = "sequence"
steps = ["page_view", "page_view", "page_view"]
same = "category"
within = "10m"
without = "add_to_cart"
"#;
        let ts = parse("t.toml", text).expect("parses");
        assert_eq!(ts.len(), 3);
        assert_eq!(ts[0].at, Pos { line: 2, column: 1 });
        assert_eq!(ts[0].action, "cart_reminder");
        assert_eq!(ts[0].reason, "cart_abandonment");
        assert_eq!(ts[0].recommend, 3);
        match &ts[0].kind {
            KindSpec::Inactivity {
                after_ms, start_on, ..
            } => {
                assert_eq!(
                    (*after_ms, start_on.as_slice()),
                    (1_800_000, &[EventType::AddToCart][..])
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ts[1].kind.name(), "threshold");
        match &ts[2].kind {
            KindSpec::Sequence(s) => {
                assert_eq!(s.steps.len(), 3);
                assert_eq!(s.within_ms, 600_000);
                assert_eq!(s.without, Some(EventType::AddToCart));
                assert_eq!(s.same.as_deref(), Some("category"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shape_errors_name_the_line_and_what_is_wrong() {
        let head = "[[trigger]]\nname = \"x\"\n";
        let cases = [
            ("kind = \"sometimes\"\n", 3, "unknown kind"),
            ("kind = \"inactivity\"\nafter = \"1m\"\n", 1, "needs `start_on`"),
            ("kind = \"inactivity\"\nstart_on = [\"add_to_cart\"]\n", 1, "needs `after`"),
            ("kind = \"inactivity\"\nstart_on = [\"add_to_basket\"]\nafter = \"1m\"\n", 4, "unknown event type `add_to_basket`"),
            ("kind = \"inactivity\"\nstart_on = [\"add_to_cart\"]\nafter = \"soon\"\n", 5, "not a duration"),
            ("kind = \"inactivity\"\nstart_on = [\"purchase\"]\ncancel_on = [\"purchase\"]\nafter = \"1m\"\n", 5, "both starts and cancels"),
            ("kind = \"threshold\"\n", 1, "needs `condition`"),
            ("kind = \"threshold\"\ncondition = \"true\"\nsteps = [\"click\"]\n", 1, "`steps` is for sequence"),
            ("kind = \"sequence\"\nsteps = [\"click\"]\nwithin = \"1m\"\n", 4, "2 to 16 steps"),
            ("kind = \"sequence\"\nsteps = [\"click\", \"click\"]\nwithin = \"1m\"\nwithout = \"click\"\n", 6, "both a step"),
            ("kind = \"threshold\"\ncondition = \"true\"\nrecommend = 99\n", 5, "recommend must be"),
            ("kind = \"threshold\"\ncondition = \"true\"\ncolour = 1\n", 5, "unknown field"),
            ("kind = \"threshold\"\ncondition = \"true\"\nmax_per_customer = 1\n", 5, "needs a `period`"),
        ];
        for (body, line, want) in cases {
            let text = format!("{head}{body}");
            let e = parse("f.toml", &text).expect_err(&text);
            assert!(e.message.contains(want), "{text:?}: {e}");
            assert_eq!(e.pos.line, line, "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("f.toml:{line}:")), "{e}");
        }
        assert!(parse("f.toml", "")
            .unwrap_err()
            .message
            .contains("no [[trigger]]"));
    }
}
