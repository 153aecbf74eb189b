#!/usr/bin/env bash
# The end-to-end benchmark: starts the local stack, builds everything (the same build as the
# tests), and runs the example e2e_bench (processor/examples/e2e_bench/), which prints Markdown
# tables (copy them into BENCHMARKS.md). Arguments go to the benchmark, e.g.
# `scripts/bench.sh --orders 50000`. The criterion micro-benchmarks are `cargo bench` (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stockflow/target}"
scripts/build-deps.sh
scripts/stack.sh start
scripts/stack.sh prune
eval "$(scripts/stack.sh env)"
cargo build --release --workspace --all-targets
"$CARGO_TARGET_DIR/release/examples/e2e_bench" "$@"
