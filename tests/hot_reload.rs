//! Hot reload under load, rollback on removal, traffic split and shadow
//! models, against the real ONNX Runtime.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn copy_version(from: &Path, to: &Path, version: u32, swap_inputs: bool) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).expect("copy onnx");
    let mut t = std::fs::read_to_string(from.join("model.toml")).expect("manifest");
    t = t.replace("version = 1", &format!("version = {version}"));
    if swap_inputs {
        // same graph, two inputs fed in the other order: a model with different scores
        t = t
            .replace("\"cross.carted_recently\"", "\"@A\"")
            .replace("\"customer.cart_items\"", "\"cross.carted_recently\"")
            .replace("\"@A\"", "\"customer.cart_items\"");
    }
    std::fs::write(to.join("model.toml"), t).expect("write manifest");
}

/// Puts a version in place the way operators should: copy to `N.tmp`, rename.
fn publish(root: &Path, version: u32, swap: bool) {
    let tmp = root.join(format!("ranker/{version}.tmp"));
    copy_version(&repo().join("models/ranker/1"), &tmp, version, swap);
    std::fs::rename(&tmp, root.join(format!("ranker/{version}"))).expect("rename into place");
}

fn fixture() -> PathBuf {
    let root = std::env::temp_dir().join(unique("models"));
    copy_version(
        &repo().join("models/ranker/1"),
        &root.join("ranker/1"),
        1,
        false,
    );
    root
}

