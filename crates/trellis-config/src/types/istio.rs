//! Istio `networking.istio.io` kinds (v1 / v1beta1 / v1alpha3 share one schema):
//! VirtualService, DestinationRule, Gateway, ServiceEntry, WorkloadEntry, with the full
//! field set of Istio's reference so that unknown fields are caught, even for parts
//! that only later work consumes. Field names are Istio's camelCase.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Duration, LabelSelector, Percent, StringMatch, WorkloadSelector};

/// Shared derive set for config structs: everything optional, Istio camelCase names.
macro_rules! config_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(default, rename_all = "camelCase")]
        pub struct $name { $($body)* }
    };
}
pub(crate) use config_struct;

// ---------------------------------------------------------------- VirtualService

config_struct! {
    /// `VirtualService.spec`.
    pub struct VirtualService {
        pub hosts: Vec<String>,
        pub gateways: Vec<String>,
        pub http: Vec<HttpRoute>,
        pub tls: Vec<TlsRoute>,
        pub tcp: Vec<TcpRoute>,
        pub export_to: Vec<String>,
    }
}

config_struct! {
    /// `HTTPRoute`.
    pub struct HttpRoute {
        pub name: String,
        #[serde(rename = "match")]
        pub matches: Vec<HttpMatchRequest>,
        pub route: Vec<HttpRouteDestination>,
        pub redirect: Option<HttpRedirect>,
        pub direct_response: Option<HttpDirectResponse>,
        pub delegate: Option<Delegate>,
        pub rewrite: Option<HttpRewrite>,
        pub timeout: Option<Duration>,
        pub retries: Option<HttpRetry>,
        pub fault: Option<HttpFaultInjection>,
        pub mirror: Option<Destination>,
        /// Deprecated integer form of `mirrorPercentage`.
        pub mirror_percent: Option<u32>,
        pub mirror_percentage: Option<Percent>,
        pub mirrors: Vec<HttpMirrorPolicy>,
        pub cors_policy: Option<CorsPolicy>,
        pub headers: Option<Headers>,
    }
}

config_struct! {
    /// `HTTPMatchRequest`. All conditions inside one match are ANDed; matches are ORed.
    pub struct HttpMatchRequest {
        pub name: String,
        pub uri: Option<StringMatch>,
        pub scheme: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        /// An empty `StringMatch` (`{}`) means "header present".
        pub headers: BTreeMap<String, StringMatch>,
        pub port: Option<u32>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub query_params: BTreeMap<String, StringMatch>,
        pub ignore_uri_case: bool,
        pub without_headers: BTreeMap<String, StringMatch>,
        pub source_namespace: String,
        pub stat_prefix: String,
    }
}

config_struct! {
    /// `HTTPRouteDestination`.
    pub struct HttpRouteDestination {
        pub destination: Destination,
        /// 0..=100; when several destinations are listed they must sum to 100.
        pub weight: i32,
        pub headers: Option<Headers>,
    }
}

config_struct! {
    /// `Destination`.
    pub struct Destination {
        pub host: String,
        pub subset: String,
        pub port: Option<PortSelector>,
    }
}

config_struct! {
    /// `PortSelector`.
    pub struct PortSelector {
        pub number: u32,
    }
}

config_struct! {
    /// `Headers`.
    pub struct Headers {
        pub request: Option<HeaderOperations>,
        pub response: Option<HeaderOperations>,
    }
}

config_struct! {
    /// `Headers.HeaderOperations`.
    pub struct HeaderOperations {
        pub set: BTreeMap<String, String>,
        pub add: BTreeMap<String, String>,
        pub remove: Vec<String>,
    }
}

config_struct! {
    /// `HTTPRedirect`.
    pub struct HttpRedirect {
        pub uri: String,
        pub authority: String,
        pub port: Option<u32>,
        pub derive_port: Option<RedirectPortSelection>,
        pub scheme: String,
        /// Default 301.
        pub redirect_code: Option<u32>,
    }
}

/// `HTTPRedirect.RedirectPortSelection`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum RedirectPortSelection {
    #[default]
    #[serde(rename = "FROM_PROTOCOL_DEFAULT")]
    FromProtocolDefault,
    #[serde(rename = "FROM_REQUEST_PORT")]
    FromRequestPort,
}

config_struct! {
    /// `HTTPDirectResponse`.
    pub struct HttpDirectResponse {
        pub status: u32,
        pub body: Option<HttpBody>,
    }
}

config_struct! {
    /// `HTTPBody`: `string` or `bytes` (base64).
    pub struct HttpBody {
        pub string: Option<String>,
        pub bytes: Option<String>,
    }
}

