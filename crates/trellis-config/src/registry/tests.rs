//! Registry tests: ServiceEntry and Kubernetes sources, endpoints, ports, visibility.

use crate::load::tests::BOOKINFO;
use crate::*;

fn registry(yaml: &str) -> Registry {
    match load_str("test.yaml", yaml) {
        Ok(l) => l.registry,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  exportTo: ["."]
  ports:
  - {number: 5432, name: tcp-pg, protocol: TCP}
  - {number: 8080, name: http-admin, targetPort: 18080}
  - {number: 9000, name: grpc-api}
  endpoints:
  - address: 10.0.0.1
    ports: {tcp-pg: 15432}
    labels: {version: v1}
    locality: us-east/us-east-1a/rack1
    weight: 3
    serviceAccount: db
  - address: 10.0.0.2
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: apps}
spec:
  hosts: [vm.apps.example]
  exportTo: [apps, web]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector:
    labels: {app: vm}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: apps}
spec:
  address: 192.168.1.10
  labels: {app: vm, version: v2}
  network: net1
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-other, namespace: other}
spec:
  address: 192.168.1.11
  labels: {app: vm}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: apps
  annotations: {networking.istio.io/exportTo: "apps"}
spec:
  selector: {app: vm}
  ports:
  - {name: http-web, port: 80, targetPort: 8080}
  - {name: metrics, port: 9090, targetPort: prom, appProtocol: http}
"#;

#[test]
fn service_entry_ports_and_endpoints() {
    let reg = registry(MESH);
    let db = reg.get("db.internal").unwrap();
    assert_eq!(db.namespace, "data");
    assert_eq!(db.resolution, Resolution::Static);
    assert_eq!(db.location, ServiceLocation::MeshInternal);
    let protocols: Vec<Protocol> = db.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, [Protocol::Tcp, Protocol::Http, Protocol::Grpc]);
    assert_eq!(db.endpoints.len(), 2);
    let (e1, e2) = (&db.endpoints[0], &db.endpoints[1]);
    assert_eq!((e1.weight, e2.weight), (3, 1));
    assert_eq!(e1.locality_parts(), ("us-east", "us-east-1a", "rack1"));
    assert_eq!(e1.service_account, "db");
    // Named override, then target port, then the service port.
    assert_eq!(e1.port_for(&db.ports[0]), 15432);
    assert_eq!(e2.port_for(&db.ports[0]), 5432);
    assert_eq!(e2.port_for(&db.ports[1]), 18080);
    assert_eq!(e2.port_for(&db.ports[2]), 9000);
}

#[test]
fn dns_service_entry_without_endpoints_resolves_its_host() {
    let reg = registry(BOOKINFO);
    let g = reg.get("www.googleapis.com").unwrap();
    assert_eq!(g.resolution, Resolution::Dns);
    assert_eq!(g.location, ServiceLocation::MeshExternal);
    assert_eq!(g.ports[0].protocol, Protocol::Tls);
    assert_eq!(g.endpoints.len(), 1);
    assert_eq!(g.endpoints[0].address, "www.googleapis.com");
    assert_eq!(g.export_to, ["*"]);
}

#[test]
fn workload_selector_picks_entries_of_the_namespace() {
    let reg = registry(MESH);
    let vm = reg.get("vm.apps.example").unwrap();
    assert_eq!(vm.endpoints.len(), 1);
    assert_eq!(vm.endpoints[0].address, "192.168.1.10");
    assert_eq!(vm.endpoints[0].network, "net1");
    assert_eq!(vm.endpoints[0].labels["version"], "v2");
}

#[test]
fn kubernetes_service_with_endpoint_slice() {
    let reg = registry(BOOKINFO);
    let reviews = reg.get("reviews.default.svc.cluster.local").unwrap();
    assert_eq!(reviews.ports[0].protocol, Protocol::Http);
    assert_eq!(reviews.ports[0].target_port, Some(9080));
    assert_eq!(reviews.selector["app"], "reviews");
    // The not-ready endpoint is skipped.
    assert_eq!(reviews.endpoints.len(), 1);
    let ep = &reviews.endpoints[0];
    assert_eq!(ep.address, "10.244.0.11");
    assert_eq!(ep.locality_parts().1, "us-east-1a");
    assert_eq!(ep.port_for(&reviews.ports[0]), 9080);
}

#[test]
fn kubernetes_service_selects_workload_entries_and_named_target_ports() {
    let reg = registry(MESH);
    let web = reg.get("web.apps.svc.cluster.local").unwrap();
    assert_eq!(
        web.ports[1].protocol,
        Protocol::Http,
        "appProtocol wins over the name"
    );
    assert_eq!(
        web.ports[1].target_port, None,
        "named target ports resolve per endpoint"
    );
    assert_eq!(web.endpoints.len(), 1);
    assert_eq!(web.endpoints[0].port_for(&web.ports[0]), 8080);
    assert_eq!(web.export_to, ["apps"]);
}

#[test]
fn export_to_visibility() {
    let reg = registry(MESH);
    let visible =
        |ns: &str| -> Vec<String> { reg.visible_from(ns).map(|s| s.hostname.clone()).collect() };
    assert_eq!(visible("data"), ["db.internal"]);
    assert_eq!(
        visible("apps"),
        ["vm.apps.example", "web.apps.svc.cluster.local"]
    );
    assert_eq!(visible("web"), ["vm.apps.example"]);
    assert!(visible("elsewhere").is_empty());
}

#[test]
fn protocol_from_port_names() {
    assert_eq!(Protocol::from_port_name("http2-x"), Protocol::Http2);
    assert_eq!(Protocol::from_port_name("grpc-web-ui"), Protocol::GrpcWeb);
    assert_eq!(Protocol::from_port_name("https"), Protocol::Https);
    assert_eq!(Protocol::from_port_name("mongo"), Protocol::Mongo);
    assert_eq!(Protocol::from_port_name("web"), Protocol::Unsupported);
    assert_eq!(Protocol::parse("grpc"), Protocol::Grpc);
}

#[test]
fn resolve_host_follows_istio() {
    assert_eq!(
        resolve_host("reviews", "default"),
        "reviews.default.svc.cluster.local"
    );
    assert_eq!(resolve_host("reviews.prod", "default"), "reviews.prod");
    assert_eq!(resolve_host("*.example.com", "default"), "*.example.com");
    assert_eq!(resolve_host("*", "default"), "*");
}
