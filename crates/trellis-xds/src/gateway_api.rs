//! The Kubernetes Gateway API, compiled by lowering it to the Istio resources the rest of the
//! compiler already knows, as Istio's own gateway controller does: each programmed listener of
//! a Gateway becomes an Istio `Gateway` with one server, and the routes attached to it become
//! `VirtualService`s bound to that server (`http` entries for HTTPRoute/GRPCRoute, `tls` for
//! TLSRoute, `tcp` for TCPRoute). Mesh routes (GAMMA: an HTTPRoute whose parent is a Service)
//! become mesh VirtualServices for that service's host. So the xDS is exactly what the
//! equivalent Istio configuration produces, and the proxy needs nothing new.
//!
//! Which proxies a Gateway programs (Istio's rule): a gateway proxy in the Gateway's namespace
//! labelled `gateway.networking.k8s.io/gateway-name: <name>` (or `istio.io/gateway-name`).
//! Lowering is per proxy ([`lower`]), so a lowered Istio Gateway selects every proxy it is
//! compiled for.
//!
//! Owns the lowering only; attachment (which route goes where, which backend resolves) is
//! `gateway_api/attach.rs`, rule translation `gateway_api/http.rs`, status conditions
//! `gateway_api/status.rs`. Must not build Envoy resources itself.

mod attach;
mod http;
mod status;

use std::collections::BTreeMap;

use trellis_config::gateway_api::Listener;
use trellis_config::{
    Destination, Gateway, L4MatchAttributes, ObjectMeta, Port, PortSelector, Registry, Resource,
    RouteDestination, Server, ServerTlsMode, ServerTlsSettings, Snapshot, TcpRoute,
    TlsMatchAttributes, TlsRoute, VirtualService,
};

pub use attach::NAMESPACE_NAME_LABEL;
pub use status::{CONTROLLER_NAME, status};

use crate::{ProxyIdentity, Role};
use attach::{Attachments, Parent, RouteKind, RouteState, resolve_backend};
use http::{Entry, Source};

/// The proxy label naming the Gateway it serves.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Istio's older spelling of [`GATEWAY_NAME_LABEL`].
pub const ISTIO_GATEWAY_NAME_LABEL: &str = "istio.io/gateway-name";

/// The snapshot plus the Istio resources its Gateway API resources lower to for `proxy`;
/// `None` when nothing lowers for this proxy (the snapshot compiles as it is, uncopied).
pub fn lower(snapshot: &Snapshot, registry: &Registry, proxy: &ProxyIdentity) -> Option<Snapshot> {
    let (gateways, services) = lowered(snapshot, registry, proxy);
    if gateways.is_empty() && services.is_empty() {
        return None;
    }
    let mut out = snapshot.clone();
    out.gateways.extend(gateways);
    out.virtual_services.extend(services);
    Some(out)
}

/// [`lower`] in place.
pub fn lower_into(snapshot: &mut Snapshot, registry: &Registry, proxy: &ProxyIdentity) {
    let (gateways, services) = lowered(snapshot, registry, proxy);
    snapshot.gateways.extend(gateways);
    snapshot.virtual_services.extend(services);
}

/// The Istio Gateways and VirtualServices the Gateway API resources become for `proxy`.
fn lowered(
    snapshot: &Snapshot,
    registry: &Registry,
    proxy: &ProxyIdentity,
) -> (Vec<Resource<Gateway>>, Vec<Resource<VirtualService>>) {
    if snapshot.gateway_api_len() == 0 {
        return (Vec::new(), Vec::new());
    }
    let a = attach::attach(snapshot, registry);
    let src = Source {
        snapshot,
        registry,
        port: None,
    };
    match proxy.role {
        Role::Gateway => lower_gateways(&src, &a, proxy),
        Role::Sidecar | Role::Proxyless => (Vec::new(), lower_mesh(&src, &a, proxy)),
    }
}

/// Whether a Gateway programs this proxy.
fn selects(g: &Resource<trellis_config::gateway_api::Gateway>, proxy: &ProxyIdentity) -> bool {
    proxy.namespace == g.meta.namespace
        && [GATEWAY_NAME_LABEL, ISTIO_GATEWAY_NAME_LABEL]
            .iter()
            .any(|l| proxy.labels.get(*l) == Some(&g.meta.name))
}

/// Name of the Istio Gateway a listener lowers to.
fn lowered_name(gateway: &str, listener: &str) -> String {
    format!("{gateway}.{listener}")
}

