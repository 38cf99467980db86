//! The rows stage: the eligible candidates' feature matrix for one model.
//! Customer, session and context columns are computed once per request
//! ([`RowPlan::request_row`]); each row copies them and adds the item's own
//! columns, looked up through the plan's compiled feature indices. An item
//! column the rules stage already computed for the same candidate (the
//! rules read `item.price`, the model too) is taken from its
//! [`ItemCells`] instead of being computed again ([`Known`]).

use super::candidates::Candidate;
use super::fetch::Fetched;
use crate::features::vector::{ContextValues, RowInputs, RowPlan};
use crate::features::FeatureSet;
use crate::rules::eval::ItemCells;
use crate::rules::RuleSet;

/// Row-major model input: `rows` × the plan's width.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    pub data: Vec<f32>,
    pub rows: usize,
}

/// The item values the rules stage computed, by model column.
pub struct Known<'c> {
    cells: &'c ItemCells<'c>,
    /// Per model column: the rules' item field of the same input.
    columns: Vec<Option<usize>>,
}

impl<'c> Known<'c> {
    /// What of `plan`'s item columns `cells` (of `rules`) hold.
    pub fn new(rules: &RuleSet, plan: &RowPlan, cells: &'c ItemCells<'c>) -> Known<'c> {
        let mut columns = vec![None; plan.width()];
        for &c in plan.item_columns() {
            columns[c] = rules.plan.item_field_of_input(&plan.names()[c]);
        }
        Known { cells, columns }
    }

    /// Column `col` of candidate `item`, if the rules computed it.
    pub fn get(&self, item: usize, col: usize) -> Option<f64> {
        let field = (*self.columns.get(col)?)?;
        self.cells.number(item, field)
    }
}

/// Builds the rows of `eligible` (indices into `cands` and `fetched.items`),
/// taking what `known` holds (cells indexed like `cands`) as computed.
#[allow(clippy::too_many_arguments)]
pub fn build(
    set: &FeatureSet,
    plan: &RowPlan,
    fetched: &Fetched,
    context: &ContextValues,
    now: i64,
    cands: &[Candidate],
    eligible: &[usize],
    known: Option<&Known<'_>>,
) -> Matrix {
    let inputs = RowInputs {
        customer: &fetched.customer,
        session: &fetched.session,
        context,
        now,
        covisit: &fetched.covisit,
    };
    let request = plan.request_row(set, &inputs);
    let mut data = Vec::with_capacity(eligible.len() * plan.width());
    for &i in eligible {
        plan.push_item_row_with(
            set,
            &inputs,
            &request,
            &cands[i].item_id,
            &fetched.items[i],
            |c| known.and_then(|k| k.get(i, c)),
            &mut data,
        );
    }
    Matrix {
        data,
        rows: eligible.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::features::aggregate::plan_event;
    use crate::features::store::memory::MemoryState;
    use crate::rules::schema::Inputs;
    use std::sync::Arc;

    #[test]
    fn rows_taking_the_rules_values_equal_rows_computed_alone() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = Arc::new(
            FeatureSet::load(&root.join("feature-store/features.toml")).expect("definitions"),
        );
        let mut st = MemoryState::new(set.clone(), 3_600_000);
        let t0 = 1_764_355_200_000i64;
        let kinds = ["page_view", "click", "add_to_cart", "purchase", "page_view"];
        let plans: Vec<_> = (0..60)
            .map(|i| {
                let e = Event::from_value(serde_json::json!({
                    "event_id": format!("e{i}"), "type": kinds[i % kinds.len()],
                    "customer_id": "c1", "session_id": "s1", "ts": t0 + i as i64 * 1000,
                    "item_id": format!("p{}", i % 9),
                    "props": {"price": 10.0 + i as f64, "quantity": 1, "category": format!("k{}", i % 3)}
                }))
                .expect("valid event");
                plan_event(&set, &e)
            })
            .collect();
        st.apply(&plans, t0 + 1_000_000);
        // rules reading some of the model's item inputs and others
        let dir = std::env::temp_dir().join(format!("nb-rows-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("r.toml"),
            "[[rule]]\nname = \"a\"\nitem_when = \"item.price > 30.0 && cross.viewed_recently == 1.0\"\nweight = 2.0\n\
             [[rule]]\nname = \"b\"\nitem_when = \"item.views_24h > 2.0 || item.margin > 0.5\"\nweight = 0.5\n\
             [[rule]]\nname = \"c\"\nitem_when = \"item.category == 'k1'\"\nexclude = true\n",
        )
        .expect("write");
        let rules = RuleSet::load(&dir, &set, None);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(rules.errors().next().is_none(), "{:?}", rules.files);
        let model =
            crate::model::manifest::Manifest::load(&root.join("models/ranker/1/model.toml"))
                .expect("shipped manifest");
        let plan = RowPlan::compile(&set, &model.inputs).expect("model inputs compile");
        let ids: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        let (_, session) = st.session("c1", None);
        let fetched = Fetched {
            customer: st.customer("c1").clone(),
            session: session.clone(),
            items: ids.iter().map(|id| Arc::new(st.item(id).clone())).collect(),
            offers: Vec::new(),
            covisit: Default::default(),
        };
        let cands = crate::decide::candidates::requested(&ids);
        let context = ContextValues::defaults(&set);
        let now = t0 + 60_000;
        let inputs = Inputs {
            set: &set,
            customer: &fetched.customer,
            session: &fetched.session,
            context: &context,
            now,
            covisit: &fetched.covisit,
        };
        let active = rules.begin(&inputs, &[]);
        let items: Vec<(&str, &crate::features::aggregate::EntityState)> = cands
            .iter()
            .zip(&fetched.items)
            .map(|(c, s)| (c.item_id.as_str(), s.as_ref()))
            .collect();
        let cells = active.item_cells(&inputs, &items);
        let known = Known::new(&rules, &plan, &cells);
        let shared = (0..plan.width())
            .filter(|&c| known.get(0, c).is_some())
            .count();
        assert!(
            shared >= 3,
            "the rules computed {shared} of the model's columns"
        );
        let eligible: Vec<usize> = (0..ids.len()).filter(|i| i % 4 != 1).collect();
        let with = build(
            &set,
            &plan,
            &fetched,
            &context,
            now,
            &cands,
            &eligible,
            Some(&known),
        );
        let alone = build(
            &set, &plan, &fetched, &context, now, &cands, &eligible, None,
        );
        assert_eq!(with, alone);
        assert!(
            alone.data.iter().any(|x| *x != 0.0),
            "the states are not empty"
        );
    }
}