config_struct! {
    /// `Delegate`.
    pub struct Delegate {
        pub name: String,
        pub namespace: String,
    }
}

config_struct! {
    /// `HTTPRewrite`.
    pub struct HttpRewrite {
        pub uri: String,
        pub authority: String,
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

config_struct! {
    /// `RegexRewrite`.
    pub struct RegexRewrite {
        #[serde(rename = "match")]
        pub pattern: String,
        pub rewrite: String,
    }
}

config_struct! {
    /// `HTTPRetry`.
    pub struct HttpRetry {
        pub attempts: i32,
        pub per_try_timeout: Option<Duration>,
        pub retry_on: String,
        pub retry_remote_localities: Option<bool>,
        pub retry_ignore_previous_hosts: Option<bool>,
        pub backoff: Option<Duration>,
    }
}

config_struct! {
    /// `HTTPFaultInjection`.
    pub struct HttpFaultInjection {
        pub delay: Option<FaultDelay>,
        pub abort: Option<FaultAbort>,
    }
}

config_struct! {
    /// `HTTPFaultInjection.Delay`.
    pub struct FaultDelay {
        pub fixed_delay: Option<Duration>,
        pub percentage: Option<Percent>,
        /// Deprecated integer percentage.
        pub percent: Option<i32>,
    }
}

config_struct! {
    /// `HTTPFaultInjection.Abort`.
    pub struct FaultAbort {
        pub http_status: Option<i32>,
        pub grpc_status: Option<String>,
        pub percentage: Option<Percent>,
    }
}

config_struct! {
    /// `HTTPMirrorPolicy`.
    pub struct HttpMirrorPolicy {
        pub destination: Destination,
        pub percentage: Option<Percent>,
    }
}

config_struct! {
    /// `CorsPolicy`.
    pub struct CorsPolicy {
        pub allow_origins: Vec<StringMatch>,
        /// Deprecated exact-origin list.
        pub allow_origin: Vec<String>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        pub max_age: Option<Duration>,
        pub allow_credentials: Option<bool>,
        pub unmatched_preflights: Option<UnmatchedPreflights>,
    }
}

/// `CorsPolicy.UnmatchedPreflights`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum UnmatchedPreflights {
    #[default]
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "FORWARD")]
    Forward,
    #[serde(rename = "IGNORE")]
    Ignore,
}

