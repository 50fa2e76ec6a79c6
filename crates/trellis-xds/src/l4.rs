//! L4 routing: VirtualService `tcp` and `tls` routes -> listeners whose filter chains end in an
//! `envoy.filters.network.tcp_proxy` (one cluster or weighted clusters), with the
//! `envoy.filters.listener.tls_inspector` listener filter and `filter_chain_match.server_names`
//! for TLS passthrough, as Istio generates them.
//!
//! Owns which Gateway servers are L4 (TCP-like protocols, and TLS/HTTPS with `tls.mode:
//! PASSTHROUGH`), which `tcp`/`tls` routes apply to a server (gateways, port, sourceLabels,
//! sourceNamespace), SNI host × server host intersection and the shape of the tcp_proxy chains.
//! HTTP servers stay in `gateway.rs`; destinations become cluster names through `route.rs`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier, tcp_proxy::TunnelingConfig, tcp_proxy::WeightedCluster,
    tcp_proxy::weighted_cluster::ClusterWeight,
};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use envoy_types::util::pack_any;
use trellis_config::{
    Gateway, Protocol, Resource, RouteDestination, Server, ServerTlsMode, Service, TcpRoute,
    TlsRoute, VirtualService, resolve_host,
};

use crate::cluster::outbound_name;
use crate::gateway::{selects, split_server_host};
use crate::listener::socket_address;
use crate::route::{ClusterRefs, Scope, binds, destination_cluster, host_intersection};
use crate::{Context, Listener};

pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
pub const TLS_INSPECTOR_FILTER: &str = "envoy.filters.listener.tls_inspector";

/// One L4 server of a selected Gateway.
struct Bound<'a> {
    /// `namespace/name` of the Gateway.
    key: String,
    namespace: &'a str,
    server: &'a Server,
    /// TLS passthrough (routes by SNI) rather than plain TCP.
    passthrough: bool,
}

/// Where L4 routes are being matched: which proxy, gateway and port.
#[derive(Clone, Copy)]
struct L4Scope<'a> {
    ctx: &'a Context<'a>,
    gateway: Option<&'a str>,
    port: u32,
}

/// A `tcp_proxy` filter to one cluster (stat prefix = the cluster) or a weighted split
/// (stat prefix = `<vs name>.<vs namespace>`, as Istio).
pub fn tcp_proxy(split_prefix: &str, mut targets: Vec<(String, u32)>) -> TcpProxy {
    let (stat_prefix, specifier) = if targets.len() == 1 {
        let (cluster, _) = targets.remove(0);
        (cluster.clone(), ClusterSpecifier::Cluster(cluster))
    } else {
        let clusters = targets
            .into_iter()
            .map(|(name, weight)| ClusterWeight {
                name,
                weight,
                ..Default::default()
            })
            .collect();
        (
            split_prefix.to_string(),
            ClusterSpecifier::WeightedClusters(WeightedCluster { clusters }),
        )
    };
    TcpProxy {
        stat_prefix,
        cluster_specifier: Some(specifier),
        ..Default::default()
    }
}

/// A filter chain holding one tcp_proxy; `server_names` empty = any SNI (or none).
pub fn tcp_chain(server_names: Vec<String>, proxy: TcpProxy) -> FilterChain {
    let filter_chain_match = (!server_names.is_empty()).then(|| FilterChainMatch {
        server_names,
        ..Default::default()
    });
    FilterChain {
        filter_chain_match,
        filters: vec![Filter {
            name: TCP_PROXY_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
        }],
        ..Default::default()
    }
}

/// A listener of tcp_proxy chains; with the TLS inspector when any chain matches on SNI.
pub fn l4_listener(
    name: &str,
    ip: &str,
    port: u32,
    direction: TrafficDirection,
    chains: Vec<FilterChain>,
) -> Listener {
    let sni = chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    });
    let listener_filters = if sni {
        vec![tls_inspector()]
    } else {
        Vec::new()
    };
    Listener {
        name: name.to_string(),
        address: Some(socket_address(ip, port)),
        traffic_direction: direction as i32,
        filter_chains: chains,
        listener_filters,
        ..Default::default()
    }
}

