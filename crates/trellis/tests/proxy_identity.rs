//! The proxy's identity comes from flags, with environment variables as fallbacks: a gateway
//! configured only through `TRELLIS_*` variables serves its Gateway, and the Gateway's `selector`
//! is matched against the proxy's labels (a proxy with other labels binds nothing).
//! Needs `cargo build --workspace --bins` (for `trellis-proxy`).

use std::time::Duration;

use trellis_testkit::{Process, TempDir, bin_path, free_port, http_get, sample_app, wait_until};

fn mesh(gateway_port: u16, app_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  selector: {{istio: ingressgateway, team: edge}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hello, namespace: edge}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: hello.edge.svc.cluster.local}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello, namespace: edge}}
spec:
  hosts: [hello.edge.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app_port}}}}}]
"#
    )
}

/// Starts the proxy with no flags at all, only environment variables; waits for `/ready`.
fn proxy_from_env(dir: &TempDir, labels: &str) -> (Process, u16) {
    let admin = free_port();
    let admin_s = admin.to_string();
    let dir_s = dir.path().to_string_lossy().into_owned();
    let env = [
        ("TRELLIS_CONFIG_DIR", dir_s.as_str()),
        ("TRELLIS_ROLE", "gateway"),
        ("TRELLIS_NAMESPACE", "edge"),
        ("TRELLIS_LABELS", labels),
        ("TRELLIS_BIND_ADDRESS", "127.0.0.1"),
        ("TRELLIS_ADMIN_PORT", admin_s.as_str()),
        ("TRELLIS_CONCURRENCY", "1"),
        ("TRELLIS_LOCALITY", "eu-west/zone-a/rack-1"),
    ];
    let no_args: [&str; 0] = [];
    let mut proxy = Process::spawn(bin_path("trellis-proxy"), no_args, &env);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let ok = wait_until(Duration::from_secs(20), || {
        http_get(&ready).0 == 200 || proxy.try_wait().is_some()
    });
    assert!(
        ok && proxy.try_wait().is_none(),
        "not ready: {}",
        proxy.describe()
    );
    (proxy, admin)
}

#[test]
fn identity_from_environment_and_gateway_selector() {
    let (_app, app_port) = sample_app("hello", "v1");
    let gateway_port = free_port();
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("mesh.yaml"), mesh(gateway_port, app_port)).expect("write");

    // Labels that match the selector: the Gateway's server is bound and routes to hello.
    let (mut matching, admin) = proxy_from_env(&dir, "istio=ingressgateway,team=edge,extra=1");
    let (status, headers, body) = http_get(&format!("http://127.0.0.1:{gateway_port}/get"));
    assert_eq!(status, 200, "{body}\n{}", matching.describe());
    assert_eq!(headers["x-sample-service"], "hello/v1");
    let (_, _, dump) = http_get(&format!("http://127.0.0.1:{admin}/config_dump"));
    assert!(
        dump.contains(&format!("0.0.0.0_{gateway_port}")),
        "listener missing from /config_dump: {dump}"
    );
    drop(matching);

    // Labels that miss one selector key: nothing is bound for that Gateway.
    let (_other, admin) = proxy_from_env(&dir, "istio=ingressgateway");
    let (_, _, dump) = http_get(&format!("http://127.0.0.1:{admin}/config_dump"));
    assert!(
        !dump.contains(&format!("0.0.0.0_{gateway_port}")),
        "a proxy without `team: edge` must not get the listener: {dump}"
    );
    let (status, _, _) = http_get(&format!("http://127.0.0.1:{gateway_port}/get"));
    assert_eq!(status, 0, "nothing listens on the gateway port");
}