config_struct! {
    /// `TLSRoute`.
    pub struct TlsRoute {
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

config_struct! {
    /// `TLSMatchAttributes`.
    pub struct TlsMatchAttributes {
        pub sni_hosts: Vec<String>,
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub source_namespace: String,
    }
}

config_struct! {
    /// `TCPRoute`.
    pub struct TcpRoute {
        #[serde(rename = "match")]
        pub matches: Vec<L4MatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

config_struct! {
    /// `L4MatchAttributes`.
    pub struct L4MatchAttributes {
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub source_namespace: String,
    }
}

config_struct! {
    /// `RouteDestination` (TLS and TCP routes).
    pub struct RouteDestination {
        pub destination: Destination,
        pub weight: i32,
    }
}

// ---------------------------------------------------------------- DestinationRule

config_struct! {
    /// `DestinationRule.spec`.
    pub struct DestinationRule {
        pub host: String,
        pub traffic_policy: Option<TrafficPolicy>,
        pub subsets: Vec<Subset>,
        pub export_to: Vec<String>,
        pub workload_selector: Option<WorkloadSelector>,
    }
}

config_struct! {
    /// `TrafficPolicy`.
    pub struct TrafficPolicy {
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
        pub port_level_settings: Vec<PortTrafficPolicy>,
        pub tunnel: Option<TunnelSettings>,
        pub proxy_protocol: Option<ProxyProtocol>,
    }
}

config_struct! {
    /// `TrafficPolicy.PortTrafficPolicy`.
    pub struct PortTrafficPolicy {
        pub port: Option<PortSelector>,
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
    }
}

config_struct! {
    /// `TrafficPolicy.TunnelSettings`.
    pub struct TunnelSettings {
        pub protocol: String,
        pub target_host: String,
        pub target_port: u32,
    }
}

config_struct! {
    /// `TrafficPolicy.ProxyProtocol`.
    pub struct ProxyProtocol {
        pub version: Option<ProxyProtocolVersion>,
    }
}

/// `TrafficPolicy.ProxyProtocol.VERSION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ProxyProtocolVersion {
    #[default]
    V1,
    V2,
}

config_struct! {
    /// `Subset`.
    pub struct Subset {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

config_struct! {
    /// `LoadBalancerSettings`.
    pub struct LoadBalancerSettings {
        pub simple: Option<SimpleLb>,
        pub consistent_hash: Option<ConsistentHashLb>,
        pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
        pub warmup_duration_secs: Option<Duration>,
        pub warmup: Option<WarmupConfiguration>,
    }
}

/// `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SimpleLb {
    #[default]
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    #[serde(rename = "RANDOM")]
    Random,
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    #[serde(rename = "LEAST_REQUEST")]
    LeastRequest,
}

config_struct! {
    /// `WarmupConfiguration`.
    pub struct WarmupConfiguration {
        pub duration: Option<Duration>,
        pub minimum_percent: Option<f64>,
        pub aggression: Option<f64>,
    }
}

config_struct! {
    /// `LoadBalancerSettings.ConsistentHashLB`.
    pub struct ConsistentHashLb {
        pub http_header_name: Option<String>,
        pub http_cookie: Option<HttpCookie>,
        pub use_source_ip: Option<bool>,
        pub http_query_parameter_name: Option<String>,
        pub ring_hash: Option<RingHash>,
        pub maglev: Option<MagLev>,
        /// Deprecated; use `ringHash.minimumRingSize`.
        pub minimum_ring_size: Option<u64>,
    }
}

config_struct! {
    /// `ConsistentHashLB.HTTPCookie`.
    pub struct HttpCookie {
        pub name: String,
        pub path: String,
        pub ttl: Option<Duration>,
        pub attributes: Vec<CookieAttribute>,
    }
}

config_struct! {
    /// `ConsistentHashLB.HTTPCookie.Attribute`.
    pub struct CookieAttribute {
        pub name: String,
        pub value: String,
    }
}

config_struct! {
    /// `ConsistentHashLB.RingHash`.
    pub struct RingHash {
        pub minimum_ring_size: u64,
    }
}

config_struct! {
    /// `ConsistentHashLB.MagLev`.
    pub struct MagLev {
        pub table_size: u64,
    }
}

config_struct! {
    /// `LocalityLoadBalancerSetting`.
    pub struct LocalityLoadBalancerSetting {
        pub distribute: Vec<LocalityDistribute>,
        pub failover: Vec<LocalityFailover>,
        pub failover_priority: Vec<String>,
        pub enabled: Option<bool>,
    }
}

config_struct! {
    /// `LocalityLoadBalancerSetting.Distribute`.
    pub struct LocalityDistribute {
        pub from: String,
        pub to: BTreeMap<String, u32>,
    }
}

config_struct! {
    /// `LocalityLoadBalancerSetting.Failover`.
    pub struct LocalityFailover {
        pub from: String,
        pub to: String,
    }
}

config_struct! {
    /// `ConnectionPoolSettings`.
    pub struct ConnectionPoolSettings {
        pub tcp: Option<TcpSettings>,
        pub http: Option<HttpSettings>,
    }
}

config_struct! {
    /// `ConnectionPoolSettings.TCPSettings`.
    pub struct TcpSettings {
        pub max_connections: Option<i32>,
        pub connect_timeout: Option<Duration>,
        pub tcp_keepalive: Option<TcpKeepalive>,
        pub max_connection_duration: Option<Duration>,
        pub idle_timeout: Option<Duration>,
    }
}

config_struct! {
    /// `ConnectionPoolSettings.TCPSettings.TcpKeepalive`.
    pub struct TcpKeepalive {
        pub probes: Option<u32>,
        pub time: Option<Duration>,
        pub interval: Option<Duration>,
    }
}

config_struct! {
    /// `ConnectionPoolSettings.HTTPSettings`.
    pub struct HttpSettings {
        pub http1_max_pending_requests: Option<i32>,
        pub http2_max_requests: Option<i32>,
        pub max_requests_per_connection: Option<i32>,
        pub max_retries: Option<i32>,
        pub idle_timeout: Option<Duration>,
        pub h2_upgrade_policy: Option<H2UpgradePolicy>,
        pub use_client_protocol: Option<bool>,
        pub max_concurrent_streams: Option<i32>,
    }
}

/// `ConnectionPoolSettings.HTTPSettings.H2UpgradePolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum H2UpgradePolicy {
    #[default]
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "DO_NOT_UPGRADE")]
    DoNotUpgrade,
    #[serde(rename = "UPGRADE")]
    Upgrade,
}

config_struct! {
    /// `OutlierDetection`.
    pub struct OutlierDetection {
        pub split_external_local_origin_errors: Option<bool>,
        pub consecutive_local_origin_failures: Option<u32>,
        pub consecutive_gateway_errors: Option<u32>,
        pub consecutive_5xx_errors: Option<u32>,
        /// Deprecated alias of `consecutive5xxErrors`.
        pub consecutive_errors: Option<i32>,
        pub interval: Option<Duration>,
        pub base_ejection_time: Option<Duration>,
        pub max_ejection_percent: Option<i32>,
        pub min_health_percent: Option<i32>,
    }
}

config_struct! {
    /// `ClientTLSSettings`.
    pub struct ClientTlsSettings {
        pub mode: Option<ClientTlsMode>,
        pub client_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
        pub credential_name: String,
        pub subject_alt_names: Vec<String>,
        pub sni: String,
        pub insecure_skip_verify: Option<bool>,
        pub ca_crl: String,
    }
}

/// `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientTlsMode {
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    #[serde(rename = "SIMPLE")]
    Simple,
    #[serde(rename = "MUTUAL")]
    Mutual,
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

// ---------------------------------------------------------------- Gateway

config_struct! {
    /// `Gateway.spec`.
    pub struct Gateway {
        pub selector: BTreeMap<String, String>,
        pub servers: Vec<Server>,
    }
}

config_struct! {
    /// `Server`.
    pub struct Server {
        pub port: Option<Port>,
        pub bind: String,
        pub hosts: Vec<String>,
        pub tls: Option<ServerTlsSettings>,
        pub name: String,
        pub default_endpoint: String,
    }
}

config_struct! {
    /// `Port` (Gateway servers) and `ServicePort` (ServiceEntry ports): same fields.
    pub struct Port {
        pub number: u32,
        /// `HTTP|HTTPS|GRPC|GRPC-WEB|HTTP2|MONGO|TCP|TLS|…` (case-insensitive).
        pub protocol: String,
        pub name: String,
        pub target_port: Option<u32>,
    }
}

config_struct! {
    /// `ServerTLSSettings`.
    pub struct ServerTlsSettings {
        pub https_redirect: bool,
        pub mode: Option<ServerTlsMode>,
        pub server_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
        pub ca_crl: String,
        pub credential_name: String,
        pub credential_names: Vec<String>,
        pub tls_certificates: Vec<TlsCertificate>,
        pub subject_alt_names: Vec<String>,
        pub verify_certificate_spki: Vec<String>,
        pub verify_certificate_hash: Vec<String>,
        pub min_protocol_version: Option<TlsProtocolVersion>,
        pub max_protocol_version: Option<TlsProtocolVersion>,
        pub cipher_suites: Vec<String>,
    }
}

config_struct! {
    /// `ServerTLSSettings.TLSCertificate`.
    pub struct TlsCertificate {
        pub server_certificate: String,
        pub private_key: String,
        pub ca_certificates: String,
    }
}

/// `ServerTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ServerTlsMode {
    #[default]
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
    #[serde(rename = "SIMPLE")]
    Simple,
    #[serde(rename = "MUTUAL")]
    Mutual,
    #[serde(rename = "AUTO_PASSTHROUGH")]
    AutoPassthrough,
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
    #[serde(rename = "OPTIONAL_MUTUAL")]
    OptionalMutual,
}