fn scores(r: &Value) -> BTreeMap<String, String> {
    r["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["item_id"].as_str().unwrap_or("").to_string(),
                        i["score"].to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn serving_version(app: &TestApp) -> Option<u64> {
    app.get("/v1/models").await.1["models"][0]["serving_version"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_never_fails_or_mixes_versions_and_rolls_back_on_removal() {
    let root = fixture();
    let mut cfg = base_config();
    cfg.models_dir = root.clone();
    cfg.model.reload_debounce_ms = 100;
    let app = Arc::new(TestApp::spawn(cfg).await);
    let c = unique("c");
    let t = now_ms();
    app.post(
        "/v1/events",
        json!([
            event("h1", "add_to_cart", &c, Some("a2"), t),
            event("h2", "page_view", &c, Some("a3"), t)
        ]),
    )
    .await;
    let req = json!({"customer_id": c, "k": 4, "candidates": ["a1", "a2", "a3", "a4"]});
    let (_, first) = app.post("/v1/recommend", req.clone()).await;
    assert_eq!(first["model"]["version"], 1);

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (app, stop, req) = (app.clone(), stop.clone(), req.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(app.post("/v1/recommend", req.clone()).await);
            }
            seen
        }));
    }
    publish(&root, 2, true);
    eventually(Duration::from_secs(30), "version 2 to serve", || {
        let app = app.clone();
        async move { (serving_version(&app).await == Some(2)).then_some(()) }
    })
    .await;
    // a broken version 3 is rejected and 2 keeps serving
    std::fs::create_dir_all(root.join("ranker/3.tmp")).expect("mkdir");
    std::fs::write(root.join("ranker/3.tmp/model.onnx"), b"garbage").expect("write");
    std::fs::copy(
        root.join("ranker/2/model.toml"),
        root.join("ranker/3.tmp/model.toml"),
    )
    .expect("copy");
    let m = std::fs::read_to_string(root.join("ranker/3.tmp/model.toml"))
        .expect("read")
        .replace("version = 2", "version = 3");
    std::fs::write(root.join("ranker/3.tmp/model.toml"), m).expect("write");
    std::fs::rename(root.join("ranker/3.tmp"), root.join("ranker/3")).expect("rename");
    eventually(
        Duration::from_secs(30),
        "version 3 to be listed as rejected",
        || {
            let app = app.clone();
            async move {
                let (_, m) = app.get("/v1/models").await;
                let v3 = m["models"][0]["versions"]
                    .as_array()?
                    .iter()
                    .find(|v| v["version"] == 3)?
                    .clone();
                (v3["status"] == "rejected").then_some(())
            }
        },
    )
    .await;
    assert_eq!(serving_version(&app).await, Some(2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // removing the serving version (and the broken one) rolls back to 1
    std::fs::remove_dir_all(root.join("ranker/2")).expect("remove v2");
    std::fs::remove_dir_all(root.join("ranker/3")).expect("remove v3");
    eventually(Duration::from_secs(30), "rollback to version 1", || {
        let app = app.clone();
        async move { (serving_version(&app).await == Some(1)).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);

    let mut by_version: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for w in workers {
        for (status, r) in w.await.expect("worker") {
            assert_eq!(status, 200, "{r}");
            assert_eq!(
                r["fallback"], false,
                "no request may fall back during a swap: {r}"
            );
            let v = r["model"]["version"].as_u64().expect("a version");
            *counts.entry(v).or_default() += 1;
            let s = scores(&r);
            let expected = by_version.entry(v).or_insert_with(|| s.clone());
            assert_eq!(
                &s, expected,
                "every response of version {v} has that version's scores"
            );
        }
    }
    assert!(
        counts.get(&1).copied().unwrap_or(0) > 0 && counts.get(&2).copied().unwrap_or(0) > 0,
        "both versions answered: {counts:?}"
    );
    assert_ne!(
        by_version[&1], by_version[&2],
        "the two versions score differently (else the mixing check is void)"
    );
    assert_eq!(scores(&first), by_version[&1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_follows_weights_and_shadow_never_answers() {
    let root = fixture();
    publish(&root, 2, true);
    let mut cfg = base_config();
    cfg.models_dir = root;
    cfg.model.traffic.insert("ranker".into(), 3.0);
    cfg.model.traffic.insert("ranker@1".into(), 1.0);
    cfg.model.shadow = vec!["ranker@1".into()];
    let app = TestApp::spawn(cfg).await;
    let (_, m) = app.get("/v1/models").await;
    assert_eq!(m["models"][0]["serving_version"], 2, "{m}");
    assert_eq!(
        m["models"][0]["split"].as_array().map(Vec::len),
        Some(2),
        "{m}"
    );
    let before = app.metrics().await;
    let mut v1 = 0;
    let n = 400;
    for i in 0..n {
        let (s, r) = app
            .post(
                "/v1/recommend",
                json!({"customer_id": format!("split-{i}"), "candidates": ["a", "b"]}),
            )
            .await;
        assert_eq!(s, 200);
        match r["model"]["version"].as_u64() {
            Some(1) => v1 += 1,
            Some(2) => {}
            other => panic!("unexpected version {other:?}: {r}"),
        }
    }
    let share = v1 as f64 / n as f64;
    assert!(
        (share - 0.25).abs() < 0.07,
        "ranker@1 should get ~25% of customers, got {share}"
    );
    // the same customer always gets the same version
    let (_, a) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": "split-7", "candidates": ["a"]}),
        )
        .await;
    let (_, b) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": "split-7", "candidates": ["a"]}),
        )
        .await;
    assert_eq!(a["model"], b["model"]);
    // an explicit model choice wins over the split
    let (_, r) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": "split-7", "candidates": ["a"], "model": "ranker@1"}),
        )
        .await;
    assert_eq!(r["model"]["version"], 1);
    // shadow scored the requests served by v2, off the response
    let shadow = |t: &str| {
        metric_sum(
            t,
            "nextbest_model_scores_total",
            &["role=\"shadow\"", "version=\"1\""],
        )
    };
    eventually(
        Duration::from_secs(10),
        "shadow scores to be counted",
        || {
            let app = &app;
            let before = shadow(&before);
            async move { (shadow(&app.metrics().await) > before).then_some(()) }
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn micro_batched_scores_equal_unbatched_scores() {
    let plain = TestApp::spawn(base_config()).await;
    let mut cfg = base_config();
    cfg.model.micro_batch_us = 3000;
    let batched = Arc::new(TestApp::spawn(cfg).await);
    let t = now_ms();
    let reqs: Vec<Value> = (0..12)
        .map(|i| {
            let c = format!("mb-{i}");
            json!({"customer_id": c, "k": 5, "candidates": [format!("m{i}"), "m1", "m2", format!("m{}", i + 3)], "context": {"is_mobile": i % 2 == 0}})
        })
        .collect();
    for (i, r) in reqs.iter().enumerate() {
        let c = r["customer_id"].as_str().unwrap_or_default().to_string();
        let e = json!([event(
            &format!("mb{i}"),
            "add_to_cart",
            &c,
            Some(&format!("m{i}")),
            t
        )]);
        plain.post("/v1/events", e.clone()).await;
        batched.post("/v1/events", e).await;
    }
    let handles: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|r| {
            let app = batched.clone();
            tokio::spawn(async move { app.post("/v1/recommend", r).await })
        })
        .collect();
    for (r, h) in reqs.iter().zip(handles) {
        let (s, got) = h.await.expect("task");
        assert_eq!(s, 200);
        assert_eq!(got["fallback"], false, "{got}");
        let (_, want) = plain.post("/v1/recommend", r.clone()).await;
        assert_eq!(
            scores(&got),
            scores(&want),
            "batched and unbatched scores differ for {r}"
        );
    }
}

/// A folder that never stops changing (a file rewritten every 50 ms, for
/// longer than the bound) is still rescanned: rescans are at most one per
/// debounce period, not after a quiet that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_keeps_changing_still_reloads_within_a_bound() {
    let root = fixture();
    let mut cfg = base_config();
    cfg.models_dir = root.clone();
    cfg.model.reload_debounce_ms = 300;
    cfg.model.rescan_secs = 0; // file events only: no periodic rescan to rescue it
    let app = TestApp::spawn(cfg).await;
    assert_eq!(serving_version(&app).await, Some(1));

    let stop = Arc::new(AtomicBool::new(false));
    let toucher = {
        let (stop, path) = (stop.clone(), root.join("ranker/1/notes.txt"));
        tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(15);
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                std::fs::write(&path, n.to_string()).expect("touch");
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&root, 2, false);
    eventually(
        Duration::from_secs(5),
        "version 2 to serve while the folder keeps changing",
        || async { (serving_version(&app).await == Some(2)).then_some(()) },
    )
    .await;
    assert!(!toucher.is_finished(), "the folder stopped changing first");
    stop.store(true, Ordering::Relaxed);
    let touches = toucher.await.expect("toucher");
    assert!(touches >= 10, "only {touches} touches");
    let (_, r) = app
        .post(
            "/v1/recommend",
            json!({"customer_id": unique("c"), "k": 2, "candidates": ["a1", "a2"]}),
        )
        .await;
    assert_eq!(r["model"]["version"], 2, "the new version answers: {r}");
    let _ = std::fs::remove_dir_all(&root);
}
