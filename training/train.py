#!/usr/bin/env python3
"""Train the nextbest ranker on point-in-time feature rows and export it as ONNX.

Input: rows.csv from `nextbest export-training` (the labels.csv columns, then one column per
numeric feature, named `<entity>.<name>`). Nothing here computes features: the model
consumes exactly the values the server computes, in the order written to model.toml.

Steps: pick the model inputs -> time-split holdout (the last --holdout fraction of decision
moments by ts) -> GradientBoostingClassifier -> AUC and NDCG@10 on the holdout (per decision
moment = (customer_id, ts)), next to a popularity baseline -> refit on all rows -> ONNX
export (input `features` float32 [None, F], output `probabilities` [N, 2], score column 1)
-> verify with onnxruntime against sklearn -> write model.onnx and model.toml.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import sys
import time
import tomllib

import numpy as np

DEFAULT_INPUTS = [
    "customer.views_1h",
    "customer.views_24h",
    "customer.carts_24h",
    "customer.cart_value",
    "customer.cart_items",
    "customer.purchases_7d",
    "customer.since_last_visit_s",
    "item.views_24h",
    "item.carts_24h",
    "item.purchases_7d",
    "item.conversion_7d",
    "item.price",
    "cross.viewed_recently",
    "cross.carted_recently",
    "cross.category_affinity",
    "context.is_mobile",
]
KEY_COLUMNS = ["customer_id", "item_id", "ts", "label"]
BASELINE = "item.views_24h"
# ONNX opsets: well inside what onnxruntime 1.31 implements (and what ort rc.15 loads).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def die(msg: str) -> None:
    sys.exit(f"train.py: error: {msg}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", required=True, help="rows.csv written by `nextbest export-training`")
    p.add_argument("--out-dir", required=True, help="model folder, e.g. models/ranker/1")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--name", default="ranker")
    p.add_argument("--inputs", default=",".join(DEFAULT_INPUTS),
                   help="comma-separated model inputs, in order (each must be a rows.csv column)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of decision moments (latest by ts)")
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--monotone", default="",
                   help="comma-separated input=+1|-1: the score may only rise (+1) or fall (-1) with "
                        "that input (e.g. cross.recent_rank=-1); fits a HistGradientBoostingClassifier")
    p.add_argument("--description", default=None)
    p.add_argument("--source", default=None, help="where rows.csv came from (recorded in model.toml)")
    p.add_argument("--no-refit", action="store_true",
                   help="ship the model trained on the train split instead of refitting on all rows")
    a = p.parse_args(argv)
    if not 0.05 <= a.holdout <= 0.5:
        p.error("--holdout must be in [0.05, 0.5]")
    if a.version < 1 or a.trees < 1 or not 1 <= a.depth <= 8:
        p.error("need --version >= 1, --trees >= 1, 1 <= --depth <= 8")
    return a


_WORDS = {"": math.nan, "true": 1.0, "false": 0.0, "nan": math.nan, "null": math.nan}


def num(s: str) -> float:
    """A rows.csv cell as a float; booleans count as 0/1, empty/null as NaN."""
    try:
        return float(s)
    except ValueError:
        v = _WORDS.get(s.strip().lower())
        if v is None:
            raise
        return v


def load_rows(path: str, inputs: list[str]):
    """Returns (X float32 [N,F], y int [N], customer_id [N], ts int64 [N], baseline float [N])."""
    if not os.path.isfile(path):
        die(f"--rows {path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            die(f"{path} is empty")
        index: dict[str, int] = {}
        dups = []
        for i, name in enumerate(header):
            if name in index:
                dups.append(name)
            else:
                index[name] = i
        missing = [c for c in KEY_COLUMNS + inputs if c not in index]
        if missing:
            numeric_like = [c for c in header if "." in c]
            die(f"{path} lacks column(s) {missing}; feature columns present: {numeric_like}")
        feat_ix = [index[c] for c in inputs]
        need = [index[c] for c in KEY_COLUMNS]
        base_ix = index.get(BASELINE)
        X, y, cust, ts, base = [], [], [], [], []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                die(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            try:
                X.append([num(row[i]) for i in feat_ix])
                label = int(float(row[need[3]]))
                ts.append(int(row[need[2]]))
                base.append(num(row[base_ix]) if base_ix is not None else 0.0)
            except ValueError as e:
                die(f"{path}:{lineno}: not a number ({e})")
            if label not in (0, 1):
                die(f"{path}:{lineno}: label must be 0 or 1, got {label}")
            y.append(label)
            cust.append(row[need[0]])
    if not y:
        die(f"{path} has a header but no rows")
    if dups:
        print(f"note: duplicate columns in {path} (first one used): {sorted(set(dups))}")
    X = np.asarray(X, dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        cols = sorted({inputs[j] for j in np.nonzero(bad)[1]})
        print(f"warning: {int(bad.sum())} non-finite values in {cols}; replaced by 0")
        X[bad] = 0.0
    base = np.nan_to_num(np.asarray(base, dtype=np.float64), nan=0.0)
    return (X.astype(np.float32), np.asarray(y, dtype=np.int64), np.asarray(cust),
            np.asarray(ts, dtype=np.int64), base)


def group_ids(cust: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One id per decision moment (customer_id, ts)."""
    keys = np.char.add(np.char.add(cust.astype(str), "|"), ts.astype(str))
    _, gid = np.unique(keys, return_inverse=True)
    return gid


