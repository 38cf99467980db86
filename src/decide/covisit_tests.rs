//! `cross.covisit_score` served and exported: on generated shoppers'
//! walks, the value the served path puts in a candidate's row (the fetch
//! stage's co-visitation read, then the rows stage) equals the value
//! `export-training` writes for the same customer, item and moment.

use super::*;
use crate::config::Config;
use crate::event::Event;
use crate::features::store::memory::MemoryStore;
use crate::features::vector::{ContextValues, RowPlan};
use polars::prelude::*;
use std::path::Path;

const T0: i64 = 1_764_355_200_000;
const NAME: &str = "cross.covisit_score";

/// 40 shoppers, 14 item events each over 120 items (a fixed pseudo-random
/// walk that favours an item's neighbours), a minute apart, interleaved.
fn walks() -> Vec<Event> {
    let mut x: u64 = 7;
    let mut next = |n: u64| {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (x >> 33) % n
    };
    let mut out = Vec::new();
    for c in 0..40u64 {
        let mut item = next(120);
        for step in 0..14u64 {
            item = if next(3) == 0 {
                next(120)
            } else {
                (item + 1 + next(3)) % 120
            };
            let kind = if next(5) == 0 {
                "add_to_cart"
            } else {
                "page_view"
            };
            let ts = T0 + (step * 40 + c) as i64 * 60_000;
            out.push(
                Event::from_value(serde_json::json!({
                    "event_id": format!("e{c}-{step}"), "type": kind,
                    "customer_id": format!("c{c}"), "session_id": format!("s{c}"),
                    "ts": ts, "item_id": format!("p{item}"),
                    "props": {"price": 10.0, "category": format!("k{}", item % 4)}
                }))
                .expect("valid event"),
            );
        }
    }
    out.sort_by_key(|e| e.ts);
    out
}

async fn decider(set: Arc<FeatureSet>, store: Arc<dyn FeatureStore>) -> Decider {
    super::tests::shipped_decider(&Config::default(), set, store)
}

#[tokio::test]
async fn the_served_covisit_score_is_the_exported_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = Arc::new(
        FeatureSet::load(&root.join("feature-store/features.toml")).expect("shipped features"),
    );
    let events = walks();
    let store: Arc<dyn FeatureStore> = Arc::new(MemoryStore::new(set.clone(), 3_600_000));
    let d = decider(set.clone(), store.clone()).await;
    let plan = RowPlan::compile(&set, &[NAME.to_string()]).expect("compiles");
    assert!(plan.uses_covisit());
    let rules = d.rules.load_full();

    // served: at each moment, every generated candidate's row
    let mut served: Vec<(String, String, i64, f32)> = Vec::new();
    let mut co_visited = 0;
    let mut applied = 0;
    for m in 1..=6i64 {
        let now = T0 + m * 90 * 60_000 + 30_000;
        let upto = events.partition_point(|e| e.ts < now);
        crate::ingest::apply::apply_events_at(
            &set,
            store.as_ref(),
            &events[applied..upto],
            events[upto - 1].ts,
        )
        .await
        .expect("apply");
        applied = upto;
        for c in (0..40).step_by(7) {
            let req = RecommendRequest {
                request_id: format!("r{m}-{c}"),
                customer_id: format!("c{c}"),
                session_id: None,
                k: 10,
                context: ContextValues::defaults(&set),
                candidates: None,
                budget_ms: 60_000,
                queued: std::time::Duration::ZERO,
                model: None,
                now_ms: now,
                explain: false,
            };
            let (cands, fetched, _, _) = d
                .candidates_and_states(&req, &rules, false)
                .await
                .expect("states");
            let all: Vec<usize> = (0..cands.len()).collect();
            let ctx = ContextValues::defaults(&set);
            let matrix = rows::build(&set, &plan, &fetched, &ctx, now, &cands, &all, None);
            for (cand, x) in cands.iter().zip(&matrix.data) {
                co_visited += usize::from(cand.source == candidates::Source::CoVisited);
                served.push((req.customer_id.clone(), cand.item_id.clone(), now, *x));
            }
        }
    }
    assert!(co_visited > 0, "some candidates come from co-visitation");
    let positive = served.iter().filter(|r| r.3 > 0.0).count();
    assert!(
        positive > 20 && positive < served.len(),
        "{positive} of {} rows have a score",
        served.len()
    );

    // exported: the same rows from the history
    let dir = std::env::temp_dir().join(format!("nb-cv-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut jsonl = String::new();
    for e in &events {
        jsonl.push_str(&serde_json::to_string(e).expect("event json"));
        jsonl.push('\n');
    }
    std::fs::write(dir.join("events.jsonl"), jsonl).expect("events");
    let mut labels = String::from("customer_id,item_id,ts,label\n");
    for (c, i, t, _) in &served {
        labels.push_str(&format!("{c},{i},{t},0\n"));
    }
    std::fs::write(dir.join("labels.csv"), labels).expect("labels");
    let job = crate::backfill::export::ExportJob {
        events: vec![dir.join("events.jsonl").display().to_string()],
        labels: dir.join("labels.csv"),
        out: dir.join("rows.parquet"),
        items: None,
        customers: None,
    };
    crate::backfill::export::export_training(set.clone(), &job).expect("export");
    let df = ParquetReader::new(std::fs::File::open(dir.join("rows.parquet")).expect("open"))
        .finish()
        .expect("parquet");
    let text = |n: &str| -> Vec<String> {
        let c = df.column(n).expect("column").cast(&DataType::String);
        let c = c.expect("as text");
        c.str()
            .expect("text")
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect()
    };
    let (cs, is) = (text("customer_id"), text("item_id"));
    let ts: Vec<i64> = text("ts").iter().map(|t| t.parse().expect("ts")).collect();
    let xs: Vec<f32> = df
        .column(NAME)
        .expect("the score is exported")
        .f32()
        .expect("f32")
        .iter()
        .map(|v| v.unwrap_or(f32::NAN))
        .collect();
    let exported: std::collections::HashMap<(String, String, i64), f32> = (0..xs.len())
        .map(|r| ((cs[r].clone(), is[r].clone(), ts[r]), xs[r]))
        .collect();
    assert_eq!(exported.len(), served.len());
    for (c, i, t, x) in &served {
        let key = (c.clone(), i.clone(), *t);
        assert_eq!(exported.get(&key), Some(x), "{c} {i} at {t}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