fn lower_gateways(
    src: &Source<'_>,
    a: &Attachments<'_>,
    proxy: &ProxyIdentity,
) -> (Vec<Resource<Gateway>>, Vec<Resource<VirtualService>>) {
    let mut gateways = Vec::new();
    // (gateway, listener, host) -> entries, for HTTP listeners.
    let mut http: BTreeMap<(usize, usize, String), Vec<Entry>> = BTreeMap::new();
    let mut services = Vec::new();
    for g in &a.gateways {
        if !g.accepted.ok || !selects(g.gateway, proxy) {
            continue;
        }
        for (li, l) in g.gateway.spec.listeners.iter().enumerate() {
            if g.listeners[li].programmed.ok {
                gateways.push(istio_gateway(g.gateway, l));
            }
        }
    }
    for state in &a.routes {
        let mut entries: Option<Vec<Entry>> = None;
        for parent in &state.parents {
            let Parent::Listeners(attached) = &parent.target else {
                continue;
            };
            for at in attached {
                let g = &a.gateways[at.gateway];
                if !selects(g.gateway, proxy) {
                    continue;
                }
                let gw = g.gateway;
                let l = &gw.spec.listeners[at.listener];
                let key = format!(
                    "{}/{}",
                    gw.meta.namespace,
                    lowered_name(&gw.meta.name, &l.name)
                );
                match state.route.kind {
                    RouteKind::Http | RouteKind::Grpc => {
                        let entries = entries.get_or_insert_with(|| route_entries(src, state));
                        for h in &at.hostnames {
                            http.entry((at.gateway, at.listener, h.clone()))
                                .or_default()
                                .extend(entries.iter().cloned());
                        }
                    }
                    RouteKind::Tls | RouteKind::Tcp => {
                        if let Some(vs) = l4_service(src, state, gw, l, &key, &at.hostnames) {
                            services.push(vs);
                        }
                    }
                }
            }
        }
    }
    for ((gi, li, host), mut entries) in http {
        let gw = a.gateways[gi].gateway;
        let l = &gw.spec.listeners[li];
        let name = lowered_name(&gw.meta.name, &l.name);
        entries.sort_by(|x, y| x.order.cmp(&y.order));
        services.push(resource(
            gw,
            &format!("{name}.{host}"),
            VirtualService {
                hosts: vec![host],
                gateways: vec![format!("{}/{name}", gw.meta.namespace)],
                http: entries.into_iter().map(|e| e.http).collect(),
                ..Default::default()
            },
        ));
    }
    (gateways, services)
}

/// The Istio entries of an HTTP or gRPC route.
fn route_entries(src: &Source<'_>, state: &RouteState<'_>) -> Vec<Entry> {
    let s = src.snapshot;
    match state.route.kind {
        RouteKind::Http => http::http_entries(src, &s.http_routes[state.route.index]),
        RouteKind::Grpc => http::grpc_entries(src, &s.grpc_routes[state.route.index]),
        RouteKind::Tls | RouteKind::Tcp => Vec::new(),
    }
}

/// One listener as an Istio Gateway with one server.
fn istio_gateway(
    g: &Resource<trellis_config::gateway_api::Gateway>,
    l: &Listener,
) -> Resource<Gateway> {
    let tls = match (l.protocol.as_str(), l.tls_mode()) {
        ("TLS", "Passthrough") => Some(ServerTlsSettings {
            mode: Some(ServerTlsMode::Passthrough),
            ..Default::default()
        }),
        ("HTTPS" | "TLS", _) => Some(ServerTlsSettings {
            mode: Some(ServerTlsMode::Simple),
            // The listener is programmed only when its first certificateRef resolves.
            credential_name: l
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.first())
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            ..Default::default()
        }),
        _ => None,
    };
    let server = Server {
        port: Some(Port {
            number: l.port,
            protocol: l.protocol.clone(),
            name: l.name.clone(),
            target_port: None,
        }),
        hosts: vec![format!("*/{}", l.hostname.as_deref().unwrap_or("*"))],
        tls,
        name: l.name.clone(),
        ..Default::default()
    };
    resource(
        g,
        &lowered_name(&g.meta.name, &l.name),
        Gateway {
            selector: BTreeMap::new(),
            servers: vec![server],
        },
    )
}

/// A lowered resource in the namespace of `from`, pointing at its file and line.
fn resource<F, T>(from: &Resource<F>, name: &str, spec: T) -> Resource<T> {
    Resource {
        meta: ObjectMeta {
            name: name.to_string(),
            namespace: from.meta.namespace.clone(),
            ..Default::default()
        },
        spec,
        file: from.file.clone(),
        line: from.line,
    }
}

