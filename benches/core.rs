//! Micro-benchmarks of the hot paths: aggregating events (the pure code the
//! consumer and backfill share), building a 100-row feature matrix,
//! scoring it with the shipped model, judging 100 candidates by 20
//! rules, and how long a read waits while the embedded store applies a
//! 10,000-event batch (`POST /v1/events` without Kafka).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The server's allocator (src/main.rs), so allocation-heavy paths measure
/// as they run there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use nextbest::event::Event;
use nextbest::features::aggregate::{apply_update, plan_event, EntityState};
use nextbest::features::store::memory::{MemoryState, MemoryStore};
use nextbest::features::store::{FeatureStore, ReadQuery};
use nextbest::features::vector::RowInputs;
use nextbest::features::FeatureSet;
use nextbest::model::scorer::{LoadOptions, LoadedModel};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn events(n: usize) -> Vec<Event> {
    let kinds = [
        "page_view",
        "page_view",
        "click",
        "add_to_cart",
        "purchase",
        "remove_from_cart",
    ];
    (0..n)
        .map(|i| {
            Event::from_value(json!({"event_id": format!("e{i}"), "type": kinds[i % kinds.len()], "customer_id": format!("c{}", i % 1000),
                "ts": 1_764_355_200_000i64 + i as i64 * 100, "session_id": format!("s{}", i % 3000), "item_id": format!("p{}", i % 5000),
                "props": {"price": 19.9, "quantity": 1, "category": format!("cat{}", i % 30)}}))
            .expect("valid")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let set =
        Arc::new(FeatureSet::load(&repo.join("feature-store/features.toml")).expect("features"));
    let evs = events(100_000);
    let now = evs.iter().map(|e| e.ts).max().unwrap_or(0);

    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.sample_size(10);
    g.bench_function("plan_and_apply_100k_events_memory", |b| {
        b.iter(|| {
            let mut st = MemoryState::new(set.clone(), i64::MAX / 4);
            let plans: Vec<_> = evs.iter().map(|e| plan_event(&set, e)).collect();
            st.apply(&plans, now);
            st.len()
        })
    });
    g.bench_function("apply_updates_one_entity", |b| {
        let plans: Vec<_> = evs
            .iter()
            .take(10_000)
            .map(|e| plan_event(&set, e))
            .collect();
        b.iter(|| {
            let mut s = EntityState::default();
            for p in &plans {
                p.customer.iter().for_each(|u| apply_update(&mut s, u, now));
            }
            s.nums.len()
        })
    });
    g.finish();

    let mut st = MemoryState::new(set.clone(), i64::MAX / 4);
    let plans: Vec<_> = evs.iter().map(|e| plan_event(&set, e)).collect();
    st.apply(&plans, now);
    let opts = LoadOptions {
        sessions: 1,
        intra_threads: 1,
        ort_dylib_path: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
    };
    let model = LoadedModel::load(&repo.join("models/ranker/1"), None, &set, &opts)
        .expect("shipped model loads");
    let items: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let ctx = nextbest::features::vector::ContextValues::defaults(&set);
    let now = 1_764_355_200_000i64 + 100_000 * 100;
    let no_covisit = nextbest::features::covisit_score::CoVisitScores::default();
    let mut g = c.benchmark_group("recommend_path");
    g.bench_function("matrix_100x16", |b| {
        b.iter(|| {
            let (_, sess) = st.session("c1", None);
            let inputs = RowInputs {
                customer: st.customer("c1"),
                session: sess,
                context: &ctx,
                now,
                covisit: &no_covisit,
            };
            let mut data = Vec::with_capacity(1600);
            for i in &items {
                model.plan.push_row(&set, &inputs, i, st.item(i), &mut data);
            }
            data.len()
        })
    });
    let (_, sess) = st.session("c1", None);
    let inputs = RowInputs {
        customer: st.customer("c1"),
        session: sess,
        context: &ctx,
        now,
        covisit: &no_covisit,
    };
    let mut data = Vec::new();
    for i in &items {
        model.plan.push_row(&set, &inputs, i, st.item(i), &mut data);
    }
    g.bench_function("score_100_rows", |b| {
        b.iter(|| model.score(&data, 100).expect("scores").len())
    });
    // micro-batching check: does one call on 4 requests' rows beat 4 calls?
    let data4: Vec<f32> = data.iter().copied().cycle().take(data.len() * 4).collect();
    g.bench_function("score_400_rows_one_call", |b| {
        b.iter(|| model.score(&data4, 400).expect("scores").len())
    });
    g.bench_function("score_4x100_rows_four_calls", |b| {
        b.iter(|| {
            (0..4)
                .map(|_| model.score(&data, 100).expect("scores").len())
                .sum::<usize>()
        })
    });
    g.finish();

    // 20 rules × 100 candidates: the rules stage's added cost per request
    let rules_dir =
        std::env::temp_dir().join(format!("nextbest-bench-rules-{}", std::process::id()));
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    std::fs::write(rules_dir.join("bench.toml"), BENCH_RULES).expect("rules file");
    let rules = nextbest::rules::RuleSet::load(&rules_dir, &set, None);
    let _ = std::fs::remove_dir_all(&rules_dir);
    assert!(
        rules.errors().next().is_none(),
        "bench rules load: {:?}",
        rules.files
    );
    assert_eq!(rules.rules.len(), 20);
    let rule_inputs = nextbest::rules::schema::Inputs {
        set: &set,
        customer: st.customer("c1"),
        session: st.session("c1", None).1,
        context: &ctx,
        now,
        covisit: &no_covisit,
    };
    let cands: Vec<(&str, &EntityState)> = items.iter().map(|i| (i.as_str(), st.item(i))).collect();
    let sourced = nextbest::rules::eval::Sourced::new();
    let mut g = c.benchmark_group("rules");
    g.bench_function("judge_20_rules_x_100_candidates", |b| {
        b.iter(|| {
            let active = rules.begin(&rule_inputs, &[]);
            active.judge(&rule_inputs, &cands, &sourced, false).len()
        })
    });
    g.bench_function("judge_20_rules_x_100_candidates_explain", |b| {
        b.iter(|| {
            let active = rules.begin(&rule_inputs, &[]);
            active.judge(&rule_inputs, &cands, &sourced, true).len()
        })
    });
    // what the rules add to a request: the rules stage and the model's
    // matrix (which takes the item values the rules computed) against the
    // matrix alone, both as `ranked` builds them (request row once, then
    // the item columns per row)
    let row_inputs = RowInputs {
        customer: rule_inputs.customer,
        session: rule_inputs.session,
        context: &ctx,
        now,
        covisit: &no_covisit,
    };
    let eligible = rules
        .begin(&rule_inputs, &[])
        .judge(&rule_inputs, &cands, &sourced, false)
        .iter()
        .filter(|v| v.excluded_by.is_none())
        .count();
    eprintln!(
        "rules bench: {eligible} of {} candidates eligible",
        cands.len()
    );
    g.bench_function("matrix_alone_100_rows", |b| {
        b.iter(|| {
            let req = model.plan.request_row(&set, &row_inputs);
            let mut data = Vec::with_capacity(100 * model.plan.width());
            for (id, st) in &cands {
                model
                    .plan
                    .push_item_row(&set, &row_inputs, &req, id, st, &mut data);
            }
            data.len()
        })
    });
    g.bench_function("rules_and_matrix_20_rules_x_100_candidates", |b| {
        b.iter(|| {
            let active = rules.begin(&rule_inputs, &[]);
            let cells = active.item_cells(&rule_inputs, &cands);
            let verdicts = active.judge_cells(&cells, &cands, &sourced, false);
            let known = nextbest::decide::rows::Known::new(&rules, &model.plan, &cells);
            let req = model.plan.request_row(&set, &row_inputs);
            let mut data = Vec::with_capacity(100 * model.plan.width());
            for (i, (id, st)) in cands.iter().enumerate() {
                if verdicts[i].excluded_by.is_none() {
                    model.plan.push_item_row_with(
                        &set,
                        &row_inputs,
                        &req,
                        id,
                        st,
                        |c| known.get(i, c),
                        &mut data,
                    );
                }
            }
            data.len()
        })
    });
    // the shipped rules (rules/*.toml) on the same candidates
    let shipped = nextbest::rules::RuleSet::load(&repo.join("rules"), &set, None);
    assert!(shipped.errors().next().is_none(), "shipped rules load");
    g.bench_function("judge_shipped_rules_x_100_candidates", |b| {
        b.iter(|| {
            let active = shipped.begin(&rule_inputs, &[]);
            active.judge(&rule_inputs, &cands, &sourced, false).len()
        })
    });
    g.finish();
}

/// A merchandiser's mix: 4 rules on the customer only, 16 per item.
const BENCH_RULES: &str = r#"
[[rule]]
name = "r01"
when = "customer.segment == 'staff'"
weight = 0.5
[[rule]]
name = "r02"
when = "customer.cart_value > 100.0"
action = "free_shipping"
priority = 2
[[rule]]
name = "r03"
when = "customer.purchases_7d >= 3.0"
weight = 1.1
[[rule]]
name = "r04"
when = "context.is_mobile == 1.0"
weight = 1.05
[[rule]]
name = "r05"
item_when = "item.in_stock == 0.0"
exclude = true
[[rule]]
name = "r06"
item_when = "cross.purchased_before == 1.0"
exclude = true
[[rule]]
name = "r07"
when = "customer.cart_value > 0.0"
item_when = "item.id in customer.cart_recent"
action = "complete_purchase"
priority = 5
[[rule]]
name = "r08"
item_when = "item.category in customer.recent_categories"
weight = 1.3
[[rule]]
name = "r09"
item_when = "item.price > 100.0"
weight = 0.9
[[rule]]
name = "r10"
item_when = "item.brand == 'acme'"
weight = 1.2
[[rule]]
name = "r11"
item_when = "item.margin > 0.3 && item.price > 20.0"
weight = 1.15
[[rule]]
name = "r12"
item_when = "item.views_24h > 50.0"
action = "trending"
priority = 1
[[rule]]
name = "r13"
item_when = "cross.viewed_recently == 1.0 && cross.carted_recently == 0.0"
action = "reminder"
priority = 3
[[rule]]
name = "r14"
item_when = "item.conversion_7d > 0.05"
weight = 1.1
[[rule]]
name = "r15"
item_when = "item.id in ['p1', 'p2', 'p3', 'p4', 'p5']"
weight = 2.0
[[rule]]
name = "r16"
item_when = "item.catalog_category == 'clearance'"
action = "clearance"
priority = 4
[[rule]]
name = "r17"
when = "customer.views_24h > 10.0"
item_when = "item.carts_24h > 5.0"
weight = 1.2
[[rule]]
name = "r18"
item_when = "item.list_price > 0.0 && item.price < item.list_price * 0.8"
action = "discount"
priority = 6
[[rule]]
name = "r19"
item_when = "item.purchases_7d > 10.0 && customer.segment != 'new'"
weight = 1.1
[[rule]]
name = "r20"
item_when = "session.page_views > 3.0 && item.category == 'cat1'"
weight = 1.25
"#;

/// A 10,000-event batch applied to the embedded store (as `POST /v1/events`
/// without Kafka does) while another task reads one customer and 100 items
/// (what `/v1/recommend` reads) in a loop: the time of the batch, and the
/// longest and the mean read issued while it ran.
fn memory_store(c: &mut Criterion) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let set =
        Arc::new(FeatureSet::load(&repo.join("feature-store/features.toml")).expect("features"));
    let evs = events(10_000);
    let now = evs.iter().map(|e| e.ts).max().unwrap_or(0);
    let plans: Vec<_> = evs.iter().map(|e| plan_event(&set, e)).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("memory_store");
    g.sample_size(10);
    g.bench_function("apply_10k_events", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let store = MemoryStore::new(set.clone(), 7 * 86_400_000);
                let t = Instant::now();
                rt.block_on(store.apply(&plans, now)).expect("apply");
                total += t.elapsed();
            }
            total
        })
    });
    for (name, longest) in [
        ("longest_read_during_10k_apply", true),
        ("mean_read_during_10k_apply", false),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = Arc::new(MemoryStore::new(set.clone(), 7 * 86_400_000));
                    let (max, mean) = rt.block_on(reads_during(store, &plans, now));
                    total += if longest { max } else { mean };
                }
                total
            })
        });
    }
    g.finish();
}

/// Applies `plans` on this thread while a task on the runtime's worker
/// reads in a loop (started before the apply); the longest and the mean
/// of its reads.
async fn reads_during(
    store: Arc<MemoryStore>,
    plans: &[nextbest::features::aggregate::Plan],
    now: i64,
) -> (Duration, Duration) {
    let done = Arc::new(AtomicBool::new(false));
    let (started, ready) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn({
        let (store, done) = (store.clone(), done.clone());
        async move {
            let items: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
            let q = ReadQuery {
                customer_id: "c1",
                session_id: None,
                item_ids: &items,
            };
            let mut started = Some(started);
            let (mut longest, mut total, mut n) = (Duration::ZERO, Duration::ZERO, 0u32);
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                store.read(&q).await.expect("read");
                let took = t.elapsed();
                (longest, total, n) = (longest.max(took), total + took, n + 1);
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
                tokio::task::yield_now().await;
            }
            (longest, total / n.max(1))
        }
    });
    ready.await.expect("the reader started");
    store.apply(plans, now).await.expect("apply");
    done.store(true, Ordering::Release);
    reader.await.expect("reader")
}

criterion_group!(benches, bench, memory_store);
criterion_main!(benches);
