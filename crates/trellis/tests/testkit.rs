//! Exercises `trellis-testkit` the way other end-to-end tests use it: a
//! sample app and a gateway proxy on free ports, a request through both.
//! Needs `cargo build --workspace --bins` (for `trellis-proxy`).

use trellis_testkit::{TempDir, free_port, http_get, proxy, sample_app};

#[test]
fn sample_app_behind_testkit_proxy() {
    let (_app, app_port) = sample_app("hello", "v7");
    let (status, headers, body) = http_get(&format!("http://127.0.0.1:{app_port}/get"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-sample-service"], "hello/v7");

    let gateway_port = free_port();
    let dir = TempDir::new().expect("temp dir");
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hello, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: hello.default.svc.cluster.local, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello, namespace: default}}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app_port}}}}}]
"#
    );
    std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write yaml");
    let args = [
        "--role",
        "gateway",
        "--labels",
        "istio=ingressgateway",
        "--namespace",
        "istio-system",
    ];
    let (mut gateway, admin_port) = proxy(dir.path(), &args);

    let (status, _, _) = http_get(&format!("http://127.0.0.1:{admin_port}/ready"));
    assert_eq!(status, 200);
    let (status, headers, body) = http_get(&format!("http://127.0.0.1:{gateway_port}/get?x=1"));
    assert_eq!(status, 200, "{body}\n{}", gateway.describe());
    assert_eq!(headers["x-sample-service"], "hello/v7");
    assert!(body.contains(r#""x": "1""#), "{body}");
}
