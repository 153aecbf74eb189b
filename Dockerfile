# syntax=docker/dockerfile:1
#
# Stockflow's image: both binaries, `processor` and `generator`, on a slim Debian.
#   docker build -t stockflow:local .        (docker compose up --build does this for you)
#   docker run --rm stockflow:local processor --help
#
# The first build compiles RocksDB and librdkafka from source (about 15 minutes on 2 cores). BuildKit
# cache mounts keep the cargo registry and the target directory, so later builds recompile only
# Stockflow's own crates.

FROM rust:1-bookworm AS builder

# librdkafka (built from source by rdkafka-sys): make, gcc, g++, zlib. RocksDB's bindings: libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential clang libclang-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# sqlx's macros check queries against .sqlx/ instead of a live database.
ENV SQLX_OFFLINE=true
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p processor -p generator \
 && mkdir -p /out \
 && cp target/release/processor target/release/generator /out/


FROM debian:bookworm-slim

# curl serves the compose healthcheck (and `docker compose exec processor curl localhost:9400/metrics`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged user owning the state directory; a named volume mounted there inherits the owner.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/stockflow --create-home stockflow \
 && mkdir -p /var/lib/stockflow/state \
 && chown -R stockflow:stockflow /var/lib/stockflow

COPY --from=builder /out/processor /out/generator /usr/local/bin/

USER stockflow
WORKDIR /var/lib/stockflow
ENV STOCKFLOW_STATE_DIR=/var/lib/stockflow/state \
    STOCKFLOW_METRICS_ADDR=0.0.0.0:9400 \
    RUST_LOG=info
EXPOSE 9400

CMD ["processor", "run"]
