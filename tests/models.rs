//! Model folders: broken versions are rejected with a reason naming the
//! problem while the previous version keeps serving; non-version folders are
//! ignored; `nextbest models check` says the same offline.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_version(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

fn edit_manifest(dir: &Path, f: impl Fn(String) -> String) {
    let p = dir.join("model.toml");
    let text = std::fs::read_to_string(&p).expect("read manifest");
    std::fs::write(&p, f(text)).expect("write manifest");
}

/// A models folder with one good and several broken versions.
fn models_fixture() -> PathBuf {
    let shipped = repo().join("models/ranker/1");
    let root = std::env::temp_dir().join(unique("models"));
    copy_version(&shipped, &root.join("ranker/1"));
    // v2: manifest lists 15 inputs for a 16-wide model
    copy_version(&shipped, &root.join("ranker/2"));
    edit_manifest(&root.join("ranker/2"), |t| {
        t.replace("version = 1", "version = 2")
            .replace("  \"context.is_mobile\",\n", "")
    });
    // v3 names a feature the store does not know
    copy_version(&shipped, &root.join("ranker/3"));
    edit_manifest(&root.join("ranker/3"), |t| {
        t.replace("version = 1", "version = 3")
            .replace("customer.views_1h", "customer.shoe_size")
    });
    // v4: a corrupt ONNX file
    copy_version(&shipped, &root.join("ranker/4"));
    edit_manifest(&root.join("ranker/4"), |t| {
        t.replace("version = 1", "version = 4")
    });
    std::fs::write(
        root.join("ranker/4/model.onnx"),
        b"this is not an onnx file",
    )
    .expect("write");
    // a half-copied folder that is not a version
    std::fs::create_dir_all(root.join("ranker/7.tmp")).expect("mkdir");
    root
}

#[tokio::test]
async fn broken_versions_are_rejected_with_reasons_and_the_good_one_serves() {
    let mut cfg = base_config();
    cfg.models_dir = models_fixture();
    let app = TestApp::spawn(cfg).await;
    let (_, m) = app.get("/v1/models").await;
    let ranker = &m["models"][0];
    assert_eq!(ranker["serving_version"], 1, "{m}");
    let versions = ranker["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 4, "7.tmp is not a version: {m}");
    let reason = |v: u64| {
        versions
            .iter()
            .find(|x| x["version"] == v)
            .map(|x| {
                (
                    x["status"].as_str().unwrap_or("").to_string(),
                    x["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .expect("listed")
    };
    let (s, r) = reason(4);
    assert_eq!(s, "rejected");
    assert!(r.contains("cannot load ONNX model"), "{r}");
    let (s, r) = reason(3);
    assert_eq!(s, "rejected");
    assert!(r.contains("customer.shoe_size"), "{r}");
    let (s, r) = reason(2);
    assert_eq!(s, "rejected");
    assert!(r.contains("[N, 15]"), "{r}");
    let (_, rec) = app
        .post(
            "/v1/recommend",
            serde_json::json!({"customer_id": "c", "candidates": ["a"]}),
        )
        .await;
    assert_eq!(
        rec["model"],
        serde_json::json!({"name": "ranker", "version": 1}),
        "{rec}"
    );
    assert_eq!(rec["fallback"], false);
    app.stop().await;
}

fn nextbest(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn models_check_passes_the_shipped_model_and_fails_broken_ones() {
    let (code, out) = nextbest(&["models", "check", "models/ranker"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ranker/1"), "{out}");
    let root = models_fixture();
    let (code, out) = nextbest(&["models", "check", root.to_str().expect("utf8")]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("ranker/3") && out.contains("customer.shoe_size"),
        "{out}"
    );
    let (code, out) = nextbest(&[
        "models",
        "check",
        root.join("ranker/4").to_str().expect("utf8"),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot load ONNX model"), "{out}");
}

#[test]
fn missing_onnx_runtime_is_a_one_line_explanation() {
    let out = Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .args(["models", "check", "models/ranker"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .current_dir(repo())
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("ORT_DYLIB_PATH"), "{err}");
}
