//! A rule ready to serve: its spec with the conditions compiled (a
//! condition's error placed at its `line:column` by
//! [`condition_error`], shared with the trigger files).

use super::condition::{Condition, Scope};
use super::file::{condition_error, ContactCap, FileError, Inject, Located, RuleSpec};
use super::schema::Schema;
use crate::decide::Label;
use crate::features::store::OfferKey;
use cel::Env;
use std::sync::Arc;

/// What a matching rule does to an item.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    pub exclude: bool,
    /// Multiplied into the item's priority (1 = none).
    pub weight: f64,
    /// The action offered, with its priority among matching rules' actions.
    pub action: Option<(i64, Label)>,
    pub inject: Option<Inject>,
    pub cap: Option<ContactCap>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub file: String,
    pub description: String,
    pub when: Option<Condition>,
    pub item_when: Option<Condition>,
    pub effects: Effects,
    /// Added to a matching item's reasons.
    pub reason: Label,
    /// Line of its `[[rule]]` in the file.
    pub line: usize,
}

impl Rule {
    /// Compiles `spec` from `file` (whose text is `text`).
    pub fn compile(
        env: &Arc<Env>,
        schema: &Schema,
        file: &str,
        text: &str,
        spec: RuleSpec,
    ) -> Result<Rule, FileError> {
        let cond = |c: &Option<Located<String>>, scope| -> Result<Option<Condition>, FileError> {
            let Some(c) = c else { return Ok(None) };
            Condition::compile(env, schema, &c.value, scope)
                .map(Some)
                .map_err(|e| {
                    let key = match scope {
                        Scope::Request => "when",
                        Scope::Item => "item_when",
                    };
                    condition_error(file, text, &format!("rule `{}`, {key}", spec.name), c, e)
                })
        };
        let when = cond(&spec.when, Scope::Request)?;
        let item_when = cond(&spec.item_when, Scope::Item)?;
        Ok(Rule {
            file: file.to_string(),
            description: spec.description,
            when,
            item_when,
            effects: Effects {
                exclude: spec.exclude,
                weight: spec.weight.unwrap_or(1.0),
                action: spec.action.map(|a| (spec.priority, Label::Owned(a))),
                inject: spec.inject,
                cap: spec.cap,
            },
            reason: Label::Owned(spec.reason),
            line: spec.at.line,
            name: spec.name,
        })
    }
}

impl Rule {
    /// The contact counter of a capped rule's action.
    pub fn offer_key(&self) -> Option<OfferKey> {
        let cap = self.effects.cap?;
        let (_, action) = self.effects.action.as_ref()?;
        Some(OfferKey {
            action: action.to_string(),
            period_ms: cap.period_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;
    use crate::rules::file::parse;

    #[test]
    fn a_condition_error_points_into_the_file() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("definitions");
        let schema = Schema::new(&set);
        let env = Arc::new(Env::stdlib());
        let text = "[[rule]]\nname = \"r\"\nweight = 2.0\nwhen = \"customer.cart_value > 1.0\"\nitem_when = \"\"\"\nitem.price > 1.0 &&\n  item.nope == 1.0\"\"\"\n";
        let spec = parse("x.toml", text).expect("parses").remove(0);
        let e = Rule::compile(&env, &schema, "x.toml", text, spec).expect_err("item.nope");
        assert_eq!((e.pos.line, e.pos.column), (7, 3), "{e}");
        assert!(
            e.to_string()
                .starts_with("x.toml:7:3: rule `r`, item_when: unknown feature `item.nope`"),
            "{e}"
        );
    }
}
