//! Gateway proxies: Istio `Gateway` servers -> listeners `0.0.0.0_<port>` and route configs
//! `http.<port>` built from the VirtualServices bound to those gateways.
//!
//! Owns gateway selection (selector ⊆ proxy labels, any namespace), server host forms (`ns/host`)
//! and VS host × server host intersection. Route translation lives in `route.rs`, clusters in
//! `cluster.rs`. Plaintext HTTP servers (HTTP, HTTP2, GRPC, GRPC-WEB) are compiled here (with
//! `httpsRedirect` as Istio's `require_tls` virtual hosts); TLS-terminating (HTTPS/TLS SIMPLE,
//! MUTUAL) servers by `gateway/tls.rs`; TCP and TLS-passthrough servers by `l4.rs`. Every
//! gateway HCM answers with Istio's `server: istio-envoy`.

pub mod tls;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, virtual_host};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::util::pack_any;
use trellis_config::{Gateway, Protocol, Resource, Server, VirtualService, resolve_host};

use crate::listener::{HCM_FILTER, HcmSpec, Routes, http_connection_manager, socket_address};
use crate::route::{
    ClusterRefs, Scope, binds, host_intersection, route_config, virtual_host, vs_routes,
};
use crate::{Context, Listener};

/// One HTTP server of a selected Gateway.
struct Bound<'a> {
    /// `namespace/name` of the Gateway.
    key: String,
    namespace: &'a str,
    server: &'a Server,
}

