#!/usr/bin/env bash
# The test command: installs the build dependencies and Helm, starts the local stack (Kafka, schema
# registry, PostgreSQL, Prometheus on 127.0.0.1), then runs every test of the workspace
# against it. Pass extra cargo test arguments after the script, e.g. `scripts/test.sh -p schemas`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stockflow/target}"
scripts/build-deps.sh
# The pinned Helm that processor/tests/helm.rs lints and renders the chart with.
scripts/install-helm.sh
scripts/stack.sh start
eval "$(scripts/stack.sh env)"

# Each test owns its topics and PostgreSQL schema: delete what earlier runs left, which
# otherwise only slows Kafka's start-up down.
scripts/stack.sh prune

# One profile (release) for everything: RocksDB and librdkafka are built once, and the
# large end-to-end tests run at a realistic speed.
cargo test --release --workspace "$@"
