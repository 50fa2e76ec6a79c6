//! Trellis extension kinds (`trellis.dev/v1alpha1`), for what Istio has no API for.
//!
//! `HealthCheckPolicy`: active health checking of a service's endpoints (Envoy's cluster
//! `health_checks`, which Istio does not expose). Example:
//!
//! ```yaml
//! apiVersion: trellis.dev/v1alpha1
//! kind: HealthCheckPolicy
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   host: reviews            # resolved like a DestinationRule host
//!   subset: v1               # optional: only this DestinationRule subset's endpoints
//!   interval: 5s             # default 10s
//!   timeout: 1s              # default 1s
//!   unhealthyThreshold: 2    # failures in a row that mark an endpoint unhealthy (default 3)
//!   healthyThreshold: 1      # successes in a row that bring it back (default 1)
//!   http: {path: /healthz, expectedStatuses: [200, 204]}   # or: grpc: {serviceName: ""}
//! ```
//!
//! A `grpc` check applies only to HTTP2/GRPC ports (Envoy checks gRPC over HTTP/2).
//!
//! `DestinationPolicy`: per-destination retry budget (Linkerd's idea: retries may add a share
//! of the requests plus a small per-second minimum, so retries cannot multiply an outage).

use super::istio::config_struct;
use super::{Duration, PortSelector};

config_struct! {
    /// `HealthCheckPolicy.spec`.
    pub struct HealthCheckPolicy {
        pub host: String,
        pub subset: String,
        /// Only this service port's clusters (all ports when absent).
        pub port: Option<PortSelector>,
        pub interval: Option<Duration>,
        pub timeout: Option<Duration>,
        pub unhealthy_threshold: Option<u32>,
        pub healthy_threshold: Option<u32>,
        pub http: Option<HttpHealthCheck>,
        pub grpc: Option<GrpcHealthCheck>,
    }
}

config_struct! {
    /// An HTTP GET of `path`; healthy when the status is one of `expectedStatuses` (default 200).
    pub struct HttpHealthCheck {
        pub path: String,
        pub expected_statuses: Vec<u32>,
    }
}

config_struct! {
    /// `grpc.health.v1.Health/Check` for `serviceName` (empty: the whole server).
    pub struct GrpcHealthCheck {
        pub service_name: String,
    }
}

config_struct! {
    /// `DestinationPolicy.spec`: policies for the traffic sent to `host`.
    pub struct DestinationPolicy {
        /// Service host, resolved like a DestinationRule's (short names in the policy's
        /// namespace).
        pub host: String,
        pub retry_budget: Option<RetryBudget>,
    }
}

config_struct! {
    /// `DestinationPolicy.spec.retryBudget`: retries per destination cluster stay at most
    /// `retryPercent` % of its requests plus `minRetriesPerSecond` a second.
    pub struct RetryBudget {
        /// Default 20.
        pub retry_percent: Option<f64>,
        /// Default 10.
        pub min_retries_per_second: Option<u32>,
    }
}

config_struct! {
    /// `MeshConfig.spec` (`trellis.dev/v1alpha1`, at most one per mesh): the mesh-wide settings
    /// Istio keeps in its `meshConfig`, with Istio's field names.
    ///
    /// ```yaml
    /// apiVersion: trellis.dev/v1alpha1
    /// kind: MeshConfig
    /// metadata: {name: mesh, namespace: istio-system}
    /// spec:
    ///   rootNamespace: istio-system      # policies here apply mesh-wide (default istio-system)
    ///   trustDomain: cluster.local       # default cluster.local
    ///   pathNormalization: {normalization: MERGE_SLASHES}   # NONE, BASE (default), MERGE_SLASHES, DECODE_AND_MERGE_SLASHES
    ///   outboundTrafficPolicy: {mode: REGISTRY_ONLY}         # ALLOW_ANY (default) or REGISTRY_ONLY
    ///   dnsRefreshRate: 60s                                 # DNS hosts without a TTL (default 60s)
    /// ```
    pub struct MeshConfig {
        pub root_namespace: String,
        pub trust_domain: String,
        pub path_normalization: Option<PathNormalization>,
        /// External authorizers that CUSTOM AuthorizationPolicies name as `provider`.
        pub extension_providers: Vec<ExtensionProvider>,
        /// Istio's `defaultConfig` (ProxyConfig); only `gatewayTopology` is read.
        pub default_config: Option<ProxyConfigDefaults>,
        /// The global rate limit service that `RateLimitPolicy` global limits and `QuotaPolicy`
        /// quotas are checked with (`envoy.service.ratelimit.v3`).
        pub rate_limit_service: Option<RateLimitService>,
        /// Istio's `outboundTrafficPolicy`: what sidecars do with hosts outside the registry.
        pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
        /// Istio's `dnsRefreshRate`: how often `resolution: DNS` hosts are re-resolved when
        /// the answer carries no TTL (default 60s); the TTL wins when there is one.
        pub dns_refresh_rate: Option<Duration>,
    }
}

