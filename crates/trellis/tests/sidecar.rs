//! The sidecar role end to end: a `trellis-proxy --role sidecar` whose outbound listener routes by
//! Host/authority to every visible service (here a Kubernetes `Service` + `EndpointSlice` as
//! kubectl prints them, and a `ServiceEntry` with subsets under a mesh `VirtualService`), and whose
//! inbound listener forwards to the local application.
//! Needs `cargo build --workspace --bins` (for `trellis-proxy`).

use trellis_testkit::{TempDir, free_port, http_request, proxy, sample_app};

fn version_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    format!(
        "{}/{}",
        v["service"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("?")
    )
}

/// Kubernetes objects shaped like `kubectl get -o yaml` output, with the server-side fields.
fn kube_ratings(app_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2026-11-20T10:00:00Z"
  labels: {{app: ratings, service: ratings}}
  name: ratings
  namespace: default
  resourceVersion: "1234"
  uid: 6f1c7c52-0000-4000-8000-000000000001
spec:
  clusterIP: 10.96.10.20
  clusterIPs: [10.96.10.20]
  internalTrafficPolicy: Cluster
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 9080
    protocol: TCP
    targetPort: {app_port}
  selector: {{app: ratings}}
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {{}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  generateName: ratings-
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: ratings
  name: ratings-abcde
  namespace: default
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: ratings
    uid: 6f1c7c52-0000-4000-8000-000000000001
addressType: IPv4
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true, serving: true, terminating: false}}
  nodeName: node-1
  targetRef: {{kind: Pod, name: ratings-v1-7d9f, namespace: default, uid: 0a0b}}
  zone: zone-a
ports:
- name: http
  port: {app_port}
  protocol: TCP
"#
    )
}

fn reviews_with_subsets(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{app: reviews, version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{app: reviews, version: v2}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
"#
    )
}

#[test]
fn sidecar_outbound_routes_by_host_and_inbound_reaches_the_local_app() {
    let (_ratings, ratings_port) = sample_app("ratings", "v1");
    let (_r1, r1) = sample_app("reviews", "v1");
    let (_r2, r2) = sample_app("reviews", "v2");
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("ratings.yaml"), kube_ratings(ratings_port)).expect("write");
    std::fs::write(
        dir.path().join("reviews.yaml"),
        reviews_with_subsets(r1, r2),
    )
    .expect("write");

    let outbound = free_port();
    let inbound = free_port();
    let (out_s, in_s) = (outbound.to_string(), inbound.to_string());
    // This sidecar belongs to a `ratings` pod: the Service's selector picks it for inbound.
    let args = [
        "--role",
        "sidecar",
        "--namespace",
        "default",
        "--labels",
        "app=ratings,version=v1",
        "--outbound-port",
        &out_s,
        "--inbound-port",
        &in_s,
        "--app-address",
        "127.0.0.1",
    ];
    let (mut sidecar, _admin) = proxy(dir.path(), &args);
    let url = format!("http://127.0.0.1:{outbound}/get");

    // Outbound: every name a client in the namespace may use reaches the Kubernetes service.
    for host in [
        "ratings",
        "ratings:9080",
        "ratings.default",
        "ratings.default.svc.cluster.local:9080",
    ] {
        let (status, _, body) = http_request(&url, &["-H", &format!("host: {host}")]);
        assert_eq!(status, 200, "host {host}: {body}\n{}", sidecar.describe());
        assert_eq!(version_of(&body), "ratings/v1", "host {host}");
    }

    // Outbound with a mesh VirtualService: header routing to a subset, default to v1.
    for _ in 0..10 {
        let (status, _, body) =
            http_request(&url, &["-H", "host: reviews:9080", "-H", "end-user: jason"]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(version_of(&body), "reviews/v2");
        let (status, _, body) = http_request(&url, &["-H", "host: reviews:9080"]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(version_of(&body), "reviews/v1");
    }

    // An unknown host goes to the PassthroughCluster (ALLOW_ANY, the default); this one
    // resolves nowhere (`.invalid`), so the answer is a DNS failure.
    let (status, headers, body) = http_request(&url, &["-H", "host: nowhere.invalid"]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        headers.get("x-trellis-flags").map(String::as_str),
        Some("DF")
    );

    // Inbound: whatever arrives on the inbound port goes to the local app (ratings).
    let (status, _, body) = http_request(
        &format!("http://127.0.0.1:{inbound}/headers"),
        &["-H", "host: ratings.default.svc.cluster.local:9080"],
    );
    assert_eq!(status, 200, "{body}\n{}", sidecar.describe());
    assert_eq!(version_of(&body), "ratings/v1");
}
