#!/usr/bin/env bash
# The soak (issue 17, RELIABILITY.md): starts the local stack, builds everything (the same build
# as the tests), and runs the example soak (processor/examples/soak/): two processor instances
# decide orders with restocks while random faults are injected, then the invariants are checked
# and a report is printed (exit 1 on any violation). Arguments go to the soak, e.g.
# `scripts/soak.sh --duration 30m --rate 1000`; `--help` lists them. The report goes to stdout,
# the progress to stderr. It stops and starts the shared broker, registry and PostgreSQL: run
# nothing else against the stack meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stockflow/target}"
scripts/build-deps.sh
scripts/stack.sh start
scripts/stack.sh prune
eval "$(scripts/stack.sh env)"
cargo build --release --workspace --all-targets
"$CARGO_TARGET_DIR/release/examples/soak" "$@"
