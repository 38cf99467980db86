//! Training labels from the replay (`evaluate --labels-out`): at each
//! decision moment of the training period (before the split), one row per
//! candidate the served path ranked (what the server itself would have
//! considered then: never the target added by hand, which leaks), label 1
//! for the decision's item, 0 for the others. Moments whose target was not
//! among the candidates have no positive and are left out. At most
//! `max_negatives` negatives are kept per moment, a sample that depends only
//! on (customer, item, time), so the same history gives the same file. The file is the
//! `--labels` input of `nextbest export-training`:
//! `customer_id,item_id,ts,label,session_id`, `ts` the decision's time.

use crate::decide::Recommendation;
use crate::event::Event;
use polars::prelude::*;
use std::path::Path;

/// The rows collected so far, by column.
#[derive(Debug, Default)]
pub struct LabelRows {
    max_negatives: usize,
    customer: Vec<String>,
    item: Vec<String>,
    ts: Vec<i64>,
    label: Vec<i32>,
    session: Vec<Option<String>>,
    /// Moments kept, and those left out for want of a positive.
    pub moments: usize,
    pub without_positive: usize,
}

impl LabelRows {
    pub fn new(max_negatives: usize) -> LabelRows {
        LabelRows {
            max_negatives,
            ..LabelRows::default()
        }
    }

    /// The rows of one moment: the decision `e` and the answer ranked for it.
    pub fn add(&mut self, e: &Event, rec: &Recommendation) {
        let Some(target) = e.item_id.as_deref() else {
            return;
        };
        if !rec.items.iter().any(|x| x.item_id == target) {
            self.without_positive += 1;
            return;
        }
        self.moments += 1;
        let mut negatives: Vec<(u64, &str)> = rec
            .items
            .iter()
            .filter(|x| x.item_id != target)
            .map(|x| {
                (
                    sample_key(&e.customer_id, &x.item_id, e.ts),
                    x.item_id.as_str(),
                )
            })
            .collect();
        negatives.sort_unstable();
        negatives.truncate(self.max_negatives);
        let rows = std::iter::once((target, 1)).chain(negatives.iter().map(|(_, id)| (*id, 0)));
        for (item, label) in rows {
            self.customer.push(e.customer_id.clone());
            self.item.push(item.to_string());
            self.ts.push(e.ts);
            self.label.push(label);
            self.session.push(e.session_id.clone());
        }
    }

    /// Rows written.
    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    /// Writes the CSV.
    pub fn write(self, path: &Path) -> Result<(), String> {
        let height = self.ts.len();
        let mut frame = DataFrame::new(
            height,
            vec![
                Column::new("customer_id".into(), self.customer),
                Column::new("item_id".into(), self.item),
                Column::new("ts".into(), self.ts),
                Column::new("label".into(), self.label),
                Column::new("session_id".into(), self.session),
            ],
        )
        .map_err(|e| e.to_string())?;
        let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
        CsvWriter::new(std::io::BufWriter::new(file))
            .include_header(true)
            .finish(&mut frame)
            .map_err(|e| e.to_string())
    }
}

/// A stable pseudo-random key of a candidate at a moment (SipHash with
/// fixed keys), by which negatives are sampled.
fn sample_key(customer: &str, item: &str, ts: i64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (customer, item, ts).hash(&mut h);
    h.finish()
}
