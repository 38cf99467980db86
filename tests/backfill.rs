//! `nextbest backfill` against a real redis-server: backfilling a history
//! gives the same online features as streaming it (duplicates and
//! out-of-order included), twice is the same as once, a backfill overlapping
//! the live consumer counts every event once, every input format gives the
//! same state, bad input fails naming file/column/row before any write, and
//! static enrichment is readable as features.

mod common;
use common::*;
use nextbest::backfill::load::{self, BackfillError, BackfillJob};
use nextbest::event::{Event, EventType};
use nextbest::features::aggregate::{entity_values, plan_event, EntityState, FeatureValue};
use nextbest::features::store::memory::MemoryStore;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::store::{
    ApplyOutcome, FeatureStore, GroupOutcome, GroupWrite, ReadQuery, ReadResult, StoreError,
};
use nextbest::features::vector::RowPlan;
use nextbest::features::{Entity, FeatureSet};
use polars::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DAY: i64 = 24 * 3_600_000;
/// Generated histories end here (fixed, so runs are reproducible).
const T_END: i64 = 1_793_491_200_000;
const CUSTOMERS: u64 = 5;
const ITEMS: u64 = 15;
const SESSIONS: u64 = 4;

fn set() -> Arc<FeatureSet> {
    Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features load"))
}

/// A random history over 10 days: every event type, duplicates (same id,
/// redelivered) and shuffled order.
fn history(seed: u64, n: usize) -> Vec<Event> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let kinds = EventType::ALL;
    let t0 = T_END - 10 * DAY;
    let mut out = Vec::new();
    for i in 0..n {
        let kind = kinds[r.below(kinds.len() as u64) as usize].as_str();
        let mut v = json!({
            "event_id": format!("h{seed}-{i}"), "type": kind,
            "customer_id": format!("c{}", r.below(CUSTOMERS)),
            "ts": t0 + r.below(10 * DAY as u64) as i64,
            "session_id": format!("s{}", r.below(SESSIONS)),
            "seq": r.below(5),
            "props": {"price": (r.below(10000) as f64) / 100.0, "quantity": 1 + r.below(3),
                      "category": format!("cat{}", r.below(4)), "dwell_ms": r.below(60000)}
        });
        if kind != "search" && kind != "session_start" {
            v["item_id"] = json!(format!("p{}", r.below(ITEMS)));
        }
        out.push(Event::from_value(v).expect("generated event is valid"));
    }
    redeliver_and_shuffle(&mut out, &mut r, n / 8);
    out
}

async fn redis_store(set: Arc<FeatureSet>) -> RedisStore {
    let settings = RedisSettings {
        url: redis_url(),
        key_prefix: unique("bf"),
        dedupe_window_ms: 30 * DAY,
        ttl_seconds: 3600,
        timeout_ms: 10_000,
        timer_shards: 16,
    };
    RedisStore::connect(settings, set)
        .await
        .expect("redis connects")
}