/// The `envoy.filters.listener.tls_inspector` listener filter.
pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR_FILTER.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The chains of one port's PASSTHROUGH and TCP servers, for a listener that also
/// terminates TLS (`gateway/tls.rs`).
pub fn port_l4_chains(ctx: &Context<'_>, port: u32, refs: &mut ClusterRefs) -> Vec<FilterChain> {
    let mut services: Vec<&Resource<VirtualService>> =
        ctx.snapshot.virtual_services.iter().collect();
    services.sort_by_key(|vs| vs.key());
    let servers = l4_servers(ctx, &BTreeSet::new())
        .remove(&port)
        .unwrap_or_default();
    port_chains(ctx, port, &servers, &services, refs)
}

/// The tcp_proxy of a TLS server that terminates (SIMPLE, MUTUAL): the first applicable `tcp`
/// route of the first VirtualService (by key) bound to it, as Istio routes such servers.
pub fn terminated_tcp_proxy(
    ctx: &Context<'_>,
    port: u32,
    gateway_key: &str,
    gateway_namespace: &str,
    server: &Server,
    refs: &mut ClusterRefs,
) -> Option<TcpProxy> {
    let mut services: Vec<&Resource<VirtualService>> =
        ctx.snapshot.virtual_services.iter().collect();
    services.sort_by_key(|vs| vs.key());
    let bound = Bound {
        key: gateway_key.to_string(),
        namespace: gateway_namespace,
        server,
        passthrough: false,
    };
    let scope = L4Scope {
        ctx,
        gateway: Some(gateway_key),
        port,
    };
    services.into_iter().find_map(|vs| {
        let ns = vs.meta.namespace.as_str();
        if !binds(&vs.spec.gateways, ns, Some(gateway_key)) || !vs_on_server(vs, &bound) {
            return None;
        }
        let r = applicable_tcp_route(vs, scope)?;
        Some(route_proxy(vs, &r.route, scope, refs))
    })
}

/// Listeners `0.0.0.0_<port>` for the gateway's TCP and TLS-passthrough servers on ports that
/// carry no HTTP server (`http_ports`). A port whose routes yield no chain gets no listener.
pub fn gateway_listeners(
    ctx: &Context<'_>,
    http_ports: &BTreeSet<u32>,
    refs: &mut ClusterRefs,
) -> Vec<Listener> {
    let mut services: Vec<&Resource<VirtualService>> =
        ctx.snapshot.virtual_services.iter().collect();
    services.sort_by_key(|vs| vs.key());
    let mut out = Vec::new();
    for (port, servers) in l4_servers(ctx, http_ports) {
        let chains = port_chains(ctx, port, &servers, &services, refs);
        if chains.is_empty() {
            continue;
        }
        out.push(l4_listener(
            &format!("0.0.0.0_{port}"),
            &ctx.proxy.bind_address,
            port,
            TrafficDirection::Outbound,
            chains,
        ));
    }
    out
}