config_struct! {
    /// `MeshConfig.outboundTrafficPolicy`.
    ///
    /// ```yaml
    /// spec:
    ///   outboundTrafficPolicy: {mode: REGISTRY_ONLY}   # default ALLOW_ANY
    /// ```
    pub struct OutboundTrafficPolicy {
        pub mode: Option<OutboundTrafficMode>,
    }
}

/// `OutboundTrafficPolicy.Mode`: ALLOW_ANY forwards unknown hosts to where the client meant
/// (`PassthroughCluster`); REGISTRY_ONLY answers unknown HTTP hosts 502 and closes unknown TLS
/// connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum OutboundTrafficMode {
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

config_struct! {
    /// `MeshConfig.rateLimitService`: where proxies send `ShouldRateLimit` (gRPC).
    pub struct RateLimitService {
        /// A service host (`name.ns.svc.cluster.local` or a ServiceEntry host).
        pub service: String,
        pub port: u32,
        /// Per-check deadline (default 20ms, as Envoy's ratelimit filter); on expiry the
        /// policy's `failureMode` applies.
        pub timeout: Option<Duration>,
        /// The rate limit domain (default `trellis`).
        pub domain: String,
    }
}

config_struct! {
    /// `meshConfig.defaultConfig`.
    pub struct ProxyConfigDefaults {
        pub gateway_topology: Option<GatewayTopology>,
    }
}

config_struct! {
    /// `ProxyConfig.gatewayTopology`: how many proxies in front of the gateways append to
    /// `x-forwarded-for` (the gateways' `xff_num_trusted_hops`, used by `remoteIpBlocks`).
    pub struct GatewayTopology {
        pub num_trusted_proxies: u32,
    }
}

config_struct! {
    /// `MeshConfig.extensionProviders[]` (the authorization ones).
    pub struct ExtensionProvider {
        pub name: String,
        pub envoy_ext_authz_http: Option<ExtAuthzHttpProvider>,
        pub envoy_ext_authz_grpc: Option<ExtAuthzGrpcProvider>,
    }
}

config_struct! {
    /// `EnvoyExternalAuthorizationHttpProvider`: the request's method and path (after
    /// `pathPrefix`) and the listed headers go to `service:port`; a 2xx answer allows.
    pub struct ExtAuthzHttpProvider {
        /// A service host (`name.ns.svc.cluster.local` or a ServiceEntry host).
        pub service: String,
        pub port: u32,
        pub path_prefix: String,
        pub timeout: Option<Duration>,
        pub fail_open: bool,
        /// Status when the authorizer cannot be reached (default 403).
        pub status_on_error: String,
        pub include_request_headers_in_check: Vec<String>,
        pub headers_to_upstream_on_allow: Vec<String>,
        pub headers_to_downstream_on_deny: Vec<String>,
    }
}

config_struct! {
    /// `EnvoyExternalAuthorizationGrpcProvider` (accepted; not compiled yet: its CUSTOM
    /// policies fail closed).
    pub struct ExtAuthzGrpcProvider {
        pub service: String,
        pub port: u32,
        pub timeout: Option<Duration>,
        pub fail_open: bool,
        pub status_on_error: String,
    }
}

config_struct! {
    /// `MeshConfig.pathNormalization`.
    pub struct PathNormalization {
        pub normalization: String,
    }
}

/// Istio's default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// `pathNormalization.normalization` values, in Istio's order.
pub const PATH_NORMALIZATIONS: &[&str] =
    &["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"];

impl MeshConfig {
    pub fn root_namespace(&self) -> &str {
        if self.root_namespace.is_empty() {
            DEFAULT_ROOT_NAMESPACE
        } else {
            &self.root_namespace
        }
    }

    pub fn trust_domain(&self) -> &str {
        if self.trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            &self.trust_domain
        }
    }

    /// `defaultConfig.gatewayTopology.numTrustedProxies` (0 when unset).
    pub fn num_trusted_proxies(&self) -> u32 {
        self.default_config
            .as_ref()
            .and_then(|d| d.gateway_topology.as_ref())
            .map_or(0, |g| g.num_trusted_proxies)
    }

    /// `outboundTrafficPolicy.mode` (ALLOW_ANY when unset).
    pub fn outbound_mode(&self) -> OutboundTrafficMode {
        self.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode)
            .unwrap_or_default()
    }

    /// The normalization mode (`BASE` when unset).
    pub fn normalization(&self) -> &str {
        match &self.path_normalization {
            Some(p) if !p.normalization.is_empty() => &p.normalization,
            _ => "BASE",
        }
    }
}
