//! Clusters and ClusterLoadAssignments: Istio's `outbound|port|subset|host` clusters from the
//! registry and DestinationRules, and the STATIC inbound clusters of a sidecar.
//!
//! Owns cluster naming, load-balancer policy resolution (subset > port > top level), upstream
//! protocol selection and endpoint metadata. It does not decide *which* clusters a proxy needs:
//! `gateway.rs` and `sidecar.rs` pass in the service ports they reference.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthStatus, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpProtocolOptions, Locality, Metadata,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::{
    Duration, ListValue, Struct, UInt32Value, Value as PbValue, value::Kind,
};
use envoy_types::util::pack_any;

use trellis_config::{
    ConnectionPoolSettings, DestinationRule, Endpoint, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, Protocol, Registry, Resolution, Resource, Service, ServicePort, SimpleLb,
    Subset, TunnelSettings, resolve_host,
};

use crate::lb;
use crate::listener::{ads, seconds, socket_address};
use crate::route::{ClusterRefs, host_matches};
use crate::{Cluster, ClusterLoadAssignment, Context};

/// Key of `typed_extension_protocol_options` for upstream HTTP settings.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Istio's default `connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: i64 = 10;
/// Upstream connection idle timeout.
pub const UPSTREAM_IDLE_TIMEOUT_SECS: i64 = 3600;

/// How a cluster finds its endpoints.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// From a ClusterLoadAssignment of the same name (EDS over ADS).
    Eds,
    /// Inline endpoints, resolved by DNS.
    StrictDns(ClusterLoadAssignment),
    /// Inline IP endpoints.
    Static(ClusterLoadAssignment),
}

/// Everything that varies between the clusters we emit.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub http2: bool,
    pub metadata: Option<Metadata>,
}

/// One upstream endpoint before grouping by locality.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    /// IP address or, for STRICT_DNS clusters, a hostname.
    pub address: String,
    pub port: u32,
    pub locality: Locality,
    pub weight: u32,
    pub metadata: Option<Metadata>,
    /// Envoy priority of the endpoint's group (0 = highest; set by `lb.rs`).
    pub priority: u32,
}

/// `outbound|<port>|<subset>|<host>`.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|<port>||`.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

pub fn cluster(spec: ClusterSpec) -> Cluster {
    let (kind, eds, load_assignment) = match spec.discovery {
        Discovery::Eds => {
            let eds = EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: spec.name.clone(),
            };
            (DiscoveryType::Eds, Some(eds), None)
        }
        Discovery::StrictDns(cla) => (DiscoveryType::StrictDns, None, Some(cla)),
        Discovery::Static(cla) => (DiscoveryType::Static, None, Some(cla)),
    };
    Cluster {
        name: spec.name,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        eds_cluster_config: eds,
        load_assignment,
        connect_timeout: Some(spec.connect_timeout),
        lb_policy: spec.lb_policy as i32,
        typed_extension_protocol_options: [(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            pack_any(upstream_protocol(spec.http2)),
        )]
        .into(),
        metadata: spec.metadata,
        ..Default::default()
    }
}

fn upstream_protocol(http2: bool) -> HttpProtocolOptions {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    let config = if http2 {
        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else {
        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpProtocolOptions {
            idle_timeout: Some(seconds(UPSTREAM_IDLE_TIMEOUT_SECS)),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(config),
                },
            ),
        ),
        ..Default::default()
    }
}

