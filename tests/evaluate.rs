//! `nextbest evaluate` on a generated history whose answers are known:
//! every decision's target was viewed just before another item, so the
//! baselines' figures are exact, and the served path (shipped model, rules,
//! generated candidates) must have the target among its candidates.

mod common;

use common::{base_config, event, repo, unique};
use nextbest::evaluate::{evaluate, EvaluateJob, Split};
use std::path::PathBuf;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00Z
const HOUR: i64 = 3_600_000;
const CUSTOMERS: usize = 30;
const HOT_VIEWS: usize = 50;

/// Per customer i: views p{i} then q{i} in the first hour, carts p{i} in
/// the second; one more customer views `hot` many times.
fn history() -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..CUSTOMERS {
        let c = format!("c{i}");
        let at = T0 + i as i64 * 60_000;
        lines.push(event(
            &format!("v{i}"),
            "page_view",
            &c,
            Some(&format!("p{i}")),
            at,
        ));
        lines.push(event(
            &format!("w{i}"),
            "page_view",
            &c,
            Some(&format!("q{i}")),
            at + 10_000,
        ));
        lines.push(event(
            &format!("a{i}"),
            "add_to_cart",
            &c,
            Some(&format!("p{i}")),
            at + HOUR,
        ));
    }
    for j in 0..HOT_VIEWS {
        lines.push(event(
            &format!("h{j}"),
            "page_view",
            "fan",
            Some("hot"),
            T0 + j as i64 * 1000,
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique("eval-history")));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write history");
    path
}

#[tokio::test]
async fn the_baselines_are_exact_and_the_served_answer_has_every_target_among_its_candidates() {
    let path = history();
    let job = EvaluateJob {
        events: vec![path.display().to_string()],
        items: None,
        customers: None,
        split: Split::At(T0 + HOUR),
        k: 10,
        decisions: EvaluateJob::DECISIONS.to_vec(),
        model: None,
        labels_out: None,
        max_negatives: 30,
        progress: false,
    };
    let report = evaluate(&base_config(), &job).await.expect("evaluates");
    let _ = std::fs::remove_file(&path);

    assert_eq!(report.events, CUSTOMERS * 3 + HOT_VIEWS);
    assert_eq!(
        report.decisions.get("add_to_cart"),
        Some(&(CUSTOMERS as u64))
    );
    assert_eq!(report.served.decisions, CUSTOMERS as u64);
    assert!(report.model.starts_with("ranker@"), "{}", report.model);
    assert_eq!(report.fallbacks, 0);
    assert_eq!(report.target_in_history, 1.0);
    // the served path: p{i} is in the customer's recent items, so a candidate
    assert_eq!(report.served.candidate_recall, 1.0, "{report:?}");
    assert!(
        report
            .sources
            .iter()
            .any(|s| s.source == "viewed_recently" && s.share == 1.0),
        "{:?}",
        report.sources
    );
    assert!(report.served.hr > 0.0 && report.served.hr <= 1.0);
    let baseline = |name: &str| {
        &report
            .baselines
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("baseline {name}"))
            .1
    };
    // recently viewed lists [q{i}, p{i}]: the target at rank 2
    let rv = baseline("recently_viewed");
    assert_eq!(rv.hr, 1.0);
    assert!((rv.ndcg - 1.0 / 3f64.log2()).abs() < 1e-9, "{rv:?}");
    assert!((rv.mrr - 0.5).abs() < 1e-9, "{rv:?}");
    // co-visitation: p{i} and q{i} once each, ties by id: p{i} first
    let co = baseline("co_visitation");
    assert_eq!((co.hr, co.mrr), (1.0, 1.0), "{co:?}");
    // popularity: the server's lists at each decision (they move as carts come in)
    let pop = baseline("popularity");
    assert!(pop.items_shown >= 10 && pop.hr < 1.0, "{pop:?}");
    assert!(report.render().contains("recently_viewed"));
}

fn nextbest(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .args(args)
        .env(
            "NEXTBEST_FEATURES",
            repo().join("feature-store/features.toml"),
        )
        .env("NEXTBEST_MODELS_DIR", repo().join("models"))
        .env("NEXTBEST_RULES_DIR", repo().join("rules"))
        .output()
        .expect("runs")
}

#[test]
fn the_command_prints_json_and_refuses_a_split_without_decisions() {
    let path = history();
    let p = path.display().to_string();
    let split = (T0 + HOUR).to_string();
    let ok = nextbest(&["evaluate", "--events", &p, "--split-at", &split, "--json"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON report");
    assert_eq!(v["served"]["decisions"], CUSTOMERS as u64);
    assert_eq!(v["k"], 10);

    let late = (T0 + 10 * HOUR).to_string();
    let none = nextbest(&["evaluate", "--events", &p, "--split-at", &late]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success());
    assert!(err.contains("no decisions"), "{err}");

    let bad = nextbest(&["evaluate", "--events", &p, "--split", "80%"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("time=80%"), "{err}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn labels_out_writes_one_positive_and_sampled_candidates_per_moment_before_the_split() {
    let path = history();
    let out = std::env::temp_dir().join(format!("{}.csv", unique("eval-labels")));
    // customers 0..15 cart before the split, 15..30 after it
    let split = T0 + HOUR + 15 * 60_000;
    let job = EvaluateJob {
        events: vec![path.display().to_string()],
        items: None,
        customers: None,
        split: Split::At(split),
        k: 10,
        decisions: EvaluateJob::DECISIONS.to_vec(),
        model: None,
        labels_out: Some(out.clone()),
        max_negatives: 5,
        progress: false,
    };
    let report = evaluate(&base_config(), &job).await.expect("evaluates");
    let text = std::fs::read_to_string(&out).expect("labels written");
    let _ = (std::fs::remove_file(&path), std::fs::remove_file(&out));

    assert_eq!(
        report.served.decisions, 15,
        "the later half is still scored"
    );
    let labels = report.labels.as_ref().expect("a label summary");
    assert_eq!((labels.moments, labels.without_positive), (15, 0));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("customer_id,item_id,ts,label,session_id")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), labels.rows);
    for i in 0..15 {
        let c = format!("c{i}");
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == c).collect();
        let positives: Vec<&str> = mine.iter().filter(|r| r[3] == "1").map(|r| r[1]).collect();
        assert_eq!(positives, [format!("p{i}")], "{c}: {mine:?}");
        // the positive and at most 5 negatives, all at the decision's time
        assert!(mine.len() >= 2 && mine.len() <= 6, "{c}: {mine:?}");
        let at = (T0 + i as i64 * 60_000 + HOUR).to_string();
        assert!(
            mine.iter().all(|r| r[2] == at && r[4] == format!("s-{c}")),
            "{mine:?}"
        );
    }
}
