//! One request's rules, evaluated synchronously on the features already
//! read (a cel `Context` never lives across an `.await`):
//!
//! 1. [`RuleSet::begin`]: every rule's `when`, once, on the request's
//!    variables; the rules that hold are *active*. Rules whose action's
//!    contact cap the customer has reached are not.
//! 2. [`Active::injections`]: what the active rules want injected (the
//!    decide stage turns sources into item ids).
//! 3. [`Active::judge`]: each candidate against each active rule's
//!    `item_when` → a [`Verdict`]: excluded or not, the product of the
//!    weights, the winning action (highest priority; on a tie the rule
//!    first in file order), the reasons, and (for `explain`) what each rule
//!    did. A rule with `inject` matches only the items its source gave.
//!
//! A condition that fails at run time (say a feature missing from a
//! stored state in a way the checks could not foresee) skips that rule for
//! that item and is counted; it never fails the request.

use super::file::Inject;
use super::schema::{Inputs, ItemVars, RequestVars};
use super::RuleSet;
use crate::decide::Label;
use crate::features::aggregate::EntityState;
use cel::Context;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The rules that hold for one request.
pub struct Active<'r> {
    set: &'r RuleSet,
    vars: RequestVars,
    /// Indices into `set.rules`.
    rules: Vec<usize>,
    /// Rules left out because their cap is reached.
    pub capped: Vec<usize>,
}

/// What a rule did to an item (for `explain`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Did {
    Excluded,
    Weight {
        weight: f64,
    },
    Action {
        action: Label,
        priority: i64,
        chosen: bool,
    },
    Injected,
}

/// One rule's part in an item's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    pub rule: String,
    pub file: String,
    pub did: Vec<Did>,
}

/// What the rules decided for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The first rule (in order) that excluded it.
    pub excluded_by: Option<usize>,
    /// Product of the matching rules' weights.
    pub weight: f64,
    /// The winning action and the rule it came from.
    pub action: Option<(Label, usize)>,
    /// Reasons of the rules that shaped it, in rule order.
    pub reasons: Vec<Label>,
    /// Filled when asked to explain.
    pub explained: Vec<Explained>,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            excluded_by: None,
            weight: 1.0,
            action: None,
            reasons: Vec::new(),
            explained: Vec::new(),
        }
    }
}

/// Which items each injecting rule's source gave, by rule index.
pub type Sourced = HashMap<usize, HashSet<String>>;

impl RuleSet {
    /// Evaluates every rule's `when` for a request. `capped_actions` are the
    /// (rule index) whose contact cap the customer has reached.
    pub fn begin(&self, inp: &Inputs<'_>, capped: &[usize]) -> Active<'_> {
        let vars = self.plan.request_vars(inp);
        let ctx = request_context(self, &vars);
        let mut active = Vec::with_capacity(self.rules.len());
        let mut left_out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let holds = match &r.when {
                None => true,
                Some(c) => match c.eval(&ctx) {
                    Ok(b) => b,
                    Err(e) => {
                        rule_error(&r.name, &e);
                        false
                    }
                },
            };
            if !holds {
                continue;
            }
            if capped.contains(&i) {
                left_out.push(i);
            } else {
                active.push(i);
            }
        }
        Active {
            set: self,
            vars,
            rules: active,
            capped: left_out,
        }
    }
}

fn request_context<'a>(set: &RuleSet, vars: &RequestVars) -> Context<'a, 'a> {
    let mut ctx = Context::with_env(set.env.clone());
    ctx.add_variable_from_value("customer", vars.customer.clone());
    ctx.add_variable_from_value("session", vars.session.clone());
    ctx.add_variable_from_value("context", vars.context.clone());
    ctx
}

fn rule_error(rule: &str, e: &cel::ExecutionError) {
    tracing::debug!(rule, error = %e, "rule skipped: its condition failed");
    metrics::counter!(crate::metrics::RULE_ERRORS, "rule" => rule.to_string()).increment(1);
}

