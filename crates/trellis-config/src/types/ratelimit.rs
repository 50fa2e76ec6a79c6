//! `trellis.dev/v1alpha1` `RateLimitPolicy` and `QuotaPolicy`: rate limits and quotas as a
//! typed policy API (Istio offers them only through EnvoyFilter patches).
//!
//! Owns the user-facing shapes only; validation is `validate/ratelimit.rs`, compilation to
//! Envoy's `local_ratelimit` / `ratelimit` filters and route `rate_limits` is in `trellis-xds`,
//! and the global counters are kept by `trellis ratelimit` (`trellis-control`).
//!
//! ```yaml
//! apiVersion: trellis.dev/v1alpha1
//! kind: RateLimitPolicy
//! metadata: {name: productpage, namespace: istio-system}
//! spec:
//!   selector: {matchLabels: {istio: ingressgateway}}  # proxies it applies to (see below)
//!   routes: [productpage]        # only these named VirtualService routes (`http[].name`); all when empty
//!   failureMode: FAIL_OPEN       # or FAIL_CLOSED: when the rate limit service cannot answer
//!   shadow: false                # true: count, report and log, never reject
//!   limits:
//!   - name: productpage          # unique in the policy; the `limit` label of the metrics
//!     descriptors:               # entries in order; a request lacking one is not counted here
//!     - path: {exact: /productpage}
//!     global: {requestsPerUnit: 1, unit: MINUTE}        # counted in Redis by `trellis ratelimit`
//!   - name: per-user
//!     descriptors:
//!     - header: {name: x-user}   # one counter per distinct value
//!     local: {maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}   # a token bucket per proxy
//! ```
//!
//! Attachment follows Istio's policy scoping: a policy in the root namespace (MeshConfig
//! `rootNamespace`, default `istio-system`) without a selector applies to every proxy; in
//! another namespace without a selector, to that namespace's proxies; with `selector`, to the
//! proxies (sidecars or gateways) of its scope whose labels include `matchLabels`. Sidecars
//! enforce on inbound traffic, gateways on everything they route.
//!
//! Descriptor entries (each names exactly one request attribute):
//! - `path`, `method`, `authority`, `routeName`, `sourcePrincipal` (the mTLS peer's SPIFFE
//!   id), `remoteAddress` (the client address, after `numTrustedProxies`): a `StringMatch`,
//!   possibly empty;
//! - `header: {name, match}`; `jwtClaim: {claim, match}` (a claim of the request's verified
//!   JWT, `a.b` for nested claims); `genericKey: {key, value}` (a constant entry).
//!
//! Without `match` each distinct value has its own counter (Envoy's `request_headers` action);
//! with `match`, the limit applies only to requests whose value matches, and all of them share
//! one counter (Envoy's `header_value_match`), as Istio's docs do for `/api/v1/products/*`.
//!
//! `QuotaPolicy` is a long-window global limit per consumer:
//!
//! ```yaml
//! apiVersion: trellis.dev/v1alpha1
//! kind: QuotaPolicy
//! metadata: {name: api-plan, namespace: default}
//! spec:
//!   selector: {matchLabels: {app: productpage}}
//!   routes: []
//!   consumer: {jwtClaim: sub}    # or {header: x-api-key} or {sourcePrincipal: {}}
//!   quotas:
//!   - name: daily
//!     requests: 1000
//!     window: DAY                # HOUR, DAY or MONTH: calendar windows in UTC
//!   failureMode: FAIL_OPEN
//! ```
//!
//! A request without a consumer is not counted by a quota. Usage is kept in Redis (so it
//! survives restarts) and read through `GET /api/v1/quotas/...` and `trellis quota get`.

use super::istio::config_struct;
use super::{Duration, StringMatch, WorkloadSelector};
use serde::{Deserialize, Serialize};

