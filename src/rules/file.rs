//! Rule files as written: `*.toml` with one or more `[[rule]]` tables,
//! parsed into [`RuleSpec`] values that keep where each condition was
//! written, so every later error can name `file:line:column`.
//!
//! This module checks the shape (known keys, types, names, ranges); the
//! conditions are checked against the features by `compile`.

use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

/// A position in a rule file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Where in the file a value was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    /// Byte range of the TOML value (the string with its quotes).
    pub span: Range<usize>,
}

/// Where candidates of an `inject` come from.
#[derive(Debug, Clone, PartialEq)]
pub enum InjectSource {
    /// Popular items of the customer's recent categories.
    PopularInRecentCategories,
    /// The globally popular items.
    Popular,
    /// The items the customer viewed recently (`customer.recent_items`).
    RecentlyViewed,
    /// A fixed list of item ids.
    Items(Vec<String>),
}

impl InjectSource {
    /// The names `source` accepts.
    pub const NAMES: [&'static str; 3] =
        ["popular_in_recent_categories", "popular", "recently_viewed"];

    /// The source's name as written (`items` for a list).
    pub fn name(&self) -> &'static str {
        match self {
            InjectSource::PopularInRecentCategories => "popular_in_recent_categories",
            InjectSource::Popular => "popular",
            InjectSource::RecentlyViewed => "recently_viewed",
            InjectSource::Items(_) => "items",
        }
    }
}

/// An `inject` table: a source and how many items at most.
#[derive(Debug, Clone, PartialEq)]
pub struct Inject {
    pub source: InjectSource,
    pub limit: usize,
}

/// Default and largest number of items one `inject` adds.
pub const DEFAULT_INJECT_LIMIT: usize = 10;
pub const MAX_INJECT_LIMIT: usize = 100;

/// A contact cap: at most `max` offers of the rule's action per customer
/// per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContactCap {
    pub max: u32,
    pub period_ms: i64,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub description: String,
    pub when: Option<Located<String>>,
    pub item_when: Option<Located<String>>,
    pub exclude: bool,
    pub weight: Option<f64>,
    pub action: Option<String>,
    pub priority: i64,
    pub inject: Option<Inject>,
    pub reason: String,
    pub cap: Option<ContactCap>,
    /// Where the `[[rule]]` table starts.
    pub at: Pos,
}

/// A rule file that is not well formed: where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{}:{}: {message}", .file, .pos.line, .pos.column)]
pub struct FileError {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    when: Option<Spanned<String>>,
    item_when: Option<Spanned<String>>,
    #[serde(default)]
    exclude: bool,
    weight: Option<Spanned<f64>>,
    action: Option<Spanned<String>>,
    priority: Option<i64>,
    inject: Option<Spanned<RawInject>>,
    reason: Option<Spanned<String>>,
    max_per_customer: Option<Spanned<u32>>,
    period: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    source: Option<String>,
    items: Option<Vec<String>>,
    limit: Option<usize>,
}

/// Line and column (1-based, in characters) of byte `offset` in `text`.
pub fn position(text: &str, offset: usize) -> Pos {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Pos { line, column }
}

/// Whether `s` is a valid rule, action or reason name: lower-case letters,
/// digits and `_`, starting with a letter, at most 64 characters.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses a period like `500ms`, `30m`, `24h`, `7d` into ms.
pub fn parse_period(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// A condition's error (`e.offset` into the condition written at `cond`)
/// at its place in the file: `owner` says whose condition it is (``rule `x`, when``).
pub fn condition_error(
    file: &str,
    text: &str,
    owner: &str,
    cond: &Located<String>,
    e: super::condition::ConditionError,
) -> FileError {
    FileError {
        file: file.to_string(),
        pos: position(text, file_offset(text, &cond.span, e.offset)),
        message: format!("{owner}: {}", e.message),
    }
}

/// The byte offset in the file of character `offset` of a string value
/// written at `span` (quotes included). Exact for strings without escape
/// sequences; close otherwise.
fn file_offset(text: &str, span: &Range<usize>, offset: usize) -> usize {
    let raw = text.get(span.clone()).unwrap_or("");
    let mut start = span.start;
    let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
        3
    } else {
        1
    };
    start += quote.min(raw.len());
    // a newline right after an opening """ is not part of the string
    if quote == 3 {
        let rest = &raw[quote.min(raw.len())..];
        if rest.starts_with("\r\n") {
            start += 2;
        } else if rest.starts_with('\n') {
            start += 1;
        }
    }
    let content = text.get(start..span.end).unwrap_or("");
    start
        + content
            .char_indices()
            .nth(offset)
            .map_or(content.len(), |(i, _)| i)
}

