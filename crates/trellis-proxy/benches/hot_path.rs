//! Criterion benches for the per-request hot code: virtual host + route matching and balancer
//! picks (including ring hash and Maglev with a header hash policy), on tables compiled from real Istio YAML through `trellis-config` and `trellis-xds`.
//! Run: `cargo bench -p trellis-proxy --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use trellis_proxy::runtime::Runtime;
use trellis_proxy::runtime::balancer::{Balancer, LbPolicy};
use trellis_proxy::runtime::route::RequestView;
use trellis_xds::{ProxyIdentity, Role};

/// A bookinfo-style gateway plus `n` more services, each with its own VirtualService.
fn config(n: usize) -> String {
    let mut y = String::from(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9081}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 9082}, labels: {version: v2}}
  - {address: 127.0.0.1, ports: {http: 9083}, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: [bookinfo.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {exact: /productpage}}, {uri: {prefix: /static}}, {uri: {regex: "/api/v1/products/[0-9]+"}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /reviews}, headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /reviews}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v3}, weight: 10}
"#,
    );
    for i in 0..n {
        y.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc{i}, namespace: default}}
spec:
  hosts: [svc{i}.bench.local]
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: default}}
spec:
  hosts: [svc{i}.bench.local]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: svc{i}.bench.local}}}}]
"#
        ));
    }
    y
}

fn runtime(n: usize) -> Runtime {
    let loaded = trellis_config::load_str("bench.yaml", &config(n)).expect("bench config loads");
    let identity = ProxyIdentity {
        role: Role::Gateway,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..ProxyIdentity::default()
    };
    let resources = trellis_xds::compile(&loaded.snapshot, &loaded.registry, &identity);
    Runtime::compile(&resources, None).expect("runtime compiles")
}

fn route_matching(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("end-user", HeaderValue::from_static("jason"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    for n in [0usize, 1000] {
        let rt = runtime(n);
        let table = rt
            .routes
            .get("http.8080")
            .expect("route config http.8080")
            .clone();
        let cases = [
            ("exact_first_route", "bookinfo.example.com", "/productpage"),
            ("regex", "bookinfo.example.com", "/api/v1/products/42"),
            ("header_match", "bookinfo.example.com:8080", "/reviews/1"),
            ("no_route", "bookinfo.example.com", "/nothing"),
        ];
        for (name, authority, path) in cases {
            c.bench_function(&format!("route/{n}_services/{name}"), |b| {
                b.iter(|| {
                    let req = RequestView {
                        method: &Method::GET,
                        authority: black_box(authority),
                        path: black_box(path),
                        query: None,
                        scheme: "http",
                        headers: &headers,
                    };
                    let vh = table.find_virtual_host(req.authority);
                    black_box(vh.and_then(|vh| vh.find_route(&req)).is_some())
                })
            });
        }
        c.bench_function(&format!("route/{n}_services/virtual_host_lookup"), |b| {
            b.iter(|| {
                black_box(
                    table
                        .find_virtual_host(black_box("svc1.bench.local"))
                        .is_some(),
                )
            })
        });
    }
}

fn balancer_picks(c: &mut Criterion) {
    let in_flight = [3u64, 0, 7, 1, 2, 0, 5, 4];
    for (policy, name) in [
        (LbPolicy::LeastRequest, "least_request"),
        (LbPolicy::RoundRobin, "round_robin"),
        (LbPolicy::Random, "random"),
    ] {
        for (weights, wname) in [
            (vec![1u32; 8], "equal"),
            (vec![5, 1, 1, 3, 1, 2, 1, 1], "weighted"),
        ] {
            let b = Balancer::new(policy, weights, Arc::default());
            c.bench_function(&format!("balancer/{name}/{wname}_8"), |bench| {
                bench.iter(|| black_box(b.pick(|i| in_flight[i])))
            });
        }
    }
}

fn hash_picks(c: &mut Criterion) {
    use trellis_proxy::runtime::hash::{HashPolicy, HashTable, request_hash};
    let keys: Vec<(String, u32)> = (0..8).map(|i| (format!("10.0.0.{i}:9080"), 1)).collect();
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("user-1234"));
    let policies = [HashPolicy::Header(http::HeaderName::from_static("x-user"))];
    let source = std::net::IpAddr::from([127, 0, 0, 1]);
    for (table, name) in [
        (HashTable::ring(&keys, 1024), "ring_hash"),
        (HashTable::maglev(&keys, 65537), "maglev"),
    ] {
        c.bench_function(&format!("balancer/{name}/header_8"), |bench| {
            bench.iter(|| {
                let h = request_hash(&policies, &headers, None, source).map(|r| r.hash);
                black_box(h.and_then(|h| table.find(h, |_| true)))
            })
        });
    }
}

criterion_group!(benches, route_matching, balancer_picks, hash_picks);
criterion_main!(benches);
