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
use crate::features::aggregate::EntityState;
use crate::features::vector::ContextValues;
use crate::features::FeatureSet;
use crate::rules::eval::{Active, ItemCells, Sourced, Verdict};
use crate::rules::schema::Inputs;

/// The action an item gets when no rule gives it one.
pub const ACTION_RECOMMEND: &str = "recommend";

/// The items the request's active rules inject: per injecting rule, its
/// source's items (in order) and the reason they carry; and which items
/// each injecting rule's source gave.
pub struct Injections {
    pub added: Vec<(Vec<String>, Label)>,
    pub sourced: Sourced,
}

/// What the injecting rules that hold add.
pub fn injections(active: &Active<'_>, customer: &EntityState, pop: &Popularity) -> Injections {
    let mut added = Vec::new();
    let mut sourced = Sourced::new();
    for (ri, inject, reason) in active.injections() {
        let ids = candidates::from_source(&inject.source, customer, pop, inject.limit);
        sourced.insert(ri, ids.iter().cloned().collect());
        added.push((ids, reason));
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
        covisit: &fetched.covisit,
    }
}

/// Every candidate's verdict (in candidate order), and the item fields the
/// rules computed for them (which the model's rows reuse).
pub fn judge<'a>(
    active: &Active<'_>,
    inputs: &Inputs<'a>,
    cands: &'a [Candidate],
    fetched: &'a Fetched,
    sourced: &Sourced,
    explain: bool,
) -> (Vec<Verdict>, ItemCells<'a>) {
    let items: Vec<(&str, &EntityState)> = cands
        .iter()
        .zip(&fetched.items)
        .map(|(c, st)| (c.item_id.as_str(), st.as_ref()))
        .collect();
    let cells = active.item_cells(inputs, &items);
    let verdicts = active.judge_cells(&cells, &items, sourced, explain);
    (verdicts, cells)
}
