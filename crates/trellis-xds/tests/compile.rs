//! Compiler behaviour on hand-built snapshots (no YAML): the user-visible facts of the output.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use trellis_config::{
    Destination, Endpoint, Gateway, HttpRoute, HttpRouteDestination, ObjectMeta, Port, Protocol,
    Registry, Resource, Server, Service, ServicePort, Snapshot, VirtualService,
};
use trellis_xds::{ProxyIdentity, Role, compile, to_json};

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resource<T>(name: &str, namespace: &str, spec: T) -> Resource<T> {
    Resource {
        meta: meta(name, namespace),
        spec,
        file: "test.yaml".into(),
        line: 1,
    }
}

fn fixture() -> (Snapshot, Registry) {
    let gateway = Gateway {
        selector: labels(&[("istio", "ingressgateway")]),
        servers: vec![Server {
            port: Some(Port {
                number: 8080,
                protocol: "HTTP".into(),
                name: "http".into(),
                target_port: None,
            }),
            hosts: vec!["*".into()],
            ..Default::default()
        }],
    };
    let vs = VirtualService {
        hosts: vec!["*".into()],
        gateways: vec!["gw".into()],
        http: vec![HttpRoute {
            route: vec![HttpRouteDestination {
                destination: Destination {
                    host: "web".into(),
                    ..Default::default()
                },
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let snapshot = Snapshot {
        gateways: vec![resource("gw", "default", gateway)],
        virtual_services: vec![resource("web", "default", vs)],
        ..Default::default()
    };
    let host = "web.default.svc.cluster.local";
    let service = Service {
        hostname: host.into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            number: 80,
            protocol: Protocol::Http,
            target_port: Some(8000),
        }],
        endpoints: vec![Endpoint {
            address: "10.0.0.1".into(),
            labels: labels(&[("app", "web")]),
            weight: 1,
            ..Default::default()
        }],
        selector: labels(&[("app", "web")]),
        ..Default::default()
    };
    let registry = Registry {
        services: [(host.to_string(), service)].into(),
    };
    (snapshot, registry)
}

fn gateway_proxy() -> ProxyIdentity {
    ProxyIdentity {
        role: Role::Gateway,
        labels: labels(&[("istio", "ingressgateway")]),
        bind_address: "127.0.0.1".into(),
        ..Default::default()
    }
}

#[test]
fn gateway_routes_catch_all_to_the_single_port_cluster() {
    let (snapshot, registry) = fixture();
    let r = compile(&snapshot, &registry, &gateway_proxy());
    assert_eq!(r.listeners.len(), 1);
    assert_eq!(r.listeners[0].name, "0.0.0.0_8080");
    assert_eq!(r.routes[0].name, "http.8080");
    let vh = &r.routes[0].virtual_hosts[0];
    assert_eq!(vh.domains, vec!["*"]);
    let Some(Action::Route(action)) = &vh.routes[0].action else {
        panic!("route action")
    };
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "outbound|80||web.default.svc.cluster.local".into()
        ))
    );
    let names: Vec<_> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["outbound|80||web.default.svc.cluster.local"]);
    assert_eq!(r.endpoints[0].endpoints[0].lb_endpoints.len(), 1);
}

#[test]
fn gateway_without_matching_selector_gets_nothing() {
    let (snapshot, registry) = fixture();
    let proxy = ProxyIdentity {
        labels: labels(&[("istio", "egressgateway")]),
        ..gateway_proxy()
    };
    let r = compile(&snapshot, &registry, &proxy);
    assert!(r.listeners.is_empty() && r.routes.is_empty() && r.clusters.is_empty());
}

#[test]
fn version_follows_content() {
    let (snapshot, mut registry) = fixture();
    let a = compile(&snapshot, &registry, &gateway_proxy());
    assert_eq!(
        a.version,
        compile(&snapshot, &registry, &gateway_proxy()).version
    );
    for s in registry.services.values_mut() {
        s.endpoints[0].address = "10.0.0.2".into();
    }
    let b = compile(&snapshot, &registry, &gateway_proxy());
    assert_ne!(a.version, b.version);
    assert_eq!(to_json(&b)["version"], b.version.as_str());
}

#[test]
fn sidecar_inbound_forwards_to_the_app_target_port() {
    let (snapshot, registry) = fixture();
    let proxy = ProxyIdentity {
        role: Role::Sidecar,
        labels: labels(&[("app", "web")]),
        ..Default::default()
    };
    let r = compile(&snapshot, &registry, &proxy);
    let names: Vec<_> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["virtualInbound", "virtualOutbound"]);
    assert!(r.clusters.iter().any(|c| c.name == "inbound|8000||"));
    let outbound = r
        .routes
        .iter()
        .find(|rc| rc.name == "15001")
        .expect("route config 15001");
    let vh = &outbound.virtual_hosts[0];
    assert_eq!(vh.name, "web.default.svc.cluster.local:80");
    assert!(vh.domains.contains(&"web".to_string()) && vh.domains.contains(&"web:80".to_string()));
}