impl Active<'_> {
    /// The active rules' injections: (rule index, what, reason).
    pub fn injections(&self) -> Vec<(usize, &Inject, Label)> {
        self.rules
            .iter()
            .filter_map(|&i| {
                let r = &self.set.rules[i];
                r.effects
                    .inject
                    .as_ref()
                    .map(|inj| (i, inj, r.reason.clone()))
            })
            .collect()
    }

    /// Whether any rule is active.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule with index `i`.
    pub fn rule(&self, i: usize) -> &Arc<super::rule::Rule> {
        &self.set.rules[i]
    }

    /// Judges each candidate `(id, state)`; `sourced` says which items the
    /// injecting rules' sources gave.
    pub fn judge(
        &self,
        inp: &Inputs<'_>,
        items: &[(&str, &EntityState)],
        sourced: &Sourced,
        explain: bool,
    ) -> Vec<Verdict> {
        let mut out = vec![Verdict::default(); items.len()];
        for &ri in &self.capped {
            let name = self.set.rules[ri].name.clone();
            metrics::counter!(crate::metrics::CONTACT_SUPPRESSED, "rule" => name).increment(1);
        }
        if self.rules.is_empty() {
            return out;
        }
        let root = request_context(self.set, &self.vars);
        let reads_items = self.set.plan.reads_items();
        let mut matches = vec![0u64; self.rules.len()];
        for (verdict, (id, state)) in out.iter_mut().zip(items) {
            let vars = if reads_items {
                self.set.plan.item_vars(inp, id, state)
            } else {
                ItemVars {
                    item: cel::Value::Null,
                    cross: cel::Value::Null,
                }
            };
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value("item", vars.item);
            ctx.add_variable_from_value("cross", vars.cross);
            let mut best: Option<(i64, usize)> = None;
            for (slot, &ri) in self.rules.iter().enumerate() {
                let r = &self.set.rules[ri];
                let injected = r.effects.inject.is_some();
                if injected && !sourced.get(&ri).is_some_and(|s| s.contains(*id)) {
                    continue;
                }
                let holds = match &r.item_when {
                    None => true,
                    Some(c) => match c.eval(&ctx) {
                        Ok(b) => b,
                        Err(e) => {
                            rule_error(&r.name, &e);
                            false
                        }
                    },
                };
                if !holds {
                    continue;
                }
                matches[slot] += 1;
                let mut did = Vec::new();
                if r.effects.exclude {
                    if verdict.excluded_by.is_none() {
                        verdict.excluded_by = Some(ri);
                    }
                    did.push(Did::Excluded);
                }
                if injected {
                    did.push(Did::Injected);
                }
                if r.effects.weight != 1.0 {
                    verdict.weight *= r.effects.weight;
                    did.push(Did::Weight {
                        weight: r.effects.weight,
                    });
                }
                if let Some((priority, _)) = &r.effects.action {
                    if best.is_none_or(|(p, _)| *priority > p) {
                        best = Some((*priority, ri));
                    }
                }
                if !r.effects.exclude && (injected || r.effects.weight != 1.0) {
                    push_reason(&mut verdict.reasons, &r.reason);
                }
                if explain {
                    verdict.explained.push(Explained {
                        rule: r.name.clone(),
                        file: r.file.clone(),
                        did,
                    });
                }
            }
            if let Some((_, ri)) = best {
                let r = &self.set.rules[ri];
                if let Some((_, action)) = &r.effects.action {
                    verdict.action = Some((action.clone(), ri));
                    push_reason(&mut verdict.reasons, &r.reason);
                }
            }
            if explain {
                self.explain_actions(verdict, best.map(|(_, ri)| ri));
            }
        }
        for (slot, n) in matches.into_iter().enumerate() {
            if n > 0 {
                let name = self.set.rules[self.rules[slot]].name.clone();
                metrics::counter!(crate::metrics::RULE_MATCHES, "rule" => name).increment(n);
            }
        }
        out
    }

    /// Adds each matching rule's action to its explanation, marking the
    /// one chosen.
    fn explain_actions(&self, verdict: &mut Verdict, chosen: Option<usize>) {
        for e in &mut verdict.explained {
            let Some(ri) = self
                .rules
                .iter()
                .copied()
                .find(|&ri| self.set.rules[ri].name == e.rule)
            else {
                continue;
            };
            if let Some((priority, action)) = &self.set.rules[ri].effects.action {
                e.did.push(Did::Action {
                    action: action.clone(),
                    priority: *priority,
                    chosen: chosen == Some(ri),
                });
            }
        }
    }
}

fn push_reason(reasons: &mut Vec<Label>, reason: &Label) {
    if !reasons.contains(reason) {
        reasons.push(reason.clone());
    }
}
