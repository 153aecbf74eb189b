#!/usr/bin/env bash
# Brings everything up and runs the system: installs the build dependencies, starts the local
# stack (Kafka, schema registry, PostgreSQL, Prometheus on 127.0.0.1), builds the binaries,
# registers the schemas, seeds the catalog, starts the processor in the background and sends
# orders in the foreground until Ctrl-C, restocking the catalog as they sell, so that the shop
# keeps trading (a steady mix of confirmations and rejections) for as long as it runs. Watch
# the outcomes from another terminal with
#   target/release/processor tail      (or: $CARGO_TARGET_DIR/release/processor tail)
# Environment: RATE (orders/s, default 200), SKUS (synthetic SKUs, default 100), RESTOCK_EVERY
# (default 5s), RESTOCK_FACTOR (share of the expected demand each restock brings, default 0.9),
# SEED (of the orders; default: a new one each run, since the processor decides an order id
# once), STOCKFLOW_LOG_FORMAT (text or json).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stockflow/target}"
STOCKFLOW_HOME="${STOCKFLOW_HOME:-$HOME/.cache/stockflow}"
RATE="${RATE:-200}"
SKUS="${SKUS:-100}"
RESTOCK_EVERY="${RESTOCK_EVERY:-5s}"
RESTOCK_FACTOR="${RESTOCK_FACTOR:-0.9}"
SEED="${SEED:-$(date +%s)}"

scripts/build-deps.sh
scripts/stack.sh start
eval "$(scripts/stack.sh env)"

echo "run: building the processor and the generator (the first build takes a while)"
# The same build as the tests (dev-dependencies included), so nothing is compiled twice.
cargo build --release --workspace --all-targets
bin="$CARGO_TARGET_DIR/release"

"$bin/generator" schemas register
"$bin/generator" seed --synthetic-skus "$SKUS" --synthetic-stock 1000

mkdir -p "$STOCKFLOW_HOME/logs"
# In a session of its own, so that Ctrl-C reaches only the generator and this script, and the
# processor gets exactly one signal (a second one would make it exit without finishing).
setsid "$bin/processor" run --state-dir "$STOCKFLOW_HOME/state" >"$STOCKFLOW_HOME/logs/processor.log" 2>&1 &
processor_pid=$!
trap 'kill -TERM "$processor_pid" 2>/dev/null; wait "$processor_pid" 2>/dev/null || true' EXIT
echo "run: processor started (pid $processor_pid), log: $STOCKFLOW_HOME/logs/processor.log"
echo "run: metrics http://127.0.0.1:9400/metrics, Prometheus $PROMETHEUS_URL"
echo "run: watch outcomes with: $bin/processor tail"
echo "run: sending $RATE orders/s (seed $SEED), restocking every $RESTOCK_EVERY, until Ctrl-C"
"$bin/generator" run --synthetic-skus "$SKUS" --rate "$RATE" --seed "$SEED" --lines-max 3 \
    --duplicate-rate 0.01 --invalid-rate 0.01 \
    --restock-every "$RESTOCK_EVERY" --restock-factor "$RESTOCK_FACTOR"
