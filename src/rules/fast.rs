//! A shortcut past cel's interpreter for the conditions most rules are:
//! fields compared with constants or with each other, text `in` a list,
//! joined by `&&`, `||`, `!` and `? :`. The shape is recognised in the
//! expression cel itself parsed (there is no parser here) when a rule set
//! loads, and evaluated on the request's and the item's values directly:
//! no cel value, context or error is built per item.
//!
//! A shape is taken only where cel's result follows from the types alone
//! (every field's type is known from the definitions, see
//! [`super::schema`]):
//!
//! - numbers are doubles: `+ - * /` and unary `-` as IEEE 754 (as cel's
//!   `double`: no error, a division by zero is an infinity); an int literal
//!   only as an operand of a comparison with a double, which cel compares
//!   as `i as f64`;
//! - `< <= > >= == !=` on two numbers; `== !=` on two texts;
//! - text `in` a list of text (a list field or a literal list of string
//!   literals);
//! - `&&`, `||`, `!`, `c ? a : b` on those, and `true`/`false`.
//!
//! Anything else (calls, macros, other types, `has`) is left to cel, whole.
//! So is any evaluation that meets a NaN (cel raises on ordering it) or a
//! value missing from the cells: [`Fast::eval`] then answers `None` and
//! the caller runs the cel program, so every answer is cel's. The tests
//! compare both on many conditions and values.

use super::schema::{Cell, FieldType, Namespace, RequestValue};
use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

/// Where a field's value is: the item's cells or the request's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// Index into an item's row of cells.
    Item(usize),
    /// Index into the request's values.
    Request(usize),
}

