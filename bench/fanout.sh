#!/usr/bin/env bash
# Control-plane fan-out (issue 4, "Targets"): `trellis control` serving N services with 5
# endpoints each to CLIENTS xDS clients opened by the load tool
# (crates/trellis-control/examples/xds_load.rs), on loopback. For each mode (delta, SotW) it
# measures (a) one endpoint change and (b) one route change that reaches every proxy: the
# receive-and-ACK latency p50/p99/max over all clients, bytes sent for the change, and the
# control plane's RSS per connected proxy.
#
# Usage: bench/fanout.sh [CLIENTS] [SERVICES]          (defaults 2000 1000)
# Env:   MODES="delta sotw"  IDENTITIES=1  STREAMS_PER_CONN=1  RAMP=50  ROLE=sidecar
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-2000}
N=${2:-1000}
MODES=${MODES:-delta sotw}
IDENTITIES=${IDENTITIES:-1}
STREAMS_PER_CONN=${STREAMS_PER_CONN:-1}
RAMP=${RAMP:-50}
ROLE=${ROLE:-sidecar}
# One socket per connection on each side, plus the store's files.
ulimit -n $((CLIENTS * 2 + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build -q --release --bin trellis
cargo build -q --release -p trellis-control --example xds_load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=
W=$(mktemp -d)
trap '[ -n "$P" ] && kill $P 2>/dev/null; rm -rf "$W"' EXIT

for MODE in $MODES; do
  STORE=$W/store-$MODE
  python3 bench/gen_services.py "$STORE" "$N" >/dev/null
  XDS=$(free_port); API=$(free_port)
  RUST_LOG=warn target/release/trellis control --store "$STORE" --xds-port "$XDS" --api-port "$API" \
    2>"$W/control-$MODE.log" &
  P=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$API/api/v1/status" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$API/api/v1/status" >/dev/null || { cat "$W/control-$MODE.log"; exit 1; }
  APPLY="curl -sf -o /dev/null -X POST -H 'Authorization: Bearer $(cat "$STORE/.trellis-token")' -H 'Content-Type: application/yaml' --data-binary @$W/CHANGE http://127.0.0.1:$API/api/v1/apply"

  # (a) one endpoint of svc0 moves to 10.99.0.1: an EDS-only change.
  cat >"$W/endpoint.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc0, namespace: default}
spec:
  hosts: [svc0.bench.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  endpoints:
  - address: 10.99.0.1
    labels: {version: v1}
  - address: 127.0.0.2
    labels: {version: v2}
  - address: 127.0.0.3
    labels: {version: v1}
  - address: 127.0.0.4
    labels: {version: v2}
  - address: 127.0.0.5
    labels: {version: v1}
EOF
  # (b) a mesh VirtualService for svc0 (a header match): every sidecar's outbound route
  # configurations change.
  cat >"$W/route.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc0-mesh, namespace: default}
spec:
  hosts: [svc0.bench.local]
  http:
  - match: [{headers: {x-fanout-mark: {exact: "1"}}}]
    route: [{destination: {host: svc0.bench.local, port: {number: 8080}}}]
  - route: [{destination: {host: svc0.bench.local, port: {number: 8080}}}]
EOF
  echo "== mode=$MODE services=$N clients=$CLIENTS identities=$IDENTITIES streams_per_conn=$STREAMS_PER_CONN role=$ROLE"
  target/release/examples/xds_load --xds "127.0.0.1:$XDS" --clients "$CLIENTS" --mode "$MODE" \
    --identities "$IDENTITIES" --streams-per-conn "$STREAMS_PER_CONN" --ramp "$RAMP" --role "$ROLE" \
    --server-pid "$P" --metrics-url "http://127.0.0.1:$API/metrics" --timeout-secs 300 \
    --change "endpoint=eds:10.99.0.1:${APPLY/CHANGE/endpoint.yaml}" \
    --change "route=rds:x-fanout-mark:${APPLY/CHANGE/route.yaml}"
  curl -sf "http://127.0.0.1:$API/metrics" | grep -E '^pilot_proxy_convergence_time_(sum|count)|^pilot_xds_sent_bytes_total' || true
  kill "$P"; wait "$P" 2>/dev/null || true; P=
done
