//! Kubernetes Gateway API kinds (`gateway.networking.k8s.io` `v1`, and the `v1beta1` /
//! `v1alpha2` spellings each kind had): `GatewayClass`, `Gateway`, `HTTPRoute`, `GRPCRoute`,
//! `TLSRoute`, `TCPRoute` and `ReferenceGrant`, with the field set of the upstream CRDs so that
//! unknown fields are caught.
//!
//! Owns the user-facing shapes only. Every field is optional here; the API's defaults (a
//! `PathPrefix /` match, `From: Same` namespaces, weight 1, …) are applied where they are read,
//! by the accessors below. Validation is `validate/gateway_api.rs`; attachment, status and the
//! lowering to Istio's model are `trellis-xds/src/gateway_api.rs`.
//!
//! The names would collide with Istio's `Gateway`, `HttpRoute`, `TlsRoute` and `TcpRoute`, so
//! this module is not glob re-exported: write `trellis_config::gateway_api::Gateway`.

use std::collections::BTreeMap;

use super::Duration;
use super::istio::config_struct;

/// The API group of every kind here.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// Controller names whose `GatewayClass`es Trellis implements (Istio's, so that manifests
/// written for Istio work unchanged, and Trellis's own).
pub const CONTROLLER_NAMES: &[&str] = &[
    "istio.io/gateway-controller",
    "trellis.dev/gateway-controller",
];

/// `gatewayClassName`s accepted without a `GatewayClass` object (Istio creates `istio` itself).
pub const BUILTIN_CLASSES: &[&str] = &["istio", "trellis"];

config_struct! {
    /// `GatewayClass.spec`.
    pub struct GatewayClass {
        pub controller_name: String,
        pub parameters_ref: Option<super::Value>,
        pub description: Option<String>,
    }
}

config_struct! {
    /// `Gateway.spec`.
    pub struct Gateway {
        pub gateway_class_name: String,
        pub listeners: Vec<Listener>,
        pub addresses: Vec<super::Value>,
        pub infrastructure: Option<super::Value>,
        pub backend_tls: Option<super::Value>,
    }
}

config_struct! {
    /// `Listener`: one port, protocol and (optional) hostname of a Gateway.
    pub struct Listener {
        pub name: String,
        pub hostname: Option<String>,
        pub port: u32,
        /// `HTTP`, `HTTPS`, `TLS` or `TCP` (`UDP` is not supported).
        pub protocol: String,
        pub tls: Option<GatewayTlsConfig>,
        pub allowed_routes: Option<AllowedRoutes>,
    }
}

config_struct! {
    /// `GatewayTLSConfig`.
    pub struct GatewayTlsConfig {
        /// `Terminate` (default) or `Passthrough`.
        pub mode: Option<String>,
        pub certificate_refs: Vec<SecretObjectReference>,
        pub options: BTreeMap<String, String>,
        pub frontend_validation: Option<super::Value>,
    }
}

config_struct! {
    /// `SecretObjectReference` (a `certificateRefs` entry).
    pub struct SecretObjectReference {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
    }
}

config_struct! {
    /// `AllowedRoutes`.
    pub struct AllowedRoutes {
        pub namespaces: Option<RouteNamespaces>,
        pub kinds: Vec<RouteGroupKind>,
    }
}

config_struct! {
    /// `RouteNamespaces`.
    pub struct RouteNamespaces {
        /// `Same` (default), `All` or `Selector`.
        pub from: Option<String>,
        pub selector: Option<KubeLabelSelector>,
    }
}

config_struct! {
    /// Kubernetes `metav1.LabelSelector`.
    pub struct KubeLabelSelector {
        pub match_labels: BTreeMap<String, String>,
        pub match_expressions: Vec<LabelSelectorRequirement>,
    }
}

config_struct! {
    /// `LabelSelectorRequirement`.
    pub struct LabelSelectorRequirement {
        pub key: String,
        /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
        pub operator: String,
        pub values: Vec<String>,
    }
}

config_struct! {
    /// `RouteGroupKind`.
    pub struct RouteGroupKind {
        pub group: Option<String>,
        pub kind: String,
    }
}

config_struct! {
    /// `ParentReference`: a Gateway (optionally one listener, by `sectionName` or `port`) or,
    /// for mesh routes (GAMMA), a Service.
    pub struct ParentReference {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub namespace: Option<String>,
        pub name: String,
        pub section_name: Option<String>,
        pub port: Option<u32>,
    }
}