/// A TLSRoute or TCPRoute on one listener as a VirtualService with one `tls`/`tcp` entry.
fn l4_service(
    src: &Source<'_>,
    state: &RouteState<'_>,
    gw: &Resource<trellis_config::gateway_api::Gateway>,
    l: &Listener,
    key: &str,
    hostnames: &[String],
) -> Option<Resource<VirtualService>> {
    let s = src.snapshot;
    let (kind, route, rules) = match state.route.kind {
        RouteKind::Tls => {
            let r = &s.tls_routes[state.route.index];
            (RouteKind::Tls, r.key(), &r.spec.rules)
        }
        RouteKind::Tcp => {
            let r = &s.tcp_routes[state.route.index];
            (RouteKind::Tcp, r.key(), &r.spec.rules)
        }
        _ => return None,
    };
    let ns = state.route.meta.namespace.as_str();
    let destinations: Vec<RouteDestination> = rules
        .iter()
        .flat_map(|r| &r.backend_refs)
        .filter(|b| b.weight() > 0)
        .filter_map(|b| {
            let resolved = resolve_backend(s, src.registry, kind, ns, b).ok()?;
            Some(RouteDestination {
                destination: Destination {
                    host: resolved.host,
                    subset: String::new(),
                    port: Some(PortSelector {
                        number: resolved.port,
                    }),
                },
                weight: i32::try_from(b.weight()).unwrap_or(i32::MAX),
            })
        })
        .collect();
    if destinations.is_empty() {
        return None;
    }
    let gateways = vec![key.to_string()];
    let mut vs = VirtualService {
        gateways: gateways.clone(),
        ..Default::default()
    };
    if kind == RouteKind::Tls && l.tls_mode() == "Passthrough" {
        vs.hosts = hostnames.to_vec();
        vs.tls = vec![TlsRoute {
            matches: vec![TlsMatchAttributes {
                sni_hosts: hostnames.to_vec(),
                port: Some(l.port),
                gateways,
                ..Default::default()
            }],
            route: destinations,
        }];
    } else {
        vs.hosts = vec!["*".into()];
        vs.tcp = vec![TcpRoute {
            matches: vec![L4MatchAttributes {
                port: Some(l.port),
                gateways,
                ..Default::default()
            }],
            route: destinations,
        }];
    }
    let name = format!(
        "{}.{}",
        lowered_name(&gw.meta.name, &l.name),
        route.replace('/', ".")
    );
    Some(resource(gw, &name, vs))
}

