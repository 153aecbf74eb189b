#!/usr/bin/env bash
# Installs what building Stockflow needs beyond a Rust toolchain: libclang (RocksDB's bindgen),
# a C/C++ toolchain and make (RocksDB, librdkafka). Idempotent: installs only what is missing.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
# bindgen needs libclang itself (libclang-cpp, which other packages pull in, is not enough).
dpkg -s libclang-dev >/dev/null 2>&1 || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
command -v cargo >/dev/null 2>&1 || { echo "build-deps: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }

if ((${#missing[@]})); then
  echo "build-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The shared build cache grows with every clone that builds into it (incremental caches and test
# binaries are per path; it reached 54 GiB and filled the disk once): below 10 GiB free, drop
# the incremental caches, which the next build recreates as it needs them.
if [[ -n "${CARGO_TARGET_DIR:-}" && -d "$CARGO_TARGET_DIR/release/incremental" ]]; then
  free_kb=$(df -Pk "$CARGO_TARGET_DIR" | awk 'NR == 2 {print $4}')
  if ((free_kb < 10 * 1024 * 1024)); then
    echo "build-deps: less than 10 GiB free; removing $CARGO_TARGET_DIR/release/incremental"
    rm -rf "$CARGO_TARGET_DIR/release/incremental"
  fi
fi
echo "build-deps: ok"