config_struct! {
    /// `BackendObjectReference` plus `weight` (`BackendRef`), and for HTTP routes `filters`
    /// (`HTTPBackendRef`).
    pub struct BackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
        /// Default 1; 0 sends no traffic.
        pub weight: Option<i64>,
        pub filters: Vec<HttpRouteFilter>,
    }
}

config_struct! {
    /// `HTTPRoute.spec`.
    pub struct HttpRoute {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<HttpRouteRule>,
    }
}

config_struct! {
    /// `HTTPRouteRule`.
    pub struct HttpRouteRule {
        pub name: Option<String>,
        pub matches: Vec<HttpRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<BackendRef>,
        pub timeouts: Option<HttpRouteTimeouts>,
        /// GEP-1731.
        pub retry: Option<HttpRouteRetry>,
        pub session_persistence: Option<super::Value>,
    }
}

config_struct! {
    /// `HTTPRouteMatch`: all conditions ANDed; the matches of a rule are ORed.
    pub struct HttpRouteMatch {
        pub path: Option<HttpPathMatch>,
        pub headers: Vec<HttpHeaderMatch>,
        pub query_params: Vec<HttpHeaderMatch>,
        pub method: Option<String>,
    }
}

config_struct! {
    /// `HTTPPathMatch`.
    pub struct HttpPathMatch {
        /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        /// Default `/`.
        pub value: Option<String>,
    }
}

config_struct! {
    /// `HTTPHeaderMatch` and `HTTPQueryParamMatch` (same shape).
    pub struct HttpHeaderMatch {
        /// `Exact` (default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub name: String,
        pub value: String,
    }
}

config_struct! {
    /// `HTTPRouteFilter` (and `GRPCRouteFilter`, a subset): `type` names the one field set.
    pub struct HttpRouteFilter {
        #[serde(rename = "type")]
        pub kind: String,
        pub request_header_modifier: Option<HttpHeaderFilter>,
        pub response_header_modifier: Option<HttpHeaderFilter>,
        pub request_mirror: Option<HttpRequestMirrorFilter>,
        pub request_redirect: Option<HttpRequestRedirectFilter>,
        #[serde(rename = "urlRewrite")]
        pub url_rewrite: Option<HttpUrlRewriteFilter>,
        pub cors: Option<super::Value>,
        pub extension_ref: Option<super::Value>,
    }
}

config_struct! {
    /// `HTTPHeaderFilter`.
    pub struct HttpHeaderFilter {
        pub set: Vec<HttpHeader>,
        pub add: Vec<HttpHeader>,
        pub remove: Vec<String>,
    }
}

config_struct! {
    /// `HTTPHeader`.
    pub struct HttpHeader {
        pub name: String,
        pub value: String,
    }
}

config_struct! {
    /// `HTTPRequestMirrorFilter`.
    pub struct HttpRequestMirrorFilter {
        pub backend_ref: BackendRef,
        pub percent: Option<u32>,
        pub fraction: Option<Fraction>,
    }
}

config_struct! {
    /// `Fraction`.
    pub struct Fraction {
        pub numerator: u32,
        /// Default 100.
        pub denominator: Option<u32>,
    }
}

config_struct! {
    /// `HTTPRequestRedirectFilter`.
    pub struct HttpRequestRedirectFilter {
        pub scheme: Option<String>,
        pub hostname: Option<String>,
        pub path: Option<HttpPathModifier>,
        pub port: Option<u32>,
        /// 301 or 302 (default).
        pub status_code: Option<u32>,
    }
}

config_struct! {
    /// `HTTPPathModifier`.
    pub struct HttpPathModifier {
        /// `ReplaceFullPath` or `ReplacePrefixMatch`.
        #[serde(rename = "type")]
        pub kind: String,
        pub replace_full_path: Option<String>,
        pub replace_prefix_match: Option<String>,
    }
}

config_struct! {
    /// `HTTPURLRewriteFilter`.
    pub struct HttpUrlRewriteFilter {
        pub hostname: Option<String>,
        pub path: Option<HttpPathModifier>,
    }
}

config_struct! {
    /// `HTTPRouteTimeouts`.
    pub struct HttpRouteTimeouts {
        pub request: Option<Duration>,
        pub backend_request: Option<Duration>,
    }
}

