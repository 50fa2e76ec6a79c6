#!/usr/bin/env bash
# Cost of a local rate-limit check on the request path: trellis-proxy (--concurrency 1, access
# log off) with bench/resilience/plain (no policy) against the same config plus one
# RateLimitPolicy whose local limit matches every request (a `path: {prefix: /}` descriptor)
# and never trips (10^9 tokens a second). One nginx backend on 18080. Rounds alternate configs.
#   MODE=callgrind bench/ratelimit.sh [requests] [rounds]   user-space instructions / request
#   bench/ratelimit.sh [requests] [rounds]                  h2load requests/s
# Uses h2load (HTTP/1.1) where bench/authz.sh uses wrk: a fixed request count per round.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/trellis-proxy}
[ -x "$BIN" ] || cargo build --release --bin trellis-proxy
N=${1:-20000}; R=${2:-3}; MODE=${MODE:-h2load}
for t in nginx h2load taskset curl; do command -v $t >/dev/null || { echo "missing $t"; exit 2; }; done
W=$(mktemp -d)
mkdir -p $W/plain $W/local
cp bench/resilience/plain/*.yaml $W/plain/
cp bench/resilience/plain/*.yaml $W/local/
cat > $W/local/ratelimit.yaml <<P
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: never-trips, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  limits:
  - name: everything
    descriptors: [{path: {prefix: /}}]
    local: {maxTokens: 1000000000, fillInterval: 1s}
P
cat > $W/backend.conf <<NG
worker_processes 1; pid $W/backend.pid; error_log $W/backend.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "hello from backend\n"; } } }
NG
taskset -c 1 nginx -c $W/backend.conf & B=$!
trap 'kill $B ${P:-} 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
export TRELLIS_ACCESS_LOG=off
start() { # config, wrapper...
  local cfg=$1; shift
  taskset -c 0 "$@" "$BIN" --config-dir $W/$cfg --role gateway \
    --labels istio=ingressgateway --bind-address 127.0.0.1 --admin-port 18085 --concurrency 1 \
    >$W/sut.log 2>&1 & P=$!
  for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18084/ && return; sleep 0.2; done
  echo "proxy did not start:"; cat $W/sut.log; exit 1
}
stop() { kill $P 2>/dev/null; wait $P 2>/dev/null || true; P=; }
load() { taskset -c 1 h2load --h1 -c10 -n "$1" http://127.0.0.1:18084/; }
for round in $(seq "$R"); do
  for cfg in plain local; do
    if [ "$MODE" = callgrind ]; then
      start $cfg valgrind --tool=callgrind --callgrind-out-file=$W/cg.$cfg.$round
      load 2000 >/dev/null
      callgrind_control -z $P >/dev/null
      out=$(load "$N")
      callgrind_control -d $P >/dev/null
      ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
      instr=$(cat $W/cg.$cfg.$round.* 2>/dev/null | awk '/^totals:/ {print $2}' | tail -1)
      stop
      printf "round %s %-6s requests=%-8s 2xx=%-8s instructions/request=%s\n" $round $cfg "$N" \
        "$ok" "$(awk -v i="$instr" -v r="$N" 'BEGIN { printf "%.0f", i / r }')"
      rm -f $W/cg.$cfg.$round*
    else
      start $cfg
      load 5000 >/dev/null
      out=$(load "$N")
      stop
      printf "round %s %-6s %s 2xx=%s\n" $round $cfg \
        "$(echo "$out" | awk '/^finished in/ {print $4, $5}')" \
        "$(echo "$out" | awk '/^status codes:/ {print $3}')"
    fi
  done
done
