#!/usr/bin/env bash
# The local Stockflow stack without Docker, all on 127.0.0.1:
#   kafka       Apache Kafka, one KRaft node (broker + controller)   127.0.0.1:9092 (controller 9093)
#   registry    Apicurio Registry, Confluent-compatible API         http://127.0.0.1:8081/apis/ccompat/v7
#   postgres    PostgreSQL 15, database and role stockflow          127.0.0.1:5432
#   prometheus  Prometheus, scraping the processors on 9400-9403    http://127.0.0.1:9090
#
# Usage: scripts/stack.sh install | start [NAME...] | stop [NAME...] | crash NAME | status | env | logs NAME [tail args] | psql | prune | clean
#   install  installs the Debian packages that are missing and downloads Kafka and the registry
#            with Maven (cached: a second install uses no network)
#   start    install, then start every service (or the NAMEd ones) that is not up and wait until
#            each one answers
#   stop     stop the services, or the NAMEd ones (by their pid files)
#   crash    SIGKILL the NAMEd service, kafka or registry (by its pid file), for fault tests; start
#            brings it back
#   status   one line per service: up or down, and its address; exits 1 if any is down
#   env      export lines for the endpoints: eval "$(scripts/stack.sh env)"
#   logs     the last lines of a service's log, e.g. scripts/stack.sh logs kafka -f
#   psql     psql on the stockflow database (the read model), e.g. scripts/stack.sh psql -c '\dt'
#   prune    delete the topics and read-model schemas that tests and benchmarks left behind:
#            only those under the reserved prefixes (topics stockflow-test-*, PostgreSQL schemas
#            stockflow_test_*), which every test and benchmark name starts with; never name
#            your own topics or schemas so
#   clean    stop, then delete every service's data (the downloads are kept)
#
# Downloads are cached in $STOCKFLOW_HOME/downloads; each service's config, data, log and pid file
# live in $STOCKFLOW_HOME/stack/<service>. STOCKFLOW_HOME defaults to ~/.cache/stockflow.
# STOCKFLOW_START_TIMEOUT (seconds, default 120) bounds the wait for each service.
# KAFKA_HEAP_OPTS and KAFKA_JVM_PERFORMANCE_OPTS set the broker's JVM options, as in Kafka's own
# scripts (defaults: theirs, "-Xms1g -Xmx1g" and G1 with a 20 ms pause target); its GC log is
# $STOCKFLOW_HOME/stack/kafka/gc.log.
#
# Choices for a development stack:
# - Kafka does not auto-create topics: the processor creates its internal topics and the generator
#   its input topics, so a misspelt topic name fails instead of creating a topic.
# - PostgreSQL runs with fsync off: fast, but a machine crash can lose or corrupt its data.
# - The registry keeps its schemas in an H2 file, so they survive a restart as Kafka's records do
#   (the schema ids inside those records stay valid). A fresh registry's global compatibility is set
#   to BACKWARD, Confluent's default (Apicurio's own default is none).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { echo "usage: scripts/stack.sh install | start [NAME...] | stop [NAME...] | crash NAME | status | env | logs NAME [tail args] | psql [psql args] | prune | clean"; }

SERVICES=(kafka registry postgres prometheus)

