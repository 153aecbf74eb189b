#!/usr/bin/env bash
# The test command: installs the build dependencies, starts the local stack (Kafka, schema
# registry, PostgreSQL, Prometheus on 127.0.0.1), then runs every test of the workspace
# against it. Pass extra cargo test arguments after the script, e.g. `scripts/test.sh -p schemas`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stockflow/target}"
scripts/build-deps.sh
scripts/stack.sh start
eval "$(scripts/stack.sh env)"

# Each test owns its topics (<test>-<pid>-<millis>-<n>-...) and PostgreSQL schema (t_...):
# delete what earlier runs left, which otherwise only slows Kafka's start-up down.
echo "[test] deleting the topics and schemas of earlier test runs"
scripts/kafka topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --if-exists \
  --topic '[a-z0-9-]+-[0-9]+-[0-9]{13}-[0-9]+-.*'
scripts/stack.sh psql -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning; DO \$\$ DECLARE s text; BEGIN
  FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%' OR nspname LIKE 'bench\\_%' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP; END \$\$;"

# One profile (release) for everything: RocksDB and librdkafka are built once, and the
# large end-to-end tests run at a realistic speed.
cargo test --release --workspace "$@"
