//! The files in deploy/ stay true to the code: every metric the Grafana
//! dashboard, the alerting rules and their unit tests name exists in
//! src/metrics.rs (histograms only as `_bucket`/`_sum`/`_count`), every
//! exported metric has a panel, every alert is unit-tested and documented,
//! and promtool accepts the rules, their tests, the scrape config and the
//! dashboard's PromQL. promtool comes from Debian's `prometheus` package,
//! installed by scripts/setup.sh.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const DASHBOARD: &str = "deploy/grafana/nextbest.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const README: &str = "deploy/README.md";
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A constant with no `describe_*!` call: any suffix is accepted.
    Unknown,
}

/// `pub const NAME: &str = "nextbest_..."` values of src/metrics.rs, with
/// their kind taken from the `describe_counter!/gauge!/histogram!` calls.
fn catalog() -> BTreeMap<String, Kind> {
    let text = read("src/metrics.rs");
    let mut consts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((ident, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let Some((value, _)) = value.split_once('"') else {
            continue;
        };
        if value.starts_with("nextbest_") {
            consts.insert(ident.trim().to_string(), value.to_string());
        }
    }
    assert!(
        consts.len() >= 10,
        "found only {} metric constants in src/metrics.rs; has its layout changed?",
        consts.len()
    );
    let mut kinds = BTreeMap::new();
    for (mac, kind) in [
        ("describe_counter!(", Kind::Counter),
        ("describe_gauge!(", Kind::Gauge),
        ("describe_histogram!(", Kind::Histogram),
    ] {
        for (at, _) in text.match_indices(mac) {
            let arg: String = text[at + mac.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let ident = arg.rsplit("::").next().unwrap_or_default().to_string();
            kinds.insert(ident, kind);
        }
    }
    consts
        .into_iter()
        .map(|(ident, name)| {
            let kind = kinds.get(&ident).copied().unwrap_or(Kind::Unknown);
            (name, kind)
        })
        .collect()
}

/// Every `nextbest_...` metric-name token in a PromQL expression or file.
fn metric_refs(text: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (at, _) in text.match_indices("nextbest_") {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        out.push(text[at..].chars().take_while(|c| is_name(*c)).collect());
    }
    out
}

/// The exported metric a reference names, or why it names none.
fn resolve(reference: &str, catalog: &BTreeMap<String, Kind>) -> Result<String, String> {
    if let Some(kind) = catalog.get(reference) {
        return match kind {
            Kind::Histogram => Err(format!(
                "`{reference}` is a histogram: Prometheus only has {reference}_bucket, _sum and _count"
            )),
            _ => Ok(reference.to_string()),
        };
    }
    for suffix in HISTOGRAM_SUFFIXES {
        let Some(base) = reference.strip_suffix(suffix) else {
            continue;
        };
        match catalog.get(base) {
            Some(Kind::Counter | Kind::Gauge) => {
                return Err(format!(
                    "`{reference}`: {base} is not a histogram, it has no {suffix} series"
                ))
            }
            Some(Kind::Histogram | Kind::Unknown) => return Ok(base.to_string()),
            None => {}
        }
    }
    Err(format!(
        "`{reference}` is not a metric in src/metrics.rs (renamed or not added yet?)"
    ))
}

fn check_refs(
    text: &str,
    place: &str,
    catalog: &BTreeMap<String, Kind>,
    used: &mut BTreeSet<String>,
    errors: &mut Vec<String>,
) -> usize {
    let refs = metric_refs(text);
    for r in &refs {
        match resolve(r, catalog) {
            Ok(name) => {
                used.insert(name);
            }
            Err(e) => errors.push(format!("{place}: {e}")),
        }
    }
    refs.len()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("deploy/grafana/nextbest.json is valid JSON")
}

/// All panels, including those nested in (collapsed) rows.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn panel_name(p: &Value) -> String {
    format!(
        "panel {} {:?}",
        p["id"],
        p["title"].as_str().unwrap_or("(untitled)")
    )
}

/// Every PromQL expression of the dashboard: (where, expr).
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let r = t["refId"].as_str().unwrap_or("?");
                out.push((format!("{} target {r}", panel_name(p)), expr.to_string()));
            }
        }
    }
    out
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let catalog = catalog();
    let dash = dashboard();
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();

    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus");
    let Some(ds_var) = ds_var else {
        panic!("the dashboard needs a Prometheus datasource variable");
    };
    let ds_uid = format!("${{{}}}", ds_var["name"].as_str().unwrap_or_default());

    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        let place = format!("variable {}", v["name"]);
        check_refs(q, &place, &catalog, &mut used, &mut errors);
    }

    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in panels(&dash) {
        let name = panel_name(p);
        if !ids.insert(p["id"].to_string()) {
            errors.push(format!("{name}: duplicate panel id"));
        }
        if p["gridPos"]["w"].as_u64().is_none() {
            errors.push(format!("{name}: no gridPos"));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"].as_str() != Some(ds_uid.as_str()) {
            errors.push(format!("{name}: datasource is not {ds_uid}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            errors.push(format!("{name}: no queries"));
        }
        for t in &targets {
            let place = format!("{name} target {}", t["refId"]);
            let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                errors.push(format!("{place}: empty expr"));
                continue;
            };
            if let Some(uid) = t["datasource"]["uid"].as_str() {
                if uid != ds_uid {
                    errors.push(format!("{place}: datasource is {uid}, not {ds_uid}"));
                }
            }
            if check_refs(expr, &place, &catalog, &mut used, &mut errors) == 0 {
                errors.push(format!("{place}: names no nextbest metric: {expr}"));
            }
            queried += 1;
        }
    }
    assert!(queried >= 20, "only {queried} queries in the dashboard");

    for name in catalog.keys().filter(|n| !used.contains(*n)) {
        errors.push(format!(
            "{name} (src/metrics.rs) has no panel in {DASHBOARD}: add one"
        ));
    }
    assert!(
        errors.is_empty(),
        "{DASHBOARD} is out of step with src/metrics.rs:\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn alert_rules_name_only_exported_metrics_and_are_tested_and_documented() {
    let catalog = catalog();
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();
    for file in [ALERTS, ALERTS_TEST] {
        for (n, line) in read(file).lines().enumerate() {
            let place = format!("{file}:{}", n + 1);
            check_refs(line, &place, &catalog, &mut used, &mut errors);
        }
    }

    let alerts: Vec<String> = read(ALERTS)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|a| a.trim().to_string())
        .collect();
    assert!(
        alerts.len() >= 7,
        "only {} alerts in {ALERTS}",
        alerts.len()
    );
    let tests = read(ALERTS_TEST);
    let readme = read(README);
    for a in &alerts {
        if !tests.contains(&format!("alertname: {a}\n")) {
            errors.push(format!("alert {a} has no test in {ALERTS_TEST}"));
        }
        if !readme.contains(a.as_str()) {
            errors.push(format!("alert {a} is not explained in {README}"));
        }
    }
    assert!(
        errors.is_empty(),
        "the alerting rules are out of step:\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn metric_names_are_found_with_their_suffixes() {
    let catalog = catalog();
    let refs = metric_refs(
        r#"sum(rate(nextbest_http_requests_total{job=~"nextbest"}[5m])) / x_nextbest_y + nextbest_event_freshness_seconds_bucket"#,
    );
    assert_eq!(
        refs,
        [
            "nextbest_http_requests_total",
            "nextbest_event_freshness_seconds_bucket"
        ]
    );
    assert!(resolve("nextbest_event_freshness_seconds_count", &catalog).is_ok());
    assert!(resolve("nextbest_event_freshness_seconds", &catalog).is_err());
    assert!(resolve("nextbest_http_requests_total_bucket", &catalog).is_err());
    assert!(resolve("nextbest_http_request_total", &catalog).is_err());
}

/// promtool from PATH; without it these checks cannot run, which is a failure.
fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH, so the alerting rules cannot be checked: \
                 run scripts/setup.sh (it installs Debian's `prometheus` package, \
                 which provides /usr/bin/promtool)"
            )
        })
}

