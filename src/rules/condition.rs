//! CEL conditions: compiled once, when their file loads, with the `cel`
//! crate, and checked against the [`Schema`] before they may serve:
//!
//! - syntax (cel's parser);
//! - every name: a variable (`customer`, `session`, `context`, and in
//!   `item_when` also `item` and `cross`) or a macro's own variable, and
//!   every `<variable>.<field>` a feature the definitions have;
//! - types: each call (operator or function) is evaluated on its own
//!   against typed stand-in values, so `customer.cart_value > "x"` fails
//!   here, not on a request, even in a branch that would rarely run;
//! - the result is a boolean.
//!
//! Errors carry the character offset in the expression; `compile` turns it
//! into the file's line and column.

use super::schema::{Namespace, Schema};
use cel::common::ast::{EntryExpr, Expr};
use cel::{Context, Env, ExecutionError, IdedExpr, Program, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A condition that failed its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionError {
    /// Character offset in the expression (0-based).
    pub offset: usize,
    pub message: String,
}

/// A checked condition.
#[derive(Debug)]
pub struct Condition {
    program: Program,
    pub source: String,
    /// The fields it reads.
    pub used: BTreeSet<(Namespace, String)>,
}

/// Which variables a condition may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `when`: once per request (customer, session, context).
    Request,
    /// `item_when`: per candidate (also item and cross).
    Item,
}

impl Condition {
    /// Parses and checks `source`.
    pub fn compile(
        env: &Arc<Env>,
        schema: &Schema,
        source: &str,
        scope: Scope,
    ) -> Result<Condition, ConditionError> {
        let program = env.compile(source).map_err(|errs| {
            let first = errs.errors.first();
            ConditionError {
                offset: first
                    .map(|e| char_offset(source, e.pos.0, e.pos.1))
                    .unwrap_or(0),
                message: first
                    .map(|e| e.msg.clone())
                    .unwrap_or_else(|| "syntax error".into()),
            }
        })?;
        let offset = |id: u64| {
            program
                .source_info()
                .offset_for(id)
                .map_or(0, |(start, _)| start as usize)
        };
        let mut walk = Walk {
            schema,
            scope,
            bound: Vec::new(),
            used: BTreeSet::new(),
            checks: Vec::new(),
            bound_names: BTreeSet::new(),
        };
        walk.expr(program.expression())
            .map_err(|(id, message)| ConditionError {
                offset: offset(id),
                message,
            })?;
        // types: each call on its own, against stand-in values
        let probe = probe_context(env, schema, scope);
        for node in &walk.checks {
            if let Err(e) = probe.resolve(node) {
                if is_type_error(&e, &walk.bound_names) {
                    return Err(ConditionError {
                        offset: offset(node.id),
                        message: type_message(&e),
                    });
                }
            }
        }
        match probe.resolve(program.expression()) {
            Ok(Value::Bool(_)) => {}
            Ok(other) => {
                return Err(ConditionError {
                    offset: 0,
                    message: format!(
                        "a condition must be true or false, this one is a {}",
                        other.type_of()
                    ),
                })
            }
            Err(e) if is_type_error(&e, &walk.bound_names) => {
                return Err(ConditionError {
                    offset: 0,
                    message: type_message(&e),
                })
            }
            Err(_) => {}
        }
        Ok(Condition {
            program,
            source: source.to_string(),
            used: walk.used,
        })
    }

    /// The expression cel parsed.
    pub fn expression(&self) -> &IdedExpr {
        self.program.expression()
    }

    /// Evaluates against `ctx`: true, false, or why it could not be decided.
    pub fn eval(&self, ctx: &Context<'_, '_>) -> Result<bool, ExecutionError> {
        match self.program.execute(ctx)? {
            Value::Bool(b) => Ok(b),
            other => Err(ExecutionError::UnexpectedType {
                got: other.type_of().to_string(),
                want: "bool".into(),
            }),
        }
    }
}

impl Condition {
    /// Evaluates a [`Scope::Request`] condition on the variables `request`
    /// bound by `plan` (a plan that reads every field the condition does).
    pub fn eval_request(
        &self,
        env: &Arc<Env>,
        plan: &super::schema::Plan,
        request: &super::schema::Bound,
    ) -> Result<bool, ExecutionError> {
        let resolver = super::schema::Resolver {
            plan,
            request,
            item: None,
        };
        let mut ctx = Context::with_env(env.clone());
        ctx.set_variable_resolver(&resolver);
        self.eval(&ctx)
    }
}

