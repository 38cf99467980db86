#!/usr/bin/env bash
# Retrain the ranker end to end: generate -> nextbest export-training -> train.
#
#   training/run.sh [WORK_DIR]        (default: a fresh temp dir, kept for inspection)
#
# Env: NEXTBEST_BIN   the nextbest binary (default $HOME/.cache/nextbest-target/release/nextbest)
#      PYTHON         python with training/requirements.txt (default .venv/bin/python of the repo)
#      MODEL_DIR      where to write model.onnx + model.toml (default models/ranker/1)
#      MODEL_VERSION  version written to model.toml (default 1)
#      FEATURES       feature definitions passed to the binary (default feature-store/features.toml)
#      GEN_ARGS       extra args for generate.py (e.g. "--customers 4000 --seed 11")
#      TRAIN_ARGS     extra args for train.py
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin="${NEXTBEST_BIN:-$HOME/.cache/nextbest-target/release/nextbest}"
py="${PYTHON:-$repo/.venv/bin/python}"
model_dir="${MODEL_DIR:-$repo/models/ranker/1}"
version="${MODEL_VERSION:-1}"
features="${FEATURES:-$repo/feature-store/features.toml}"
work="${1:-$(mktemp -d -t nextbest-train.XXXXXX)}"

die() { echo "run.sh: error: $*" >&2; exit 1; }
[ -x "$bin" ] || die "nextbest binary not found at '$bin'. Build it (cargo build --release) or set NEXTBEST_BIN."
[ -x "$py" ] || die "python '$py' not found. Create it: python3 -m venv .venv && .venv/bin/pip install -r training/requirements.txt (or set PYTHON)."
"$py" -c 'import numpy, sklearn, skl2onnx, onnx, onnxruntime' 2>/dev/null \
  || die "'$py' lacks the training packages: $py -m pip install -r $here/requirements.txt"
[ -f "$features" ] || die "feature definitions not found at '$features' (set FEATURES)"
mkdir -p "$work"
echo "== work dir: $work"

t0=$(date +%s)
echo "== 1/3 generate"
# shellcheck disable=SC2086
"$py" "$here/generate.py" --out-dir "$work" ${GEN_ARGS:-}
t1=$(date +%s)

echo "== 2/3 export-training ($bin)"
NEXTBEST_FEATURES="$features" "$bin" export-training \
  --events "$work/events.jsonl" --labels "$work/labels.csv" --out "$work/rows.csv" \
  --items "$work/items.csv" --customers "$work/customers.csv"
[ -s "$work/rows.csv" ] || die "export-training wrote no $work/rows.csv"
t2=$(date +%s)

echo "== 3/3 train -> $model_dir"
# shellcheck disable=SC2086
"$py" "$here/train.py" --rows "$work/rows.csv" --out-dir "$model_dir" --version "$version" \
  --source "generate.py ${GEN_ARGS:-(defaults)} | nextbest export-training" ${TRAIN_ARGS:-}
t3=$(date +%s)
echo "== done: generate $((t1 - t0))s, export-training $((t2 - t1))s, train $((t3 - t2))s; data in $work"
