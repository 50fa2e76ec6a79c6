#!/usr/bin/env bash
# TLS-terminating ingress gateway, trellis-proxy against haproxy (issue 6's target: throughput
# at one worker >= haproxy's, same certificate, TLS 1.3, same run), side by side on loopback:
#  1. keep-alive throughput: h2load --h1 over TLS 1.3, 50 connections, one thread, D seconds;
#  2. full TLS 1.3 handshakes per second: openssl s_time -new, 10 s.
# CPU0 runs the proxy under test (one worker: haproxy nbthread 1, trellis --concurrency 1);
# CPU1 runs the load and the backend (nginx answering 200). Same P-256 certificate for both.
# Needs: nginx, haproxy, h2load (nghttp2-client), openssl, taskset, and
#   cargo build --release --bin trellis-proxy   (PROXY=path overrides target/release/trellis-proxy)
# Usage: bench/gateway_tls.sh [seconds per throughput run, default 10]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
D=${1:-10}
PROXY=${PROXY:-$HERE/../target/release/trellis-proxy}
for t in nginx haproxy h2load openssl taskset curl; do command -v $t >/dev/null || { echo "gateway_tls.sh: $t is missing"; exit 2; }; done
[ -x "$PROXY" ] || { echo "gateway_tls.sh: build first: cargo build --release --bin trellis-proxy"; exit 2; }
W=$(mktemp -d)
PIDS=""
cleanup() { kill $PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

# --- one CA, one server certificate for bench.example.com (both proxies serve it)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout $W/ca.key -out $W/ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench.example.com" \
  -keyout $W/server.key -out $W/server.csr 2>/dev/null
printf "subjectAltName=DNS:bench.example.com\n" > $W/ext
openssl x509 -req -in $W/server.csr -CA $W/ca.pem -CAkey $W/ca.key -CAcreateserial -days 2 \
  -extfile $W/ext -out $W/server.pem 2>/dev/null
cat $W/server.pem $W/server.key > $W/combined.pem

# --- the backend
cat > $W/backend.conf <<NG
worker_processes 1; pid $W/backend.pid; error_log $W/backend.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "hello from backend\n"; } } }
NG
taskset -c 1 nginx -c $W/backend.conf & PIDS="$PIDS $!"

# --- haproxy: TLS 1.3 only, one thread
cat > $W/haproxy.cfg <<HA
global
  nbthread 1
  maxconn 5000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:18443 ssl crt $W/combined.pem alpn h2,http/1.1
  default_backend be
backend be
  server s1 127.0.0.1:18080
HA
taskset -c 0 haproxy -f $W/haproxy.cfg 2>/dev/null & PIDS="$PIDS $!"

# --- trellis-proxy: an Istio Gateway, HTTPS SIMPLE from files, TLS 1.3 minimum
mkdir -p $W/mesh
cat > $W/mesh/gw.yaml <<YAML
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18444, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: $W/server.pem, privateKey: $W/server.key, minProtocolVersion: TLSV1_3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: istio-system}
spec:
  hosts: [backend.bench]
  resolution: STATIC
  ports: [{number: 18080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: backend.bench, port: {number: 18080}}}]}]
YAML
TRELLIS_ACCESS_LOG=off taskset -c 0 "$PROXY" --config-dir $W/mesh --role gateway \
  --labels istio=ingressgateway --namespace istio-system --bind-address 127.0.0.1 \
  --admin-port 18000 --concurrency 1 >$W/trellis.log 2>&1 & PIDS="$PIDS $!"

for port in 18443 18444; do
  for _ in $(seq 100); do
    curl -s --cacert $W/ca.pem --resolve bench.example.com:$port:127.0.0.1 \
      https://bench.example.com:$port/ -o /dev/null && break
    sleep 0.1
  done
done

throughput() { # name port
  local out; out=$(taskset -c 1 h2load --h1 -c 50 -t 1 -D $D https://127.0.0.1:$2/ 2>&1)
  local rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  local ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  local proto=$(echo "$out" | awk '/^TLS Protocol:/ {print $3}')
  printf "%-8s keep-alive rps=%-10s 2xx=%-8s %s\n" $1 "$rps" "$ok" "$proto"
}
handshakes() { # name port
  local out; out=$(taskset -c 1 openssl s_time -connect 127.0.0.1:$2 -new -tls1_3 -time 10 2>&1)
  local n=$(echo "$out" | awk '/connections in [0-9.]+s;/ {print $1; exit}')
  printf "%-8s handshakes: %s in 10 s (%s/s wall)\n" $1 "$n" "$(awk -v n="${n:-0}" 'BEGIN{printf "%.0f", n/10}')"
}
throughput haproxy 18443
throughput trellis 18444
handshakes haproxy 18443
handshakes trellis 18444