/// A context binding every variable of `scope` to its stand-in values.
fn probe_context<'a>(env: &Arc<Env>, schema: &Schema, scope: Scope) -> Context<'a, 'a> {
    let mut ctx = Context::with_env(env.clone());
    for ns in Namespace::ALL {
        if scope == Scope::Request && ns.per_item() {
            continue;
        }
        ctx.add_variable_from_value(ns.as_str(), schema.probe(ns));
    }
    ctx
}

/// Whether `e`, raised on stand-in values, shows the condition mixes types
/// or calls what does not exist (rather than depending on the data, like a
/// division by zero or an index past the end). A macro's own variable is
/// undeclared when its body is evaluated on its own, so that is no error.
fn is_type_error(e: &ExecutionError, bound: &BTreeSet<String>) -> bool {
    match e {
        ExecutionError::UndeclaredReference(name) => !bound.contains(name.as_str()),
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::UnexpectedType { .. }
        | ExecutionError::UnsupportedTargetType { .. }
        | ExecutionError::NotSupportedAsMethod { .. }
        | ExecutionError::InvalidArgumentCount { .. }
        | ExecutionError::UnsupportedKeyType(_) => true,
        _ => false,
    }
}

fn type_message(e: &ExecutionError) -> String {
    match e {
        ExecutionError::UndeclaredReference(name) => format!("unknown function or name `{name}`"),
        ExecutionError::NoSuchOverload(o) => format!(
            "wrong types: `{}` cannot take ({}) (numbers are doubles: write 2.0 in arithmetic; compare text with text)",
            o.function().trim_matches('_'),
            o.argument_types().join(", ")
        ),
        ExecutionError::ValuesNotComparable(a, b) => format!(
            "wrong types: a {} cannot be compared with a {}",
            a.type_of(),
            b.type_of()
        ),
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => format!(
            "wrong types: `{op}` cannot combine a {} and a {} (numbers are doubles: write 2.0, not 2)",
            a.type_of(),
            b.type_of()
        ),
        other => format!("wrong types: {other}"),
    }
}

/// The character offset of 1-based (line, column) in `s`.
fn char_offset(s: &str, line: isize, column: isize) -> usize {
    let line = line.max(1) as usize;
    let column = column.max(1) as usize;
    let before: usize = s
        .split_inclusive('\n')
        .take(line - 1)
        .map(|l| l.chars().count())
        .sum();
    before + column - 1
}

/// The AST walk: names checked, fields recorded, calls collected.
struct Walk<'a> {
    schema: &'a Schema,
    scope: Scope,
    /// Names a macro binds, innermost last.
    bound: Vec<String>,
    bound_names: BTreeSet<String>,
    used: BTreeSet<(Namespace, String)>,
    checks: Vec<IdedExpr>,
}

type WalkError = (u64, String);

