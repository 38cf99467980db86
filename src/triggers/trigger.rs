//! A trigger ready to run: its spec with the conditions compiled and
//! checked (the rules' CEL machinery: `rules::condition`, on customer,
//! session and context) and its `context` features resolved.

use super::file::{KindSpec, SequenceSpec, TriggerSpec};
use crate::event::EventType;
use crate::features::store::OfferKey;
use crate::rules::condition::{Condition, Scope};
use crate::rules::file::{condition_error, position, ContactCap, FileError, Located};
use crate::rules::schema::{Namespace, Schema};
use cel::Env;
use std::sync::Arc;

/// What makes it fire, compiled.
#[derive(Debug)]
pub enum Kind {
    Inactivity {
        start_on: Vec<EventType>,
        cancel_on: Vec<EventType>,
        /// Checked when due: true → the episode ends without firing.
        cancel_when: Option<Condition>,
        restart_on: Vec<EventType>,
        after_ms: i64,
    },
    Threshold {
        condition: Condition,
        /// Event types after which it is checked (empty: any).
        on: Vec<EventType>,
    },
    Sequence(SequenceSpec),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Inactivity { .. } => "inactivity",
            Kind::Threshold { .. } => "threshold",
            Kind::Sequence(_) => "sequence",
        }
    }
}

/// A compiled trigger.
#[derive(Debug)]
pub struct Trigger {
    pub name: String,
    pub file: String,
    pub line: usize,
    pub description: String,
    pub kind: Kind,
    pub when: Option<Condition>,
    pub action: String,
    pub reason: String,
    pub recommend: usize,
    /// Features copied into the message's context.
    pub context: Vec<(Namespace, String)>,
    pub cap: Option<ContactCap>,
}

impl Trigger {
    /// Compiles `spec` from `file` (whose text is `text`); `after_ms`
    /// replaces an inactivity trigger's window when given.
    pub fn compile(
        env: &Arc<Env>,
        schema: &Schema,
        file: &str,
        text: &str,
        spec: TriggerSpec,
        after_ms: Option<i64>,
    ) -> Result<Trigger, FileError> {
        let name = spec.name.clone();
        let cond = |key: &str, c: &Located<String>| -> Result<Condition, FileError> {
            Condition::compile(env, schema, &c.value, Scope::Request)
                .map_err(|e| condition_error(file, text, &format!("trigger `{name}`, {key}"), c, e))
        };
        let when = spec.when.as_ref().map(|c| cond("when", c)).transpose()?;
        let kind = match spec.kind {
            KindSpec::Inactivity {
                start_on,
                cancel_on,
                cancel_when,
                restart_on,
                after_ms: written,
            } => Kind::Inactivity {
                cancel_when: cancel_when
                    .as_ref()
                    .map(|c| cond("cancel_when", c))
                    .transpose()?,
                start_on,
                cancel_on,
                restart_on,
                after_ms: after_ms.unwrap_or(written),
            },
            KindSpec::Threshold { condition, on } => Kind::Threshold {
                condition: cond("condition", &condition)?,
                on,
            },
            KindSpec::Sequence(s) => Kind::Sequence(s),
        };
        let mut context = Vec::new();
        for c in &spec.context {
            let field = c
                .value
                .split_once('.')
                .and_then(|(ns, f)| Some((Namespace::parse(ns)?, f)))
                .filter(|(ns, f)| {
                    matches!(ns, Namespace::Customer | Namespace::Session)
                        && schema.field_type(*ns, f).is_some()
                });
            match field {
                Some((ns, f)) => context.push((ns, f.to_string())),
                None => {
                    return Err(FileError {
                        file: file.to_string(),
                        pos: position(text, c.span.start),
                        message: format!(
                            "trigger `{name}`, context: `{}` is not a customer or session feature (customer.<name>, session.<name>)",
                            c.value
                        ),
                    })
                }
            }
        }
        Ok(Trigger {
            file: file.to_string(),
            line: spec.at.line,
            description: spec.description,
            kind,
            when,
            action: spec.action,
            reason: spec.reason,
            recommend: spec.recommend,
            context,
            cap: spec.cap,
            name: spec.name,
        })
    }

    /// Every condition it has.
    pub fn conditions(&self) -> impl Iterator<Item = &Condition> {
        let own = match &self.kind {
            Kind::Inactivity { cancel_when, .. } => cancel_when.as_ref(),
            Kind::Threshold { condition, .. } => Some(condition),
            Kind::Sequence(_) => None,
        };
        self.when.iter().chain(own)
    }

    /// The contact counter of a capped trigger's action.
    pub fn offer_key(&self) -> Option<OfferKey> {
        self.cap.map(|c| OfferKey {
            action: self.action.clone(),
            period_ms: c.period_ms,
        })
    }
}

impl crate::rules::folder::Named for Trigger {
    fn name(&self) -> &str {
        &self.name
    }
    fn file(&self) -> &str {
        &self.file
    }
    fn line(&self) -> usize {
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;
    use crate::triggers::file::parse;

    fn schema() -> (Arc<Env>, Schema) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("definitions");
        (Arc::new(Env::stdlib()), Schema::new(&set))
    }

    #[test]
    fn condition_errors_point_into_the_file() {
        let (env, schema) = schema();
        let text = "[[trigger]]\nname = \"t\"\nkind = \"inactivity\"\nstart_on = [\"add_to_cart\"]\nafter = \"1m\"\ncancel_when = \"customer.cart_itemz == 0.0\"\n";
        let spec = parse("x.toml", text).expect("parses").remove(0);
        let e =
            Trigger::compile(&env, &schema, "x.toml", text, spec, None).expect_err("cart_itemz");
        assert!(
            e.to_string().starts_with(
                "x.toml:6:16: trigger `t`, cancel_when: unknown feature `customer.cart_itemz`"
            ),
            "{e}"
        );
        let text =
            "[[trigger]]\nname = \"t\"\nkind = \"threshold\"\ncondition = \"item.price > 1.0\"\n";
        let spec = parse("x.toml", text).expect("parses").remove(0);
        let e = Trigger::compile(&env, &schema, "x.toml", text, spec, None).expect_err("item");
        assert!(e.to_string().contains("differs per item"), "{e}");
        let text = "[[trigger]]\nname = \"t\"\nkind = \"threshold\"\ncondition = \"session.dwell_ms > 1.0\"\ncontext = [\"customer.cart_value\", \"item.price\"]\n";
        let spec = parse("x.toml", text).expect("parses").remove(0);
        let e =
            Trigger::compile(&env, &schema, "x.toml", text, spec, None).expect_err("item.price");
        assert!(e.to_string().starts_with("x.toml:5:35:"), "{e}");
    }

    #[test]
    fn the_window_can_be_overridden() {
        let (env, schema) = schema();
        let text = "[[trigger]]\nname = \"t\"\nkind = \"inactivity\"\nstart_on = [\"add_to_cart\"]\nafter = \"30m\"\n";
        let spec = parse("x.toml", text).expect("parses").remove(0);
        let t =
            Trigger::compile(&env, &schema, "x.toml", text, spec, Some(1500)).expect("compiles");
        assert!(matches!(t.kind, Kind::Inactivity { after_ms: 1500, .. }));
    }
}
