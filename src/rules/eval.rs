//! One request's rules, evaluated synchronously on the features already
//! read (a cel `Context` never lives across an `.await`):
//!
//! 1. [`RuleSet::begin`]: every rule's `when`, once, on the request's
//!    variables; the rules that hold are *active*. Rules whose action's
//!    contact cap the customer has reached are not.
//! 2. [`Active::injections`]: what the active rules want injected (the
//!    decide stage turns sources into item ids).
//! 3. [`Active::item_cells`]: every candidate's item fields the active
//!    rules read, computed once (the model's rows reuse the numbers);
//! 4. [`Active::judge_cells`]: each candidate against each active rule's
//!    `item_when` → a [`Verdict`]: excluded or not, the product of the
//!    weights, the winning action (highest priority; on a tie the rule
//!    first in file order), the reasons, and (for `explain`) what each rule
//!    did. A rule with `inject` matches only the items its source gave.
//!    A condition of the common shapes is evaluated on the cells directly
//!    ([`super::fast`]); any other runs in cel, and as it is a pure
//!    function of the fields it reads, its result is kept per combination
//!    of its item fields within the request: a rule on `has(item.x)` runs
//!    at most twice per request, however many candidates there are.
//!    ([`Active::judge`] is 3 then 4.)
//!
//! A condition that fails at run time (an index past the end of a list
//! that is empty for this customer, `customer.recent_items[0]`; a
//! conversion the data does not allow, `int(item.brand)`) skips that rule
//! for that item and never fails the request. Each skip is counted
//! (`nextbest_rule_errors_total`): a `when` once per request, an
//! `item_when` once per item, also for an item whose values were already
//! met in the request (the kept result remembers it failed); the reason is
//! logged (debug) once per distinct set of values.

use super::fast::Scope;
use super::file::Inject;
use super::schema::{Bound, Cell, Inputs, ItemVars, Resolver};
use super::RuleSet;
use crate::decide::Label;
use crate::features::aggregate::EntityState;
use cel::Context;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;

/// The rules that hold for one request.
pub struct Active<'r> {
    set: &'r RuleSet,
    request: Bound,
    /// Indices into `set.rules`.
    rules: Vec<usize>,
    /// Rules left out because their cap is reached.
    pub capped: Vec<usize>,
}

/// A condition's result kept within a request: the first item that had
/// the values it reads, and the result (`None`: the condition failed).
type Kept = (usize, Option<bool>);

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

/// Every candidate's item fields for the rules: one row of `stride`
/// cells per candidate, in candidate order.
pub struct ItemCells<'a> {
    stride: usize,
    cells: Vec<Cell<'a>>,
}

impl ItemCells<'_> {
    /// Item field `field` (of the plan's [`super::schema::Plan::item_fields`])
    /// of candidate `item`, if it is a number the rules computed.
    pub fn number(&self, item: usize, field: usize) -> Option<f64> {
        if field >= self.stride {
            return None;
        }
        match self.cells.get(item * self.stride + field)? {
            Cell::Number(x) => Some(*x),
            _ => None,
        }
    }
}

/// Which items each injecting rule's source gave, by rule index.
pub type Sourced = HashMap<usize, HashSet<String>>;

