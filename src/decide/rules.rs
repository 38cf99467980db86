//! The rules stage: the rule files' decisions (see [`crate::rules`]) applied
//! to a request's candidates, between fetching and scoring. No decision
//! logic lives here, only its plumbing: which rules hold for the customer,
//! what they inject, and for each candidate whether it may be shown, its
//! weight, its action and its reasons. Without rules every candidate is
//! eligible with weight 1 and the action `recommend`.

use super::candidates::{self, Candidate};
use super::fetch::Fetched;
use super::popularity::Popularity;
use super::request::Label;
use crate::features::vector::ContextValues;
use crate::features::FeatureSet;
use crate::rules::eval::{Sourced, Verdict};
use crate::rules::schema::Inputs;
use crate::rules::RuleSet;

/// The action an item gets when no rule gives it one.
pub const ACTION_RECOMMEND: &str = "recommend";

/// The items the request's active rules inject, with the reason each
/// gives, and which items each injecting rule's source gave.
pub struct Injections {
    pub added: Vec<(String, Label)>,
    pub sourced: Sourced,
}

/// What the injecting rules that hold for this customer add.
pub fn injections(
    rules: &RuleSet,
    inputs: &Inputs<'_>,
    capped: &[usize],
    pop: &Popularity,
) -> Injections {
    let mut added = Vec::new();
    let mut sourced = Sourced::new();
    if !rules.has_injections {
        return Injections { added, sourced };
    }
    let active = rules.begin(inputs, capped);
    for (ri, inject, reason) in active.injections() {
        let ids = candidates::from_source(&inject.source, inputs.customer, pop, inject.limit);
        for id in &ids {
            added.push((id.clone(), reason.clone()));
        }
        sourced.insert(ri, ids.into_iter().collect());
    }
    Injections { added, sourced }
}

/// The inputs rules read for a request.
pub fn inputs<'a>(
    set: &'a FeatureSet,
    fetched: &'a Fetched,
    context: &'a ContextValues,
    now: i64,
) -> Inputs<'a> {
    Inputs {
        set,
        customer: &fetched.customer,
        session: &fetched.session,
        context,
        now,
    }
}

/// Every candidate's verdict (in candidate order).
pub fn judge(
    rules: &RuleSet,
    inputs: &Inputs<'_>,
    capped: &[usize],
    cands: &[Candidate],
    fetched: &Fetched,
    sourced: &Sourced,
    explain: bool,
) -> Vec<Verdict> {
    let active = rules.begin(inputs, capped);
    let items: Vec<(&str, &crate::features::aggregate::EntityState)> = cands
        .iter()
        .zip(&fetched.items)
        .map(|(c, st)| (c.item_id.as_str(), st.as_ref()))
        .collect();
    active.judge(inputs, &items, sourced, explain)
}
