#!/usr/bin/env bash
# Retrain the ranker end to end, on synthetic history or on your own:
#
#   training/run.sh [--events FILE... ] [--items FILE] [--customers FILE] [--split time=80%] [WORK_DIR]
#
# Without --events: generate.py writes a synthetic shop (events, items, customers).
# Steps: 1 history -> 2 labels (nextbest evaluate --labels-out: the decision moments
# before the split, candidates as the server generates them, label 1 = the item
# carted or bought) -> 3 nextbest export-training -> 4 train.py -> 5 nextbest evaluate
# of the new model on the later window, beside the model serving and the baselines.
#
# Env: NEXTBEST_BIN   the nextbest binary (default $HOME/.cache/nextbest-target/release/nextbest)
#      PYTHON         python with training/requirements.txt (default .venv/bin/python of the repo)
#      MODEL_DIR      where to write model.onnx + model.toml (default models/ranker/<next version>)
#      MODEL_VERSION  version written to model.toml (default: the folder's name if a number, else 1)
#      MODELS_DIR     the models folder whose serving model makes the labels (default models/)
#      FEATURES       feature definitions passed to the binary (default feature-store/features.toml)
#      GEN_ARGS       extra args for generate.py (e.g. "--customers 4000 --seed 11")
#      TRAIN_ARGS     extra args for train.py (e.g. "--inputs a,b,c")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin="${NEXTBEST_BIN:-$HOME/.cache/nextbest-target/release/nextbest}"
py="${PYTHON:-$repo/.venv/bin/python}"
models="${MODELS_DIR:-$repo/models}"
features="${FEATURES:-$repo/feature-store/features.toml}"

die() { echo "run.sh: error: $*" >&2; exit 1; }

events=() items="" customers="" split="time=80%" work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --events) shift; while [ $# -gt 0 ] && [[ "$1" != --* ]]; do events+=("$1"); shift; done
              [ ${#events[@]} -gt 0 ] || die "--events needs at least one file" ;;
    --items) items="${2:?--items needs a file}"; shift 2 ;;
    --customers) customers="${2:?--customers needs a file}"; shift 2 ;;
    --split) split="${2:?--split needs a value, e.g. time=80%}"; shift 2 ;;
    -h|--help) sed -n 2,19p "$0"; exit 0 ;;
    --*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$work" ] || die "one WORK_DIR only (got '$work' and '$1')"; work="$1"; shift ;;
  esac
done
work="${work:-$(mktemp -d -t nextbest-train.XXXXXX)}"

[ -x "$bin" ] || die "nextbest binary not found at '$bin'. Build it (make build) or set NEXTBEST_BIN."
[ -x "$py" ] || die "python '$py' not found. Create it: python3 -m venv .venv && .venv/bin/pip install -r training/requirements.txt (or set PYTHON)."
"$py" -c 'import numpy, sklearn, skl2onnx, onnx, onnxruntime' 2>/dev/null \
  || die "'$py' lacks the training packages: $py -m pip install -r $here/requirements.txt"
[ -f "$features" ] || die "feature definitions not found at '$features' (set FEATURES)"
for f in "${events[@]}" $items $customers; do [ -e "$f" ] || compgen -G "$f" >/dev/null || die "no such file: $f"; done

# the next version of ranker unless told
if [ -z "${MODEL_DIR:-}" ]; then
  last=$(ls "$models/ranker" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 || true)
  MODEL_DIR="$models/ranker/$(( ${last:-0} + 1 ))"
fi
model_dir="$MODEL_DIR"
base="$(basename "$model_dir")"
version="${MODEL_VERSION:-$([[ "$base" =~ ^[0-9]+$ ]] && echo "$base" || echo 1)}"
name="$(basename "$(dirname "$model_dir")")"
mkdir -p "$work"
echo "== work dir: $work; new model: $name@$version in $model_dir"
export NEXTBEST_FEATURES="$features"

t0=$(date +%s)
if [ ${#events[@]} -eq 0 ]; then
  echo "== 1/5 generate (synthetic)"
  # shellcheck disable=SC2086
  "$py" "$here/generate.py" --out-dir "$work" ${GEN_ARGS:-}
  events=("$work/events.jsonl") items="$work/items.csv" customers="$work/customers.csv"
  source="generate.py ${GEN_ARGS:-(defaults)}"
else
  echo "== 1/5 history: ${events[*]}"
  source="${events[*]}"
fi
enrich=()
[ -n "$items" ] && enrich+=(--items "$items")
[ -n "$customers" ] && enrich+=(--customers "$customers")
t1=$(date +%s)

echo "== 2/5 labels: nextbest evaluate --labels-out (moments before the split $split, models from $models)"
NEXTBEST_MODELS_DIR="$models" "$bin" evaluate --events "${events[@]}" "${enrich[@]}" --split "$split" \
  --labels-out "$work/labels.csv" --json > "$work/evaluate-before.json"
[ -s "$work/labels.csv" ] || die "evaluate wrote no $work/labels.csv"
t2=$(date +%s)

echo "== 3/5 export-training"
"$bin" export-training --events "${events[@]}" --labels "$work/labels.csv" --out "$work/rows.csv" "${enrich[@]}"
[ -s "$work/rows.csv" ] || die "export-training wrote no $work/rows.csv"
t3=$(date +%s)

echo "== 4/5 train -> $model_dir"
# shellcheck disable=SC2086
"$py" "$here/train.py" --rows "$work/rows.csv" --out-dir "$model_dir" --version "$version" \
  --source "$source | nextbest evaluate --labels-out | nextbest export-training" ${TRAIN_ARGS:-}
t4=$(date +%s)

echo "== 5/5 evaluate $name@$version on the window after the split (the figures that predict serving)"
NEXTBEST_MODELS_DIR="$(dirname "$(dirname "$model_dir")")" "$bin" evaluate --events "${events[@]}" "${enrich[@]}" \
  --split "$split" --model "$name@$version" | tee "$work/evaluate-after.txt"
"$py" - "$work/evaluate-before.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"(the model serving before, {r['model']}: HR@{r['k']} {r['served']['hr']:.4f}, NDCG@{r['k']} {r['served']['ndcg']:.4f})")
EOF
t5=$(date +%s)
echo "== done: history $((t1 - t0))s, labels $((t2 - t1))s, export $((t3 - t2))s, train $((t4 - t3))s, evaluate $((t5 - t4))s; data in $work"
