//! The typed configuration model users write: Kubernetes object metadata, the loaded
//! [`Snapshot`], and small shared value types (durations, string matches, int-or-string).
//! Istio kinds live in `types/istio.rs`, Kubernetes kinds in `types/kube.rs`.
//! Every field is optional here (proto3 semantics); required-ness is `validate.rs`'s job.
//! These types never fail to deserialize on their own: the collecting deserializer
//! (`de.rs`) reports problems and substitutes neutral values.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

pub mod authorization;
pub mod gateway_api;
pub mod istio;
pub mod kube;
pub mod peer_authentication;
pub mod ratelimit;
pub mod request_authentication;
pub mod route_actions;
pub mod trellis;

pub use authorization::*;
pub use istio::*;
pub use kube::*;
pub use peer_authentication::*;
pub use ratelimit::*;
pub use request_authentication::*;
pub use route_actions::{base64_decode, base64_encode, grpc_status_code};
pub use trellis::*;

/// Opaque JSON-like value for parts we accept but do not model (status, managedFields, …).
pub type Value = serde_json::Value;

/// Kubernetes object metadata, as `kubectl get -o yaml` prints it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// Filled with `"default"` by the loader when absent.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub generate_name: String,
    pub uid: String,
    pub resource_version: String,
    pub generation: i64,
    pub creation_timestamp: Option<String>,
    pub deletion_timestamp: Option<String>,
    pub deletion_grace_period_seconds: Option<i64>,
    pub self_link: String,
    pub finalizers: Vec<String>,
    pub owner_references: Vec<Value>,
    pub managed_fields: Vec<Value>,
}

/// One loaded object: its metadata, its spec, and where it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resource<T> {
    pub meta: ObjectMeta,
    pub spec: T,
    pub file: String,
    /// 1-based line of the object's first key.
    pub line: usize,
}

/// Everything one load produced, by kind, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub virtual_services: Vec<Resource<VirtualService>>,
    pub destination_rules: Vec<Resource<DestinationRule>>,
    pub gateways: Vec<Resource<Gateway>>,
    pub service_entries: Vec<Resource<ServiceEntry>>,
    pub workload_entries: Vec<Resource<WorkloadEntry>>,
    pub services: Vec<Resource<KubeService>>,
    pub endpoint_slices: Vec<Resource<EndpointSlice>>,
    /// `trellis.dev/v1alpha1` HealthCheckPolicy.
    pub health_check_policies: Vec<Resource<HealthCheckPolicy>>,
    /// `trellis.dev/v1alpha1` `DestinationPolicy`.
    pub destination_policies: Vec<Resource<DestinationPolicy>>,
    /// `security.istio.io` AuthorizationPolicy.
    pub authorization_policies: Vec<Resource<AuthorizationPolicy>>,
    /// `trellis.dev/v1alpha1` `MeshConfig` (at most one).
    pub mesh_configs: Vec<Resource<MeshConfig>>,
    /// `security.istio.io` `RequestAuthentication`.
    pub request_authentications: Vec<Resource<RequestAuthentication>>,
    /// `security.istio.io` PeerAuthentication.
    pub peer_authentications: Vec<Resource<PeerAuthentication>>,
    /// `trellis.dev/v1alpha1` `RateLimitPolicy`.
    pub rate_limit_policies: Vec<Resource<RateLimitPolicy>>,
    /// `trellis.dev/v1alpha1` `QuotaPolicy`.
    pub quota_policies: Vec<Resource<QuotaPolicy>>,
    /// Core `v1` Secret (gateway TLS credentials).
    pub secrets: Vec<Resource<Secret>>,
    /// Gateway API `GatewayClass`.
    pub gateway_classes: Vec<Resource<gateway_api::GatewayClass>>,
    /// Gateway API `Gateway` (Istio's `Gateway` is [`Snapshot::gateways`]).
    pub gateway_api_gateways: Vec<Resource<gateway_api::Gateway>>,
    /// Gateway API `HTTPRoute`.
    pub http_routes: Vec<Resource<gateway_api::HttpRoute>>,
    /// Gateway API `GRPCRoute`.
    pub grpc_routes: Vec<Resource<gateway_api::GrpcRoute>>,
    /// Gateway API `TLSRoute`.
    pub tls_routes: Vec<Resource<gateway_api::TlsRoute>>,
    /// Gateway API `TCPRoute`.
    pub tcp_routes: Vec<Resource<gateway_api::TcpRoute>>,
    /// Gateway API `ReferenceGrant`.
    pub reference_grants: Vec<Resource<gateway_api::ReferenceGrant>>,
}