# services NAME...: the names given (checked), or every service when none is.
services() {
  [[ $# -eq 0 ]] && set -- "${SERVICES[@]}"
  local name
  for name in "$@"; do
    [[ " ${SERVICES[*]} " == *" $name "* ]] || die "unknown service: $name (${SERVICES[*]})"
  done
  echo "$@"
}

# ---------------------------------------------------------------- helpers

APT_UPDATED=no

# apt_install PKG...: installs Debian packages (runs apt-get update once first).
apt_install() {
  [[ $(id -u) -eq 0 ]] || die "missing Debian packages: $*; install them as root: apt-get install $*"
  if [[ $APT_UPDATED == no ]]; then
    say "apt-get update"
    apt-get update -qq
    APT_UPDATED=yes
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# mvn_quiet ARGS...: Maven in batch mode, with its local repository in the download cache.
mvn_quiet() { mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$M2_REPO" "$@"; }

# start_daemon PIDFILE LOGFILE CMD...: runs CMD in its own session, detached from this shell,
# output to LOGFILE (the previous run's log is kept as LOGFILE.1).
start_daemon() {
  local pidfile=$1 log=$2
  shift 2
  if [[ -f $log ]]; then mv "$log" "$log.1"; fi
  setsid nohup "$@" >"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# fail_start NAME LOGFILE REASON: shows the end of the log and exits.
fail_start() {
  say "$1 $3; last lines of $2:"
  tail -n 30 "$2" >&2 || true
  die "$1 $3 (log: $2)"
}

# wait_for NAME LOGFILE PIDFILE CHECK...: runs CHECK every second until it succeeds; fails if the
# process exits or START_TIMEOUT passes.
wait_for() {
  local name=$1 log=$2 pidfile=$3
  shift 3
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pidfile" || fail_start "$name" "$log" "exited while starting"
    ((SECONDS < deadline)) || fail_start "$name" "$log" "did not answer within ${START_TIMEOUT}s"
    sleep 1
  done
}

# ensure_port_free NAME HOST PORT [HINT]: refuses to start NAME when another program holds its address.
ensure_port_free() {
  if port_open "$2" "$3"; then
    die "$1: another program already listens on $2:$3 (not this stack's $1 in $STACK_DIR); stop it first${4:+ ($4)}"
  fi
}

# stop_by_pidfile NAME PIDFILE: SIGTERM, then SIGKILL if the process is still there after 60 s.
stop_by_pidfile() {
  local name=$1 pidfile=$2 pid
  if ! pid_alive "$pidfile"; then
    say "$name: not running"
    rm -f "$pidfile"
    return
  fi
  pid=$(head -n 1 "$pidfile")
  say "$name: stopping (pid $pid)"
  kill "$pid"
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name: still running after 60 s, killing pid $pid"
    kill -9 "$pid"
  fi
  rm -f "$pidfile"
}

# status_line NAME HOST PORT ADDRESS PIDFILE: prints "NAME up|down ADDRESS"; false when not up.
status_line() {
  local name=$1 host=$2 port=$3 address=$4 pidfile=$5 state=down note=""
  if pid_alive "$pidfile" && port_open "$host" "$port"; then
    state=up
  elif pid_alive "$pidfile"; then
    state=starting
  elif port_open "$host" "$port"; then
    note=" (the address is used by another program)"
  fi
  printf '%-11s %-9s %s%s\n' "$name" "$state" "$address" "$note"
  [[ $state == up ]]
}

# ---------------------------------------------------------------- install

install_packages() {
  local missing=() java_version
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v curl >/dev/null || missing+=(curl)
  [[ -x $PG_BIN/initdb ]] || missing+=(postgresql-15)
  command -v prometheus >/dev/null || missing+=(prometheus)
  if ((${#missing[@]} > 0)); then apt_install "${missing[@]}"; fi
  java_version=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
  ((${java_version%%.*} >= 17)) || die "Java 17 or newer is needed; found $java_version"
}

install_kafka() {
  local stamp="$KAFKA_LIBS/.installed" want
  # The stamp names the version and the POM's hash, so a changed POM reinstalls.
  want="$KAFKA_VERSION $(sha256sum <"$LIB_DIR/kafka-pom.xml" | cut -c1-16)"
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    say "kafka: Apache Kafka $KAFKA_VERSION jars are in $KAFKA_LIBS"
    return
  fi
  say "kafka: downloading Apache Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS.tmp"
  mvn_quiet -f "$LIB_DIR/kafka-pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp"
  echo "$want" >"$KAFKA_LIBS.tmp/.installed"
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

install_registry() {
  local gav="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all"
  local tarball="$M2_REPO/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
  if [[ -f $APICURIO_HOME/.installed ]]; then
    say "registry: Apicurio Registry $APICURIO_VERSION is in $APICURIO_HOME"
    return
  fi
  say "registry: downloading Apicurio Registry $APICURIO_VERSION ($gav) with Maven"
  # Version 2.8 of the plugin on purpose: later versions also resolve the artifact's parent POM
  # (io.apicurio:apicurio-registry), which the Maven registry here does not serve for 3.0.x.
  mvn_quiet org.apache.maven.plugins:maven-dependency-plugin:2.8:get -Dtransitive=false -Dartifact="$gav"
  say "registry: unpacking into $APICURIO_HOME"
  rm -rf "$APICURIO_HOME.tmp"
  mkdir -p "$APICURIO_HOME.tmp"
  tar -xzf "$tarball" -C "$APICURIO_HOME.tmp"
  touch "$APICURIO_HOME.tmp/.installed"
  rm -rf "$APICURIO_HOME"
  mv "$APICURIO_HOME.tmp" "$APICURIO_HOME"
}

cmd_install() {
  mkdir -p "$DOWNLOADS" "$STACK_DIR"
  install_packages
  install_kafka
  install_registry
}

# ---------------------------------------------------------------- kafka

KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}
KAFKA_JVM_PERFORMANCE_OPTS=${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35}

kafka_port_open() { port_open "$KAFKA_HOST" "$KAFKA_PORT"; }

write_kafka_config() {
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/stack.sh on each start: one KRaft node, broker and controller in one process.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
# PROXIED is for the fault tests: it advertises the fault proxy's address (see lib/common.sh).
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT,PROXIED://$KAFKA_HOST:$KAFKA_PROXIED_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,PROXIED://$KAFKA_HOST:$FAULT_PROXY_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data

# One node: one replica of everything, including the internal topics.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# A consumer group starts at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Topics are created on purpose (processor: internal topics; generator: input topics).
auto.create.topics.enable=false
EOF
}

start_kafka() {
  if pid_alive "$KAFKA_DIR/kafka.pid"; then
    wait_for kafka "$KAFKA_DIR/kafka.log" "$KAFKA_DIR/kafka.pid" kafka_port_open
    say "kafka: already up on $KAFKA_BOOTSTRAP_SERVERS (pid $(cat "$KAFKA_DIR/kafka.pid"))"
    return
  fi
  ensure_port_free kafka "$KAFKA_HOST" "$KAFKA_PORT"
  ensure_port_free kafka "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT"
  ensure_port_free kafka "$KAFKA_HOST" "$KAFKA_PROXIED_PORT"
  mkdir -p "$KAFKA_DIR"
  write_kafka_config
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    say "kafka: formatting storage in $KAFKA_DIR/data"
    local cluster_id
    cluster_id=$("$SCRIPTS_DIR/kafka" storage random-uuid)
    "$SCRIPTS_DIR/kafka" storage format --config "$KAFKA_DIR/server.properties" --cluster-id "$cluster_id" >/dev/null
  fi
  say "kafka: starting Apache Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP_SERVERS (log: $KAFKA_DIR/kafka.log)"
  # shellcheck disable=SC2086 # the JVM options are split into words, as Kafka's scripts do
  start_daemon "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/kafka.log" \
    java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS \
    "-Xlog:gc*:file=$KAFKA_DIR/gc.log:time,uptime,level,tags:filecount=2,filesize=20M" \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$LIB_DIR/log4j2-kafka.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties"
  wait_for kafka "$KAFKA_DIR/kafka.log" "$KAFKA_DIR/kafka.pid" kafka_port_open
  # The port opens before the broker serves metadata; a real request proves it answers.
  "$SCRIPTS_DIR/kafka" topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --list >/dev/null ||
    fail_start kafka "$KAFKA_DIR/kafka.log" "does not answer a topic listing"
  say "kafka: up"
}

stop_kafka() { stop_by_pidfile kafka "$KAFKA_DIR/kafka.pid"; }

# ---------------------------------------------------------------- registry

REGISTRY_DIR="$STACK_DIR/registry"

registry_answers() { curl -fsS -o /dev/null "$SCHEMA_REGISTRY_URL/subjects"; }

start_registry() {
  if pid_alive "$REGISTRY_DIR/registry.pid"; then
    wait_for registry "$REGISTRY_DIR/registry.log" "$REGISTRY_DIR/registry.pid" registry_answers
    say "registry: already up at $SCHEMA_REGISTRY_URL (pid $(cat "$REGISTRY_DIR/registry.pid"))"
    return
  fi
  ensure_port_free registry "$REGISTRY_HOST" "$REGISTRY_PORT"
  mkdir -p "$REGISTRY_DIR/data"
  local fresh=no
  [[ -f $REGISTRY_DIR/data/registry.mv.db ]] || fresh=yes
  say "registry: starting Apicurio Registry $APICURIO_VERSION at $SCHEMA_REGISTRY_URL (log: $REGISTRY_DIR/registry.log)"
  # use-canonical-hash: a schema that differs only in whitespace or field order of its JSON is the
  # same schema (same id, no new version), as in Confluent's registry.
  # max-subjects: the default 1000 caps GET /subjects, and tests make many subjects.
  (cd "$REGISTRY_DIR" && start_daemon "$REGISTRY_DIR/registry.pid" "$REGISTRY_DIR/registry.log" \
    java -Xms64m -Xmx512m -Djava.awt.headless=true \
    -Dquarkus.http.host="$REGISTRY_HOST" -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dapicurio.datasource.url="jdbc:h2:file:$REGISTRY_DIR/data/registry" \
    -Dapicurio.ccompat.use-canonical-hash=true \
    -Dapicurio.ccompat.max-subjects=100000 \
    -jar "$APICURIO_HOME/apicurio-registry-app-$APICURIO_VERSION-runner.jar")
  wait_for registry "$REGISTRY_DIR/registry.log" "$REGISTRY_DIR/registry.pid" registry_answers
  if [[ $fresh == yes ]]; then
    say "registry: setting the global compatibility to BACKWARD"
    curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
      --data '{"compatibility":"BACKWARD"}' "$SCHEMA_REGISTRY_URL/config"
  fi
  say "registry: up"
}

stop_registry() { stop_by_pidfile registry "$REGISTRY_DIR/registry.pid"; }

# ---------------------------------------------------------------- postgres

PG_DIR="$STACK_DIR/postgres"
PG_DATA="$PG_DIR/data"

# as_postgres CMD...: PostgreSQL refuses to run as root, so root runs it as the postgres OS user.
as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_running() { [[ -f $PG_DATA/PG_VERSION ]] && as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

pg_sql() {
  as_postgres "$PG_BIN/psql" -X -q -tA -v ON_ERROR_STOP=1 -h "$PG_DATA" -p "$PG_PORT" -U postgres -d postgres "$@"
}

# grant_search_to_postgres DIR: lets the postgres OS user reach DIR (root's home is usually 0700).
grant_search_to_postgres() {
  local path="" part parts
  IFS=/ read -ra parts <<<"${1#/}"
  for part in "${parts[@]}"; do
    path="$path/$part"
    if ! runuser -u postgres -- test -x "$path"; then
      say "postgres: chmod o+x $path, so the postgres OS user can reach its data directory"
      chmod o+x "$path"
    fi
  done
}

init_postgres() {
  [[ -f $PG_DATA/PG_VERSION ]] && return
  say "postgres: creating a cluster in $PG_DATA (initdb)"
  mkdir -p "$PG_DIR"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$PG_DIR"
    grant_search_to_postgres "$(dirname "$PG_DIR")"
  fi
  chmod 700 "$PG_DIR"
  as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  echo "include_if_exists = 'stockflow.conf'" | as_postgres tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

write_postgres_config() {
  as_postgres tee "$PG_DATA/stockflow.conf" >/dev/null <<EOF
# Written by scripts/stack.sh on each start.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
max_connections = 300
# Development stack: speed over durability. A machine crash can lose or corrupt data.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

ensure_stockflow_database() {
  if [[ -z $(pg_sql -c "SELECT 1 FROM pg_roles WHERE rolname = 'stockflow'") ]]; then
    say "postgres: creating role stockflow (password stockflow, CREATEDB)"
    pg_sql -c "CREATE ROLE stockflow LOGIN CREATEDB PASSWORD 'stockflow'"
  fi
  if [[ -z $(pg_sql -c "SELECT 1 FROM pg_database WHERE datname = 'stockflow'") ]]; then
    say "postgres: creating database stockflow"
    pg_sql -c "CREATE DATABASE stockflow OWNER stockflow"
  fi
}

start_postgres() {
  init_postgres
  if pg_running; then
    say "postgres: already up on $PG_HOST:$PG_PORT (pid $(head -n 1 "$PG_DATA/postmaster.pid"))"
  else
    ensure_port_free postgres "$PG_HOST" "$PG_PORT" "Debian's own cluster? pg_lsclusters lists it, pg_ctlcluster 15 main stop stops it"
    write_postgres_config
    say "postgres: starting PostgreSQL 15 on $PG_HOST:$PG_PORT (log: $PG_DIR/postgres.log)"
    as_postgres "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_DIR/postgres.log" -w -t "$START_TIMEOUT" -s ||
      fail_start postgres "$PG_DIR/postgres.log" "did not start"
    say "postgres: up"
  fi
  ensure_stockflow_database
}

stop_postgres() {
  if pg_running; then
    say "postgres: stopping (pid $(head -n 1 "$PG_DATA/postmaster.pid"))"
    as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -s
  else
    say "postgres: not running"
  fi
}

# ---------------------------------------------------------------- prometheus

PROMETHEUS_DIR="$STACK_DIR/prometheus"

prometheus_answers() { curl -fsS -o /dev/null "$PROMETHEUS_URL/-/ready"; }

write_prometheus_config() {
  local targets
  targets=$(printf "'%s', " "${PROCESSOR_METRICS_TARGETS[@]}")
  cat >"$PROMETHEUS_DIR/prometheus.yml" <<EOF
# Written by scripts/stack.sh on each start.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  # The processor instances' /metrics (one port per instance).
  - job_name: stockflow-processor
    static_configs:
      - targets: [${targets%, }]
EOF
}

start_prometheus() {
  if pid_alive "$PROMETHEUS_DIR/prometheus.pid"; then
    wait_for prometheus "$PROMETHEUS_DIR/prometheus.log" "$PROMETHEUS_DIR/prometheus.pid" prometheus_answers
    say "prometheus: already up at $PROMETHEUS_URL (pid $(cat "$PROMETHEUS_DIR/prometheus.pid"))"
    return
  fi
  ensure_port_free prometheus "$PROMETHEUS_HOST" "$PROMETHEUS_PORT" "Debian's prometheus service? service prometheus stop"
  mkdir -p "$PROMETHEUS_DIR/data"
  write_prometheus_config
  say "prometheus: starting Prometheus at $PROMETHEUS_URL (log: $PROMETHEUS_DIR/prometheus.log)"
  start_daemon "$PROMETHEUS_DIR/prometheus.pid" "$PROMETHEUS_DIR/prometheus.log" \
    prometheus --config.file="$PROMETHEUS_DIR/prometheus.yml" --storage.tsdb.path="$PROMETHEUS_DIR/data" \
    --web.listen-address="$PROMETHEUS_HOST:$PROMETHEUS_PORT" --web.enable-lifecycle
  wait_for prometheus "$PROMETHEUS_DIR/prometheus.log" "$PROMETHEUS_DIR/prometheus.pid" prometheus_answers
  say "prometheus: up"
}

stop_prometheus() { stop_by_pidfile prometheus "$PROMETHEUS_DIR/prometheus.pid"; }

# ---------------------------------------------------------------- commands

cmd_start() {
  local names name
  names=$(services "$@")
  cmd_install
  for name in $names; do "start_$name"; done
}

cmd_stop() {
  local names name reversed=()
  names=$(services "$@")
  for name in $names; do reversed=("$name" "${reversed[@]}"); done
  for name in "${reversed[@]}"; do "stop_$name"; done
}

cmd_crash() {
  local pidfile pid
  case "${1:-}" in
    kafka) pidfile=$KAFKA_DIR/kafka.pid ;;
    registry) pidfile=$REGISTRY_DIR/registry.pid ;;
    *) die "crash: name kafka or registry" ;;
  esac
  pid_alive "$pidfile" || die "$1: not running"
  pid=$(head -n 1 "$pidfile")
  say "$1: killing pid $pid (SIGKILL)"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
}

cmd_status() {
  local ok=0
  status_line kafka "$KAFKA_HOST" "$KAFKA_PORT" "$KAFKA_BOOTSTRAP_SERVERS" "$KAFKA_DIR/kafka.pid" || ok=1
  status_line registry "$REGISTRY_HOST" "$REGISTRY_PORT" "$SCHEMA_REGISTRY_URL" "$REGISTRY_DIR/registry.pid" || ok=1
  status_line postgres "$PG_HOST" "$PG_PORT" "$PG_HOST:$PG_PORT" "$PG_DATA/postmaster.pid" || ok=1
  status_line prometheus "$PROMETHEUS_HOST" "$PROMETHEUS_PORT" "$PROMETHEUS_URL" "$PROMETHEUS_DIR/prometheus.pid" || ok=1
  return $ok
}

cmd_env() {
  printf 'export %s=%q\n' \
    KAFKA_BOOTSTRAP_SERVERS "$KAFKA_BOOTSTRAP_SERVERS" \
    SCHEMA_REGISTRY_URL "$SCHEMA_REGISTRY_URL" \
    DATABASE_URL "$DATABASE_URL" \
    PROMETHEUS_URL "$PROMETHEUS_URL" \
    STOCKFLOW_HOME "$STOCKFLOW_HOME" \
    KAFKA_LIBS "$KAFKA_LIBS"
}

cmd_logs() {
  [[ $# -ge 1 ]] || die "usage: scripts/stack.sh logs kafka|registry|postgres|prometheus [tail args]"
  local name=$1 log
  shift
  case "$name" in
    kafka) log="$KAFKA_DIR/kafka.log" ;;
    registry) log="$REGISTRY_DIR/registry.log" ;;
    postgres) log="$PG_DIR/postgres.log" ;;
    prometheus) log="$PROMETHEUS_DIR/prometheus.log" ;;
    *) die "unknown service: $name (kafka, registry, postgres, prometheus)" ;;
  esac
  [[ -f $log ]] || die "$name has no log yet ($log)"
  exec tail -n 100 "$@" "$log"
}

cmd_psql() {
  pg_running || die "postgres is not running (scripts/stack.sh start)"
  exec "$PG_BIN/psql" "$DATABASE_URL" "$@"
}

# Tests and benchmarks name their topics <name>-<pid or number>-... (testkit::unique)
# and their read-model schemas t_... or bench_...; thousands of leftover partitions make
# Kafka's start-up take minutes. The topics of `scripts/run.sh` (no number in the prefix) are
# kept. (No comma in the topic pattern: Kafka's tools read one as |.)
# The reserved prefixes of every name the tests and benchmarks make (testkit/src/names.rs):
# prune deletes what starts with them, and nothing else.
TEST_TOPIC_PREFIX=stockflow-test-
TEST_SCHEMA_PREFIX=stockflow_test_

cmd_prune() {
  kafka_port_open || die "kafka is not running (scripts/stack.sh start)"
  pg_running || die "postgres is not running (scripts/stack.sh start)"
  say "deleting the topics ($TEST_TOPIC_PREFIX*) and schemas ($TEST_SCHEMA_PREFIX*) of earlier test and benchmark runs"
  "$SCRIPTS_DIR/kafka" topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --if-exists \
    --topic "${TEST_TOPIC_PREFIX}.+"
  "$PG_BIN/psql" "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning; DO \$\$ DECLARE s text; BEGIN
    FOR s IN SELECT nspname FROM pg_namespace WHERE starts_with(nspname::text, '$TEST_SCHEMA_PREFIX') LOOP
      EXECUTE format('DROP SCHEMA %I CASCADE', s);
    END LOOP; END \$\$;"
}

cmd_clean() {
  cmd_stop
  say "deleting $STACK_DIR (the downloads in $DOWNLOADS are kept)"
  rm -rf "$STACK_DIR"
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  crash) shift; cmd_crash "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  logs) shift; cmd_logs "$@" ;;
  psql) shift; cmd_psql "$@" ;;
  prune) cmd_prune ;;
  clean) cmd_clean ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