/// `ServerTLSSettings.TLSProtocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsProtocolVersion {
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

// ---------------------------------------------------------------- ServiceEntry / WorkloadEntry

config_struct! {
    /// `ServiceEntry.spec`.
    pub struct ServiceEntry {
        pub hosts: Vec<String>,
        pub addresses: Vec<String>,
        pub ports: Vec<Port>,
        pub location: Option<Location>,
        pub resolution: Option<ResolutionMode>,
        pub endpoints: Vec<WorkloadEntry>,
        pub workload_selector: Option<LabelSelector>,
        pub export_to: Vec<String>,
        pub subject_alt_names: Vec<String>,
    }
}

/// `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Location {
    #[default]
    #[serde(rename = "MESH_EXTERNAL")]
    MeshExternal,
    #[serde(rename = "MESH_INTERNAL")]
    MeshInternal,
}

/// `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ResolutionMode {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "STATIC")]
    Static,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(rename = "DNS_ROUND_ROBIN")]
    DnsRoundRobin,
}

config_struct! {
    /// `WorkloadEntry.spec`, also the shape of `ServiceEntry.endpoints[]`.
    pub struct WorkloadEntry {
        pub address: String,
        /// Port name -> port number overrides.
        pub ports: BTreeMap<String, u32>,
        pub labels: BTreeMap<String, String>,
        pub network: String,
        /// `region/zone/subzone`.
        pub locality: String,
        /// 0 means unset (treated as 1).
        pub weight: u32,
        pub service_account: String,
    }
}