/// Sidecar outbound L4 listeners `0.0.0.0_<port>`, one per TCP-like or TLS service port of the
/// visible `services`, bound on the proxy's bind address at the service port (there is no
/// traffic capture yet, so clients connect to it). Plain TCP: the first service on a port (by
/// host) takes the port, through its VirtualService's first applicable `tcp` route (mesh,
/// port, `sourceLabels` ⊆ this proxy's labels) or to its own cluster. TLS: one SNI chain per
/// applicable `tls` route, and the first TLS service's own cluster for any other name.
/// `vs_for` finds the mesh VirtualService of a host; `local` says whether a service is served
/// by this proxy's own workload (its ports are left out: the application listens there), as
/// are privileged ports (below 1024).
pub fn sidecar_listeners<'a>(
    ctx: &Context<'_>,
    services: &[&Service],
    vs_for: impl Fn(&str) -> Option<&'a Resource<VirtualService>>,
    local: impl Fn(&Service) -> bool,
    refs: &mut ClusterRefs,
) -> Vec<Listener> {
    let proxy = ctx.proxy;
    let mut out = Vec::new();
    for (port, on_port) in sidecar_ports(ctx, services, local) {
        let scope = L4Scope {
            ctx,
            gateway: None,
            port,
        };
        let mut chains = Chains::default();
        for (service, tls) in on_port {
            let vs = vs_for(&service.hostname);
            let own = || vec![(outbound_name(port, "", &service.hostname), 1)];
            if tls {
                for (vs, route) in vs
                    .iter()
                    .flat_map(|v| v.spec.tls.iter().map(move |r| (*v, r)))
                {
                    let names = tls_route_names(vs, route, scope, |sni| BTreeSet::from([sni]));
                    let names = names.into_iter().filter(|n| n != "*").collect();
                    chains.sni(
                        names,
                        |refs| route_proxy(vs, &route.route, scope, refs),
                        refs,
                    );
                }
                chains.catch_all(|_| with_pool_timeouts(tcp_proxy("", own()), scope), refs);
            } else {
                match vs.and_then(|vs| applicable_tcp_route(vs, scope).map(|r| (vs, r))) {
                    Some((vs, r)) => {
                        chains.catch_all(|refs| route_proxy(vs, &r.route, scope, refs), refs)
                    }
                    None => {
                        chains.catch_all(|_| with_pool_timeouts(tcp_proxy("", own()), scope), refs)
                    }
                }
            }
        }
        out.push(l4_listener(
            &format!("0.0.0.0_{port}"),
            &proxy.bind_address,
            port,
            TrafficDirection::Outbound,
            chains.finish(),
        ));
    }
    out
}

/// Ports below this need privileges (or traffic capture) to bind; left to a later issue.
const FIRST_UNPRIVILEGED_PORT: u32 = 1024;

/// TCP-like (`false`) and TLS (`true`) service ports by number, services sorted by host. Left
/// out: the proxy's own capture ports, the ports of the services its workload serves
/// (`local`; the application listens there), and privileged ports.
fn sidecar_ports<'s>(
    ctx: &Context<'_>,
    services: &[&'s Service],
    local: impl Fn(&Service) -> bool,
) -> BTreeMap<u32, Vec<(&'s Service, bool)>> {
    let mut own: BTreeSet<u32> = [
        u32::from(ctx.proxy.outbound_port),
        u32::from(ctx.proxy.inbound_port),
    ]
    .into();
    for service in services.iter().filter(|s| local(s)) {
        for p in &service.ports {
            own.insert(p.number);
            own.extend(p.target_port);
        }
    }
    let mut by_port: BTreeMap<u32, Vec<(&Service, bool)>> = BTreeMap::new();
    for service in services {
        for p in &service.ports {
            let tls = match p.protocol {
                Protocol::Tls | Protocol::Https => true,
                Protocol::Udp | Protocol::Unsupported => continue,
                other if other.is_http() => continue,
                _ => false,
            };
            if !own.contains(&p.number) && p.number >= FIRST_UNPRIVILEGED_PORT {
                by_port.entry(p.number).or_default().push((service, tls));
            }
        }
    }
    for on_port in by_port.values_mut() {
        on_port.sort_by(|a, b| a.0.hostname.cmp(&b.0.hostname));
    }
    by_port
}

/// Servers of selected Gateways that are TCP-like, or TLS/HTTPS in PASSTHROUGH mode, by port.
fn l4_servers<'a>(
    ctx: &'a Context<'_>,
    http_ports: &BTreeSet<u32>,
) -> BTreeMap<u32, Vec<Bound<'a>>> {
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
            if http_ports.contains(&port.number) {
                continue;
            }
            let protocol = Protocol::parse(&port.protocol);
            let mode = server.tls.as_ref().and_then(|t| t.mode).unwrap_or_default();
            let passthrough = match protocol {
                Protocol::Tls | Protocol::Https => {
                    if mode != ServerTlsMode::Passthrough {
                        continue; // TLS termination: a later issue
                    }
                    true
                }
                p if p.is_http() || p == Protocol::Udp => continue,
                _ => false,
            };
            by_port.entry(port.number).or_default().push(Bound {
                key: g.key(),
                namespace: &g.meta.namespace,
                server,
                passthrough,
            });
        }
    }
    by_port
}

