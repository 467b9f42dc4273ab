# image-preheat — every job CI and people run goes through here.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/image-preheat-target
# Incremental caches double the target dir; CI builds once per run.
export CARGO_INCREMENTAL ?= 0
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug/image-preheat

.PHONY: demo test deps build lint fmt bench

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --workspace --all-targets

## demo: a local registry with a generated image, DEMO_NODES (4) agents on loopback preheat it; per-node time and bytes by source
demo: deps
	$(CARGO) build -p image-preheat -p preheat-testkit --bins
	./scripts/demo.sh "$(BIN)" "$(CARGO_TARGET_DIR)/debug/preheat-fixture"

## test: install what tests need, check formatting and lints, run every test
test: deps lint
	$(CARGO) test --workspace --no-fail-fast
	./scripts/check-deploy.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: the emulated-network lab (registry-direct, BitTorrent, image-preheat, the bound, the
## simulator) and loopback figures, as root; results in bench/results/
bench: deps
	./scripts/bench.sh
