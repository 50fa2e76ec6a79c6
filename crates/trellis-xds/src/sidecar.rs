//! Sidecar proxies: the `virtualOutbound` listener (route config `"15001"` with every visible
//! service on every HTTP port, plus Istio's per-port route configs `"<port>"`) and the
//! `virtualInbound` listener forwarding to `inbound|<targetPort>||` clusters of the local app;
//! TCP and TLS service ports get L4 listeners from `l4.rs`.
//!
//! Owns service visibility, the names a client may use for a service, which VirtualService
//! applies to which service, and inbound service selection. Route translation lives in
//! `route.rs`, clusters in `cluster.rs`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use trellis_config::{Protocol, Resource, Service, VirtualService, resolve_host};

use crate::cluster::{KUBE_DOMAIN, inbound, inbound_name, outbound_name};
use crate::listener::{HcmSpec, Routes, http_listener};
use crate::route::{
    ClusterRefs, Scope, binds, default_outbound_route, default_route, host_matches, route_config,
    virtual_host, vs_routes,
};
use crate::{Cluster, Context, Listener};

/// What a sidecar gets besides the outbound clusters: listeners, route configs, the referenced
/// outbound service ports and the inbound clusters.
pub struct Compiled {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub refs: ClusterRefs,
    pub inbound_clusters: Vec<Cluster>,
}

/// Listeners that take requests from outside the workload, where inbound security filters
/// (JWT authentication, authorization) go: `virtualInbound` and the captured inbound ports
/// (`inbound_0.0.0.0_<port>`, `mtls.rs`).
pub fn is_inbound(listener: &Listener) -> bool {
    listener.name == "virtualInbound" || listener.name.starts_with("inbound_")
}

pub fn compile(ctx: &Context<'_>) -> Compiled {
    let proxy = ctx.proxy;
    let services: Vec<&Service> = ctx.registry.visible_from(&proxy.namespace).collect();
    let mut refs = ClusterRefs::new();
    for s in &services {
        for p in &s.ports {
            refs.insert((s.hostname.clone(), p.number, String::new()));
        }
    }
    let mut routes = outbound_routes(ctx, &services, &mut refs);
    let (inbound_routes, mut inbound_clusters, target_ports) = inbound_side(ctx);
    inbound_clusters.extend(crate::egress::sidecar_clusters());
    let outbound_name = proxy.outbound_port.to_string();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    let listeners = vec![
        http_listener(
            "virtualOutbound",
            &proxy.bind_address,
            proxy.outbound_port.into(),
            TrafficDirection::Outbound,
            HcmSpec {
                stat_prefix: format!("outbound_0.0.0.0_{}", proxy.outbound_port),
                routes: Routes::Rds(outbound_name),
                use_remote_address: false,
            },
        ),
        http_listener(
            "virtualInbound",
            &proxy.bind_address,
            proxy.inbound_port.into(),
            TrafficDirection::Inbound,
            HcmSpec {
                stat_prefix: format!("inbound_0.0.0.0_{}", proxy.inbound_port),
                routes: Routes::Inline(Box::new(inbound_routes)),
                use_remote_address: true,
            },
        ),
    ];
    let mesh = mesh_virtual_services(ctx);
    let l4 = crate::l4::sidecar_listeners(
        ctx,
        &services,
        |host| virtual_service_for(host, &mesh),
        |service| selects_proxy(service, ctx),
        &mut refs,
    );
    let capture = crate::mtls::sidecar_capture(ctx, &target_ports);
    let listeners = listeners.into_iter().chain(l4).chain(capture).collect();
    Compiled {
        listeners,
        routes,
        refs,
        inbound_clusters,
    }
}

/// Whether a port is served by the HTTP outbound listener (unknown protocols are sniffed as
/// HTTP, since the outbound listener only speaks HTTP).
fn is_http(protocol: Protocol) -> bool {
    protocol.is_http() || protocol == Protocol::Unsupported
}