/// Groups endpoints by locality (sorted by locality, then address and port).
///
/// Each group's `lb_endpoints` is allocated to its final length (growing it by pushes would leave
/// up to half of a 424-byte `LbEndpoint` per slot unused, about 1.2 MiB for 5,000 endpoints).
pub fn load_assignment(name: &str, mut endpoints: Vec<EndpointSpec>) -> ClusterLoadAssignment {
    let key = |e: &EndpointSpec| {
        let l = &e.locality;
        (
            e.priority,
            l.region.clone(),
            l.zone.clone(),
            l.sub_zone.clone(),
        )
    };
    endpoints.sort_by(|a, b| (key(a), &a.address, a.port).cmp(&(key(b), &b.address, b.port)));
    endpoints.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    // Sorted by locality, so each group is one run.
    let runs: Vec<usize> = endpoints
        .chunk_by(|a, b| a.locality == b.locality && a.priority == b.priority)
        .map(<[EndpointSpec]>::len)
        .collect();
    let mut rest = endpoints.into_iter().peekable();
    let mut localities = Vec::with_capacity(runs.len());
    for run in runs {
        let priority = rest.peek().map_or(0, |e| e.priority);
        let locality = rest
            .peek()
            .map(|e| e.locality.clone())
            .filter(|l| *l != Locality::default());
        let mut lb_endpoints = Vec::with_capacity(run);
        lb_endpoints.extend(rest.by_ref().take(run).map(lb_endpoint));
        localities.push(LocalityLbEndpoints {
            locality,
            lb_endpoints,
            priority,
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: localities,
        ..Default::default()
    }
}

fn lb_endpoint(e: EndpointSpec) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(&e.address, e.port)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: e.weight.max(1),
        }),
        metadata: e.metadata,
        health_status: HealthStatus::Healthy as i32,
    }
}

pub fn string_value(s: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

pub fn list_value(values: Vec<PbValue>) -> PbValue {
    PbValue {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

pub fn struct_value(fields: Struct) -> PbValue {
    PbValue {
        kind: Some(Kind::StructValue(fields)),
    }
}

/// A `Struct` of string fields, leaving out empty values.
pub fn string_struct(fields: &[(&str, &str)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), string_value(v)))
            .collect(),
    }
}

/// `Metadata` with `filter_metadata["istio"]` = `fields`.
pub fn istio_metadata(fields: Struct) -> Metadata {
    Metadata {
        filter_metadata: [("istio".to_string(), fields)].into(),
        ..Default::default()
    }
}

/// `"region/zone/subzone"` (any suffix may be missing) as an Envoy locality.
pub fn parse_locality(s: &str) -> Locality {
    let mut parts = s.splitn(3, '/');
    let mut next = || parts.next().unwrap_or("").to_string();
    Locality {
        region: next(),
        zone: next(),
        sub_zone: next(),
    }
}

/// The parts of a DestinationRule traffic policy that apply to one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
struct Policy {
    load_balancer: Option<LoadBalancerSettings>,
    connection_pool: Option<ConnectionPoolSettings>,
    outlier_detection: Option<OutlierDetection>,
}

/// Outbound clusters and their load assignments for the referenced service ports: each
/// `(host, port, subset)` in `refs`, plus every DestinationRule subset of each `(host, port)`.
pub fn outbound(
    ctx: &Context<'_>,
    refs: &ClusterRefs,
) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let wanted = wanted(ctx, refs);
    let mut clusters = Vec::with_capacity(wanted.len());
    let mut assignments = Vec::with_capacity(wanted.len());
    for (host, port, subset) in &wanted {
        let (cluster, cla) = outbound_cluster(ctx, ctx.registry.get(host), host, *port, subset);
        clusters.push(cluster);
        assignments.extend(cla);
    }
    (clusters, assignments)
}

/// [`outbound`] from an owned registry (`ctx.registry` is not read): each service is dropped as
/// soon as the clusters of its host are built, so the registry shrinks while the output grows.
pub fn outbound_owned(
    ctx: &Context<'_>,
    registry: Registry,
    refs: &ClusterRefs,
) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let wanted = wanted(ctx, refs);
    let mut services = registry.services;
    let mut clusters = Vec::with_capacity(wanted.len());
    let mut assignments = Vec::with_capacity(wanted.len());
    // `wanted` is sorted by host: all clusters of a host are built in one run.
    let mut current: Option<(&str, Option<Service>)> = None;
    for (host, port, subset) in &wanted {
        if current.as_ref().is_none_or(|(h, _)| *h != host.as_str()) {
            current = Some((host.as_str(), services.remove(host)));
        }
        let service = current.as_ref().and_then(|(_, s)| s.as_ref());
        let (cluster, cla) = outbound_cluster(ctx, service, host, *port, subset);
        clusters.push(cluster);
        assignments.extend(cla);
    }
    (clusters, assignments)
}

