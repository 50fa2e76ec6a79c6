#!/usr/bin/env bash
# Cost of retries and circuit breakers on the request path: trellis-proxy (--concurrency 1,
# access log off) with three configs from bench/resilience/ against one nginx backend that
# listens on 18080, 18086 and 18087 (three endpoints):
#   plain    one endpoint, retries off (attempts: 0)
#   lr3      three endpoints, LEAST_REQUEST, retries off
#   retries  three endpoints, LEAST_REQUEST, retries (attempts 2, perTryTimeout), circuit
#            breakers, default retry budget
# Rounds alternate the configs so that a noisy machine hurts them alike. Compare ratios.
#   bench/resilience.sh [seconds] [connections] [rounds]      wrk requests/s, p99
#   MODE=callgrind bench/resilience.sh                         user-space instructions / request
#   MODE=cpu bench/resilience.sh [seconds] [connections] [rounds]  proxy CPU time (user+system,
#                                                              /proc/PID/stat) per request
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/trellis-proxy}
[ -x "$BIN" ] || cargo build --release --bin trellis-proxy
D=${1:-10}; C=${2:-50}; R=${3:-3}; MODE=${MODE:-wrk}
for t in nginx wrk taskset curl; do command -v $t >/dev/null || { echo "missing $t"; exit 2; }; done
W=$(mktemp -d)
cat > $W/backend.conf <<NG
worker_processes 1; pid $W/backend.pid; error_log $W/backend.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; listen 127.0.0.1:18086; listen 127.0.0.1:18087;
           location / { return 200 "hello from backend\n"; } } }
NG
taskset -c 1 nginx -c $W/backend.conf & B=$!
trap 'kill $B ${P:-} 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
export TRELLIS_ACCESS_LOG=off
start() { # config, wrapper...
  local cfg=$1; shift
  taskset -c 0 "$@" "$BIN" --config-dir bench/resilience/$cfg --role gateway \
    --labels istio=ingressgateway --bind-address 127.0.0.1 --admin-port 18085 --concurrency 1 \
    >$W/sut.log 2>&1 & P=$!
  for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18084/ && return; sleep 0.2; done
  echo "proxy did not start:"; cat $W/sut.log; exit 1
}
stop() { kill $P 2>/dev/null; wait $P 2>/dev/null || true; P=; }
for round in $(seq "$R"); do
  for cfg in plain lr3 retries; do
    if [ "$MODE" = callgrind ]; then
      start $cfg valgrind --tool=callgrind --callgrind-out-file=$W/cg.$cfg.$round
      taskset -c 1 wrk -t1 -c10 -d2s http://127.0.0.1:18084/ >/dev/null
      callgrind_control -z $P >/dev/null
      out=$(taskset -c 1 wrk -t1 -c10 -d8s http://127.0.0.1:18084/)
      callgrind_control -d $P >/dev/null
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      instr=$(cat $W/cg.$cfg.$round.* 2>/dev/null | awk '/^totals:/ {print $2}' | tail -1)
      stop
      printf "round %s %-8s requests=%-8s instructions/request=%s\n" $round $cfg "$reqs" \
        "$(awk -v i="$instr" -v r="$reqs" 'BEGIN { if (r > 0) printf "%.0f", i / r }')"
      rm -f $W/cg.$cfg.$round*
    elif [ "$MODE" = cpu ]; then
      start $cfg
      taskset -c 1 wrk -t1 -c$C -d2s http://127.0.0.1:18084/ >/dev/null
      t0=$(awk '{print $14 + $15}' /proc/$P/stat)
      out=$(taskset -c 1 wrk -t1 -c$C -d${D}s http://127.0.0.1:18084/)
      t1=$(awk '{print $14 + $15}' /proc/$P/stat)
      stop
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      printf "round %s %-8s requests=%-8s cpu_us/request=%s\n" $round $cfg "$reqs" \
        "$(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')"
    else
      start $cfg
      taskset -c 1 wrk -t1 -c$C -d2s http://127.0.0.1:18084/ >/dev/null
      out=$(taskset -c 1 wrk -t1 -c$C -d${D}s --latency http://127.0.0.1:18084/)
      stop
      printf "round %s %-8s rps=%-10s p99=%-8s non2xx=%s\n" $round $cfg \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(echo "$out" | awk '$1=="99%" {print $2}')" \
        "$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)"
    fi
  done
done
