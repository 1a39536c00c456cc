#!/usr/bin/env bash
# End-to-end load bench (see examples/loadbench.rs). BENCH_SECONDS and BENCH_ROUNDS tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then
  # wrk drives the load; haproxy is the pass-through reference measured in the same run.
  apt-get update -qq && apt-get install -y -qq wrk haproxy >/dev/null
fi
cargo build --release --bin scopegate --example loadbench
exec ./target/release/examples/loadbench