/// A duration as Istio accepts it: protobuf-JSON (`"5s"`, `"0.5s"`) or Go form
/// (`"1h2m3.5s"`, `"100ms"`). Kept as written; [`Duration::parse`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Duration(pub String);

/// Kubernetes `IntOrString` (e.g. a Service's `targetPort: 8080` or `targetPort: http`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

/// Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex` (checked by validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    /// RE2 syntax.
    pub regex: Option<String>,
}

/// A borrowed view of a [`StringMatch`] once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

/// Istio `Percent`: a value in 0.0..=100.0.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Percent {
    pub value: f64,
}

/// Istio `networking.v1` `WorkloadSelector` (`labels`), as in `ServiceEntry.workloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct LabelSelector {
    pub labels: BTreeMap<String, String>,
}

/// Istio `type.v1beta1` `WorkloadSelector` (`matchLabels`), as in `DestinationRule.workloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

impl Snapshot {
    /// The mesh settings: the `MeshConfig` if one is loaded, else Istio's defaults.
    pub fn mesh_config(&self) -> MeshConfig {
        self.mesh_configs
            .first()
            .map(|m| m.spec.clone())
            .unwrap_or_default()
    }

    /// Number of resources of all kinds.
    pub fn len(&self) -> usize {
        self.virtual_services.len()
            + self.destination_rules.len()
            + self.gateways.len()
            + self.service_entries.len()
            + self.workload_entries.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.health_check_policies.len()
            + self.destination_policies.len()
            + self.authorization_policies.len()
            + self.mesh_configs.len()
            + self.request_authentications.len()
            + self.peer_authentications.len()
            + self.rate_limit_policies.len()
            + self.quota_policies.len()
            + self.secrets.len()
            + self.gateway_api_len()
    }

    /// Number of Gateway API resources (all kinds).
    pub fn gateway_api_len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateway_api_gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.tls_routes.len()
            + self.tcp_routes.len()
            + self.reference_grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Resource<T> {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.meta.namespace, self.meta.name)
    }
}

impl Duration {
    /// Parses the Go/protobuf duration syntax: `[-]` then one or more `<number><unit>`
    /// with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; a bare `0` is zero.
    /// Negative durations are rejected (Istio has no use for them).
    pub fn parse(&self) -> Result<std::time::Duration, String> {
        parse_duration(&self.0)
    }

    /// The parsed duration, or `None` when invalid (validation reports those).
    pub fn get(&self) -> Option<std::time::Duration> {
        self.parse().ok()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<IntOrString, E> {
                Ok(IntOrString::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<IntOrString, E> {
                Ok(IntOrString::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl StringMatch {
    /// The single populated matcher; `None` if none (or, before validation, several) are set.
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }

    /// How many of `exact`/`prefix`/`regex` are set.
    pub fn set_count(&self) -> usize {
        usize::from(self.exact.is_some())
            + usize::from(self.prefix.is_some())
            + usize::from(self.regex.is_some())
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad =
        || format!("invalid duration `{s}`; use a number with a unit, e.g. `5s`, `100ms`, `1m30s`");
    let t = s.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if t.starts_with('-') {
        return Err(format!("invalid duration `{s}`: must not be negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * factor;
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| bad())
}
