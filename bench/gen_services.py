#!/usr/bin/env python3
"""Write a config with N ServiceEntries (5 endpoints each), one gateway VirtualService per service.

Usage: bench/gen_services.py OUT_DIR [N]   (default N=1000)
Used by bench/rss.sh to measure the proxy's RSS with a large config.
"""
import os
import sys

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
os.makedirs(out, exist_ok=True)
docs = ["""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18184, name: http, protocol: HTTP}
    hosts: ["*"]
"""]
for i in range(n):
    eps = "\n".join(
        f"  - address: 127.0.{(i * 5 + j) // 250}.{(i * 5 + j) % 250 + 1}\n    labels: {{version: v{j % 2 + 1}}}"
        for j in range(5))
    docs.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc{i}, namespace: default}}
spec:
  hosts: [svc{i}.bench.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  endpoints:
{eps}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: default}}
spec:
  hosts: [svc{i}.bench.local]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: svc{i}.bench.local, port: {{number: 8080}}}}}}]
""")
with open(os.path.join(out, "services.yaml"), "w") as f:
    f.write("---\n".join(docs))
print(f"wrote {n} services to {out}/services.yaml")
