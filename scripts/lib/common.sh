# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts that source it
# Shared settings for scripts/stack.sh and scripts/kafka: pinned versions, where things live,
# the fixed endpoints of the local stack, and small helpers. Sourced, not run.

STOCKFLOW_HOME="${STOCKFLOW_HOME:-$HOME/.cache/stockflow}"
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB_DIR="$SCRIPTS_DIR/lib"

# Downloads (jars, tarballs, Maven's local repository) are cached here between runs.
DOWNLOADS="$STOCKFLOW_HOME/downloads"
M2_REPO="$DOWNLOADS/m2"
# Per-service data, config, logs and pid files.
STACK_DIR="$STOCKFLOW_HOME/stack"

# Apache Kafka from Maven Central (jars listed in lib/kafka-pom.xml).
KAFKA_VERSION="4.1.2"
KAFKA_LIBS="$DOWNLOADS/kafka-$KAFKA_VERSION/libs"
# Apicurio Registry: 3.0.x is the newest line that runs on Java 17 (3.3 needs Java 21).
APICURIO_VERSION="3.0.9"
APICURIO_HOME="$DOWNLOADS/apicurio-registry-$APICURIO_VERSION"
# PostgreSQL and Prometheus come from Debian's packages.
PG_BIN="/usr/lib/postgresql/15/bin"

# The endpoints are a contract: the processor, generator and tests default to them.
KAFKA_HOST=127.0.0.1 KAFKA_PORT=9092 KAFKA_CONTROLLER_PORT=9093
# A second client listener that advertises the address of the test kit's fault proxy
# (testkit/src/proxy.rs), which forwards to it: clients bootstrapped through the proxy stay
# behind it. Nothing listens on the proxy's port unless a fault test runs.
KAFKA_PROXIED_PORT=9094 FAULT_PROXY_PORT=9095
REGISTRY_HOST=127.0.0.1 REGISTRY_PORT=8081
PG_HOST=127.0.0.1 PG_PORT=5432
PROMETHEUS_HOST=127.0.0.1 PROMETHEUS_PORT=9090
PROCESSOR_METRICS_TARGETS=(127.0.0.1:9400 127.0.0.1:9401 127.0.0.1:9402 127.0.0.1:9403)

KAFKA_BOOTSTRAP_SERVERS="$KAFKA_HOST:$KAFKA_PORT"
SCHEMA_REGISTRY_URL="http://$REGISTRY_HOST:$REGISTRY_PORT/apis/ccompat/v7"
DATABASE_URL="postgres://stockflow:stockflow@$PG_HOST:$PG_PORT/stockflow"
PROMETHEUS_URL="http://$PROMETHEUS_HOST:$PROMETHEUS_PORT"

# Seconds to wait for a service to answer after starting it.
START_TIMEOUT="${STOCKFLOW_START_TIMEOUT:-120}"

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [[ -s "$1" ]] && kill -0 "$(head -n 1 "$1")" 2>/dev/null; }
