#!/usr/bin/env bash
# Peak RSS of trellis-proxy holding a config of N ServiceEntries (5 endpoints each) and N
# gateway VirtualServices. Usage: bench/rss.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin trellis-proxy
N=${1:-1000}
D=$(mktemp -d); trap 'kill $P 2>/dev/null; rm -rf $D' EXIT
python3 bench/gen_services.py "$D" "$N" >/dev/null
TRELLIS_ACCESS_LOG=off target/release/trellis-proxy --config-dir "$D" --role gateway \
  --labels istio=ingressgateway --bind-address 127.0.0.1 --admin-port 18185 --concurrency 1 2>"$D/err" &
P=$!
for _ in $(seq 1 200); do curl -sf http://127.0.0.1:18185/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18185/ready >/dev/null || { cat "$D/err"; exit 1; }
# touch every route once so lazily built state is counted too
for i in $(seq 0 50 $((N-1))); do curl -s -o /dev/null -H "host: svc$i.bench.local" http://127.0.0.1:18184/api; done
echo "services=$N peak_rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$P/status) rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$P/status)"
