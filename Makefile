# nextbest: `make run` to try it, `make test` to check it.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/nextbest-target
BIN := $(CARGO_TARGET_DIR)/release/nextbest
export ORT_DYLIB_PATH ?= $(CURDIR)/.deps/lib/libonnxruntime.so.1.31.1

.PHONY: setup build build-all run test lint unit bench bench-consumer soak model clean-services

setup:
	@scripts/setup.sh

build: setup
	cargo build --release --locked
	@mkdir -p target/release && cp -f $(BIN) target/release/nextbest
	@echo "built target/release/nextbest"

# Every target at once (the tests, benches and the binary), as `cargo test`
# will build them, and the fuzz target (fuzz/README.md), uninstrumented. Cargo.toml switches on for the server the features the
# dev-dependencies need in shared crates, so `make build` and this compile
# every dependency once, in either order.
build-all: setup
	cargo build --release --locked --all-targets
	cargo build --release --locked -p nextbest-fuzz
	@mkdir -p target/release && cp -f $(BIN) target/release/nextbest
	@echo "built target/release/nextbest and the tests"

# The embedded server with the demo shop: the catalog of web/store and a
# demo history of the last 12 hours (made now, so the popularity lists are
# fresh) loaded before serving.
run: build
	@node web/store/make-history.mjs > .deps/demo-history.jsonl
	@echo "starting nextbest (embedded store, shipped model, demo catalog); Ctrl-C to stop"
	@echo "storefront: http://$${NEXTBEST_HTTP_ADDR:-127.0.0.1:8080}/"
	target/release/nextbest serve --backfill-items web/store/catalog.jsonl --backfill-events .deps/demo-history.jsonl

lint:
	cargo fmt --all -- --check
	cargo clippy --release --locked --all-targets -- -D warnings

# Starts Redis and Tansu on free ports, runs every test (the Rust tests,
# then web/: the SDK's unit tests and the storefront in headless Chromium
# against the release binary), stops them.
test: build-all lint
	@scripts/services.sh start
	@source .deps/services.env && set -o pipefail && \
	  cargo test --release --locked -- --test-threads=4 2>&1 | tee .deps/test.log && \
	  (cd web && node sdk/build.mjs --check && node store/make-catalog.mjs --check && \
	   NEXTBEST_BIN=$(CURDIR)/target/release/nextbest npm test 2>&1 | tee ../.deps/test-web.log); \
	  status=$$?; scripts/services.sh stop; exit $$status

# The load test (benches/load.rs) twice, each on fresh Redis and Tansu
# (Tansu's in-memory engine slows as its topics grow): the item cache on
# (1 s, the default) and off (every request reads its items from Redis).
bench: build
	@status=0 && for ms in 1000 0; do \
	  scripts/services.sh start && source .deps/services.env && \
	  echo "== recommend.item_cache_ms = $$ms" && \
	  NEXTBEST_BENCH_ITEM_CACHE_MS=$$ms cargo bench --locked --bench load || status=$$?; \
	  done; scripts/services.sh stop; exit $$status

# The consumer draining a backlog (benches/consumer.rs; NEXTBEST_BENCH_EVENTS,
# default 1,000,000, to change it) on fresh Redis and Tansu.
bench-consumer: build
	@scripts/services.sh start
	@source .deps/services.env && status=0 && \
	  cargo bench --locked --bench consumer || status=$$?; \
	  scripts/services.sh stop; exit $$status

# The 10-minute soak (benches/soak.rs; NEXTBEST_SOAK_SECONDS to change it):
# its own Redis, server and a Tansu on its SQLite engine, built once by
# scripts/tansu-sqlite.sh (the wheel's in-memory engine slows down as its
# topics grow: benches/RESULTS.md, "Soak").
soak: build
	@scripts/tansu-sqlite.sh
	NEXTBEST_TANSU=$(CURDIR)/.deps/tansu-sqlite/bin/tansu NEXTBEST_SOAK_TANSU_STORAGE=sqlite://tansu.db \
	  cargo bench --locked --bench soak

# Train the next ranker version (see training/README.md): on synthetic
# history, or on yours with `make model EVENTS=history.jsonl [ITEMS=items.csv]
# [CUSTOMERS=customers.csv]`; it ends with `nextbest evaluate` of the new model.
model: build
	NEXTBEST_BIN=$(CURDIR)/target/release/nextbest training/run.sh \
	  $(if $(EVENTS),--events $(EVENTS)) $(if $(ITEMS),--items $(ITEMS)) $(if $(CUSTOMERS),--customers $(CUSTOMERS))

clean-services:
	@scripts/services.sh stop