config_struct! {
    /// `RateLimitPolicy.spec`.
    pub struct RateLimitPolicy {
        pub selector: Option<WorkloadSelector>,
        /// Names of VirtualService HTTP routes (`http[].name`); empty: every route.
        pub routes: Vec<String>,
        pub failure_mode: Option<FailureMode>,
        pub shadow: bool,
        pub limits: Vec<RateLimit>,
    }
}

config_struct! {
    /// One limit of a `RateLimitPolicy`: a descriptor and a local bucket, a global rate, or both.
    pub struct RateLimit {
        pub name: String,
        pub descriptors: Vec<DescriptorEntry>,
        pub local: Option<TokenBucket>,
        pub global: Option<GlobalRate>,
    }
}

config_struct! {
    /// One descriptor entry: exactly one field set (checked by validation).
    pub struct DescriptorEntry {
        pub path: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        pub route_name: Option<StringMatch>,
        pub source_principal: Option<StringMatch>,
        pub remote_address: Option<StringMatch>,
        pub header: Option<AttributeDescriptor>,
        pub jwt_claim: Option<AttributeDescriptor>,
        pub generic_key: Option<GenericKey>,
    }
}

config_struct! {
    /// `header` (`name` is the header) or `jwtClaim` (`claim` is the claim path).
    pub struct AttributeDescriptor {
        pub name: String,
        pub claim: String,
        #[serde(rename = "match")]
        pub value: Option<StringMatch>,
    }
}

config_struct! {
    /// A constant entry `key=value`.
    pub struct GenericKey {
        pub key: String,
        pub value: String,
    }
}

config_struct! {
    /// Envoy's token bucket: starts full with `maxTokens`, gains `tokensPerFill` (default
    /// `maxTokens`) every `fillInterval`, never above `maxTokens`; a request takes one token.
    pub struct TokenBucket {
        pub max_tokens: u32,
        pub tokens_per_fill: Option<u32>,
        pub fill_interval: Option<Duration>,
    }
}

config_struct! {
    /// A fixed-window global rate, as envoyproxy/ratelimit's `requests_per_unit` + `unit`.
    pub struct GlobalRate {
        pub requests_per_unit: u32,
        pub unit: Option<RateUnit>,
    }
}

config_struct! {
    /// `QuotaPolicy.spec`.
    pub struct QuotaPolicy {
        pub selector: Option<WorkloadSelector>,
        pub routes: Vec<String>,
        pub consumer: Option<QuotaConsumer>,
        pub quotas: Vec<Quota>,
        pub failure_mode: Option<FailureMode>,
        pub shadow: bool,
    }
}

config_struct! {
    /// Who a quota belongs to: exactly one field set.
    pub struct QuotaConsumer {
        /// A claim of the verified JWT (`sub`, or `a.b` for nested claims).
        pub jwt_claim: String,
        /// A request header, e.g. an API key.
        pub header: String,
        /// The mTLS peer's SPIFFE id.
        pub source_principal: Option<super::Value>,
    }
}

config_struct! {
    /// `requests` per calendar `window`.
    pub struct Quota {
        pub name: String,
        pub requests: u64,
        pub window: Option<QuotaWindow>,
    }
}

/// What a proxy does when the rate limit service (or its Redis) cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum FailureMode {
    /// Admit the request (Envoy's default, `failure_mode_deny: false`).
    #[default]
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// Reject it with 500 (Envoy's `failure_mode_deny: true`).
    #[serde(rename = "FAIL_CLOSED")]
    FailClosed,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`, the ones a fixed window uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum RateUnit {
    #[serde(rename = "SECOND")]
    Second,
    #[default]
    #[serde(rename = "MINUTE")]
    Minute,
    #[serde(rename = "HOUR")]
    Hour,
    #[serde(rename = "DAY")]
    Day,
}

/// A quota's calendar window (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum QuotaWindow {
    #[serde(rename = "HOUR")]
    Hour,
    #[default]
    #[serde(rename = "DAY")]
    Day,
    #[serde(rename = "MONTH")]
    Month,
}

impl RateUnit {
    /// Window length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
            RateUnit::Day => 86_400,
        }
    }
}
