//! Ranking metrics over decisions: where each decision's target landed in a
//! ranked list, summed into HR@k, NDCG@k and MRR@k (and, for the served
//! answer, candidate recall and coverage).
//!
//! For one decision with the target at 1-based rank `r` (none: not listed):
//! HR@k = 1 if r ≤ k; NDCG@k = 1 / log2(r + 1) if r ≤ k (one relevant item,
//! so the ideal DCG is 1); MRR@k = 1 / r if r ≤ k; each 0 otherwise. The
//! figures are their means over the decisions.

use serde::Serialize;
use std::collections::HashSet;

/// The 1-based rank of `target` in `ranked`, if there.
pub fn rank_of<S: AsRef<str>>(ranked: &[S], target: &str) -> Option<usize> {
    ranked
        .iter()
        .position(|x| x.as_ref() == target)
        .map(|i| i + 1)
}

/// Sums of one ranker's figures over the decisions seen so far.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    k: usize,
    decisions: u64,
    hits: u64,
    dcg: f64,
    rr: f64,
    /// Decisions whose target was among the candidates at all.
    candidate_hits: u64,
    /// Distinct items shown in a top-k.
    shown: HashSet<String>,
}

impl Tally {
    pub fn new(k: usize) -> Tally {
        Tally {
            k: k.max(1),
            ..Tally::default()
        }
    }

    /// One decision: the ranked list (best first; only its top k counts as
    /// shown) and whether the target was a candidate at all.
    pub fn add<S: AsRef<str>>(&mut self, ranked: &[S], target: &str, candidate: bool) {
        self.decisions += 1;
        if candidate {
            self.candidate_hits += 1;
        }
        for id in ranked.iter().take(self.k) {
            if !self.shown.contains(id.as_ref()) {
                self.shown.insert(id.as_ref().to_string());
            }
        }
        if let Some(r) = rank_of(ranked, target).filter(|&r| r <= self.k) {
            self.hits += 1;
            self.dcg += 1.0 / ((r + 1) as f64).log2();
            self.rr += 1.0 / r as f64;
        }
    }

    /// The means, with coverage as the share of `catalog` items shown.
    pub fn figures(&self, catalog: usize) -> Figures {
        let n = self.decisions.max(1) as f64;
        Figures {
            decisions: self.decisions,
            hr: self.hits as f64 / n,
            ndcg: self.dcg / n,
            mrr: self.rr / n,
            candidate_recall: self.candidate_hits as f64 / n,
            coverage: self.shown.len() as f64 / catalog.max(1) as f64,
            items_shown: self.shown.len(),
        }
    }
}

/// One ranker's figures at k.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    pub decisions: u64,
    pub hr: f64,
    pub ndcg: f64,
    pub mrr: f64,
    /// Share of decisions whose target was among the ranker's candidates
    /// (for a baseline, its whole list).
    pub candidate_recall: f64,
    /// Distinct items shown in a top-k over the catalogue's items.
    pub coverage: f64,
    pub items_shown: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_definitions() {
        let mut t = Tally::new(3);
        t.add(&["a", "b", "c", "d"], "a", true); // rank 1
        t.add(&["a", "b", "c", "d"], "c", true); // rank 3
        t.add(&["a", "b", "c", "d"], "d", true); // rank 4 > k
        t.add(&["x"], "z", false); // absent
        let f = t.figures(10);
        assert_eq!(f.decisions, 4);
        assert!((f.hr - 0.5).abs() < 1e-12);
        let ndcg = (1.0 + 1.0 / 4f64.log2()) / 4.0;
        assert!((f.ndcg - ndcg).abs() < 1e-12, "{}", f.ndcg);
        assert!((f.mrr - (1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-12);
        assert!((f.candidate_recall - 0.75).abs() < 1e-12);
        // shown: a, b, c (top 3) and x
        assert_eq!(f.items_shown, 4);
        assert!((f.coverage - 0.4).abs() < 1e-12);
    }

    #[test]
    fn no_decisions_give_zeros_not_nan() {
        let f = Tally::new(10).figures(0);
        assert_eq!((f.hr, f.ndcg, f.mrr, f.coverage), (0.0, 0.0, 0.0, 0.0));
    }
}