/// `refs`, plus the default (no subset) cluster and every DestinationRule subset of each
/// referenced `(host, port)`.
fn wanted(ctx: &Context<'_>, refs: &ClusterRefs) -> ClusterRefs {
    let mut wanted: ClusterRefs = refs.clone();
    for (host, port, _) in refs {
        wanted.insert((host.clone(), *port, String::new()));
        if let Some(dr) = destination_rule(ctx, host) {
            for subset in &dr.spec.subsets {
                wanted.insert((host.clone(), *port, subset.name.clone()));
            }
        }
    }
    wanted
}

/// One `outbound|port|subset|host` cluster (and its assignment when EDS); `service` is the
/// registry's service for `host`.
fn outbound_cluster(
    ctx: &Context<'_>,
    service: Option<&Service>,
    host: &str,
    port: u32,
    subset: &str,
) -> (Cluster, Option<ClusterLoadAssignment>) {
    let name = outbound_name(port, subset, host);
    let dr = destination_rule(ctx, host);
    let subset_rule = dr.and_then(|d| d.spec.subsets.iter().find(|s| s.name == subset));
    let policy = effective_policy(dr.map(|d| &d.spec), subset_rule, port);
    let service_port = service.and_then(|s| s.port(port));
    let labels = subset_rule.map(|s| s.labels.clone()).unwrap_or_default();
    // A subset no DestinationRule defines selects nothing (Istio: no such cluster -> 503).
    let unknown_subset = !subset.is_empty() && subset_rule.is_none();
    let lb = policy.load_balancer.as_ref();
    let outlier = policy.outlier_detection.as_ref();
    let endpoints = match (service, service_port) {
        (Some(s), Some(p)) if !unknown_subset => {
            let (mut specs, from) = endpoints(s, p, &labels);
            lb::apply_failover_priority(&mut specs, &from, ctx.proxy, lb, outlier.is_some());
            specs
        }
        _ => Vec::new(),
    };
    let dns = service.is_some_and(|s| s.resolution == Resolution::Dns);
    let (discovery, cla) = if dns {
        let endpoints = if endpoints.is_empty() && !unknown_subset && service_port.is_some() {
            let target = service_port.and_then(|p| p.target_port).unwrap_or(port);
            vec![dns_host_endpoint(host, target)]
        } else {
            endpoints
        };
        let mut cla = load_assignment(&name, endpoints);
        lb::apply_locality(&mut cla, ctx.proxy, lb, outlier.is_some());
        (Discovery::StrictDns(cla), None)
    } else {
        let mut cla = load_assignment(&name, endpoints);
        lb::apply_locality(&mut cla, ctx.proxy, lb, outlier.is_some());
        (Discovery::Eds, Some(cla))
    };
    let http2 = service_port.is_some_and(|p| {
        matches!(
            p.protocol,
            Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }) || upgrades_to_h2(&policy);
    let spec = ClusterSpec {
        name,
        discovery,
        lb_policy: lb_policy(&policy),
        connect_timeout: connect_timeout(&policy),
        http2,
        metadata: Some(cluster_metadata(
            host,
            service.map(|s| s.namespace.as_str()),
            subset,
        )),
    };
    let mut cluster = cluster(spec);
    if dns {
        crate::egress::apply_dns(ctx, &mut cluster);
    }
    lb::apply_cluster(&mut cluster, lb, outlier);
    let budget = crate::resilience::RetryBudgetSpec::for_host(ctx, host);
    crate::resilience::apply_connection_pool(&mut cluster, policy.connection_pool.as_ref(), budget);
    cluster.health_checks = crate::health::health_checks(ctx, host, port, subset, http2);
    let tls = crate::mtls::client_tls(dr.map(|d| &d.spec), subset_rule, port);
    let disabled = service.is_some_and(|s| {
        crate::peer_authentication::service_mode(ctx, &s.namespace)
            == crate::mtls::InboundMode::Disable
    });
    crate::mtls::apply_client_tls(&mut cluster, cla.as_ref(), host, port, tls, disabled);
    (cluster, cla)
}

/// The merged `loadBalancer` settings of cluster `outbound|port|subset|host` (for the route's
/// `hash_policy`).
pub fn load_balancer_for(
    ctx: &Context<'_>,
    host: &str,
    port: u32,
    subset: &str,
) -> Option<LoadBalancerSettings> {
    let dr = destination_rule(ctx, host);
    let subset_rule = dr.and_then(|d| d.spec.subsets.iter().find(|s| s.name == subset));
    effective_policy(dr.map(|d| &d.spec), subset_rule, port).load_balancer
}

fn dns_host_endpoint(host: &str, port: u32) -> EndpointSpec {
    EndpointSpec {
        address: host.to_string(),
        port,
        locality: Locality::default(),
        weight: 1,
        metadata: None,
        priority: 0,
    }
}

/// Registry endpoints of `service` whose labels include `labels`, on `port` (and, in the same
/// order, the registry endpoints they come from).
fn endpoints<'s>(
    service: &'s Service,
    port: &ServicePort,
    labels: &BTreeMap<String, String>,
) -> (Vec<EndpointSpec>, Vec<&'s Endpoint>) {
    let from: Vec<&Endpoint> = service
        .endpoints
        .iter()
        .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        .filter(|e| !e.address.starts_with("unix://"))
        .collect();
    let specs = from
        .iter()
        .map(|e| EndpointSpec {
            address: e.address.clone(),
            port: e.port_for(port),
            locality: parse_locality(&e.locality),
            weight: e.weight.max(1),
            metadata: Some(endpoint_metadata(e, &service.namespace)),
            priority: 0,
        })
        .collect();
    (specs, from)
}

