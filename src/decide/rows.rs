//! The rows stage: the eligible candidates' feature matrix for one model.
//! Customer, session and context columns are computed once per request
//! ([`RowPlan::request_row`]); each row copies them and adds the item's own
//! columns, looked up through the plan's compiled feature indices.

use super::candidates::Candidate;
use super::fetch::Fetched;
use crate::features::vector::{ContextValues, RowInputs, RowPlan};
use crate::features::FeatureSet;

/// Row-major model input: `rows` × the plan's width.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    pub data: Vec<f32>,
    pub rows: usize,
}

/// Builds the rows of `eligible` (indices into `cands` and `fetched.items`).
pub fn build(
    set: &FeatureSet,
    plan: &RowPlan,
    fetched: &Fetched,
    context: &ContextValues,
    now: i64,
    cands: &[Candidate],
    eligible: &[usize],
) -> Matrix {
    let inputs = RowInputs {
        customer: &fetched.customer,
        session: &fetched.session,
        context,
        now,
    };
    let request = plan.request_row(set, &inputs);
    let mut data = Vec::with_capacity(eligible.len() * plan.width());
    for &i in eligible {
        plan.push_item_row(
            set,
            &inputs,
            &request,
            &cands[i].item_id,
            &fetched.items[i],
            &mut data,
        );
    }
    Matrix {
        data,
        rows: eligible.len(),
    }
}