/// A condition in a shape evaluated without cel.
#[derive(Debug, Clone, PartialEq)]
pub enum Fast {
    Const(bool),
    Not(Box<Fast>),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Compare(Compare, Num, Num),
    /// `a == b` (`equal`) or `a != b` on texts.
    TextEq {
        equal: bool,
        a: Text,
        b: Text,
    },
    In(Text, List),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Less,
    LessEq,
    Greater,
    GreaterEq,
    Equal,
    NotEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// A double.
#[derive(Debug, Clone, PartialEq)]
pub enum Num {
    Var(Var),
    Lit(f64),
    Arith(Arith, Box<Num>, Box<Num>),
    Neg(Box<Num>),
    Cond(Box<Fast>, Box<Num>, Box<Num>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    Var(Var),
    Lit(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum List {
    Var(Var),
    Lit(Vec<String>),
}

/// The values one evaluation reads.
pub struct Scope<'s> {
    pub request: &'s [RequestValue],
    pub item: &'s [Cell<'s>],
}

/// How a compile finds a field: its place and type, if the plan reads it.
pub trait Fields {
    fn field(&self, ns: Namespace, name: &str) -> Option<(Var, FieldType)>;
}

/// An operand of a comparison: a double, or an int literal (which cel
/// compares with a double as a double).
enum Operand {
    Num(Num),
    Int(i64),
}

impl Fast {
    /// The fast form of `e`, if its whole shape is one of those above.
    pub fn compile(e: &IdedExpr, fields: &dyn Fields) -> Option<Fast> {
        match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Const(*b.inner())),
            Expr::Call(call) if call.target.is_none() => {
                let args = &call.args;
                let name = call.func_name.as_str();
                match (name, args.len()) {
                    (operators::LOGICAL_NOT, 1) => {
                        Some(Fast::Not(Box::new(Fast::compile(&args[0], fields)?)))
                    }
                    (operators::LOGICAL_AND | operators::LOGICAL_OR, 2) => {
                        let a = Box::new(Fast::compile(&args[0], fields)?);
                        let b = Box::new(Fast::compile(&args[1], fields)?);
                        Some(if name == operators::LOGICAL_AND {
                            Fast::And(a, b)
                        } else {
                            Fast::Or(a, b)
                        })
                    }
                    (operators::IN, 2) => {
                        Some(Fast::In(text(&args[0], fields)?, list(&args[1], fields)?))
                    }
                    (_, 2) => {
                        let op = compare_op(name)?;
                        if let (Some(a), Some(b)) = (text(&args[0], fields), text(&args[1], fields))
                        {
                            return match op {
                                Compare::Equal | Compare::NotEqual => Some(Fast::TextEq {
                                    equal: op == Compare::Equal,
                                    a,
                                    b,
                                }),
                                _ => None,
                            };
                        }
                        let (a, b) = match (operand(&args[0], fields)?, operand(&args[1], fields)?)
                        {
                            (Operand::Num(a), Operand::Num(b)) => (a, b),
                            (Operand::Num(a), Operand::Int(i)) => (a, Num::Lit(i as f64)),
                            (Operand::Int(i), Operand::Num(b)) => (Num::Lit(i as f64), b),
                            (Operand::Int(_), Operand::Int(_)) => return None,
                        };
                        Some(Fast::Compare(op, a, b))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The condition's value, or `None` where cel must decide (a NaN
    /// compared, a value missing or of another kind).
    pub fn eval(&self, s: &Scope<'_>) -> Option<bool> {
        Some(match self {
            Fast::Const(b) => *b,
            Fast::Not(x) => !x.eval(s)?,
            Fast::And(a, b) => a.eval(s)? && b.eval(s)?,
            Fast::Or(a, b) => a.eval(s)? || b.eval(s)?,
            Fast::Compare(op, a, b) => {
                let (x, y) = (a.eval(s)?, b.eval(s)?);
                if x.is_nan() || y.is_nan() {
                    return None;
                }
                match op {
                    Compare::Less => x < y,
                    Compare::LessEq => x <= y,
                    Compare::Greater => x > y,
                    Compare::GreaterEq => x >= y,
                    Compare::Equal => x == y,
                    Compare::NotEqual => x != y,
                }
            }
            Fast::TextEq { equal, a, b } => (a.eval(s)? == b.eval(s)?) == *equal,
            Fast::In(t, l) => {
                let t = t.eval(s)?;
                match l {
                    List::Lit(items) => items.iter().any(|m| m == t),
                    List::Var(Var::Item(j)) => match s.item.get(*j)? {
                        Cell::List(l) => l.iter().any(|(m, _)| m == t),
                        _ => return None,
                    },
                    List::Var(Var::Request(i)) => match s.request.get(*i)? {
                        RequestValue::List(l) => l.iter().any(|m| m == t),
                        _ => return None,
                    },
                }
            }
        })
    }
}

impl Num {
    fn eval(&self, s: &Scope<'_>) -> Option<f64> {
        Some(match self {
            Num::Lit(x) => *x,
            Num::Var(Var::Item(j)) => match s.item.get(*j)? {
                Cell::Number(x) => *x,
                _ => return None,
            },
            Num::Var(Var::Request(i)) => match s.request.get(*i)? {
                RequestValue::Number(x) => *x,
                _ => return None,
            },
            Num::Arith(op, a, b) => {
                let (x, y) = (a.eval(s)?, b.eval(s)?);
                match op {
                    Arith::Add => x + y,
                    Arith::Sub => x - y,
                    Arith::Mul => x * y,
                    Arith::Div => x / y,
                }
            }
            Num::Neg(x) => -x.eval(s)?,
            Num::Cond(c, a, b) => {
                if c.eval(s)? {
                    a.eval(s)?
                } else {
                    b.eval(s)?
                }
            }
        })
    }
}

impl Text {
    fn eval<'s>(&'s self, s: &Scope<'s>) -> Option<&'s str> {
        match self {
            Text::Lit(t) => Some(t),
            Text::Var(Var::Item(j)) => match s.item.get(*j)? {
                Cell::Text(t) => Some(t),
                _ => None,
            },
            Text::Var(Var::Request(i)) => match s.request.get(*i)? {
                RequestValue::Text(t) => Some(t),
                _ => None,
            },
        }
    }
}

fn compare_op(name: &str) -> Option<Compare> {
    Some(match name {
        operators::LESS => Compare::Less,
        operators::LESS_EQUALS => Compare::LessEq,
        operators::GREATER => Compare::Greater,
        operators::GREATER_EQUALS => Compare::GreaterEq,
        operators::EQUALS => Compare::Equal,
        operators::NOT_EQUALS => Compare::NotEqual,
        _ => return None,
    })
}

/// `ns.field` (not a presence test) of a field the plan reads, of type `ty`.
fn var(e: &IdedExpr, fields: &dyn Fields, ty: FieldType) -> Option<Var> {
    let Expr::Select(sel) = &e.expr else {
        return None;
    };
    if sel.test {
        return None;
    }
    let Expr::Ident(ns) = &sel.operand.expr else {
        return None;
    };
    let (v, t) = fields.field(Namespace::parse(ns)?, &sel.field)?;
    (t == ty).then_some(v)
}

fn operand(e: &IdedExpr, fields: &dyn Fields) -> Option<Operand> {
    match &e.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(Operand::Int(*i.inner())),
        _ => num(e, fields).map(Operand::Num),
    }
}

fn num(e: &IdedExpr, fields: &dyn Fields) -> Option<Num> {
    match &e.expr {
        Expr::Literal(LiteralValue::Double(d)) => Some(Num::Lit(*d.inner())),
        Expr::Select(_) => var(e, fields, FieldType::Number).map(Num::Var),
        Expr::Call(call) if call.target.is_none() => {
            let args = &call.args;
            match (call.func_name.as_str(), args.len()) {
                (operators::NEGATE, 1) => Some(Num::Neg(Box::new(num(&args[0], fields)?))),
                (operators::CONDITIONAL, 3) => Some(Num::Cond(
                    Box::new(Fast::compile(&args[0], fields)?),
                    Box::new(num(&args[1], fields)?),
                    Box::new(num(&args[2], fields)?),
                )),
                (name, 2) => {
                    let op = match name {
                        operators::ADD => Arith::Add,
                        operators::SUBSTRACT => Arith::Sub,
                        operators::MULTIPLY => Arith::Mul,
                        operators::DIVIDE => Arith::Div,
                        _ => return None,
                    };
                    Some(Num::Arith(
                        op,
                        Box::new(num(&args[0], fields)?),
                        Box::new(num(&args[1], fields)?),
                    ))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn text(e: &IdedExpr, fields: &dyn Fields) -> Option<Text> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(Text::Lit(s.inner().to_string())),
        Expr::Select(_) => var(e, fields, FieldType::Text).map(Text::Var),
        _ => None,
    }
}

fn list(e: &IdedExpr, fields: &dyn Fields) -> Option<List> {
    match &e.expr {
        Expr::List(l) if l.optional_indices.is_empty() => l
            .elements
            .iter()
            .map(|x| match &x.expr {
                Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .map(List::Lit),
        Expr::Select(_) => var(e, fields, FieldType::List).map(List::Var),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;
    use crate::rules::condition::{Condition, Scope as CondScope};
    use crate::rules::schema::{ItemVars, Resolver, Schema};
    use cel::{Context, Env};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    /// Conditions of the fast form (`true`) and not (`false`).
    const CONDITIONS: &[(&str, bool)] = &[
        ("item.in_stock == 0.0", true),
        ("cross.purchased_before == 1.0", true),
        ("item.id in customer.cart_recent", true),
        ("item.category in customer.recent_categories", true),
        ("item.price > 100.0", true),
        ("item.price > 100", true),
        ("100 < item.price", true),
        ("item.price == 20", true),
        ("item.price != 20", true),
        ("item.price <= 20.0 || item.price >= 100.0", true),
        ("item.brand == 'acme'", true),
        ("'acme' != item.brand", true),
        ("item.margin > 0.3 && item.price > 20.0", true),
        ("cross.viewed_recently == 1.0 && cross.carted_recently == 0.0", true),
        ("item.id in ['p1', 'p2', 'p3', 'p4', 'p5']", true),
        ("item.id in []", true),
        ("item.catalog_category == 'clearance'", true),
        ("item.list_price > 0.0 && item.price < item.list_price * 0.8", true),
        ("item.purchases_7d > 10.0 && customer.segment != 'new'", true),
        ("session.page_views > 3.0 && item.category == 'cat1'", true),
        (
            "item.category == context.page_category || item.catalog_category == context.page_category",
            true,
        ),
        (
            "!(item.id in customer.cart_recent) && (item.price > 0.0 ? item.price : item.list_price) > customer.cart_value / customer.cart_items",
            true,
        ),
        ("item.price / item.list_price > 0.5", true),
        ("item.price - customer.cart_value < -1.0", true),
        ("-item.price + 3.0 >= item.margin", true),
        ("item.price * item.price > 1e300", true),
        ("!(item.price > 1.0) || true", true),
        ("false && item.price > 1.0", true),
        ("customer.cart_value / customer.cart_items > item.price || item.in_stock == 1.0", true),
        ("item.brand.startsWith('ac')", false),
        ("size(customer.recent_categories) > 1", false),
        ("customer.recent_items.exists(x, x == item.id)", false),
        ("has(item.price)", false),
        ("item.price in [1.0, 2.0]", false),
        ("item.brand < 'b'", false),
        ("item.brand == 1.0", false),
    ];

    const TEXTS: &[&str] = &["", "acme", "cat1", "p1", "p3", "clearance", "new", "staff"];
    const NUMBERS: &[f64] = &[
        0.0, -0.0, 1.0, -1.0, 0.3, 0.5, 3.0, 10.0, 20.0, 20.5, 100.0, 100.5, 1e300,
    ];

    /// A small deterministic generator (xorshift).
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as usize
        }
        fn number(&mut self) -> f64 {
            NUMBERS[self.next() % NUMBERS.len()]
        }
        fn text(&mut self) -> &'static str {
            TEXTS[self.next() % TEXTS.len()]
        }
        fn list(&mut self) -> Vec<String> {
            (0..self.next() % 4)
                .map(|_| self.text().to_string())
                .collect()
        }
    }

    #[test]
    fn the_fast_form_answers_as_cel_does() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        let set = FeatureSet::load(&path).expect("shipped definitions");
        let schema = Schema::new(&set);
        let env = Arc::new(Env::stdlib());
        let conditions: Vec<(Condition, bool)> = CONDITIONS
            .iter()
            .map(|(src, fast)| {
                let c = Condition::compile(&env, &schema, src, CondScope::Item)
                    .unwrap_or_else(|e| panic!("{src}: {e:?}"));
                (c, *fast)
            })
            .collect();
        let used: Vec<(Namespace, String)> = conditions
            .iter()
            .flat_map(|(c, _)| c.used.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let plan = schema.plan(&set, &used);
        let compiled: Vec<Option<Fast>> = conditions
            .iter()
            .map(|(c, want)| {
                let f = Fast::compile(c.expression(), &plan);
                assert_eq!(f.is_some(), *want, "{}: {f:?}", c.source);
                f
            })
            .collect();
        let types: Vec<FieldType> = plan
            .item_fields()
            .map(|(ns, name)| plan.place(ns, name).expect("read by the plan").1)
            .collect();
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut agreed, mut left_to_cel) = (0usize, 0usize);
        for round in 0..3_000 {
            let request = plan.bind_values(|_, _, ty| match ty {
                FieldType::Number => RequestValue::Number(g.number()),
                FieldType::Text => RequestValue::Text(g.text().to_string()),
                FieldType::List => RequestValue::List(g.list()),
            });
            let lists: Vec<Vec<(String, i64)>> = types
                .iter()
                .map(|_| g.list().into_iter().map(|m| (m, 1)).collect())
                .collect();
            // every 50th item has a NaN where a number is (cel then decides)
            let row: Vec<Cell<'_>> = types
                .iter()
                .zip(&lists)
                .map(|(ty, l)| match ty {
                    FieldType::Number if round % 50 == 7 => Cell::Number(f64::NAN),
                    FieldType::Number => Cell::Number(g.number()),
                    FieldType::Text => Cell::Text(g.text()),
                    FieldType::List => Cell::List(l),
                })
                .collect();
            let vars = ItemVars::new(&row);
            let resolver = Resolver {
                plan: &plan,
                request: &request,
                item: Some(&vars),
            };
            let mut ctx = Context::with_env(env.clone());
            ctx.set_variable_resolver(&resolver);
            let scope = Scope {
                request: &request.values,
                item: &row,
            };
            for ((c, _), f) in conditions.iter().zip(&compiled) {
                let Some(f) = f else { continue };
                let cel = c.eval(&ctx);
                match f.eval(&scope) {
                    Some(b) => {
                        assert_eq!(cel.as_ref().ok(), Some(&b), "{}: {row:?}", c.source);
                        agreed += 1;
                    }
                    None => left_to_cel += 1,
                }
            }
        }
        // the shortcut answered nearly always; only NaNs went to cel
        assert!(agreed > 50_000, "{agreed}");
        assert!(left_to_cel < agreed / 20, "{left_to_cel} vs {agreed}");
    }
}