/// Route config `"15001"` and the per-port route configs `"<port>"`.
fn outbound_routes(
    ctx: &Context<'_>,
    services: &[&Service],
    refs: &mut ClusterRefs,
) -> Vec<RouteConfiguration> {
    let mesh_services = mesh_virtual_services(ctx);
    let mut all: Vec<VirtualHost> = Vec::new();
    let mut per_port: BTreeMap<u32, Vec<VirtualHost>> = BTreeMap::new();
    for service in services {
        let http_ports: Vec<u32> = service
            .ports
            .iter()
            .filter(|p| is_http(p.protocol))
            .map(|p| p.number)
            .collect();
        let Some(default_port) = http_ports.iter().min().copied() else {
            continue;
        };
        let names = client_names(&service.hostname, &service.namespace, &ctx.proxy.namespace);
        let vs = virtual_service_for(&service.hostname, &mesh_services);
        for port in http_ports {
            let routes = match vs {
                Some(vs) => vs_routes(
                    vs,
                    Scope {
                        ctx,
                        gateway: None,
                        port,
                    },
                    refs,
                ),
                None => {
                    let mut route =
                        default_outbound_route(outbound_name(port, "", &service.hostname));
                    crate::lb::add_hash_policy(ctx, &mut route);
                    vec![route]
                }
            };
            let vh_name = format!("{}:{port}", service.hostname);
            let (bare_and_port, with_port) = domains(&names, port);
            per_port.entry(port).or_default().push(virtual_host(
                &vh_name,
                bare_and_port.clone(),
                routes.clone(),
            ));
            let domains = if port == default_port {
                bare_and_port
            } else {
                with_port
            };
            all.push(virtual_host(&vh_name, domains, routes));
        }
    }
    let outbound = ctx.proxy.outbound_port.to_string();
    // Hosts outside the registry: the mesh's outboundTrafficPolicy (`egress.rs`).
    let unknown = crate::egress::catch_all_virtual_host(crate::egress::mode(ctx));
    let with_unknown = |vhosts: Vec<VirtualHost>| {
        let mut vhosts = unique_domains(vhosts);
        vhosts.push(unknown.clone());
        vhosts
    };
    let mut configs = vec![route_config(&outbound, with_unknown(all))];
    configs.extend(
        per_port
            .into_iter()
            .map(|(port, vhosts)| route_config(&port.to_string(), with_unknown(vhosts))),
    );
    configs
}

/// `(names and names:port, names:port)`.
fn domains(names: &[String], port: u32) -> (Vec<String>, Vec<String>) {
    let with_port: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    let both = names
        .iter()
        .cloned()
        .chain(with_port.iter().cloned())
        .collect();
    (both, with_port)
}

/// Envoy rejects a domain listed twice in one route config: the first virtual host keeps it.
fn unique_domains(mut vhosts: Vec<VirtualHost>) -> Vec<VirtualHost> {
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = BTreeSet::new();
    for vh in &mut vhosts {
        vh.domains.retain(|d| seen.insert(d.clone()));
    }
    vhosts.retain(|vh| !vh.domains.is_empty());
    vhosts
}

/// VirtualServices that apply to sidecars (`gateways` empty or naming `mesh`) and are exported
/// to the proxy's namespace, by key.
fn mesh_virtual_services<'a>(ctx: &'a Context<'_>) -> Vec<&'a Resource<VirtualService>> {
    let ns = &ctx.proxy.namespace;
    let mut out: Vec<_> = ctx
        .snapshot
        .virtual_services
        .iter()
        .filter(|vs| binds(&vs.spec.gateways, &vs.meta.namespace, None))
        .filter(|vs| {
            let export = &vs.spec.export_to;
            export.is_empty()
                || export
                    .iter()
                    .any(|e| e == "*" || e == ns || (e == "." && &vs.meta.namespace == ns))
        })
        .collect();
    out.sort_by_key(|vs| vs.key());
    out
}