/// Spanned TOML string → [`Located`].
pub fn located(s: Spanned<String>) -> Located<String> {
    Located {
        span: s.span(),
        value: s.into_inner(),
    }
}

/// The error maker of one file's text: a byte offset and a message become
/// a [`FileError`] placed at that `line:column`.
pub fn error_at<'a>(file: &'a str, text: &'a str) -> impl Fn(usize, String) -> FileError + 'a {
    move |offset, message| FileError {
        file: file.to_string(),
        pos: position(text, offset),
        message,
    }
}

/// A definition file's text as TOML, a syntax or shape error placed where
/// the TOML parser found it.
pub fn from_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        error_at(file, text)(at, e.message().trim().to_string())
    })
}

/// Parses one rule file's text.
pub fn parse(file: &str, text: &str) -> Result<Vec<RuleSpec>, FileError> {
    let err = error_at(file, text);
    let raw: RawFile = from_toml(file, text)?;
    let mut out = Vec::with_capacity(raw.rule.len());
    for r in raw.rule {
        let start = r.span().start;
        let r = r.into_inner();
        let name_at = r.name.span().start;
        let name = r.name.into_inner();
        if !valid_name(&name) {
            return Err(err(
                name_at,
                format!("rule name `{name}` must be lower-case letters, digits and `_`, starting with a letter"),
            ));
        }
        let weight = match r.weight {
            None => None,
            Some(w) => {
                let at = w.span().start;
                let w = w.into_inner();
                if !(w.is_finite() && w > 0.0) {
                    return Err(err(
                        at,
                        format!("rule `{name}`: weight must be a positive number, got {w}"),
                    ));
                }
                Some(w)
            }
        };
        let action = match r.action {
            None => None,
            Some(a) => {
                let at = a.span().start;
                let a = a.into_inner();
                if !valid_name(&a) {
                    return Err(err(at, format!("rule `{name}`: action `{a}` must be lower-case letters, digits and `_`")));
                }
                Some(a)
            }
        };
        let reason = match r.reason {
            None => name.clone(),
            Some(x) => {
                let at = x.span().start;
                let x = x.into_inner();
                if !valid_name(&x) {
                    return Err(err(at, format!("rule `{name}`: reason `{x}` must be lower-case letters, digits and `_`")));
                }
                x
            }
        };
        let inject = match r.inject {
            None => None,
            Some(i) => {
                let at = i.span().start;
                Some(inject(&name, i.into_inner()).map_err(|m| err(at, m))?)
            }
        };
        let cap = match (r.max_per_customer, r.period) {
            (None, None) => None,
            (Some(m), Some(p)) => {
                let m_at = m.span().start;
                let max = m.into_inner();
                if max == 0 {
                    return Err(err(
                        m_at,
                        format!("rule `{name}`: max_per_customer must be at least 1"),
                    ));
                }
                let p_at = p.span().start;
                let p = p.into_inner();
                let period_ms = parse_period(&p).ok_or_else(|| {
                    err(p_at, format!("rule `{name}`: period `{p}` is not a duration like `30m`, `24h` or `7d`"))
                })?;
                if action.is_none() {
                    return Err(err(m_at, format!("rule `{name}`: max_per_customer caps an action; give the rule an `action`")));
                }
                Some(ContactCap { max, period_ms })
            }
            (Some(m), None) => {
                return Err(err(
                    m.span().start,
                    format!("rule `{name}`: max_per_customer needs a `period` (e.g. \"24h\")"),
                ))
            }
            (None, Some(p)) => {
                return Err(err(
                    p.span().start,
                    format!("rule `{name}`: period needs `max_per_customer`"),
                ))
            }
        };
        if r.exclude && (weight.is_some() || action.is_some() || inject.is_some()) {
            return Err(err(start, format!("rule `{name}`: `exclude = true` removes the item; it cannot also have a weight, an action or inject")));
        }
        if !r.exclude && weight.is_none() && action.is_none() && inject.is_none() {
            return Err(err(start, format!("rule `{name}` has no effect: give it `exclude = true`, a `weight`, an `action` or `inject`")));
        }
        let located = |s: Spanned<String>| Located {
            span: s.span(),
            value: s.into_inner(),
        };
        out.push(RuleSpec {
            description: r.description,
            when: r.when.map(located),
            item_when: r.item_when.map(located),
            exclude: r.exclude,
            weight,
            action,
            priority: r.priority.unwrap_or(0),
            inject,
            reason,
            cap,
            at: position(text, start),
            name,
        });
    }
    if out.is_empty() {
        return Err(err(0, "no [[rule]] in the file".to_string()));
    }
    Ok(out)
}

