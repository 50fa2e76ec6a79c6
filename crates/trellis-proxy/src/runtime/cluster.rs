//! Clusters for the hot path: endpoints with weights and labels, the balancer, the upstream
//! protocol and the connection pool. Built from a CDS `Cluster` plus its `ClusterLoadAssignment`;
//! the pool and balancer state carry over from the previous snapshot by cluster name and
//! endpoint address. Owns no sockets itself (the pool opens them lazily on first use).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster as XCluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
    cluster::LbPolicy as XLb,
    cluster::common_lb_config::LocalityConfigSpecifier as LocalitySpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{
    Metadata, address::Address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use http::uri::Authority;
use prost::Message;

use super::balancer::{Balancer, BalancerState, EndpointState, LbPolicy};
use super::circuit::{CircuitState, Limits};
use super::hash::HashTable;
use super::health::HealthCheckConfig;
use super::locality::{SlowStart, Topology};
use super::outlier::{EndpointHealth, Outcome, OutlierConfig, OutlierStats};
use super::pool::{EndpointPool, Keepalive, PoolOptions, TCP_KEEPALIVE};
use super::{RuntimeError, duration, istio_string};

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default `healthy_panic_threshold` (percent).
const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (gRPC, `http2` ports).
    Http2,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub endpoints: Vec<Endpoint>,
    pub balancer: Balancer,
    pub service: ServiceLabels,
    /// Circuit breaker thresholds and retry budget (`circuit_breakers`).
    pub limits: Limits,
    /// Counters for `limits` and the cluster's upstream stats, carried over by name.
    pub circuit: Arc<CircuitState>,
    balancer_state: Arc<BalancerState>,
    /// `outlier_detection`, when set.
    pub outlier: Option<OutlierConfig>,
    pub outlier_stats: Arc<OutlierStats>,
    /// `common_lb_config.healthy_panic_threshold` (percent).
    pub panic_threshold: f64,
    pub topology: Topology,
    /// RING_HASH / MAGLEV table over `endpoints`.
    pub hash_table: Option<HashTable>,
    /// Active health check (`health_checks[0]`), run by `health::HealthCheckers`.
    pub health_check: Option<Arc<HealthCheckConfig>>,
    /// ORIGINAL_DST (`PassthroughCluster`): each request picks its destination.
    pub original_dst: Option<Arc<OriginalDst>>,
}

/// An ORIGINAL_DST cluster's template: one STATIC cluster per destination address is built
/// from it on first use and kept (bounded) for the connections it pools.
#[derive(Debug)]
pub struct OriginalDst {
    /// `original_dst_lb_config.use_http_header`: `x-envoy-original-dst-host` names it.
    pub use_http_header: bool,
    template: XCluster,
    identity: Arc<crate::security::IdentityStore>,
    dns: Arc<crate::dns::Resolver>,
    by_addr: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<Cluster>>>,
}

/// Destinations an ORIGINAL_DST cluster keeps before it starts over.
const ORIGINAL_DST_MAX: usize = 1024;