def ndcg_at_k(y: np.ndarray, score: np.ndarray, gid: np.ndarray, k: int = 10) -> tuple[float, int]:
    """Mean NDCG@k over decision moments with at least one positive; ties in score are
    averaged (sklearn's ndcg_score semantics), so a constant score earns no credit."""
    from sklearn.metrics import ndcg_score

    order = np.argsort(gid, kind="stable")
    g_sorted = gid[order]
    bounds = np.flatnonzero(np.diff(g_sorted)) + 1
    vals = []
    for idx in np.split(order, bounds):
        yt = y[idx]
        if yt.sum() == 0 or len(idx) < 2:
            continue
        vals.append(ndcg_score(yt[None, :], score[idx][None, :], k=k))
    return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def evaluate(name: str, y, score, gid) -> dict:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")
    ndcg, groups = ndcg_at_k(y, score, gid)
    print(f"  {name:<28} AUC {auc:.4f}   NDCG@10 {ndcg:.4f}   ({groups} moments with a positive)")
    return {"auc": auc, "ndcg_at_10": ndcg}


def monotone_constraints(spec: str, inputs: list[str]) -> list[int] | None:
    """`a=-1,b=+1` -> one constraint per input (0 for the others); None when empty."""
    if not spec.strip():
        return None
    cst = {}
    for part in spec.split(","):
        name, _, sign = part.strip().partition("=")
        if name not in inputs:
            die(f"--monotone: {name!r} is not among the inputs")
        if sign not in ("1", "+1", "-1"):
            die(f"--monotone: {part!r} must be input=+1 or input=-1")
        cst[name] = int(sign)
    return [cst.get(n, 0) for n in inputs]


def fit(X, y, args):
    if args.monotonic_cst is not None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(max_iter=args.trees, max_depth=args.depth,
                                               learning_rate=args.learning_rate, min_samples_leaf=20,
                                               monotonic_cst=args.monotonic_cst,
                                               early_stopping=False, random_state=args.seed)
        model.fit(X, y)
        return model
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=args.trees, max_depth=args.depth,
                                       learning_rate=args.learning_rate, subsample=0.8,
                                       min_samples_leaf=20, random_state=args.seed)
    model.fit(X, y)
    return model


def _missing_flag_as_int() -> None:
    """skl2onnx 1.20 hands a HistGradientBoosting node's `missing_go_to_left`
    (a numpy bool under scikit-learn 1.9) to ONNX's integer list attribute,
    which refuses it; pass it on as an int (0/1, what ONNX expects)."""
    import skl2onnx.common.tree_ensemble as te

    if getattr(te.add_node, "_nextbest_int_flag", False):
        return
    original = te.add_node

    def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true),
                        **kwargs)

    add_node._nextbest_int_flag = True
    te.add_node = add_node


def export_onnx(model, n_features: int) -> tuple[bytes, dict]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _missing_flag_as_int()
    onx = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    outs = [o.name for o in onx.graph.output]
    if outs != ["label", "probabilities"]:
        die(f"unexpected ONNX outputs {outs}")
    opsets = {o.domain or "ai.onnx": o.version for o in onx.opset_import}
    return onx.SerializeToString(), {"ir_version": onx.ir_version, **opsets}