fn inject(rule: &str, raw: RawInject) -> Result<Inject, String> {
    let limit = raw.limit.unwrap_or(DEFAULT_INJECT_LIMIT);
    if limit == 0 || limit > MAX_INJECT_LIMIT {
        return Err(format!(
            "rule `{rule}`: inject limit must be 1..={MAX_INJECT_LIMIT}, got {limit}"
        ));
    }
    let source = match (raw.source.as_deref(), raw.items) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "rule `{rule}`: inject takes either `source` or `items`, not both"
            ))
        }
        (None, None) => {
            return Err(format!(
                "rule `{rule}`: inject needs a `source` ({}) or `items = [...]`",
                InjectSource::NAMES.join(", ")
            ))
        }
        (None, Some(items)) => {
            if items.is_empty() {
                return Err(format!("rule `{rule}`: inject items is empty"));
            }
            if let Some(bad) = items
                .iter()
                .find(|i| crate::event::check_id("item_id", i).is_err())
            {
                return Err(format!(
                    "rule `{rule}`: inject item `{bad}` is not a valid item id"
                ));
            }
            InjectSource::Items(items)
        }
        (Some("popular_in_recent_categories"), None) => InjectSource::PopularInRecentCategories,
        (Some("popular"), None) => InjectSource::Popular,
        (Some("recently_viewed"), None) => InjectSource::RecentlyViewed,
        (Some(other), None) => {
            return Err(format!(
                "rule `{rule}`: unknown inject source `{other}`; known: {}",
                InjectSource::NAMES.join(", ")
            ))
        }
    };
    Ok(Inject { source, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_parses_with_its_positions() {
        let text = "# upsell\n[[rule]]\nname = \"big_cart\"\nwhen = \"customer.cart_value > 100.0\"\naction = \"upsell\"\npriority = 10\nmax_per_customer = 3\nperiod = \"24h\"\n";
        let rules = parse("r.toml", text).expect("parses");
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.name, "big_cart");
        assert_eq!(r.reason, "big_cart");
        assert_eq!(r.at, Pos { line: 2, column: 1 });
        let when = r.when.as_ref().expect("when");
        assert_eq!(position(text, when.span.start), Pos { line: 4, column: 8 });
        assert_eq!(
            r.cap,
            Some(ContactCap {
                max: 3,
                period_ms: 86_400_000
            })
        );
    }

    #[test]
    fn shape_errors_name_the_line_and_what_is_wrong() {
        let cases = [
            (
                "[[rule]]\nname = \"x\"\nweight = -1.0\n",
                3,
                "weight must be a positive",
            ),
            ("[[rule]]\nname = \"x\"\n", 1, "has no effect"),
            (
                "[[rule]]\nname = \"Bad Name\"\nexclude = true\n",
                2,
                "must be lower-case",
            ),
            (
                "[[rule]]\nname = \"x\"\nexclude = true\ncolour = 1\n",
                4,
                "unknown field",
            ),
            (
                "[[rule]]\nname = \"x\"\ninject = { source = \"nowhere\" }\n",
                3,
                "unknown inject source",
            ),
            (
                "[[rule]]\nname = \"x\"\naction = \"a\"\nmax_per_customer = 2\n",
                4,
                "needs a `period`",
            ),
            (
                "[[rule]]\nname = \"x\"\naction = \"a\"\nmax_per_customer = 2\nperiod = \"soon\"\n",
                5,
                "not a duration",
            ),
            ("[[rule]\nname = \"x\"\n", 1, ""),
            ("", 1, "no [[rule]]"),
        ];
        for (text, line, want) in cases {
            let e = parse("f.toml", text).expect_err(text);
            assert_eq!(e.pos.line, line, "{text:?}: {e}");
            assert!(e.message.contains(want), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("f.toml:{line}:")), "{e}");
        }
    }

    #[test]
    fn periods() {
        assert_eq!(parse_period("30m"), Some(1_800_000));
        assert_eq!(parse_period("250ms"), Some(250));
        assert_eq!(parse_period("7d"), Some(604_800_000));
        assert_eq!(parse_period("0h"), None);
        assert_eq!(parse_period("h"), None);
        assert_eq!(parse_period("3w"), None);
    }
}