fn run_promtool(args: &[&str], dir: &Path) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_rules_tests_and_config() {
    let root = repo();
    run_promtool(&["check", "rules", ALERTS], &root);
    run_promtool(&["test", "rules", ALERTS_TEST], &root);
    run_promtool(&["check", "config", PROMETHEUS], &root);
}

/// Every dashboard query, with Grafana's variables filled in, parses as
/// PromQL: written as recording rules and checked by promtool.
#[test]
fn dashboard_promql_parses() {
    let dash = dashboard();
    let vars: Vec<String> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (place, expr)) in dashboard_exprs(&dash).iter().enumerate() {
        let mut e = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        for v in &vars {
            e = e
                .replace(&format!("${{{v}}}"), ".*")
                .replace(&format!("${v}"), ".*");
        }
        assert!(!e.contains('$'), "{place}: unknown variable in {expr}");
        let quoted = serde_json::to_string(&e).expect("quote");
        let place = place.replace('\n', " ");
        rules.push_str(&format!(
            "      # {place}\n      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let file = std::env::temp_dir().join(format!("nextbest-dashboard-{}.yml", std::process::id()));
    std::fs::write(&file, rules).expect("write temp rules");
    let path = file.to_string_lossy().into_owned();
    let result = std::panic::catch_unwind(|| run_promtool(&["check", "rules", &path], &repo()));
    let _ = std::fs::remove_file(&file);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