def verify_onnx(blob: bytes, model, X: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    ins = sess.get_inputs()
    if len(ins) != 1 or ins[0].name != "features":
        die(f"ONNX input is {[i.name for i in ins]}, expected ['features']")
    label, proba = sess.run(["label", "probabilities"], {"features": X})
    if proba.dtype != np.float32 or proba.shape != (len(X), 2) or label.dtype != np.int64:
        die(f"ONNX outputs have unexpected types/shapes: {label.dtype} {proba.dtype} {proba.shape}")
    if not np.isfinite(proba).all():
        die("ONNX scores are not all finite")
    ref = model.predict_proba(X)[:, 1]
    diff = float(np.max(np.abs(proba[:, 1].astype(np.float64) - ref)))
    if diff > 1e-4:
        die(f"ONNX scores differ from sklearn by {diff:.2e} (> 1e-4)")
    return diff


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def toml_float(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


def write_manifest(path: str, args, inputs, meta: dict) -> None:
    kind = ("HistGradientBoostingClassifier" if args.monotonic_cst is not None
            else "GradientBoostingClassifier")
    desc = args.description or (
        f"{kind} ({args.trees} trees, depth {args.depth}) scoring the propensity "
        "that the customer adds to cart or buys the item next")
    lines = [
        f"name = {toml_str(args.name)}",
        f"version = {args.version}",
        f"description = {toml_str(desc)}",
        'input = "features"',
        'output = "probabilities"',
        "score_column = 1",
        "inputs = [",
        *[f"  {toml_str(n)}," for n in inputs],
        "]",
        "",
        "[training]",
        f"trained_at = {toml_str(meta['trained_at'])}",
        f"source = {toml_str(meta['source'])}",
        f"rows = {meta['rows']}",
        f"train_rows = {meta['train_rows']}",
        f"holdout_rows = {meta['holdout_rows']}",
        f"holdout_moments = {meta['holdout_moments']}",
        f"positive_rate = {meta['positive_rate']:.4f}",
        f"auc = {toml_float(meta['auc'])}",
        f"ndcg_at_10 = {toml_float(meta['ndcg_at_10'])}",
        f"baseline = {toml_str(BASELINE)}",
        f"baseline_auc = {toml_float(meta['baseline_auc'])}",
        f"baseline_ndcg_at_10 = {toml_float(meta['baseline_ndcg_at_10'])}",
        f"trees = {args.trees}",
        f"max_depth = {args.depth}",
        f"learning_rate = {args.learning_rate}",
        f"monotone = {toml_str(args.monotone)}",
        f"refit_on_all_rows = {'false' if args.no_refit else 'true'}",
        f"onnx_ir_version = {meta['onnx']['ir_version']}",
        f"onnx_opset = {meta['onnx'].get('ai.onnx', 0)}",
        f"onnx_ml_opset = {meta['onnx'].get('ai.onnx.ml', 0)}",
        f"max_abs_diff_onnx_vs_sklearn = {meta['onnx_diff']:.2e}",
        "",
    ]
    text = "\n".join(lines)
    tomllib.loads(text)  # must parse
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    inputs = [s.strip() for s in args.inputs.split(",") if s.strip()]
    if not inputs or len(set(inputs)) != len(inputs):
        die("--inputs must be a non-empty list of distinct column names")
    args.monotonic_cst = monotone_constraints(args.monotone, inputs)
    X, y, cust, ts, base = load_rows(args.rows, inputs)
    gid = group_ids(cust, ts)
    print(f"rows: {len(y)} ({y.mean():.3%} positive), {gid.max() + 1} decision moments, {len(inputs)} inputs")

    # time split by decision moment: the latest `holdout` fraction of moments is the holdout
    moment_ts = np.zeros(gid.max() + 1, dtype=np.int64)
    moment_ts[gid] = ts
    order = np.argsort(moment_ts, kind="stable")
    n_hold = max(1, int(round(len(order) * args.holdout)))
    cutoff = moment_ts[order[len(order) - n_hold]]
    hold = ts >= cutoff
    train = ~hold
    if train.sum() == 0 or y[train].min() == y[train].max():
        die("the training split needs both labels; more data or a smaller --holdout")
    if y[hold].min() == y[hold].max():
        die("the holdout split needs both labels; more data or a larger --holdout")
    cut_iso = dt.datetime.fromtimestamp(cutoff / 1000, dt.timezone.utc).isoformat(timespec="seconds")
    print(f"split: train {int(train.sum())} rows, holdout {int(hold.sum())} rows "
          f"({len(np.unique(gid[hold]))} moments, ts >= {cut_iso})")

    t1 = time.time()
    model = fit(X[train], y[train], args)
    print(f"fit on train split: {time.time() - t1:.1f}s")
    print("holdout:")
    m = evaluate("model", y[hold], model.predict_proba(X[hold])[:, 1], gid[hold])
    b = evaluate(f"baseline ({BASELINE})", y[hold], base[hold], gid[hold])
    if hasattr(model, "feature_importances_"):
        imp = sorted(zip(model.feature_importances_, inputs), reverse=True)
        print("feature importances: " + ", ".join(f"{n} {v:.3f}" for v, n in imp))

    if not args.no_refit:
        t1 = time.time()
        model = fit(X, y, args)
        print(f"refit on all rows: {time.time() - t1:.1f}s")

    blob, onnx_info = export_onnx(model, len(inputs))
    diff = verify_onnx(blob, model, X)
    print(f"onnxruntime check: {len(X)} rows, scores finite, max |onnx - sklearn| = {diff:.2e}")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "model.onnx")
    toml_path = os.path.join(args.out_dir, "model.toml")
    tmp = onnx_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    meta = {
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": args.source or os.path.abspath(args.rows),
        "rows": len(y), "train_rows": int(train.sum()), "holdout_rows": int(hold.sum()),
        "holdout_moments": int(len(np.unique(gid[hold]))), "positive_rate": float(y.mean()),
        "auc": m["auc"], "ndcg_at_10": m["ndcg_at_10"],
        "baseline_auc": b["auc"], "baseline_ndcg_at_10": b["ndcg_at_10"], "onnx_diff": diff,
        "onnx": onnx_info,
    }
    write_manifest(toml_path + ".tmp", args, inputs, meta)
    # model.onnx first, then the manifest: a watcher keyed on model.toml sees a complete folder
    os.replace(tmp, onnx_path)
    os.replace(toml_path + ".tmp", toml_path)
    print(f"wrote {onnx_path} ({len(blob)} bytes) and {toml_path}; train.py: {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