impl OriginalDst {
    /// The cluster toward `addr` (same name, settings and TLS as the template).
    pub fn cluster_for(&self, addr: SocketAddr) -> Result<Arc<Cluster>, RuntimeError> {
        let mut cache = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&addr) {
            return Ok(Arc::clone(c));
        }
        use envoy_types::pb::envoy::config::core::v3::{SocketAddress, socket_address};
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint as XEndpoint, LbEndpoint, LocalityLbEndpoints,
        };
        let mut c = self.template.clone();
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        c.lb_policy = XLb::LeastRequest as i32;
        c.lb_config = None;
        let address = envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        };
        c.load_assignment = Some(ClusterLoadAssignment {
            cluster_name: c.name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(XEndpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let compiled = Arc::new(Cluster::compile(&c, None, None, &self.identity, &self.dns)?);
        if cache.len() >= ORIGINAL_DST_MAX {
            cache.clear();
        }
        cache.insert(addr, Arc::clone(&compiled));
        Ok(compiled)
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, precomputed for upstream URIs.
    pub authority: Authority,
    pub weight: u32,
    pub locality: Locality,
    pub workload: WorkloadLabels,
    pub state: Arc<EndpointState>,
    /// Outlier and health-check verdicts (carried over with the address).
    pub health: Arc<EndpointHealth>,
    /// Envoy priority of the endpoint's locality group (0 is tried first).
    pub priority: u32,
    /// The locality group's `load_balancing_weight` (1 when unset).
    pub locality_weight: u32,
    /// Connections to `addr` (carried over with the address while the settings match).
    pub pool: Arc<EndpointPool>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// `destination_service*` labels, from `metadata.filter_metadata["istio"].services[0]`.
#[derive(Debug, Clone)]
pub struct ServiceLabels {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// `destination_workload*` labels, from the endpoint's `filter_metadata["istio"]`.
#[derive(Debug, Clone)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

impl Cluster {
    /// Compile one cluster; `prev` is the same-named cluster of the running snapshot.
    pub fn compile(
        c: &XCluster,
        assignment: Option<&ClusterLoadAssignment>,
        prev: Option<&Cluster>,
        identity: &Arc<crate::security::IdentityStore>,
        dns: &Arc<crate::dns::Resolver>,
    ) -> Result<Cluster, RuntimeError> {
        let err = |field: &str, reason: String| RuntimeError::Cluster {
            name: c.name.clone(),
            field: field.to_string(),
            reason,
        };
        let policy = match XLb::try_from(c.lb_policy) {
            Ok(XLb::RoundRobin) => LbPolicy::RoundRobin,
            // ORIGINAL_DST (only): one endpoint per destination (`OriginalDst`).
            Ok(XLb::ClusterProvided)
                if c.cluster_discovery_type
                    == Some(ClusterDiscoveryType::Type(
                        DiscoveryType::OriginalDst as i32,
                    )) =>
            {
                LbPolicy::LeastRequest
            }
            Ok(XLb::LeastRequest) => LbPolicy::LeastRequest,
            // Hash policies pick at random when a request has no hash (as Envoy).
            Ok(XLb::Random | XLb::RingHash | XLb::Maglev) => LbPolicy::Random,
            _ => {
                return Err(err(
                    "lb_policy",
                    format!("policy {} is not supported", c.lb_policy),
                ));
            }
        };
        let connect_timeout = c
            .connect_timeout
            .as_ref()
            .map_or(DEFAULT_CONNECT_TIMEOUT, duration);
        let (protocol, idle, per_connection, max_connection_duration, max_concurrent_streams) =
            upstream_options(c).map_err(|why| err("typed_extension_protocol_options", why))?;
        #[allow(deprecated)] // the contract names the cluster-level field
        let idle_timeout = idle
            .or_else(|| {
                c.common_http_protocol_options
                    .as_ref()?
                    .idle_timeout
                    .as_ref()
                    .map(duration)
            })
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let kind = match &c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).ok(),
            None => Some(DiscoveryType::Static),
            Some(ClusterDiscoveryType::ClusterType(_)) => None,
        };
        let mut original_dst = None;
        let (assignment, resolve_dns) = match kind {
            Some(DiscoveryType::Eds) => (assignment, false),
            Some(DiscoveryType::Static) => (c.load_assignment.as_ref(), false),
            Some(DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => {
                (c.load_assignment.as_ref(), true)
            }
            Some(DiscoveryType::OriginalDst) => {
                use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
                let use_http_header = matches!(
                    &c.lb_config,
                    Some(LbConfig::OriginalDstLbConfig(o)) if o.use_http_header
                );
                original_dst = Some(Arc::new(OriginalDst {
                    use_http_header,
                    template: c.clone(),
                    identity: Arc::clone(identity),
                    dns: Arc::clone(dns),
                    by_addr: Default::default(),
                }));
                (None, false)
            }
            _ => {
                return Err(err(
                    "type",
                    "only EDS, STATIC, STRICT_DNS and ORIGINAL_DST clusters are supported".into(),
                ));
            }
        };
        let limits = Limits::from_xds(c.circuit_breakers.as_ref());
        let circuit = prev.map(|p| Arc::clone(&p.circuit)).unwrap_or_default();
        let keepalive = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref());
        let secs = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>| {
            v.map(|v| Duration::from_secs(u64::from(v.value.max(1))))
        };
        let pools = PoolSettings {
            options: PoolOptions {
                protocol,
                connect_timeout,
                idle_timeout,
                max_requests_per_connection: per_connection,
                max_connection_duration,
                max_concurrent_streams,
                max_connections: limits.max_connections,
                max_pending_requests: limits.max_pending_requests,
                keepalive: Keepalive {
                    time: secs(keepalive.and_then(|k| k.keepalive_time.as_ref()))
                        .unwrap_or(TCP_KEEPALIVE),
                    interval: secs(keepalive.and_then(|k| k.keepalive_interval.as_ref())),
                    probes: keepalive.and_then(|k| k.keepalive_probes.map(|p| p.value)),
                },
            },
            circuit: Arc::clone(&circuit),
            sockets: crate::tls::upstream::TransportSockets::compile(c, identity)
                .map_err(|(f, why)| err(&f, why))?,
        };
        let dns = resolve_dns.then(|| DnsSettings::from_xds(c, dns));
        let endpoints = match assignment {
            Some(a) => endpoints(a, dns.as_ref(), prev, &pools).map_err(|(f, why)| err(&f, why))?,
            None => Vec::new(),
        };
        let service = ServiceLabels::from_metadata(c.metadata.as_ref());
        let balancer_state = prev
            .map(|p| Arc::clone(&p.balancer_state))
            .unwrap_or_default();
        let balancer = Balancer::new(
            policy,
            endpoints.iter().map(|e| e.weight).collect(),
            Arc::clone(&balancer_state),
        );
        let outlier = c.outlier_detection.as_ref().map(OutlierConfig::from_xds);
        let outlier_stats = prev
            .map(|p| Arc::clone(&p.outlier_stats))
            .unwrap_or_default();
        // Endpoints that left the cluster no longer count as ejected.
        let ejected = endpoints.iter().filter(|e| e.health.ejected_now()).count();
        outlier_stats
            .ejected
            .store(ejected as i64, std::sync::atomic::Ordering::Relaxed);
        let common = c.common_lb_config.as_ref();
        let panic_threshold = common
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map_or(DEFAULT_PANIC_THRESHOLD, |p| p.value.clamp(0.0, 100.0));
        let locality_weighted = common.is_some_and(|l| {
            matches!(
                l.locality_config_specifier,
                Some(LocalitySpecifier::LocalityWeightedLbConfig(_))
            )
        });
        let mut topology = Topology::build(
            &endpoints,
            locality_weighted,
            SlowStart::from_lb_config(c.lb_config.as_ref()),
        );
        topology.add_balancers(&endpoints, policy, &balancer_state);
        let hash_table = hash_table(c, &endpoints);
        let health_check = HealthCheckConfig::from_xds(&c.name, &c.health_checks)
            .map_err(|why| err("health_checks", why))?
            .map(Arc::new);
        Ok(Cluster {
            name: c.name.as_str().into(),
            protocol,
            connect_timeout,
            idle_timeout,
            endpoints,
            balancer,
            service,
            limits,
            circuit,
            balancer_state,
            outlier,
            outlier_stats,
            panic_threshold,
            topology,
            hash_table,
            health_check,
            original_dst,
        })
    }

    /// Pick a healthy endpoint: by priority and locality, then with the cluster's balancer, or
    /// by `hash` on RING_HASH / MAGLEV clusters.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Endpoint> {
        let i = super::locality::pick(self, hash)?;
        self.endpoints.get(i)
    }

    /// Tell the outlier detector how an attempt on `endpoint` ended.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        if let Some(cfg) = &self.outlier
            && endpoint
                .health
                .report(outcome, cfg, &self.outlier_stats, self.endpoints.len())
        {
            tracing::warn!(cluster = %self.name, endpoint = %endpoint.addr, ?outcome, "endpoint ejected");
        }
    }
}