/// `{"workload", "namespace", "app", "version"}` for the proxy's `destination_*` labels.
fn endpoint_metadata(e: &Endpoint, namespace: &str) -> Metadata {
    let label = |k: &str| e.labels.get(k).map(String::as_str).unwrap_or("");
    let app = e
        .labels
        .get("app")
        .or_else(|| e.labels.get("app.kubernetes.io/name"));
    let version = e
        .labels
        .get("version")
        .or_else(|| e.labels.get("app.kubernetes.io/version"));
    let mut metadata = istio_metadata(string_struct(&[
        ("workload", label(WORKLOAD_NAME_LABEL)),
        ("namespace", namespace),
        ("app", app.map(String::as_str).unwrap_or("")),
        ("version", version.map(String::as_str).unwrap_or("")),
    ]));
    crate::mtls::mark_endpoint(&e.labels, &mut metadata);
    metadata
}

/// Label naming an endpoint's workload (the registry has no workload names yet).
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// `{"services": [{"host", "name", "namespace"}], "subset"}`.
pub(crate) fn cluster_metadata(host: &str, namespace: Option<&str>, subset: &str) -> Metadata {
    let short = host
        .strip_suffix(KUBE_DOMAIN)
        .and_then(|h| h.split('.').next())
        .unwrap_or(host);
    let service = string_struct(&[
        ("host", host),
        ("name", short),
        ("namespace", namespace.unwrap_or("")),
    ]);
    let mut fields = Struct::default();
    fields
        .fields
        .insert("services".into(), list_value(vec![struct_value(service)]));
    if !subset.is_empty() {
        fields.fields.insert("subset".into(), string_value(subset));
    }
    istio_metadata(fields)
}

/// Suffix of Kubernetes service host names.
pub const KUBE_DOMAIN: &str = ".svc.cluster.local";

/// The DestinationRule for `host`: an exact host match first, then the most specific wildcard.
/// Short hosts resolve against the rule's namespace; `exportTo` is honoured best effort.
pub fn destination_rule<'a>(
    ctx: &'a Context<'_>,
    host: &str,
) -> Option<&'a Resource<DestinationRule>> {
    let visible = |dr: &&Resource<DestinationRule>| {
        let export = &dr.spec.export_to;
        export.is_empty()
            || export.iter().any(|e| {
                e == "*"
                    || e == &ctx.proxy.namespace
                    || (e == "." && dr.meta.namespace == ctx.proxy.namespace)
            })
    };
    let mut candidates: Vec<(usize, &Resource<DestinationRule>)> = ctx
        .snapshot
        .destination_rules
        .iter()
        .filter(visible)
        .filter_map(|dr| {
            let pattern = resolve_host(&dr.spec.host, &dr.meta.namespace);
            if pattern == host {
                Some((usize::MAX, dr))
            } else {
                host_matches(&pattern, host).then_some((pattern.len(), dr))
            }
        })
        .collect();
    // Most specific first; ties: the proxy's namespace, then the key.
    candidates.sort_by(|(la, a), (lb, b)| {
        let local = |r: &Resource<DestinationRule>| r.meta.namespace != ctx.proxy.namespace;
        lb.cmp(la)
            .then(local(a).cmp(&local(b)))
            .then(a.key().cmp(&b.key()))
    });
    candidates.first().map(|(_, dr)| *dr)
}

