#!/usr/bin/env bash
# Cost of authorization on the request path: trellis-proxy (--concurrency 1, access log off)
# with bench/resilience/plain (no policy) against the same config plus 100 AuthorizationPolicies
# selecting the gateway: 50 DENY policies that do not match (paths, methods, headers, ipBlocks)
# and 50 ALLOW policies of which only the last (by name) matches, so every request walks every
# policy. One nginx backend on 18080. Rounds alternate the configs. Compare ratios.
#   bench/authz.sh [seconds] [connections] [rounds]      wrk requests/s
#   MODE=callgrind bench/authz.sh                        user-space instructions / request
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/trellis-proxy}
[ -x "$BIN" ] || cargo build --release --bin trellis-proxy
D=${1:-10}; C=${2:-50}; R=${3:-3}; MODE=${MODE:-wrk}
for t in nginx wrk taskset curl; do command -v $t >/dev/null || { echo "missing $t"; exit 2; }; done
W=$(mktemp -d)
mkdir -p $W/plain $W/authz100
cp bench/resilience/plain/*.yaml $W/plain/
cp bench/resilience/plain/*.yaml $W/authz100/
for i in $(seq -w 1 50); do
  cat >> $W/authz100/policies.yaml <<P
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-$i, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin-$i", "/private-$i/*"], methods: [DELETE, PUT]}}]
  - from: [{source: {ipBlocks: [10.$((10#$i)).0.0/16]}}]
  - when: [{key: "request.headers[x-deny-$i]", values: ["yes"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-$i, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/only-$i/*"], methods: [GET]}}]
    when: [{key: "request.headers[x-tenant]", values: ["tenant-$i"]}]
---
P
done
# The last ALLOW (by name) matches every request of the benchmark.
cat >> $W/authz100/policies.yaml <<P
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-zz-everyone, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: ["/*"]}}]
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
for round in $(seq "$R"); do
  for cfg in plain authz100; do
    if [ "$MODE" = callgrind ]; then
      start $cfg valgrind --tool=callgrind --callgrind-out-file=$W/cg.$cfg.$round
      taskset -c 1 wrk -t1 -c10 -d2s http://127.0.0.1:18084/ >/dev/null
      callgrind_control -z $P >/dev/null
      out=$(taskset -c 1 wrk -t1 -c10 -d8s http://127.0.0.1:18084/)
      callgrind_control -d $P >/dev/null
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)
      instr=$(cat $W/cg.$cfg.$round.* 2>/dev/null | awk '/^totals:/ {print $2}' | tail -1)
      stop
      printf "round %s %-9s requests=%-8s non2xx=%s instructions/request=%s\n" $round $cfg \
        "$reqs" "$non2xx" \
        "$(awk -v i="$instr" -v r="$reqs" 'BEGIN { if (r > 0) printf "%.0f", i / r }')"
      rm -f $W/cg.$cfg.$round*
    else
      start $cfg
      taskset -c 1 wrk -t1 -c$C -d2s http://127.0.0.1:18084/ >/dev/null
      out=$(taskset -c 1 wrk -t1 -c$C -d${D}s http://127.0.0.1:18084/)
      stop
      printf "round %s %-9s rps=%-10s non2xx=%s\n" $round $cfg \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)"
    fi
  done
done