/// The RING_HASH ring or MAGLEV table of a hash-policy cluster, over its endpoint addresses.
fn hash_table(c: &XCluster, endpoints: &[Endpoint]) -> Option<HashTable> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    let keys: Vec<(String, u32)> = endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.weight))
        .collect();
    match XLb::try_from(c.lb_policy) {
        Ok(XLb::RingHash) => {
            let min = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => {
                    r.minimum_ring_size.as_ref().map_or(0, |v| v.value)
                }
                _ => 0,
            };
            Some(HashTable::ring(&keys, min))
        }
        Ok(XLb::Maglev) => {
            let size = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.as_ref().map_or(0, |v| v.value),
                _ => 0,
            };
            Some(HashTable::maglev(&keys, size))
        }
        _ => None,
    }
}

impl ServiceLabels {
    fn from_metadata(m: Option<&Metadata>) -> ServiceLabels {
        use envoy_types::pb::google::protobuf::value::Kind;
        let svc = m
            .and_then(|m| m.filter_metadata.get("istio"))
            .and_then(|s| s.fields.get("services"))
            .and_then(|v| match &v.kind {
                Some(Kind::ListValue(l)) => l.values.first(),
                _ => None,
            })
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(s),
                _ => None,
            });
        let get = |k: &str| {
            svc.and_then(|s| istio_string(s, k))
                .unwrap_or("unknown")
                .to_string()
        };
        ServiceLabels {
            host: get("host"),
            name: get("name"),
            namespace: get("namespace"),
        }
    }
}