/// The merged `connectionPool` of the DestinationRule for `host` (and `subset`) at `port`.
pub fn connection_pool(
    ctx: &Context<'_>,
    host: &str,
    port: u32,
    subset: &str,
) -> Option<ConnectionPoolSettings> {
    let dr = destination_rule(ctx, host)?;
    let subset_rule = dr.spec.subsets.iter().find(|s| s.name == subset);
    effective_policy(Some(&dr.spec), subset_rule, port).connection_pool
}

/// The DestinationRule `tunnel` for `host` (the subset's, else the top level's).
pub fn tunnel(ctx: &Context<'_>, host: &str, subset: &str) -> Option<TunnelSettings> {
    let dr = destination_rule(ctx, host)?;
    let subset_rule = dr.spec.subsets.iter().find(|s| s.name == subset);
    subset_rule
        .and_then(|s| s.traffic_policy.as_ref()?.tunnel.clone())
        .or_else(|| dr.spec.traffic_policy.as_ref()?.tunnel.clone())
}

/// Istio's `MergeTrafficPolicies`: top level, replaced by its port-level settings, then the
/// subset's set fields, replaced by the subset's port-level settings.
fn effective_policy(dr: Option<&DestinationRule>, subset: Option<&Subset>, port: u32) -> Policy {
    let mut policy = Policy::default();
    let layers = [
        dr.and_then(|d| d.traffic_policy.as_ref()),
        subset.and_then(|s| s.traffic_policy.as_ref()),
    ];
    for layer in layers.into_iter().flatten() {
        if layer.load_balancer.is_some() {
            policy.load_balancer = layer.load_balancer.clone();
        }
        if layer.connection_pool.is_some() {
            policy.connection_pool = layer.connection_pool.clone();
        }
        if layer.outlier_detection.is_some() {
            policy.outlier_detection = layer.outlier_detection.clone();
        }
        let port_level = layer
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == port));
        if let Some(p) = port_level {
            policy.load_balancer = p.load_balancer.clone();
            policy.connection_pool = p.connection_pool.clone();
            policy.outlier_detection = p.outlier_detection.clone();
        }
    }
    policy
}

fn lb_policy(policy: &Policy) -> LbPolicy {
    match policy.load_balancer.as_ref().and_then(|lb| lb.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        // LEAST_CONN is Istio's old name for LEAST_REQUEST; PASSTHROUGH keeps the default.
        _ => LbPolicy::LeastRequest,
    }
}

fn connect_timeout(policy: &Policy) -> Duration {
    let configured = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_ref())
        .and_then(|d| d.get());
    match configured {
        Some(d) => Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        None => seconds(DEFAULT_CONNECT_TIMEOUT_SECS),
    }
}

fn upgrades_to_h2(policy: &Policy) -> bool {
    let http = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.http.as_ref());
    http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade)
}

