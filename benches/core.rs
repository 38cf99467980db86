//! Micro-benchmarks of the hot paths: aggregating events (the pure code the
//! consumer and backfill share), building a 100-row feature matrix, and
//! scoring it with the shipped model.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nextbest::event::Event;
use nextbest::features::aggregate::{apply_update, plan_event, EntityState};
use nextbest::features::store::memory::MemoryState;
use nextbest::features::vector::RowInputs;
use nextbest::features::FeatureSet;
use nextbest::model::scorer::{LoadOptions, LoadedModel};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

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

    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.sample_size(10);
    g.bench_function("plan_and_apply_100k_events_memory", |b| {
        b.iter(|| {
            let mut st = MemoryState::new(set.clone(), i64::MAX / 4);
            let plans: Vec<_> = evs.iter().map(|e| plan_event(&set, e)).collect();
            st.apply(&plans);
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
                p.customer.iter().for_each(|u| apply_update(&mut s, u));
            }
            s.nums.len()
        })
    });
    g.finish();

    let mut st = MemoryState::new(set.clone(), i64::MAX / 4);
    let plans: Vec<_> = evs.iter().map(|e| plan_event(&set, e)).collect();
    st.apply(&plans);
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
    let mut g = c.benchmark_group("recommend_path");
    g.bench_function("matrix_100x16", |b| {
        b.iter(|| {
            let (_, sess) = st.session("c1", None);
            let inputs = RowInputs {
                customer: st.customer("c1"),
                session: sess,
                context: &ctx,
                now,
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