/// The chains of one port: SNI chains of the TLS routes (each server name once, first
/// VirtualService by key wins), then at most one catch-all chain (a `*` SNI host, or the first
/// applicable TCP route).
fn port_chains(
    ctx: &Context<'_>,
    port: u32,
    servers: &[Bound<'_>],
    services: &[&Resource<VirtualService>],
    refs: &mut ClusterRefs,
) -> Vec<FilterChain> {
    let mut chains = Chains::default();
    for bound in servers {
        let scope = L4Scope {
            ctx,
            gateway: Some(&bound.key),
            port,
        };
        for vs in services {
            let ns = vs.meta.namespace.as_str();
            if !binds(&vs.spec.gateways, ns, Some(&bound.key)) || !vs_on_server(vs, bound) {
                continue;
            }
            if !bound.passthrough {
                if let Some(r) = applicable_tcp_route(vs, scope) {
                    chains.catch_all(|refs| route_proxy(vs, &r.route, scope, refs), refs);
                }
                continue;
            }
            for route in &vs.spec.tls {
                let mut names = tls_route_names(vs, route, scope, |sni| sni_on_server(&sni, bound));
                let any = names.remove("*");
                chains.sni(
                    names,
                    |refs| route_proxy(vs, &route.route, scope, refs),
                    refs,
                );
                if any {
                    chains.catch_all(|refs| route_proxy(vs, &route.route, scope, refs), refs);
                }
            }
        }
    }
    chains.finish()
}

/// Filter chains of one listener under construction: each server name in one chain only, at
/// most one chain without server names. Destinations are resolved (and their clusters
/// referenced) only for chains that are kept.
#[derive(Default)]
struct Chains {
    chains: Vec<FilterChain>,
    taken: BTreeSet<String>,
    catch_all: bool,
}

impl Chains {
    /// A chain for the `names` not taken yet (none left: no chain).
    fn sni(
        &mut self,
        names: BTreeSet<String>,
        proxy: impl FnOnce(&mut ClusterRefs) -> TcpProxy,
        refs: &mut ClusterRefs,
    ) {
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| !self.taken.contains(n))
            .collect();
        if names.is_empty() {
            return;
        }
        self.taken.extend(names.iter().cloned());
        self.chains.push(tcp_chain(names, proxy(refs)));
    }

    /// The chain without server names, unless there is one already.
    fn catch_all(
        &mut self,
        proxy: impl FnOnce(&mut ClusterRefs) -> TcpProxy,
        refs: &mut ClusterRefs,
    ) {
        if !self.catch_all {
            self.catch_all = true;
            self.chains.push(tcp_chain(Vec::new(), proxy(refs)));
        }
    }

    /// SNI chains first, the catch-all last (Envoy picks by specificity; this is for readers).
    fn finish(mut self) -> Vec<FilterChain> {
        self.chains.sort_by_key(|c| c.filter_chain_match.is_none());
        self.chains
    }
}

/// The first `tcp` route of `vs` that applies here (one without matches always does).
fn applicable_tcp_route<'v>(
    vs: &'v Resource<VirtualService>,
    scope: L4Scope<'_>,
) -> Option<&'v TcpRoute> {
    vs.spec.tcp.iter().find(|r| {
        r.matches.is_empty()
            || r.matches.iter().any(|m| {
                l4_match_applies(
                    &m.gateways,
                    m.port,
                    &m.source_labels,
                    &m.source_namespace,
                    vs,
                    scope,
                )
            })
    })
}

/// The SNI names of a `tls` route's matches that apply here, each through `on_server`.
fn tls_route_names(
    vs: &Resource<VirtualService>,
    route: &TlsRoute,
    scope: L4Scope<'_>,
    on_server: impl Fn(String) -> BTreeSet<String>,
) -> BTreeSet<String> {
    route
        .matches
        .iter()
        .filter(|m| {
            l4_match_applies(
                &m.gateways,
                m.port,
                &m.source_labels,
                &m.source_namespace,
                vs,
                scope,
            )
        })
        .flat_map(|m| m.sni_hosts.iter())
        .flat_map(|sni| on_server(resolve_sni(sni)))
        .collect()
}

