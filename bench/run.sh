#!/usr/bin/env bash
# Side-by-side benchmark: trellis-proxy (--concurrency 1) beside nginx, haproxy and Envoy,
# through ../shared/bench/peers.sh. Usage: bench/run.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin trellis-proxy
PEERS=${PEERS:-../shared/bench/peers.sh}
export TRELLIS_ACCESS_LOG=off
SUT="target/release/trellis-proxy --config-dir bench/peers --role gateway --labels istio=ingressgateway --bind-address 127.0.0.1 --admin-port 18085 --concurrency 1" \
  "$PEERS" "${1:-10}" "${2:-50}"