impl Walk<'_> {
    fn expr(&mut self, e: &IdedExpr) -> Result<(), WalkError> {
        match &e.expr {
            Expr::Ident(name) => {
                if self.bound.iter().any(|b| b == name) {
                    return Ok(());
                }
                match Namespace::parse(name) {
                    Some(ns) => Err((
                        e.id,
                        format!("use `{}.<feature>`, not `{name}` alone", ns.as_str()),
                    )),
                    None => Err((e.id, self.unknown_name(name))),
                }
            }
            Expr::Select(sel) => {
                if let Expr::Ident(name) = &sel.operand.expr {
                    if !self.bound.iter().any(|b| b == name) {
                        if let Some(ns) = Namespace::parse(name) {
                            // point at the start of `ns.field`
                            return self.field(sel.operand.id, ns, &sel.field);
                        }
                    }
                }
                self.expr(&sel.operand)
            }
            Expr::Call(call) => {
                if let Some(t) = &call.target {
                    self.expr(t)?;
                }
                for a in &call.args {
                    self.expr(a)?;
                }
                self.checks.push(e.clone());
                Ok(())
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range)?;
                self.expr(&c.accu_init)?;
                let mut names = vec![c.iter_var.clone(), c.accu_var.clone()];
                names.extend(c.iter_var2.clone());
                let depth = self.bound.len();
                for n in names {
                    self.bound_names.insert(n.clone());
                    self.bound.push(n);
                }
                let body = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|x| self.expr(x));
                self.bound.truncate(depth);
                body?;
                self.checks.push(e.clone());
                Ok(())
            }
            Expr::List(l) => l.elements.iter().try_for_each(|x| self.expr(x)),
            Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    self.expr(&me.key)?;
                    self.expr(&me.value)
                }
                EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Struct(s) => Err((
                e.id,
                format!("`{}{{...}}`: conditions cannot build messages", s.type_name),
            )),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    fn field(&mut self, id: u64, ns: Namespace, field: &str) -> Result<(), WalkError> {
        if self.scope == Scope::Request && ns.per_item() {
            return Err((
                id,
                format!(
                    "`{}.{field}` differs per item: `when` is checked once per request; use `item_when`",
                    ns.as_str()
                ),
            ));
        }
        match self.schema.field_type(ns, field) {
            Some(_) => {
                self.used.insert((ns, field.to_string()));
                Ok(())
            }
            None => {
                let known = self.schema.names(ns);
                Err((
                    id,
                    format!(
                        "unknown feature `{}.{field}`; {} has: {}",
                        ns.as_str(),
                        ns.as_str(),
                        if known.is_empty() {
                            "nothing".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ))
            }
        }
    }

    fn unknown_name(&self, name: &str) -> String {
        let vars = match self.scope {
            Scope::Request => "customer, session, context",
            Scope::Item => "customer, session, context, item, cross",
        };
        format!("unknown name `{name}`; conditions read {vars}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;

    fn schema() -> (Arc<Env>, Schema) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped definitions load");
        (Arc::new(Env::stdlib()), Schema::new(&set))
    }

    #[test]
    fn good_conditions_compile_and_record_what_they_read() {
        let (env, s) = schema();
        for (src, scope) in [
            ("customer.cart_value > 100", Scope::Request),
            (
                "'p7' in customer.recent_items && session.page_views >= 2.0",
                Scope::Request,
            ),
            ("item.category in customer.recent_categories", Scope::Item),
            (
                "item.in_stock == 0.0 || cross.purchased_before == 1.0",
                Scope::Item,
            ),
            ("customer.recent_items.exists(x, x == item.id)", Scope::Item),
            (
                "item.brand.startsWith('ac') && customer.segment != 'staff'",
                Scope::Item,
            ),
            (
                "item.price > customer.cart_value / (customer.cart_items + 1.0)",
                Scope::Item,
            ),
            (
                "item.price > customer.cart_value / customer.cart_items",
                Scope::Item,
            ),
        ] {
            let c =
                Condition::compile(&env, &s, src, scope).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            assert!(!c.used.is_empty(), "{src}");
        }
        let c = Condition::compile(
            &env,
            &s,
            "customer.cart_value > 1.0 && item.price < 5.0",
            Scope::Item,
        )
        .expect("compiles");
        let used: Vec<String> = c
            .used
            .iter()
            .map(|(n, f)| format!("{}.{f}", n.as_str()))
            .collect();
        assert_eq!(used, ["customer.cart_value", "item.price"]);
    }

    #[test]
    fn bad_conditions_say_where_and_why() {
        let (env, s) = schema();
        let cases = [
            ("customer.cart_value >", Scope::Request, 21, "Syntax error"),
            (
                "customer.shoe_size > 3.0",
                Scope::Request,
                0,
                "unknown feature `customer.shoe_size`",
            ),
            (
                "customer.cart_value > \"x\"",
                Scope::Request,
                20,
                "wrong types",
            ),
            (
                "true || customer.segment > 3.0",
                Scope::Request,
                25,
                "wrong types",
            ),
            ("item.price > 3.0", Scope::Request, 0, "differs per item"),
            (
                "shopper.cart_value > 1.0",
                Scope::Request,
                0,
                "unknown name `shopper`",
            ),
            ("customer.cart_value", Scope::Request, 0, "true or false"),
            (
                "nosuch(customer.cart_value)",
                Scope::Request,
                6,
                "unknown function",
            ),
            ("item.price * 2 > 10.0", Scope::Item, 11, "wrong types"),
        ];
        for (src, scope, offset, want) in cases {
            let e = Condition::compile(&env, &s, src, scope).expect_err(src);
            assert!(e.message.contains(want), "{src}: {e:?}");
            assert_eq!(e.offset, offset, "{src}: {e:?}");
        }
    }
}