/// The tcp_proxy of a route's destinations (split stat prefix `<vs name>.<vs namespace>`).
fn route_proxy(
    vs: &Resource<VirtualService>,
    route: &[RouteDestination],
    scope: L4Scope<'_>,
    refs: &mut ClusterRefs,
) -> TcpProxy {
    let ns = vs.meta.namespace.as_str();
    let targets = destinations(route, ns, scope, refs);
    with_pool_timeouts(tcp_proxy(&format!("{}.{ns}", vs.meta.name), targets), scope)
}

/// As Istio for a single destination: `tunneling_config` from the DestinationRule's `tunnel`;
/// `idle_timeout` = its
/// `connectionPool.tcp.idleTimeout` (absent: Envoy's 1 h) and `max_downstream_connection_duration`
/// = its `tcp.maxConnectionDuration`. A weighted split keeps the defaults (Istio does too).
fn with_pool_timeouts(mut proxy: TcpProxy, scope: L4Scope<'_>) -> TcpProxy {
    let Some(ClusterSpecifier::Cluster(name)) = &proxy.cluster_specifier else {
        return proxy;
    };
    let mut parts = name.splitn(4, '|');
    let (Some("outbound"), Some(port), Some(subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return proxy;
    };
    let Ok(port) = port.parse::<u32>() else {
        return proxy;
    };
    if let Some(t) = crate::cluster::tunnel(scope.ctx, host, subset) {
        // Istio's `tunnelingconfig`: CONNECT (or POST) to `targetHost:targetPort` through the
        // destination, which must be an HTTP proxy.
        proxy.tunneling_config = Some(TunnelingConfig {
            hostname: format!("{}:{}", t.target_host, t.target_port),
            use_post: t.protocol.eq_ignore_ascii_case("POST"),
            ..Default::default()
        });
    }
    let pool = crate::cluster::connection_pool(scope.ctx, host, port, subset);
    let Some(tcp) = pool.as_ref().and_then(|p| p.tcp.as_ref()) else {
        return proxy;
    };
    let proto = |d: Option<&trellis_config::Duration>| {
        d.and_then(|d| d.get()).map(|d| ProtoDuration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        })
    };
    if let Some(idle) = proto(tcp.idle_timeout.as_ref()) {
        proxy.idle_timeout = Some(idle);
    }
    proxy.max_downstream_connection_duration = proto(tcp.max_connection_duration.as_ref());
    proxy
}

/// Whether a VirtualService's hosts meet the server's hosts it may bind (`ns/host` forms).
fn vs_on_server(vs: &Resource<VirtualService>, bound: &Bound<'_>) -> bool {
    let ns = vs.meta.namespace.as_str();
    bound.server.hosts.iter().any(|server_host| {
        let (allowed_ns, pattern) = split_server_host(server_host, bound.namespace);
        (allowed_ns == "*" || allowed_ns == ns)
            && vs
                .spec
                .hosts
                .iter()
                .any(|h| host_intersection(&resolve_host(h, ns), pattern).is_some())
    })
}

/// SNI hosts are names as the client sends them: never expanded with a namespace.
fn resolve_sni(sni: &str) -> String {
    sni.to_ascii_lowercase()
}

/// The SNI host intersected with each server host (the more specific of the two).
fn sni_on_server(sni: &str, bound: &Bound<'_>) -> BTreeSet<String> {
    bound
        .server
        .hosts
        .iter()
        .filter_map(|h| host_intersection(sni, split_server_host(h, bound.namespace).1))
        .map(|h| h.to_ascii_lowercase())
        .collect()
}