/// Streams events the way the consumer does: plans in uneven batches, each
/// written at the time of the newest event so far (the history's clock).
async fn stream(set: &FeatureSet, store: &dyn FeatureStore, events: &[Event]) {
    let plans: Vec<_> = events.iter().map(|e| plan_event(set, e)).collect();
    let mut now = i64::MIN;
    for chunk in plans.chunks(23) {
        now = chunk.iter().map(|p| p.ts).fold(now, i64::max);
        store.apply(chunk, now).await.expect("stream apply");
    }
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write_jsonl(path: &Path, events: &[Event]) {
    let mut text = Vec::new();
    for e in events {
        text.extend(e.to_json_bytes());
        text.push(b'\n');
    }
    std::fs::write(path, text).expect("write jsonl");
}

/// Events as a flat frame: contract fields + one column per prop.
/// `events` as `events.jsonl` in a new temporary folder: (folder, file).
fn jsonl_in_tmp(tag: &str, events: &[Event]) -> (PathBuf, PathBuf) {
    let dir = tmp_dir(tag);
    let file = dir.join("events.jsonl");
    write_jsonl(&file, events);
    (dir, file)
}

fn events_frame(events: &[Event]) -> DataFrame {
    let s = |f: &dyn Fn(&Event) -> Option<String>| -> Vec<Option<String>> {
        events.iter().map(f).collect()
    };
    let num = |p: &str| -> Vec<Option<f64>> { events.iter().map(|e| e.prop_f64(p)).collect() };
    DataFrame::new_infer_height(vec![
        Column::new("event_id".into(), s(&|e| Some(e.event_id.clone()))),
        Column::new("type".into(), s(&|e| Some(e.kind.as_str().to_string()))),
        Column::new("customer_id".into(), s(&|e| Some(e.customer_id.clone()))),
        Column::new(
            "ts".into(),
            events.iter().map(|e| e.ts).collect::<Vec<i64>>(),
        ),
        Column::new("session_id".into(), s(&|e| e.session_id.clone())),
        Column::new("item_id".into(), s(&|e| e.item_id.clone())),
        Column::new(
            "seq".into(),
            events.iter().map(|e| e.seq).collect::<Vec<Option<i64>>>(),
        ),
        Column::new("price".into(), num("price")),
        Column::new("quantity".into(), num("quantity")),
        Column::new("category".into(), s(&|e| e.prop_text("category"))),
        Column::new("dwell_ms".into(), num("dwell_ms")),
    ])
    .expect("frame")
}

fn write_parquet(path: &Path, events: &[Event]) {
    let mut df = events_frame(events);
    let f = std::fs::File::create(path).expect("create parquet");
    ParquetWriter::new(f)
        .finish(&mut df)
        .expect("write parquet");
}

fn write_csv(path: &Path, events: &[Event]) {
    let mut df = events_frame(events);
    let f = std::fs::File::create(path).expect("create csv");
    CsvWriter::new(f).finish(&mut df).expect("write csv");
}

fn job(events: Vec<String>) -> BackfillJob {
    BackfillJob {
        events,
        as_of: T_END,
        // small, so the fold waits for the writer (a handoff of 2 × 2 × 2
        // groups) in every test
        batch: 2,
        in_flight: 2,
        ..BackfillJob::default()
    }
}

/// Every online feature of every generated entity, read at `now`.
async fn snapshot(
    set: &FeatureSet,
    store: &dyn FeatureStore,
    now: i64,
) -> Vec<(String, std::collections::BTreeMap<String, FeatureValue>)> {
    let items: Vec<String> = (0..ITEMS).map(|i| format!("p{i}")).collect();
    let mut out = Vec::new();
    for c in 0..CUSTOMERS {
        let cid = format!("c{c}");
        for s in std::iter::once(None).chain((0..SESSIONS).map(Some)) {
            let sid = s.map(|s| format!("s{s}"));
            let q = ReadQuery {
                customer_id: &cid,
                session_id: sid.as_deref(),
                item_ids: &items,
            };
            let r = store.read(&q).await.expect("read");
            out.push((
                format!("{cid} customer"),
                entity_values(set, Entity::Customer, &r.customer, now),
            ));
            out.push((
                format!("{cid} session {:?}", r.session_id),
                entity_values(set, Entity::Session, &r.session, now),
            ));
            if c == 0 && s.is_none() {
                for (i, st) in items.iter().zip(&r.items) {
                    out.push((
                        format!("item {i}"),
                        entity_values(set, Entity::Item, st, now),
                    ));
                }
            }
        }
    }
    let mut ids = store.item_ids().await.expect("item ids");
    ids.sort();
    out.push((
        "item ids".into(),
        [("ids".to_string(), FeatureValue::List(ids))].into(),
    ));
    out
}

fn assert_same(
    a: &[(String, std::collections::BTreeMap<String, FeatureValue>)],
    b: &[(String, std::collections::BTreeMap<String, FeatureValue>)],
    what: &str,
) {
    assert_eq!(a.len(), b.len(), "{what}: entity count");
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb, "{what}");
        assert_eq!(va, vb, "{what}: {ka}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_equals_streaming_on_generated_histories() {
    let set = set();
    for seed in [1u64, 2, 3, 4, 5, 6] {
        let events = history(seed, 300 + 100 * seed as usize);
        let (dir, file) = jsonl_in_tmp("bf-parity", &events);

        let streamed = redis_store(set.clone()).await;
        stream(&set, &streamed, &events).await;
        let backfilled = redis_store(set.clone()).await;
        let s = load::run(
            set.clone(),
            &backfilled,
            &job(vec![file.display().to_string()]),
        )
        .await
        .expect("backfill");
        assert_eq!(s.rows, events.len());
        assert!(s.duplicate_ids > 0, "seed {seed}: duplicates were injected");
        assert_eq!(s.already_applied, 0);
        let memory = MemoryStore::new(set.clone(), 30 * DAY);
        load::run(set.clone(), &memory, &job(vec![file.display().to_string()]))
            .await
            .expect("backfill into memory");

        // read at or after the writes' clock (T_END): windows are pruned
        // relative to it, so earlier reads are not what the state is for
        for now in [T_END, T_END + 2 * 3_600_000, T_END + 3 * DAY] {
            let a = snapshot(&set, &streamed, now).await;
            let b = snapshot(&set, &backfilled, now).await;
            let m = snapshot(&set, &memory, now).await;
            assert_same(&a, &b, &format!("seed {seed}: stream vs backfill (redis)"));
            assert_same(&a, &m, &format!("seed {seed}: stream vs backfill (memory)"));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_is_once_and_overlap_with_the_live_consumer_counts_each_event_once() {
    let set = set();
    let events = history(42, 800);
    let (dir, file) = jsonl_in_tmp("bf-idem", &events);
    let files = vec![file.display().to_string()];

    let reference = redis_store(set.clone()).await;
    stream(&set, &reference, &events).await;
    let want = snapshot(&set, &reference, T_END).await;

    // the same backfill twice
    let twice = redis_store(set.clone()).await;
    let first = load::run(set.clone(), &twice, &job(files.clone()))
        .await
        .expect("first backfill");
    let second = load::run(set.clone(), &twice, &job(files.clone()))
        .await
        .expect("second backfill");
    assert_eq!(second.entities, 0, "nothing new to write");
    assert_eq!(second.conflicts, first.entities, "every group was seen");
    assert_same(
        &want,
        &snapshot(&set, &twice, T_END).await,
        "backfill twice",
    );

    // the consumer applied a third of the events (some late ones among them)
    // before the backfill, and the rest (again) after it
    let live = redis_store(set.clone()).await;
    let (early, late): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 3 == 0);
    let early: Vec<Event> = early.into_iter().map(|(_, e)| e).collect();
    stream(&set, &live, &early).await;
    let s = load::run(set.clone(), &live, &job(files.clone()))
        .await
        .expect("backfill over live state");
    assert!(s.already_applied > 0 && s.conflicts > 0, "{s:?}");
    let late: Vec<Event> = late.into_iter().map(|(_, e)| e).collect();
    stream(&set, &live, &late).await;
    assert_same(
        &want,
        &snapshot(&set, &live, T_END).await,
        "stream + backfill + stream",
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Ids are remembered for the dedupe window before a group's newest event;
/// the summary counts the events beyond it (which a re-run would count
/// again), per entity group, as the test works it out on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_dedupe_window_are_counted() {
    let set = set();
    let events = history(11, 400);
    let (dir, file) = jsonl_in_tmp("bf-window", &events);
    let files = vec![file.display().to_string()];
    let window = 2 * DAY;

    let mut first: std::collections::HashMap<&str, &Event> = Default::default();
    for e in &events {
        first.entry(e.event_id.as_str()).or_insert(e);
    }
    let mut groups: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for e in first.values() {
        groups
            .entry(format!("c:{}", e.customer_id))
            .or_default()
            .push(e.ts);
        if let Some(item) = &e.item_id {
            groups.entry(format!("i:{item}")).or_default().push(e.ts);
        }
    }
    let want: usize = groups
        .values()
        .map(|ts| {
            let newest = ts.iter().copied().max().unwrap_or(0);
            ts.iter().filter(|t| **t < newest - window).count()
        })
        .sum();
    assert!(want > 0, "the 10-day history reaches beyond a 2-day window");

    let store = MemoryStore::new(set.clone(), window);
    let s = load::run(
        set.clone(),
        &store,
        &BackfillJob {
            dedupe_window_ms: window,
            ..job(files.clone())
        },
    )
    .await
    .expect("backfill");
    assert_eq!(s.beyond_dedupe_window, want);

    let store = MemoryStore::new(set.clone(), 30 * DAY);
    let s = load::run(
        set.clone(),
        &store,
        &BackfillJob {
            dedupe_window_ms: 30 * DAY,
            ..job(files)
        },
    )
    .await
    .expect("backfill");
    assert_eq!(
        s.beyond_dedupe_window, 0,
        "a window longer than the history"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A catalog loaded before the history: every entity's main hash exists
/// but not its dedupe set, so the fast path (`restore.lua`) restores the
/// dedupe set, is refused at the main hash and must undo what it restored;
/// the group is then merged with the catalog values by `update.lua`. Any
/// leftover of the refused restore would make the history's events look
/// already applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_after_a_catalog_merges_with_it_and_leaves_no_partial_restore() {
    let set = set();
    let events = history(21, 600);
    let (dir, file) = jsonl_in_tmp("bf-catalog-first", &events);
    let items = dir.join("items.csv");
    let mut csv = String::from("item_id,category,price,brand,margin,in_stock\n");
    for i in 0..ITEMS {
        csv.push_str(&format!(
            "p{i},cat{},{}.5,brand{i},0.{i},true\n",
            i % 4,
            10 + i
        ));
    }
    std::fs::write(&items, csv).expect("items");
    let customers = dir.join("customers.csv");
    let mut csv = String::from("customer_id,segment,country,lifetime_value\n");
    for c in 0..CUSTOMERS {
        csv.push_str(&format!("c{c},seg{},FR,{}\n", c % 2, 100 * c));
    }
    std::fs::write(&customers, csv).expect("customers");
    let catalog = BackfillJob {
        items: Some(items),
        customers: Some(customers),
        as_of: T_END,
        ..BackfillJob::default()
    };

    let reference = redis_store(set.clone()).await;
    stream(&set, &reference, &events).await;
    load::run(set.clone(), &reference, &catalog)
        .await
        .expect("catalog after streaming");

    let store = redis_store(set.clone()).await;
    load::run(set.clone(), &store, &catalog)
        .await
        .expect("catalog first");
    let s = load::run(set.clone(), &store, &job(vec![file.display().to_string()]))
        .await
        .expect("history after the catalog");
    assert_eq!(
        (s.conflicts, s.already_applied),
        (0, 0),
        "no event looked applied: {s:?}"
    );
    assert_same(
        &snapshot(&set, &reference, T_END).await,
        &snapshot(&set, &store, T_END).await,
        "catalog, then history",
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The memory store, failing every `apply_groups` after the first `ok`
/// calls (to see the backfill stop, not to stand in for Redis).
struct FailingAfter {
    inner: MemoryStore,
    ok: usize,
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl FeatureStore for FailingAfter {
    async fn apply(
        &self,
        plans: &[nextbest::features::aggregate::Plan],
        now_ms: i64,
    ) -> Result<ApplyOutcome, StoreError> {
        self.inner.apply(plans, now_ms).await
    }
    async fn apply_groups(
        &self,
        groups: &[GroupWrite],
        now_ms: i64,
    ) -> Result<GroupOutcome, StoreError> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.ok {
            return Err(StoreError::Protocol("injected failure".into()));
        }
        self.inner.apply_groups(groups, now_ms).await
    }
    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError> {
        self.inner.read(q).await
    }
    async fn read_with_offers(
        &self,
        q: &ReadQuery<'_>,
        offers: &[nextbest::features::store::OfferKey],
        now_ms: i64,
    ) -> Result<(ReadResult, Vec<u64>), StoreError> {
        self.inner.read_with_offers(q, offers, now_ms).await
    }
    async fn record_offers(
        &self,
        customer_id: &str,
        offers: &[nextbest::features::store::OfferKey],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.record_offers(customer_id, offers, now_ms).await
    }
    async fn item_ids(&self) -> Result<Vec<String>, StoreError> {
        self.inner.item_ids().await
    }
    async fn popular(
        &self,
        now_ms: i64,
        top: usize,
        top_per_category: usize,
    ) -> Result<nextbest::features::store::popularity::PopularLists, StoreError> {
        self.inner.popular(now_ms, top, top_per_category).await
    }
    async fn file_covisits(
        &self,
        filings: &[nextbest::features::store::covisit::Filing<'_>],
    ) -> Result<(), StoreError> {
        self.inner.file_covisits(filings).await
    }
    async fn neighbours(
        &self,
        item_ids: &[String],
        top: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, StoreError> {
        self.inner.neighbours(item_ids, top).await
    }
    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError> {
        self.inner.read_items(ids).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn describe(&self) -> String {
        "failing".into()
    }
}

/// The fold hands groups to the writer through a small channel; when a
/// write fails, the backfill returns that error and the fold, blocked on
/// the full channel, stops too (no hang), with many more groups than fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_stops_the_backfill_with_its_error() {
    let set = set();
    let events: Vec<Event> = (0..3000)
        .map(|i| {
            let c = format!("c{}", i % 1000);
            let item = format!("p{}", i % 50);
            Event::from_value(event(
                &format!("f{i}"),
                "page_view",
                &c,
                Some(&item),
                T_END - i,
            ))
            .expect("event")
        })
        .collect();
    let (dir, file) = jsonl_in_tmp("bf-fail", &events);
    let store = FailingAfter {
        inner: MemoryStore::new(set.clone(), 7 * DAY),
        ok: 3,
        calls: Default::default(),
    };
    let j = BackfillJob {
        batch: 1,
        in_flight: 1,
        ..job(vec![file.display().to_string()])
    };
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        load::run(set.clone(), &store, &j),
    )
    .await
    .expect("the backfill ends");
    let err = out.expect_err("the store failed");
    assert!(err.to_string().contains("injected failure"), "{err}");
    // it stopped at the failure: 3 writes and the failing one (up to
    // in_flight more may have started)
    let calls = store.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(calls <= 5, "{calls} writes after the failure");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_parquet_csv_and_globs_give_the_same_state_and_as_of_cuts() {
    let set = set();
    let events = history(7, 600);
    let dir = tmp_dir("bf-formats");
    let (a, b) = events.split_at(events.len() / 2);
    write_jsonl(&dir.join("all.jsonl"), &events);
    write_parquet(&dir.join("part-1.parquet"), a);
    write_parquet(&dir.join("part-2.parquet"), b);
    write_csv(&dir.join("all.csv"), &events);

    let mut snaps = Vec::new();
    for files in [
        vec![dir.join("all.jsonl").display().to_string()],
        vec![dir.join("part-*.parquet").display().to_string()],
        vec![dir.join("all.csv").display().to_string()],
    ] {
        let store = redis_store(set.clone()).await;
        let s = load::run(set.clone(), &store, &job(files.clone()))
            .await
            .expect("backfill");
        assert_eq!(s.rows, events.len(), "{files:?}");
        snaps.push(snapshot(&set, &store, T_END).await);
    }
    assert_same(&snaps[0], &snaps[1], "jsonl vs parquet");
    assert_same(&snaps[0], &snaps[2], "jsonl vs csv");

    // --as-of: only events at or before it
    let as_of = T_END - 4 * DAY;
    let store = redis_store(set.clone()).await;
    let mut j = job(vec![dir.join("all.jsonl").display().to_string()]);
    j.as_of = as_of;
    let s = load::run(set.clone(), &store, &j).await.expect("backfill");
    assert!(s.after_as_of > 0);
    let reference = redis_store(set.clone()).await;
    let early: Vec<Event> = events.iter().filter(|e| e.ts <= as_of).cloned().collect();
    stream(&set, &reference, &early).await;
    assert_same(
        &snapshot(&set, &reference, as_of).await,
        &snapshot(&set, &store, as_of).await,
        "as-of",
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn assert_nothing_written(store: &RedisStore) {
    assert!(store.item_ids().await.expect("item ids").is_empty());
    let r = store
        .read(&ReadQuery {
            customer_id: "c0",
            session_id: None,
            item_ids: &[],
        })
        .await
        .expect("read");
    assert!(r.customer.is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_before_writing_naming_file_column_and_row() {
    let set = set();
    let dir = tmp_dir("bf-bad");
    let good = dir.join("good.jsonl");
    write_jsonl(&good, &history(9, 50));
    let g = good.display().to_string();

    let cases: Vec<(PathBuf, String, Vec<&str>)> = vec![
        (
            dir.join("missing.csv"),
            "event_id,type,ts\ne1,page_view,1793400000000\n".into(),
            vec!["missing.csv", "missing column `customer_id`"],
        ),
        (
            dir.join("badts.csv"),
            "event_id,type,customer_id,ts\ne1,page_view,c1,1793400000000\ne2,page_view,c1,soon\n"
                .into(),
            vec!["badts.csv", "line 3", "column `ts`"],
        ),
        (
            dir.join("badprice.csv"),
            "event_id,type,customer_id,ts,price\ne1,page_view,c1,1793400000000,1.5\ne2,page_view,c1,1793400000000,cheap\n"
                .into(),
            vec!["badprice.csv", "line 3", "column `price`"],
        ),
        (
            dir.join("bad.jsonl"),
            "{\"event_id\":\"e1\",\"type\":\"page_view\",\"customer_id\":\"c1\",\"ts\":1793400000000}\n{\"event_id\":\"e2\",\"type\":\"click\",\"customer_id\":\"c1\",\"ts\":1793400000000}\n"
                .into(),
            vec!["bad.jsonl", "line 2", "column `item_id`"],
        ),
        (
            dir.join("broken.parquet"),
            "this is not parquet".into(),
            vec!["broken.parquet", "cannot read"],
        ),
    ];
    for (path, content, needles) in cases {
        std::fs::write(&path, content).expect("write case");
        let store = redis_store(set.clone()).await;
        // the good file comes first: still nothing may be written
        let err = load::run(
            set.clone(),
            &store,
            &job(vec![g.clone(), path.display().to_string()]),
        )
        .await
        .expect_err("bad input is rejected");
        let msg = err.to_string();
        assert!(matches!(err, BackfillError::Input(_)), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "`{msg}` should mention `{n}`");
        }
        assert_nothing_written(&store).await;
    }
    let store = redis_store(set.clone()).await;
    let err = load::run(
        set.clone(),
        &store,
        &job(vec![dir.join("nope-*.parquet").display().to_string()]),
    )
    .await
    .expect_err("no match");
    assert!(err.to_string().contains("nope-*.parquet"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_enrichment_is_readable_and_usable_by_models() {
    let set = set();
    let dir = tmp_dir("bf-static");
    let items = dir.join("items.csv");
    std::fs::write(
        &items,
        "item_id,category,price,brand,margin,in_stock\np1,shoes,59.9,acme,0.35,true\np2,hats,12,zeta,0.1,false\n",
    )
    .expect("items");
    let customers = dir.join("customers.jsonl");
    std::fs::write(
        &customers,
        "{\"customer_id\":\"c1\",\"segment\":\"vip\",\"country\":\"FR\",\"lifetime_value\":1234.5}\n",
    )
    .expect("customers");
    let store = redis_store(set.clone()).await;
    let j = BackfillJob {
        items: Some(items.clone()),
        customers: Some(customers.clone()),
        as_of: T_END,
        ..BackfillJob::default()
    };
    for _ in 0..2 {
        let s = load::run(set.clone(), &store, &j)
            .await
            .expect("static load");
        assert_eq!((s.static_rows, s.entities), (3, 3));
    }
    // an event for p1 does not touch its static values
    stream(
        &set,
        &store,
        &[Event::from_value(event("x1", "page_view", "c1", Some("p1"), T_END)).expect("event")],
    )
    .await;
    let st = store
        .read_items(&["p1".into(), "p2".into()])
        .await
        .expect("read items");
    let v = entity_values(&set, Entity::Item, &st[0], T_END);
    assert_eq!(v["margin"], FeatureValue::Num(0.35));
    assert_eq!(v["list_price"], FeatureValue::Num(59.9));
    assert_eq!(v["in_stock"], FeatureValue::Num(1.0));
    assert_eq!(v["brand"], FeatureValue::Text("acme".into()));
    assert_eq!(v["catalog_category"], FeatureValue::Text("shoes".into()));
    let v2 = entity_values(&set, Entity::Item, &st[1], T_END);
    assert_eq!(v2["in_stock"], FeatureValue::Num(0.0));
    let c = store
        .read(&ReadQuery {
            customer_id: "c1",
            session_id: None,
            item_ids: &[],
        })
        .await
        .expect("read customer");
    let cv = entity_values(&set, Entity::Customer, &c.customer, T_END);
    assert_eq!(cv["lifetime_value"], FeatureValue::Num(1234.5));
    assert_eq!(cv["segment"], FeatureValue::Text("vip".into()));
    let mut ids = store.item_ids().await.expect("ids");
    ids.sort();
    assert_eq!(ids, vec!["p1", "p2"]);

    // models may use the numbers, not the text
    let plan = RowPlan::compile(
        &set,
        &["item.margin".into(), "customer.lifetime_value".into()],
    )
    .expect("numeric static features are model inputs");
    assert_eq!(plan.width(), 2);
    assert!(RowPlan::compile(&set, &["item.brand".into()]).is_err());

    // a missing column is named
    let bad = dir.join("bad-items.csv");
    std::fs::write(
        &bad,
        "item_id,category,price,brand,in_stock\np1,shoes,1,acme,1\n",
    )
    .expect("bad");
    let err = load::run(
        set.clone(),
        &store,
        &BackfillJob {
            items: Some(bad),
            as_of: T_END,
            ..BackfillJob::default()
        },
    )
    .await
    .expect_err("missing margin");
    assert!(err.to_string().contains("`margin`"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = EntityState::default();
}

#[test]
fn export_training_writes_point_in_time_rows_as_parquet_and_csv() {
    let set = set();
    let dir = tmp_dir("bf-export");
    let t0 = T_END - DAY;
    let events: Vec<Event> = (0..4)
        .map(|i| {
            Event::from_value(event(
                &format!("x{i}"),
                "page_view",
                "c1",
                Some("p1"),
                t0 + i * 60_000,
            ))
            .expect("event")
        })
        .collect();
    std::fs::create_dir_all(dir.join("ev")).expect("dir");
    write_parquet(&dir.join("ev/events.parquet"), &events);
    let labels = dir.join("labels.csv");
    // decision moments at the 3rd event's time (sees 2 views) and after all 4
    std::fs::write(
        &labels,
        format!(
            "customer_id,item_id,ts,label,context.is_mobile\nc1,p1,{},1,1\nc1,p2,{},0,0\n",
            t0 + 2 * 60_000,
            t0 + 10 * 60_000
        ),
    )
    .expect("labels");
    let items = dir.join("items.csv");
    std::fs::write(
        &items,
        "item_id,category,price,brand,margin,in_stock\np1,shoes,59.9,acme,0.35,true\n",
    )
    .expect("items");
    for out in ["rows.parquet", "rows.csv"] {
        let job = nextbest::backfill::export::ExportJob {
            events: vec![dir.join("ev/*.parquet").display().to_string()],
            labels: labels.clone(),
            out: dir.join(out),
            items: Some(items.clone()),
            customers: None,
        };
        let s = nextbest::backfill::export::export_training(set.clone(), &job).expect("export");
        assert_eq!((s.events, s.rows), (4, 2));
        let df = if out.ends_with(".parquet") {
            ParquetReader::new(std::fs::File::open(dir.join(out)).expect("open"))
                .finish()
                .expect("parquet")
        } else {
            CsvReadOptions::default()
                .try_into_reader_with_file_path(Some(dir.join(out)))
                .and_then(|r| r.finish())
                .expect("csv")
        };
        let col = |name: &str| -> Vec<f64> {
            df.column(name)
                .expect(name)
                .cast(&DataType::Float64)
                .expect("cast")
                .f64()
                .expect("f64")
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect()
        };
        assert_eq!(col("customer.views_1h"), vec![2.0, 4.0], "{out}");
        assert_eq!(col("item.views_1h"), vec![2.0, 0.0], "{out}");
        let margin = col("item.margin");
        assert!(
            (margin[0] - 0.35).abs() < 1e-6 && margin[1] == 0.0,
            "{out}: {margin:?}"
        );
        assert_eq!(col("label"), vec![1.0, 0.0], "{out}");
        assert!(df.column("context.is_mobile").is_ok());
    }
    let _ = std::fs::remove_dir_all(dir);
}