/// Listeners, route configurations and referenced clusters of a gateway proxy.
pub fn compile(ctx: &Context<'_>) -> (Vec<Listener>, Vec<RouteConfiguration>, ClusterRefs) {
    let mut refs = ClusterRefs::new();
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let by_port = servers_by_port(ctx);
    let mut taken: BTreeSet<u32> = by_port.keys().copied().collect();
    for (port, servers) in by_port {
        let name = format!("http.{port}");
        routes.push(port_routes(ctx, port, &name, &servers, &mut refs));
        listeners.push(Listener {
            name: format!("0.0.0.0_{port}"),
            address: Some(socket_address(&ctx.proxy.bind_address, port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: HCM_FILTER.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(gateway_hcm(
                        port,
                        Routes::Rds(name),
                    )))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let (tls_listeners, tls_ports) = tls::listeners(ctx, &taken, &mut routes, &mut refs);
    listeners.extend(tls_listeners);
    taken.extend(tls_ports);
    listeners.extend(crate::l4::gateway_listeners(ctx, &taken, &mut refs));
    (listeners, routes, refs)
}

/// Istio's `server` header value on gateways.
pub const SERVER_NAME: &str = "istio-envoy";

/// A gateway's HCM on `port`: edge (`use_remote_address`), `server: istio-envoy`.
fn gateway_hcm(port: u32, routes: Routes) -> HttpConnectionManager {
    let mut hcm = http_connection_manager(HcmSpec {
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        routes,
        use_remote_address: true,
    });
    hcm.server_name = SERVER_NAME.into();
    hcm
}

/// Whether a Gateway `selector` picks this proxy (an empty selector picks every gateway).
pub fn selects(gateway: &Gateway, labels: &BTreeMap<String, String>) -> bool {
    gateway
        .selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn servers_by_port<'a>(ctx: &'a Context<'_>) -> BTreeMap<u32, Vec<Bound<'a>>> {
    let mut gateways: Vec<&Resource<Gateway>> = ctx
        .snapshot
        .gateways
        .iter()
        .filter(|g| selects(&g.spec, &ctx.proxy.labels))
        .collect();
    gateways.sort_by_key(|g| g.key());
    let mut by_port: BTreeMap<u32, Vec<Bound<'a>>> = BTreeMap::new();
    for g in gateways {
        for server in &g.spec.servers {
            let Some(port) = &server.port else { continue };
            if !Protocol::parse(&port.protocol).is_http() {
                continue;
            }
            by_port.entry(port.number).or_default().push(Bound {
                key: g.key(),
                namespace: &g.meta.namespace,
                server,
            });
        }
    }
    by_port
}

/// Route configuration `http.<port>`: one virtual host per bound host, routes of every
/// VirtualService bound to that host appended in VirtualService order.
fn port_routes(
    ctx: &Context<'_>,
    port: u32,
    name: &str,
    servers: &[Bound<'_>],
    refs: &mut ClusterRefs,
) -> RouteConfiguration {
    let mut services: Vec<&Resource<VirtualService>> =
        ctx.snapshot.virtual_services.iter().collect();
    services.sort_by_key(|vs| vs.key());
    let mut hosts: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    // Hosts of `httpsRedirect` servers: answered with a 301 to https (Istio's `require_tls`),
    // whether or not a VirtualService routes them.
    let mut redirect = BTreeSet::new();
    for bound in servers {
        if bound.server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            for h in &bound.server.hosts {
                let host = split_server_host(h, bound.namespace).1.to_ascii_lowercase();
                hosts.entry(host.clone()).or_default();
                redirect.insert(host);
            }
        }
        for vs in &services {
            let ns = vs.meta.namespace.as_str();
            if !binds(&vs.spec.gateways, ns, Some(&bound.key)) {
                continue;
            }
            let redirects = bound.server.tls.as_ref().is_some_and(|t| t.https_redirect);
            for host in bound_hosts(vs, bound) {
                if redirects {
                    redirect.insert(host.clone());
                }
                if !seen.insert((vs.key(), host.clone())) {
                    continue;
                }
                let scope = Scope {
                    ctx,
                    gateway: Some(&bound.key),
                    port,
                };
                hosts
                    .entry(host)
                    .or_default()
                    .extend(vs_routes(vs, scope, refs));
            }
        }
    }
    let vhosts = hosts
        .into_iter()
        .filter(|(host, routes)| !routes.is_empty() || redirect.contains(host))
        .map(|(host, routes)| {
            let mut vh = virtual_host(&format!("{host}:{port}"), domains(&host, port), routes);
            if redirect.contains(&host) {
                vh.require_tls = virtual_host::TlsRequirementType::All as i32;
            }
            vh
        })
        .collect();
    route_config(name, vhosts)
}

/// VS hosts intersected with the server's hosts the VS namespace may bind.
fn bound_hosts(vs: &Resource<VirtualService>, bound: &Bound<'_>) -> Vec<String> {
    let ns = vs.meta.namespace.as_str();
    let mut out = Vec::new();
    for server_host in &bound.server.hosts {
        let (allowed_ns, pattern) = split_server_host(server_host, bound.namespace);
        if allowed_ns != "*" && allowed_ns != ns {
            continue;
        }
        for host in &vs.spec.hosts {
            if let Some(h) = host_intersection(&resolve_host(host, ns), pattern) {
                out.push(h);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Server host forms: `ns/host`, `./host` (the gateway's namespace), `*/host`, `host` (any).
pub fn split_server_host<'a>(host: &'a str, gateway_namespace: &'a str) -> (&'a str, &'a str) {
    match host.split_once('/') {
        Some((".", h)) => (gateway_namespace, h),
        Some((ns, h)) => (ns, h),
        None => ("*", host),
    }
}

/// `*` alone, or the host with and without `:port`.
fn domains(host: &str, port: u32) -> Vec<String> {
    if host == "*" {
        vec!["*".into()]
    } else {
        vec![host.to_string(), format!("{host}:{port}")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_host_forms() {
        assert_eq!(
            split_server_host("*/bookinfo.com", "gw"),
            ("*", "bookinfo.com")
        );
        assert_eq!(
            split_server_host("./bookinfo.com", "gw"),
            ("gw", "bookinfo.com")
        );
        assert_eq!(split_server_host("prod/*", "gw"), ("prod", "*"));
        assert_eq!(split_server_host("*", "gw"), ("*", "*"));
    }

    #[test]
    fn domains_with_port() {
        assert_eq!(domains("*", 8080), vec!["*"]);
        assert_eq!(domains("a.com", 80), vec!["a.com", "a.com:80"]);
    }

    #[test]
    fn selector_subset_of_labels() {
        let labels: BTreeMap<String, String> =
            [("istio".to_string(), "ingressgateway".to_string())].into();
        let mut gw = Gateway::default();
        assert!(selects(&gw, &labels));
        gw.selector.insert("istio".into(), "ingressgateway".into());
        assert!(selects(&gw, &labels));
        gw.selector.insert("app".into(), "x".into());
        assert!(!selects(&gw, &labels));
    }
}