/// Per-match conditions of `tcp`/`tls` matches that select proxies, gateways and ports.
fn l4_match_applies(
    gateways: &[String],
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    source_namespace: &str,
    vs: &Resource<VirtualService>,
    scope: L4Scope<'_>,
) -> bool {
    let ns = vs.meta.namespace.as_str();
    let gateway_ok = if gateways.is_empty() {
        binds(&vs.spec.gateways, ns, scope.gateway)
    } else {
        binds(gateways, ns, scope.gateway)
    };
    let port_ok = port.is_none_or(|p| p == scope.port);
    let labels = &scope.ctx.proxy.labels;
    let source_ok = source_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
    let ns_ok = source_namespace.is_empty() || source_namespace == scope.ctx.proxy.namespace;
    gateway_ok && port_ok && source_ok && ns_ok
}

/// `(cluster, weight)` per destination: weight-0 destinations of a split are left out; when all
/// weights are 0 (or unset) the split is equal.
fn destinations(
    route: &[RouteDestination],
    ns: &str,
    scope: L4Scope<'_>,
    refs: &mut ClusterRefs,
) -> Vec<(String, u32)> {
    let several = route.len() > 1;
    let all_zero = route.iter().all(|d| d.weight <= 0);
    let scope = Scope {
        ctx: scope.ctx,
        gateway: scope.gateway,
        port: scope.port,
    };
    let mut out = Vec::new();
    for d in route {
        let weight = if all_zero {
            1
        } else {
            u32::try_from(d.weight).unwrap_or(0)
        };
        if several && weight == 0 {
            continue;
        }
        out.push((
            destination_cluster(&d.destination, ns, scope, refs),
            weight.max(1),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_destination_is_a_cluster_several_are_a_split() {
        let one = tcp_proxy("vs.ns", vec![("outbound|9000|v1|echo".into(), 100)]);
        assert_eq!(one.stat_prefix, "outbound|9000|v1|echo");
        assert!(matches!(
            one.cluster_specifier,
            Some(ClusterSpecifier::Cluster(ref c)) if c == "outbound|9000|v1|echo"
        ));
        let two = tcp_proxy("vs.ns", vec![("a".into(), 80), ("b".into(), 20)]);
        assert_eq!(two.stat_prefix, "vs.ns");
        let Some(ClusterSpecifier::WeightedClusters(w)) = two.cluster_specifier else {
            panic!("expected weighted clusters");
        };
        let got: Vec<(&str, u32)> = w
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect();
        assert_eq!(got, vec![("a", 80), ("b", 20)]);
    }

    /// Gateway listeners compiled from `yaml` (a `gw` Gateway selecting `istio: ingressgateway`
    /// plus services and VirtualServices), rendered as JSON.
    fn gateway_json(yaml: &str) -> Vec<serde_json::Value> {
        let loaded = trellis_config::load_str("t.yaml", yaml).expect("config loads");
        let proxy = crate::ProxyIdentity {
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..Default::default()
        };
        let res = crate::compile(&loaded.snapshot, &loaded.registry, &proxy);
        res.listeners.iter().map(crate::json::listener).collect()
    }

    const SERVICES: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [a.example.com, b.example.com, echo.example.com]\n  resolution: STATIC\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  endpoints: [{address: 10.0.0.1}]\n";

    fn gateway(servers: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}---\n{SERVICES}"
        )
    }

    fn tls_vs(name: &str, sni: &[&str], host: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tls:\n  - match: [{{sniHosts: [{}]}}]\n    route: [{{destination: {{host: {host}}}}}]\n",
            sni.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn server_names(listener: &serde_json::Value) -> Vec<Vec<String>> {
        listener["filterChains"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                c["filterChainMatch"]["serverNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| n.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn sni_hosts_meet_server_hosts_and_each_name_has_one_chain() {
        let yaml = gateway(
            "  - port: {number: 8443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: [\"*.example.com\"]\n",
        ) + &tls_vs("first", &["a.example.com", "other.org"], "a.example.com")
            + &tls_vs(
                "second",
                &["a.example.com", "b.example.com"],
                "b.example.com",
            );
        let listeners = gateway_json(&yaml);
        assert_eq!(listeners.len(), 1, "{listeners:?}");
        // `other.org` is not on the server; `a.example.com` stays with the first VirtualService.
        assert_eq!(
            server_names(&listeners[0]),
            vec![
                vec!["a.example.com".to_string()],
                vec!["b.example.com".to_string()]
            ]
        );
        assert_eq!(
            listeners[0]["listenerFilters"][0]["name"],
            TLS_INSPECTOR_FILTER
        );
    }

    #[test]
    fn terminating_tls_and_ports_with_http_servers_get_no_l4_listener() {
        let yaml = gateway(
            "  - port: {number: 8443, name: tls, protocol: TLS}\n    tls: {mode: SIMPLE, credentialName: c}\n    hosts: [\"*\"]\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n  - port: {number: 8080, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n",
        ) + &tls_vs("v", &["a.example.com"], "a.example.com");
        let listeners = gateway_json(&yaml);
        let names: Vec<&str> = listeners
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["0.0.0.0_8080"]);
        assert_eq!(
            listeners[0]["filterChains"][0]["filters"][0]["name"],
            crate::listener::HCM_FILTER
        );
    }

    #[test]
    fn tcp_route_applies_by_port_and_source_labels() {
        let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: t}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tcp:\n  - match: [{port: 9999}]\n    route: [{destination: {host: a.example.com}}]\n  - match: [{sourceLabels: {istio: egressgateway}}]\n    route: [{destination: {host: b.example.com}}]\n  - match: [{port: 31400}]\n    route: [{destination: {host: echo.example.com}}]\n";
        let yaml = gateway(
            "  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n  - port: {number: 31401, name: tcp2, protocol: TCP}\n    hosts: [\"*\"]\n",
        ) + vs;
        let listeners = gateway_json(&yaml);
        // 31400: the third route (wrong port, wrong labels before it); 31401: nothing applies.
        assert_eq!(listeners.len(), 1, "{listeners:?}");
        let proxy = &listeners[0]["filterChains"][0]["filters"][0]["typedConfig"];
        assert_eq!(
            proxy["cluster"], "outbound|443||echo.example.com",
            "{proxy}"
        );
    }

    #[test]
    fn sidecars_leave_their_own_services_and_privileged_ports_alone() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.example.com]\n  resolution: STATIC\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  workloadSelector: {labels: {app: db}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  resolution: STATIC\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  endpoints: [{address: 10.0.0.9}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cache}\nspec:\n  hosts: [cache.example.com]\n  resolution: STATIC\n  ports: [{number: 6379, name: tcp, protocol: TCP}]\n  endpoints: [{address: 10.0.0.8}]\n";
        let loaded = trellis_config::load_str("t.yaml", yaml).expect("config loads");
        let proxy = crate::ProxyIdentity {
            role: crate::Role::Sidecar,
            labels: [("app".to_string(), "db".to_string())].into(),
            ..Default::default()
        };
        let res = crate::compile(&loaded.snapshot, &loaded.registry, &proxy);
        let mut names: Vec<&str> = res.listeners.iter().map(|l| l.name.as_str()).collect();
        names.sort();
        // db (5432) is this workload's own service; 443 is privileged; cache gets its port.
        assert_eq!(
            names,
            vec!["0.0.0.0_6379", "virtualInbound", "virtualOutbound"]
        );
    }

    #[test]
    fn tls_inspector_only_when_a_chain_matches_sni() {
        let plain = l4_listener(
            "l",
            "127.0.0.1",
            1,
            TrafficDirection::Outbound,
            vec![tcp_chain(Vec::new(), tcp_proxy("x", vec![("c".into(), 1)]))],
        );
        assert!(plain.listener_filters.is_empty());
        let sni = l4_listener(
            "l",
            "127.0.0.1",
            1,
            TrafficDirection::Outbound,
            vec![tcp_chain(
                vec!["a.example.com".into()],
                tcp_proxy("x", vec![("c".into(), 1)]),
            )],
        );
        assert_eq!(sni.listener_filters[0].name, TLS_INSPECTOR_FILTER);
    }
}