config_struct! {
    /// `HTTPRouteRetry` (GEP-1731).
    pub struct HttpRouteRetry {
        pub codes: Vec<u32>,
        pub attempts: Option<u32>,
        pub backoff: Option<Duration>,
    }
}

config_struct! {
    /// `GRPCRoute.spec`.
    pub struct GrpcRoute {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<GrpcRouteRule>,
    }
}

config_struct! {
    /// `GRPCRouteRule`.
    pub struct GrpcRouteRule {
        pub name: Option<String>,
        pub matches: Vec<GrpcRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<BackendRef>,
        pub session_persistence: Option<super::Value>,
    }
}

config_struct! {
    /// `GRPCRouteMatch`.
    pub struct GrpcRouteMatch {
        pub method: Option<GrpcMethodMatch>,
        pub headers: Vec<HttpHeaderMatch>,
    }
}

config_struct! {
    /// `GRPCMethodMatch`.
    pub struct GrpcMethodMatch {
        /// `Exact` (default) or `RegularExpression`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub service: Option<String>,
        pub method: Option<String>,
    }
}

config_struct! {
    /// `TLSRoute.spec` (routes on SNI; the listener passes TLS through).
    pub struct TlsRoute {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<L4RouteRule>,
    }
}

config_struct! {
    /// `TCPRoute.spec`.
    pub struct TcpRoute {
        pub parent_refs: Vec<ParentReference>,
        pub rules: Vec<L4RouteRule>,
    }
}

config_struct! {
    /// `TLSRouteRule` / `TCPRouteRule`.
    pub struct L4RouteRule {
        pub name: Option<String>,
        pub backend_refs: Vec<BackendRef>,
    }
}

config_struct! {
    /// `ReferenceGrant.spec`: lets objects of `from` refer to objects of `to` in the grant's
    /// own namespace.
    pub struct ReferenceGrant {
        pub from: Vec<ReferenceGrantFrom>,
        pub to: Vec<ReferenceGrantTo>,
    }
}

config_struct! {
    /// `ReferenceGrantFrom`.
    pub struct ReferenceGrantFrom {
        pub group: String,
        pub kind: String,
        pub namespace: String,
    }
}

config_struct! {
    /// `ReferenceGrantTo`.
    pub struct ReferenceGrantTo {
        pub group: String,
        pub kind: String,
        pub name: Option<String>,
    }
}

impl Listener {
    /// `HTTPRoute`/`GRPCRoute` for HTTP(S), `TLSRoute` for TLS, `TCPRoute` for TCP: the kinds a
    /// listener admits when `allowedRoutes.kinds` is empty.
    pub fn default_kinds(&self) -> &'static [&'static str] {
        match self.protocol.as_str() {
            "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
            "TLS" => &["TLSRoute"],
            "TCP" => &["TCPRoute"],
            _ => &[],
        }
    }

    /// `tls.mode`, defaulting to `Terminate`.
    pub fn tls_mode(&self) -> &str {
        self.tls
            .as_ref()
            .and_then(|t| t.mode.as_deref())
            .unwrap_or("Terminate")
    }

    /// `allowedRoutes.namespaces.from`, defaulting to `Same`.
    pub fn namespaces_from(&self) -> &str {
        self.allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref())
            .unwrap_or("Same")
    }
}

impl ParentReference {
    /// The parent's kind: `Gateway` unless set.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Gateway")
    }

    /// Whether the parent is a Service (a mesh route, GAMMA).
    pub fn is_service(&self) -> bool {
        self.kind() == "Service" && self.group.as_deref().unwrap_or("").is_empty()
    }

    /// The parent's namespace: the route's unless set.
    pub fn namespace_or<'a>(&'a self, route_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(route_namespace)
    }
}

impl BackendRef {
    /// The backend's kind: `Service` unless set.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Service")
    }

    /// The backend's group: the core group (empty) unless set.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }

    /// The backend's namespace: the route's unless set.
    pub fn namespace_or<'a>(&'a self, route_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(route_namespace)
    }

    /// `weight`, defaulting to 1.
    pub fn weight(&self) -> i64 {
        self.weight.unwrap_or(1)
    }
}

impl KubeLabelSelector {
    /// Whether `labels` satisfy every `matchLabels` entry and `matchExpressions` requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}