/// Mesh routes for a sidecar: one mesh VirtualService per Service with routes. A route in the
/// proxy's own namespace that targets another namespace's Service (a consumer route) replaces
/// the Service namespace's own (producer) routes for this proxy, as GAMMA specifies.
fn lower_mesh(
    src: &Source<'_>,
    a: &Attachments<'_>,
    proxy: &ProxyIdentity,
) -> Vec<Resource<VirtualService>> {
    // host -> (producer entries, consumer entries)
    let mut by_host: BTreeMap<String, (Vec<Entry>, Vec<Entry>)> = BTreeMap::new();
    for state in &a.routes {
        for parent in &state.parents {
            let Parent::Service { host, port } = &parent.target else {
                continue;
            };
            let service_ns = host.split('.').nth(1).unwrap_or("");
            let route_ns = state.route.meta.namespace.as_str();
            let consumer = route_ns != service_ns;
            if consumer && route_ns != proxy.namespace {
                continue;
            }
            let src = Source {
                snapshot: src.snapshot,
                registry: src.registry,
                port: *port,
            };
            let entries = route_entries(&src, state);
            let slot = by_host.entry(host.clone()).or_default();
            if consumer {
                slot.1.extend(entries);
            } else {
                slot.0.extend(entries);
            }
        }
    }
    let mut out = Vec::new();
    for (host, (producer, consumer)) in by_host {
        let mut entries = if consumer.is_empty() {
            producer
        } else {
            consumer
        };
        entries.sort_by(|x, y| x.order.cmp(&y.order));
        let namespace = host.split('.').nth(1).unwrap_or("default").to_string();
        out.push(Resource {
            meta: ObjectMeta {
                name: format!("gamma.{host}"),
                namespace,
                ..Default::default()
            },
            spec: VirtualService {
                hosts: vec![host],
                http: entries.into_iter().map(|e| e.http).collect(),
                ..Default::default()
            },
            file: String::new(),
            line: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn loaded() -> trellis_config::Loaded {
        let yaml = include_str!("../tests/golden/gateway-api-http/config.yaml");
        trellis_config::load_str("config.yaml", yaml).expect("loads")
    }

    /// `(status, reason)` of condition `kind` in `conditions`.
    fn condition(conditions: &Value, kind: &str) -> (String, String) {
        let c = conditions
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == kind)
            .expect("condition present");
        (
            c["status"].as_str().unwrap().to_string(),
            c["reason"].as_str().unwrap().to_string(),
        )
    }

    fn pair(s: &str, r: &str) -> (String, String) {
        (s.to_string(), r.to_string())
    }

    #[test]
    fn route_status_reports_attachment_and_references() {
        let l = loaded();
        let st = |kind, name| status(&l.snapshot, &l.registry, kind, "apps", name).unwrap();
        let echo = &st("HTTPRoute", "echo")["parents"][0];
        assert_eq!(
            condition(&echo["conditions"], "Accepted"),
            pair("True", "Accepted")
        );
        assert_eq!(
            condition(&echo["conditions"], "ResolvedRefs"),
            pair("True", "ResolvedRefs")
        );
        assert_eq!(echo["parentRef"]["sectionName"], "http");
        let cross = &st("HTTPRoute", "cross")["parents"][0];
        assert_eq!(
            condition(&cross["conditions"], "ResolvedRefs"),
            pair("False", "RefNotPermitted")
        );
        let refused = &st("HTTPRoute", "not-allowed")["parents"][0];
        assert_eq!(
            condition(&refused["conditions"], "Accepted"),
            pair("False", "NotAllowedByListeners")
        );
        let grpc = &st("GRPCRoute", "grpc")["parents"][0];
        assert_eq!(
            condition(&grpc["conditions"], "Accepted"),
            pair("True", "Accepted")
        );
    }

    #[test]
    fn gateway_status_counts_attached_routes() {
        let l = loaded();
        let g = status(&l.snapshot, &l.registry, "Gateway", "infra", "web").unwrap();
        assert_eq!(
            condition(&g["conditions"], "Accepted"),
            pair("True", "Accepted")
        );
        assert_eq!(
            condition(&g["conditions"], "Programmed"),
            pair("True", "Programmed")
        );
        assert_eq!(g["listeners"][0]["attachedRoutes"], 3);
        assert_eq!(g["listeners"][1]["attachedRoutes"], 0);
        assert_eq!(g["listeners"][0]["supportedKinds"][0]["kind"], "HTTPRoute");
        let missing = status(&l.snapshot, &l.registry, "Gateway", "infra", "nope");
        assert!(missing.is_none());
    }

    #[test]
    fn a_route_with_an_unsupported_filter_is_not_accepted() {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: g}]\n  rules: [{filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]}]\n";
        let l = trellis_config::load_str("t.yaml", yaml).expect("loads");
        let r = status(&l.snapshot, &l.registry, "HTTPRoute", "default", "r").unwrap();
        assert_eq!(
            condition(&r["parents"][0]["conditions"], "Accepted"),
            pair("False", "UnsupportedValue")
        );
        let g = status(&l.snapshot, &l.registry, "Gateway", "default", "g").unwrap();
        assert_eq!(g["listeners"][0]["attachedRoutes"], 0);
    }

    #[test]
    fn a_listener_whose_secret_is_missing_is_not_programmed() {
        let yaml = include_str!("../tests/golden/gateway-api-https/config.yaml");
        let l = trellis_config::load_str("config.yaml", yaml).expect("loads");
        let g = status(&l.snapshot, &l.registry, "Gateway", "infra", "secure").unwrap();
        let listeners = &g["listeners"];
        assert_eq!(
            condition(&listeners[0]["conditions"], "Programmed"),
            pair("True", "Programmed")
        );
        assert_eq!(listeners[0]["attachedRoutes"], 1);
        assert_eq!(listeners[1]["attachedRoutes"], 1);
        assert_eq!(
            condition(&listeners[1]["conditions"], "Conflicted"),
            pair("False", "NoConflicts")
        );
        assert_eq!(
            condition(&listeners[2]["conditions"], "ResolvedRefs"),
            pair("False", "InvalidCertificateRef")
        );
        assert_eq!(
            condition(&listeners[2]["conditions"], "Programmed"),
            pair("False", "Invalid")
        );
    }

    #[test]
    fn only_the_named_gateway_proxy_in_its_namespace_is_programmed() {
        let l = loaded();
        let mut proxy = ProxyIdentity {
            namespace: "infra".into(),
            labels: [(GATEWAY_NAME_LABEL.to_string(), "web".to_string())].into(),
            ..ProxyIdentity::default()
        };
        assert_eq!(
            crate::compile(&l.snapshot, &l.registry, &proxy)
                .listeners
                .len(),
            2
        );
        proxy.namespace = "default".into();
        assert!(
            crate::compile(&l.snapshot, &l.registry, &proxy)
                .listeners
                .is_empty()
        );
        proxy.namespace = "infra".into();
        proxy.labels = [(ISTIO_GATEWAY_NAME_LABEL.to_string(), "web".to_string())].into();
        assert_eq!(
            crate::compile(&l.snapshot, &l.registry, &proxy)
                .listeners
                .len(),
            2
        );
    }
}
