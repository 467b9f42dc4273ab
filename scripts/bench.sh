#!/usr/bin/env bash
# make bench: release builds, then the emulated-network lab (both profiles, every scenario, the
# simulator with the same parameters) and the single-host loopback figures. Writes bench/results/.
# Needs root (network namespaces, tc). Namespaces and processes are removed on exit, also when a
# run fails or is interrupted.
# Env: BENCH_PROFILES (slow,fast), BENCH_SCENARIOS (preheat,direct,bittorrent,churn-host,
#      churn-puller,rolling), BENCH_HOSTS (16),
#      BENCH_IMAGE_SIZE (128MiB), BENCH_LAYERS (4), BENCH_OUT (bench/results), BENCH_LOOPBACK=0 skips
#      the loopback figures, BENCH_LOOPBACK_SIZE (1GiB), BENCH_KEEP=DIR keeps agent logs,
#      BENCH_AGENT_LOG (info) sets their level.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
CARGO=${CARGO:-cargo}

if [ "$(id -u)" != 0 ]; then
  echo "make bench builds network namespaces and needs root" >&2
  exit 1
fi

echo "== building release binaries (image-preheat, preheat-lab, preheat-sim)"
"$CARGO" build --release -p image-preheat -p preheat-simulations --bins

LAB="$TARGET/release/preheat-lab"
export IMAGE_PREHEAT_BIN="$TARGET/release/image-preheat"
export BENCH_OUT=${BENCH_OUT:-bench/results}
cleanup() { "$LAB" cleanup >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date +%s)
"$LAB"
if [ "${BENCH_LOOPBACK:-1}" != 0 ]; then
  echo "== loopback: one blob between two agents vs curl"
  "$LAB" loopback
fi
echo "== make bench took $(( $(date +%s) - started )) s; results in $BENCH_OUT/"