impl WorkloadLabels {
    fn from_metadata(m: Option<&Metadata>) -> WorkloadLabels {
        let s = m.and_then(|m| m.filter_metadata.get("istio"));
        let get = |k: &str| {
            s.and_then(|s| istio_string(s, k))
                .unwrap_or("unknown")
                .to_string()
        };
        WorkloadLabels {
            workload: get("workload"),
            namespace: get("namespace"),
            app: get("app"),
            version: get("version"),
        }
    }
}

/// Protocol, idle timeout, `max_requests_per_connection` (0: unlimited),
/// `max_connection_duration` (absent or 0: none) and the HTTP/2 `max_concurrent_streams`
/// (0: unlimited).
type UpstreamOptions = (
    UpstreamProtocol,
    Option<Duration>,
    u32,
    Option<Duration>,
    u32,
);

fn upstream_options(c: &XCluster) -> Result<UpstreamOptions, String> {
    let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS) else {
        return Ok((UpstreamProtocol::Http1, None, 0, None, 0));
    };
    let opts = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| format!("{HTTP_OPTIONS} does not decode: {e}"))?;
    let idle = opts
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.idle_timeout.as_ref())
        .map(duration);
    let per_connection = opts
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_requests_per_connection)
        .map_or(0, |v| v.value);
    let max_duration = opts
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_connection_duration.as_ref())
        .map(duration)
        .filter(|d| !d.is_zero());
    let mut max_streams = 0;
    let protocol = match &opts.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                max_streams = h2.max_concurrent_streams.map_or(0, |v| v.value);
                UpstreamProtocol::Http2
            }
            Some(ProtocolConfig::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
            Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                return Err("HTTP/3 upstreams are not supported".into());
            }
        },
        None => UpstreamProtocol::Http1,
        Some(_) => return Err("only explicit_http_config is supported".into()),
    };
    Ok((protocol, idle, per_connection, max_duration, max_streams))
}

/// What an endpoint's connection pool is built with.
struct PoolSettings {
    options: PoolOptions,
    circuit: Arc<CircuitState>,
    sockets: crate::tls::upstream::TransportSockets,
}

impl PoolSettings {
    /// The previous endpoint's pool when it fits, a new one otherwise.
    fn pool(
        &self,
        addr: SocketAddr,
        metadata: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
        prev: Option<&Endpoint>,
    ) -> Arc<EndpointPool> {
        let tls = self.sockets.for_endpoint(metadata);
        match prev {
            Some(e) if e.pool.fits(&self.options, &self.circuit, tls.as_deref()) => {
                Arc::clone(&e.pool)
            }
            _ => Arc::new(
                EndpointPool::new(addr, self.options, Arc::clone(&self.circuit)).with_tls(tls),
            ),
        }
    }
}

/// How a STRICT_DNS cluster's names are resolved: the cluster's refresh settings and family.
struct DnsSettings<'a> {
    resolver: &'a crate::dns::Resolver,
    family: crate::dns::Family,
    refresh: crate::dns::Refresh,
}