impl RuleSet {
    /// Evaluates every rule's `when` for a request. `capped` are the rules
    /// (indices) whose contact cap the customer has reached.
    pub fn begin(&self, inp: &Inputs<'_>, capped: &[usize]) -> Active<'_> {
        let request = self.plan.bind_request(inp);
        let (active, left_out) = self.holding(&request, capped);
        Active {
            set: self,
            request,
            rules: active,
            capped: left_out,
        }
    }

    /// The rules whose `when` holds: (active, left out by their cap).
    fn holding(&self, request: &Bound, capped: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let resolver = Resolver {
            plan: &self.plan,
            request,
            item: None,
        };
        let ctx = context(self, &resolver);
        let mut active = Vec::with_capacity(self.rules.len());
        let mut left_out = Vec::new();
        let scope = Scope {
            request: &request.values,
            item: &[],
        };
        for (i, r) in self.rules.iter().enumerate() {
            let fast = self.fast[i].0.as_ref().and_then(|f| f.eval(&scope));
            let holds = match (&r.when, fast) {
                (None, _) => true,
                (Some(_), Some(b)) => b,
                (Some(c), None) => match c.eval(&ctx) {
                    Ok(b) => b,
                    Err(e) => {
                        rule_error(&r.name, &e);
                        count_errors(&r.name, 1);
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
        (active, left_out)
    }
}

/// A context whose variables come from `resolver`.
fn context<'a>(set: &RuleSet, resolver: &'a Resolver<'a>) -> Context<'a, 'a> {
    let mut ctx = Context::with_env(set.env.clone());
    ctx.set_variable_resolver(resolver);
    ctx
}

/// Logs why a rule's condition failed (once per distinct set of values).
fn rule_error(rule: &str, e: &cel::ExecutionError) {
    tracing::debug!(rule, error = %e, "rule skipped: its condition failed");
}

/// Counts `n` skips of `rule` (one metric call per rule per stage).
fn count_errors(rule: &str, n: u64) {
    metrics::counter!(crate::metrics::RULE_ERRORS, "rule" => rule.to_string()).increment(n);
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

    /// Judges each candidate `(id, state)`; `sourced` says which items the
    /// injecting rules' sources gave. [`Self::item_cells`] then
    /// [`Self::judge_cells`].
    pub fn judge(
        &self,
        inp: &Inputs<'_>,
        items: &[(&str, &EntityState)],
        sourced: &Sourced,
        explain: bool,
    ) -> Vec<Verdict> {
        let cells = self.item_cells(inp, items);
        self.judge_cells(&cells, items, sourced, explain)
    }

    /// Every candidate's item fields that the active rules read (the
    /// others are [`Cell::Null`]), borrowed from the states: nothing is
    /// allocated per field. The model's rows reuse the numbers
    /// ([`ItemCells::number`]).
    pub fn item_cells<'a>(
        &self,
        inp: &Inputs<'a>,
        items: &[(&'a str, &'a EntityState)],
    ) -> ItemCells<'a> {
        let plan = &self.set.plan;
        let stride = plan.item_fields().count();
        let mut cells: Vec<Cell<'a>> = Vec::new();
        if self.rules.is_empty() {
            return ItemCells { stride, cells };
        }
        // only the item fields the active rules read are computed
        let mut needed = vec![false; stride];
        for &ri in &self.rules {
            for &k in &self.set.memo_keys[ri] {
                needed[k] = true;
            }
        }
        cells.reserve(stride * items.len());
        for (id, state) in items {
            plan.item_cells(inp, id, state, &needed, &mut cells);
        }
        ItemCells { stride, cells }
    }

    /// Judges each candidate on its cells (of [`Self::item_cells`], in the
    /// same order as `items`).
    pub fn judge_cells(
        &self,
        cells: &ItemCells<'_>,
        items: &[(&str, &EntityState)],
        sourced: &Sourced,
        explain: bool,
    ) -> Vec<Verdict> {
        let mut out = vec![Verdict::default(); items.len()];
        for &ri in &self.capped {
            let name = self.set.rules[ri].name.clone();
            metrics::counter!(crate::metrics::CONTACT_SUPPRESSED, "rule" => name).increment(1);
        }
        if self.rules.is_empty() || cells.cells.len() < cells.stride * items.len() {
            return out;
        }
        let plan = &self.set.plan;
        let mut matches = vec![0u64; self.rules.len()];
        let mut errors = vec![0u64; self.rules.len()];
        let stride = cells.stride;
        let cells = &cells.cells;
        // a condition is a pure function of the fields it reads: per rule,
        // the hash of its fields' values → a kept result; none for a
        // condition of the fast form, which costs less than a lookup
        let mut memo: Vec<FxHashMap<u64, Kept>> = self
            .rules
            .iter()
            .map(|&ri| match self.set.fast[ri].1 {
                Some(_) => FxHashMap::default(),
                None => FxHashMap::with_capacity_and_hasher(items.len(), Default::default()),
            })
            .collect();
        let row = |n: usize| &cells[n * stride..(n + 1) * stride];
        for (n, (verdict, (id, _))) in out.iter_mut().zip(items).enumerate() {
            let values = row(n);
            // the item's variables, made only if some condition must run
            let mut vars: Option<ItemVars<'_>> = None;
            let mut best: Option<(i64, usize)> = None;
            // the rule of each entry of `verdict.explained`
            let mut explained_rules: Vec<usize> = Vec::new();
            for (slot, &ri) in self.rules.iter().enumerate() {
                let r = &self.set.rules[ri];
                let injected = r.effects.inject.is_some();
                if injected && !sourced.get(&ri).is_some_and(|s| s.contains(*id)) {
                    continue;
                }
                let fast = self.set.fast[ri].1.as_ref().and_then(|f| {
                    f.eval(&Scope {
                        request: &self.request.values,
                        item: values,
                    })
                });
                let holds = match (&r.item_when, fast) {
                    (None, _) => true,
                    (Some(_), Some(b)) => b,
                    (Some(c), None) => {
                        let keys = &self.set.memo_keys[ri];
                        let h = hash_cells(keys.iter().map(|&k| &values[k]));
                        let kept = match memo[slot].get(&h) {
                            Some(&(seen, b)) if same(row(seen), values, keys) => b,
                            _ => {
                                let item = &*vars.get_or_insert_with(|| ItemVars::new(values));
                                let resolver = Resolver {
                                    plan,
                                    request: &self.request,
                                    item: Some(item),
                                };
                                let b = c
                                    .eval(&context(self.set, &resolver))
                                    .map_err(|e| rule_error(&r.name, &e))
                                    .ok();
                                memo[slot].entry(h).or_insert((n, b));
                                b
                            }
                        };
                        // a failed condition: the rule skipped for this item
                        kept.unwrap_or_else(|| {
                            errors[slot] += 1;
                            false
                        })
                    }
                };
                if !holds {
                    continue;
                }
                matches[slot] += 1;
                if r.effects.exclude && verdict.excluded_by.is_none() {
                    verdict.excluded_by = Some(ri);
                }
                if r.effects.weight != 1.0 {
                    verdict.weight *= r.effects.weight;
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
                    explained_rules.push(ri);
                    verdict.explained.push(Explained {
                        rule: r.name.clone(),
                        file: r.file.clone(),
                        did: did(r, injected),
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
            // mark the action chosen in its rule's explanation
            let chosen = best.and_then(|(_, b)| explained_rules.iter().position(|&ri| ri == b));
            if let Some(e) = chosen.and_then(|i| verdict.explained.get_mut(i)) {
                for d in &mut e.did {
                    if let Did::Action { chosen, .. } = d {
                        *chosen = true;
                    }
                }
            }
        }
        for (slot, n) in matches.into_iter().enumerate() {
            if n > 0 {
                let name = self.set.rules[self.rules[slot]].name.clone();
                metrics::counter!(crate::metrics::RULE_MATCHES, "rule" => name).increment(n);
            }
        }
        for (slot, n) in errors.into_iter().enumerate() {
            if n > 0 {
                count_errors(&self.set.rules[self.rules[slot]].name, n);
            }
        }
        out
    }
}

/// What matching rule `r` did (for `explain`).
fn did(r: &super::rule::Rule, injected: bool) -> Vec<Did> {
    let mut did = Vec::new();
    if r.effects.exclude {
        did.push(Did::Excluded);
    }
    if injected {
        did.push(Did::Injected);
    }
    if r.effects.weight != 1.0 {
        did.push(Did::Weight {
            weight: r.effects.weight,
        });
    }
    if let Some((priority, action)) = &r.effects.action {
        did.push(Did::Action {
            action: action.clone(),
            priority: *priority,
            chosen: false,
        });
    }
    did
}

/// A hash of the values a condition reads.
fn hash_cells<'a>(cells: impl Iterator<Item = &'a Cell<'a>>) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    for c in cells {
        match c {
            Cell::Null => h.write_u8(0),
            Cell::Number(x) => h.write_u64(x.to_bits()),
            Cell::Text(t) => {
                h.write_u8(1);
                h.write(t.as_bytes());
                h.write_u8(0xff);
            }
            Cell::List(l) => {
                h.write_usize(l.len());
                for (m, _) in l.iter() {
                    h.write(m.as_bytes());
                    h.write_u8(0xff);
                }
            }
        }
    }
    h.finish()
}

/// Whether two items' rows hold the same values at `keys`.
fn same(seen: &[Cell<'_>], values: &[Cell<'_>], keys: &[usize]) -> bool {
    keys.iter().all(|&k| seen[k] == values[k])
}

fn push_reason(reasons: &mut Vec<Label>, reason: &Label) {
    if !reasons.contains(reason) {
        reasons.push(reason.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::aggregate::LastValue;
    use crate::features::vector::ContextValues;
    use crate::features::FeatureSet;

    fn set() -> FeatureSet {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feature-store/features.toml");
        FeatureSet::load(&path).expect("shipped definitions")
    }

    fn rules(set: &FeatureSet, text: &str) -> RuleSet {
        let dir = std::env::temp_dir().join(format!("nb-eval-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("r.toml"), text).expect("write");
        let r = RuleSet::load(&dir, set, None);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(r.errors().next().is_none(), "{:?}", r.files);
        r
    }

    fn item(in_stock: &str, price: &str) -> EntityState {
        let mut st = EntityState::default();
        for (k, v) in [("in_stock", in_stock), ("price", price)] {
            st.lasts.insert(
                k.into(),
                LastValue {
                    ts: 1,
                    seq: 0,
                    value: v.into(),
                },
            );
        }
        st
    }

    #[test]
    fn a_failing_condition_skips_its_rule_for_that_item_and_counts_each_item() {
        let set = set();
        let rules = rules(
            &set,
            // on a customer with no recent items, `recent_items[0]` fails:
            // for the dear items only (`&&` stops at a false left side)
            "[[rule]]\nname = \"latest\"\nitem_when = \"item.price > 50.0 && customer.recent_items[0] == 'p7'\"\nweight = 5.0\n\
             [[rule]]\nname = \"coded\"\nitem_when = \"int(item.brand) > 2\"\nweight = 3.0\n\
             [[rule]]\nname = \"dear\"\nitem_when = \"item.price > 50.0\"\nweight = 2.0\n\
             [[rule]]\nname = \"returning\"\nwhen = \"customer.recent_items[0] == 'p7'\"\nweight = 7.0\n",
        );
        let mut states = [
            item("1", "10"),
            item("1", "99"),
            item("1", "99"),
            item("1", "10"),
        ];
        // only d has a brand `int()` can read; a, b and c have none ("")
        states[3].lasts.insert(
            "brand".into(),
            LastValue {
                ts: 1,
                seq: 0,
                value: "7".into(),
            },
        );
        let ids = ["a", "b", "c", "d"];
        let customer = EntityState::default();
        let ctx = ContextValues::defaults(&set);
        let inp = Inputs {
            set: &set,
            customer: &customer,
            session: &customer,
            context: &ctx,
            now: 10,
            covisit: &Default::default(),
        };
        assert!(rules.fast[0].1.is_none() && rules.fast[1].1.is_none());
        let items: Vec<(&str, &EntityState)> = ids.iter().copied().zip(states.iter()).collect();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let v = metrics::with_local_recorder(&recorder, || {
            rules
                .begin(&inp, &[])
                .judge(&inp, &items, &Sourced::new(), false)
        });
        // no item is lost and the rules that could be decided still apply:
        // b and c get dear's ×2 without latest's ×5, d coded's ×3, and no
        // item returning's ×7 (its `when` failed)
        assert!(v.iter().all(|v| v.excluded_by.is_none()), "{v:?}");
        let weights: Vec<f64> = v.iter().map(|v| v.weight).collect();
        assert_eq!(weights, [1.0, 2.0, 2.0, 3.0]);
        let reasons: Vec<Vec<&str>> = v
            .iter()
            .map(|v| v.reasons.iter().map(|r| r.as_ref()).collect())
            .collect();
        assert_eq!(reasons, [vec![], vec!["dear"], vec!["dear"], vec!["coded"]]);
        // counted per item, c too although its values were b's (kept
        // result); the failed `when` once for the request; dear never
        let text = metrics.render();
        let count = |rule: &str| {
            let series = format!("nextbest_rule_errors_total{{rule=\"{rule}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert_eq!(
            (
                count("latest"),
                count("coded"),
                count("returning"),
                count("dear")
            ),
            (2, 3, 1, 0),
            "{text}"
        );
    }

    #[test]
    fn kept_results_match_evaluating_every_item() {
        let set = set();
        let rules = rules(
            &set,
            "[[rule]]\nname = \"oos\"\nitem_when = \"item.in_stock == 0.0\"\nexclude = true\n\
             [[rule]]\nname = \"dear\"\nitem_when = \"item.price > 50.0 && size(item.category) == 0\"\nweight = 2.0\n\
             [[rule]]\nname = \"pick\"\nitem_when = \"item.id == 'c' || customer.cart_value > 1000.0\"\naction = \"pick\"\n",
        );
        let states = [
            item("1", "10"),
            item("0", "10"),
            item("1", "99"),
            item("1", "10"),
            item("0", "99"),
        ];
        let ids = ["a", "b", "c", "d", "e"];
        let customer = EntityState::default();
        let ctx = ContextValues::defaults(&set);
        let inp = Inputs {
            set: &set,
            customer: &customer,
            session: &customer,
            context: &ctx,
            now: 10,
            covisit: &Default::default(),
        };
        // "dear" is no shape of the fast form: it runs in cel, its results kept
        assert!(rules.fast[1].1.is_none() && rules.fast[0].1.is_some());
        let items: Vec<(&str, &EntityState)> = ids.iter().copied().zip(states.iter()).collect();
        let v = rules
            .begin(&inp, &[])
            .judge(&inp, &items, &Sourced::new(), false);
        let excluded: Vec<bool> = v.iter().map(|v| v.excluded_by.is_some()).collect();
        assert_eq!(excluded, [false, true, false, false, true]);
        let weights: Vec<f64> = v.iter().map(|v| v.weight).collect();
        assert_eq!(weights, [1.0, 1.0, 2.0, 1.0, 2.0]);
        let actions: Vec<Option<&str>> = v
            .iter()
            .map(|v| v.action.as_ref().map(|(a, _)| a.as_ref()))
            .collect();
        assert_eq!(actions, [None, None, Some("pick"), None, None]);
    }
}
