//! What `evaluate` found: a [`Report`], printed as a table
//! ([`Report::render`]) or as JSON (`--json`, its serde form).

use super::ranking::Figures;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A candidate source's share of something (targets found, slots shown).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceShare {
    pub source: String,
    pub share: f64,
}

/// What `--labels-out` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct LabelSummary {
    pub path: String,
    pub rows: usize,
    /// Moments written (each with its positive).
    pub moments: usize,
    /// Moments left out: the target was not among the candidates.
    pub without_positive: usize,
}

/// An evaluation's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub k: usize,
    pub events: usize,
    pub customers: usize,
    /// Distinct items in the history (the coverage denominator).
    pub items: usize,
    /// Decisions are the events at or after this time (ms).
    pub split_at: i64,
    /// Decisions by event type.
    pub decisions: BTreeMap<String, u64>,
    /// The model that answered (`name@version`).
    pub model: String,
    /// The rule files loaded.
    pub rules: String,
    /// Candidates generated per decision (at most).
    pub candidates: usize,
    /// The served answer (`/v1/recommend` at each decision).
    pub served: Figures,
    /// Served answers that were fallbacks.
    pub fallbacks: u64,
    /// Share of decisions whose target the customer had interacted with
    /// before (any item event).
    pub target_in_history: f64,
    /// Per candidate source, the share of decisions whose target it put
    /// among the candidates (the first source that listed it; "excluded by
    /// <rule>" for a candidate a rule removed): candidate recall by source.
    pub sources: Vec<SourceShare>,
    /// Per candidate source, its share of the served top-k slots.
    pub slots: Vec<SourceShare>,
    /// The baselines on the same decisions, by name.
    pub baselines: Vec<(String, Figures)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelSummary>,
    pub seconds: f64,
}

impl Report {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let total: u64 = self.decisions.values().sum();
        let kinds: Vec<String> = self
            .decisions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "replayed {} events of {} customers ({} items) in {:.1} s",
            self.events, self.customers, self.items, self.seconds
        );
        let _ = writeln!(
            s,
            "decisions: {total} ({}) at or after {} ({} ms)",
            kinds.join(", "),
            iso(self.split_at),
            self.split_at
        );
        let _ = writeln!(
            s,
            "served: model {}, {}, up to {} generated candidates; {} fallbacks",
            self.model, self.rules, self.candidates, self.fallbacks
        );
        let _ = writeln!(
            s,
            "targets the customer had interacted with before: {:.1} %\n",
            100.0 * self.target_in_history
        );
        let k = self.k;
        let _ = writeln!(
            s,
            "{:<18} {:>8} {:>8} {:>8} {:>12} {:>9}",
            "",
            format!("HR@{k}"),
            format!("NDCG@{k}"),
            format!("MRR@{k}"),
            "cand.recall",
            "coverage"
        );
        let row = |s: &mut String, name: &str, f: &Figures| {
            let _ = writeln!(
                s,
                "{name:<18} {:>8.4} {:>8.4} {:>8.4} {:>12.4} {:>9.4}",
                f.hr, f.ndcg, f.mrr, f.candidate_recall, f.coverage
            );
        };
        row(&mut s, "served", &self.served);
        for (name, f) in &self.baselines {
            row(&mut s, name, f);
        }
        if !self.sources.is_empty() {
            let _ = writeln!(
                s,
                "\ncandidate recall by source (the first source that listed the target):"
            );
            for src in &self.sources {
                let _ = writeln!(s, "  {:<28} {:.4}", src.source, src.share);
            }
        }
        if !self.slots.is_empty() {
            let _ = writeln!(s, "\nserved top-{k} slots by source:");
            for src in &self.slots {
                let _ = writeln!(s, "  {:<28} {:.4}", src.source, src.share);
            }
        }
        if let Some(l) = &self.labels {
            let _ = writeln!(
                s,
                "\nlabels: {} rows of {} moments before the split -> {} ({} moments left out: target not among the candidates)",
                l.rows, l.moments, l.path, l.without_positive
            );
        }
        s
    }
}

/// `ms` as an ISO 8601 UTC time.
fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}