impl<'a> DnsSettings<'a> {
    #[allow(deprecated)] // Istio sets the cluster-level DNS fields
    fn from_xds(c: &XCluster, resolver: &'a Arc<crate::dns::Resolver>) -> DnsSettings<'a> {
        use crate::dns::{DEFAULT_REFRESH, Family};
        use envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily as F;
        let family = match F::try_from(c.dns_lookup_family) {
            Ok(F::V4Only) => Family::V4Only,
            Ok(F::V6Only) => Family::V6Only,
            Ok(F::V4Preferred) => Family::V4Preferred,
            Ok(F::All) => Family::All,
            _ => Family::Auto,
        };
        let rate = c
            .dns_refresh_rate
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_REFRESH);
        let failure_rate = c
            .dns_failure_refresh_rate
            .as_ref()
            .and_then(|f| f.base_interval.as_ref())
            .map(duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(rate);
        DnsSettings {
            resolver,
            family,
            refresh: crate::dns::Refresh {
                rate,
                failure_rate,
                respect_ttl: c.respect_dns_ttl,
            },
        }
    }
}

fn endpoints(
    a: &ClusterLoadAssignment,
    dns: Option<&DnsSettings<'_>>,
    prev: Option<&Cluster>,
    pools: &PoolSettings,
) -> Result<Vec<Endpoint>, (String, String)> {
    let mut out = Vec::new();
    for (li, loc) in a.endpoints.iter().enumerate() {
        let locality_weight = loc.load_balancing_weight.as_ref().map_or(1, |w| w.value);
        let locality = loc
            .locality
            .as_ref()
            .map_or_else(Locality::default, |l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.sub_zone.clone(),
            });
        for (ei, lb) in loc.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{li}].lb_endpoints[{ei}]");
            // UNHEALTHY, DRAINING and TIMEOUT endpoints take no traffic.
            if matches!(lb.health_status, 2..=4) {
                continue;
            }
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err((field, "missing endpoint".into()));
            };
            let Some(Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err((
                    format!("{field}.endpoint.address"),
                    "missing socket_address".into(),
                ));
            };
            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                return Err((
                    format!("{field}.endpoint.address"),
                    "missing port_value".into(),
                ));
            };
            let port = u16::try_from(port).map_err(|_| {
                (
                    format!("{field}.endpoint.address"),
                    format!("port {port} out of range"),
                )
            })?;
            let addrs = match resolve(&sa.address, port, dns) {
                Ok(a) => a,
                Err(why) => {
                    let f = format!("{field}.endpoint.address.socket_address.address");
                    return Err((f, why));
                }
            };
            let weight = lb
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value.max(1));
            // A name stands for every address it resolves to (Envoy's STRICT_DNS); one not
            // resolved yet, none.
            for addr in addrs {
                let authority = Authority::try_from(addr.to_string().as_str())
                    .map_err(|e| (field.clone(), format!("address {addr}: {e}")))?;
                let before = prev.and_then(|p| p.endpoints.iter().find(|e| e.addr == addr));
                let state = before.map(|e| Arc::clone(&e.state)).unwrap_or_default();
                let health: Arc<EndpointHealth> =
                    before.map(|e| Arc::clone(&e.health)).unwrap_or_default();
                health.added.get_or_init(std::time::Instant::now);
                out.push(Endpoint {
                    addr,
                    authority,
                    weight,
                    health,
                    priority: loc.priority,
                    locality_weight,
                    locality: locality.clone(),
                    workload: WorkloadLabels::from_metadata(lb.metadata.as_ref()),
                    state,
                    pool: pools.pool(addr, lb.metadata.as_ref(), before),
                });
            }
        }
    }
    Ok(out)
}

/// An endpoint's addresses: its IP, or for STRICT_DNS the cached answer for its name (empty
/// until the resolver has one; `dns.rs` re-resolves and the runtime recompiles on a change).
fn resolve(
    host: &str,
    port: u16,
    dns: Option<&DnsSettings<'_>>,
) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let Some(dns) = dns else {
        return Err(format!(
            "{host:?} is not an IP address (use a STRICT_DNS cluster for names)"
        ));
    };
    let ips = dns
        .resolver
        .cached(host, dns.family, dns.refresh)
        .unwrap_or_default();
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}