/// `inbound|<port>||`: a STATIC cluster to the local application.
pub fn inbound(app_address: &str, port: u32, http2: bool) -> Cluster {
    let name = inbound_name(port);
    let endpoint = EndpointSpec {
        address: app_address.to_string(),
        port,
        locality: Locality::default(),
        weight: 1,
        metadata: None,
        priority: 0,
    };
    cluster(ClusterSpec {
        discovery: Discovery::Static(load_assignment(&name, vec![endpoint])),
        name,
        lb_policy: LbPolicy::LeastRequest,
        connect_timeout: seconds(DEFAULT_CONNECT_TIMEOUT_SECS),
        http2,
        metadata: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_config::{PortSelector, PortTrafficPolicy, TcpSettings, TrafficPolicy};

    fn lb(simple: SimpleLb) -> Option<LoadBalancerSettings> {
        Some(LoadBalancerSettings {
            simple: Some(simple),
            ..Default::default()
        })
    }

    fn timeout(d: &str) -> Option<ConnectionPoolSettings> {
        let tcp = TcpSettings {
            connect_timeout: Some(trellis_config::Duration(d.into())),
            ..Default::default()
        };
        Some(ConnectionPoolSettings {
            tcp: Some(tcp),
            ..Default::default()
        })
    }

    #[test]
    fn names_follow_istio() {
        assert_eq!(
            outbound_name(9080, "", "r.default.svc.cluster.local"),
            "outbound|9080||r.default.svc.cluster.local"
        );
        assert_eq!(outbound_name(9080, "v1", "r"), "outbound|9080|v1|r");
        assert_eq!(inbound_name(8000), "inbound|8000||");
    }

    #[test]
    fn locality_parts_may_be_missing() {
        let l = parse_locality("us-east1/us-east1-b/rack1");
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
            ("us-east1", "us-east1-b", "rack1")
        );
        assert_eq!(
            parse_locality("eu"),
            Locality {
                region: "eu".into(),
                ..Default::default()
            }
        );
        assert_eq!(parse_locality(""), Locality::default());
    }

    #[test]
    fn port_level_settings_replace_and_subsets_override() {
        let dr = DestinationRule {
            traffic_policy: Some(TrafficPolicy {
                load_balancer: lb(SimpleLb::RoundRobin),
                connection_pool: timeout("3s"),
                port_level_settings: vec![PortTrafficPolicy {
                    port: Some(PortSelector { number: 9090 }),
                    load_balancer: lb(SimpleLb::Random),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let top = effective_policy(Some(&dr), None, 8080);
        assert_eq!(lb_policy(&top), LbPolicy::RoundRobin);
        assert_eq!(connect_timeout(&top), seconds(3));
        let port = effective_policy(Some(&dr), None, 9090);
        assert_eq!(lb_policy(&port), LbPolicy::Random);
        assert_eq!(
            connect_timeout(&port),
            seconds(DEFAULT_CONNECT_TIMEOUT_SECS)
        );
        let subset = Subset {
            traffic_policy: Some(TrafficPolicy {
                load_balancer: lb(SimpleLb::Passthrough),
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = effective_policy(Some(&dr), Some(&subset), 8080);
        assert_eq!(lb_policy(&merged), LbPolicy::LeastRequest);
        assert_eq!(connect_timeout(&merged), seconds(3));
    }

    #[test]
    fn outlier_detection_layers_like_the_rest() {
        let od = |n: u32| {
            Some(OutlierDetection {
                consecutive_5xx_errors: Some(n),
                ..Default::default()
            })
        };
        let dr = DestinationRule {
            traffic_policy: Some(TrafficPolicy {
                outlier_detection: od(5),
                port_level_settings: vec![PortTrafficPolicy {
                    port: Some(PortSelector { number: 9090 }),
                    load_balancer: lb(SimpleLb::Random),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let five = |p: &Policy| {
            p.outlier_detection
                .as_ref()
                .and_then(|o| o.consecutive_5xx_errors)
        };
        assert_eq!(five(&effective_policy(Some(&dr), None, 8080)), Some(5));
        // Port-level settings replace the whole policy, outlier detection included.
        assert_eq!(five(&effective_policy(Some(&dr), None, 9090)), None);
        let subset = Subset {
            traffic_policy: Some(TrafficPolicy {
                outlier_detection: od(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            five(&effective_policy(Some(&dr), Some(&subset), 8080)),
            Some(2)
        );
        let plain = Subset::default();
        assert_eq!(
            five(&effective_policy(Some(&dr), Some(&plain), 8080)),
            Some(5)
        );
    }

    #[test]
    fn endpoints_group_by_locality_sorted() {
        let ep = |address: &str, locality: &str| EndpointSpec {
            address: address.into(),
            port: 80,
            locality: parse_locality(locality),
            weight: 0,
            metadata: None,
            priority: 0,
        };
        let cla = load_assignment(
            "c",
            vec![
                ep("10.0.0.2", "b"),
                ep("10.0.0.1", "a"),
                ep("10.0.0.3", "b"),
            ],
        );
        assert_eq!(cla.endpoints.len(), 2);
        assert_eq!(
            cla.endpoints[0]
                .locality
                .as_ref()
                .map(|l| l.region.as_str()),
            Some("a")
        );
        assert_eq!(cla.endpoints[1].lb_endpoints.len(), 2);
        assert_eq!(
            cla.endpoints[1].lb_endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
    }
}