/// The VirtualService for a service host: an exact host first, then the longest wildcard.
fn virtual_service_for<'a>(
    host: &str,
    services: &[&'a Resource<VirtualService>],
) -> Option<&'a Resource<VirtualService>> {
    let mut best: Option<(usize, &'a Resource<VirtualService>)> = None;
    for vs in services {
        for h in &vs.spec.hosts {
            let pattern = resolve_host(h, &vs.meta.namespace);
            let score = if pattern.eq_ignore_ascii_case(host) {
                usize::MAX
            } else if host_matches(&pattern, host) {
                pattern.len()
            } else {
                continue;
            };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, vs));
            }
        }
    }
    best.map(|(_, vs)| vs)
}

/// Every name a client may use for a service: Kubernetes hosts get `name` (same namespace
/// only), `name.ns`, `name.ns.svc` and the FQDN; other hosts only themselves.
pub fn client_names(host: &str, service_namespace: &str, proxy_namespace: &str) -> Vec<String> {
    let Some((name, ns)) = host
        .strip_suffix(KUBE_DOMAIN)
        .and_then(|r| r.split_once('.'))
    else {
        return vec![host.to_string()];
    };
    if ns.contains('.') {
        return vec![host.to_string()];
    }
    let mut names = Vec::new();
    if ns == proxy_namespace && service_namespace == proxy_namespace {
        names.push(name.to_string());
    }
    names.extend([
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        host.to_string(),
    ]);
    names
}

/// Inline inbound route config and the `inbound|<targetPort>||` clusters. The lowest target
/// port takes every request (`*`); other target ports are chosen by the `:authority` port
/// (service port or target port), e.g. `*:9090`.
fn inbound_side(ctx: &Context<'_>) -> (RouteConfiguration, Vec<Cluster>, Vec<u32>) {
    let proxy = ctx.proxy;
    // target port -> (service ports, http2)
    let mut ports: BTreeMap<u32, (BTreeSet<u32>, bool)> = BTreeMap::new();
    for service in ctx
        .registry
        .services
        .values()
        .filter(|s| selects_proxy(s, ctx))
    {
        for p in service.ports.iter().filter(|p| is_http(p.protocol)) {
            let target = p.target_port.unwrap_or(p.number);
            let entry = ports.entry(target).or_default();
            entry.0.insert(p.number);
            entry.1 |= matches!(
                p.protocol,
                Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
            );
        }
    }
    let first = ports.keys().next().copied();
    let mut vhosts = Vec::new();
    let mut clusters = Vec::new();
    for (target, (service_ports, http2)) in &ports {
        let name = inbound_name(*target);
        let domains: Vec<String> = if Some(*target) == first {
            vec!["*".into()]
        } else {
            let all: BTreeSet<u32> = service_ports.iter().copied().chain([*target]).collect();
            all.into_iter().map(|p| format!("*:{p}")).collect()
        };
        vhosts.push(virtual_host(
            &name,
            domains,
            vec![default_route(name.clone())],
        ));
        clusters.push(inbound(&proxy.app_address, *target, *http2));
    }
    (
        route_config("virtualInbound", unique_domains(vhosts)),
        clusters,
        ports.into_keys().collect(),
    )
}

/// Services of the proxy's namespace whose selector (Service selector or ServiceEntry
/// `workloadSelector`) is non-empty and matches the proxy's labels.
pub(crate) fn selects_proxy(service: &Service, ctx: &Context<'_>) -> bool {
    let labels = &ctx.proxy.labels;
    service.namespace == ctx.proxy.namespace
        && !service.selector.is_empty()
        && service
            .selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_short_only_in_same_namespace() {
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(
            client_names(host, "default", "default"),
            vec!["reviews", "reviews.default", "reviews.default.svc", host]
        );
        assert_eq!(
            client_names(host, "default", "other"),
            vec!["reviews.default", "reviews.default.svc", host]
        );
        assert_eq!(
            client_names("api.example.com", "default", "default"),
            vec!["api.example.com"]
        );
    }

    #[test]
    fn duplicate_domains_keep_the_first_virtual_host() {
        let a = virtual_host("a:80", vec!["x".into(), "y".into()], vec![]);
        let b = virtual_host("b:80", vec!["y".into()], vec![]);
        let out = unique_domains(vec![b, a]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].domains, vec!["x", "y"]);
    }
}
