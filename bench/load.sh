#!/usr/bin/env bash
# End-to-end load bench (see examples/loadbench/). BENCH_MODE=tls: the TLS and HTTP/2 rows. BENCH_SECONDS and BENCH_ROUNDS tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then
  # wrk and h2load drive the load; HAProxy (and nginx, with BENCH_MODE=tls) are measured in the
  # same run; nginx is the upstream.
  apt-get update -qq && apt-get install -y -qq wrk haproxy nginx-light nghttp2-client >/dev/null
fi
cargo build --release --bin scopegate --example loadbench --example bare_pingora
exec ./target/release/examples/loadbench
