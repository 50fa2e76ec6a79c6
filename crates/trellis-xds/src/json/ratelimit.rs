//! Rendering of the rate limit filters (`ratelimit.rs`): `local_ratelimit` with its
//! descriptors, `ratelimit` with its service, and routes' `rate_limits` actions. Same
//! proto3-JSON conventions as the parent module.

use envoy_types::pb::envoy::config::core::v3::{RuntimeFractionalPercent, grpc_service};
use envoy_types::pb::envoy::config::route::v3::RateLimit;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{ActionSpecifier, meta_data};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key;
use envoy_types::pb::envoy::r#type::v3::TokenBucket;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde_json::{Value, json};

use super::{Obj, duration, header_matcher};

/// The JSON of a rate limit filter `Any`, if it is one.
pub(super) fn filter_config(any: &Any) -> Option<Value> {
    let bytes = any.value.as_slice();
    if any.type_url == LocalRateLimit::type_url() {
        return LocalRateLimit::decode(bytes).ok().map(|c| local(&c));
    }
    if any.type_url == RateLimitFilter::type_url() {
        return RateLimitFilter::decode(bytes).ok().map(|c| global(&c));
    }
    None
}

fn headers_version(v: i32) -> Option<Value> {
    (v == XRateLimitHeadersRfcVersion::DraftVersion03 as i32).then(|| json!("DRAFT_VERSION_03"))
}

fn runtime_percent(p: &RuntimeFractionalPercent) -> Value {
    let d = p.default_value.unwrap_or_default();
    json!({
        "defaultValue": {"numerator": d.numerator, "denominator": "HUNDRED"},
        "runtimeKey": p.runtime_key,
    })
}

fn bucket(b: &TokenBucket) -> Value {
    Obj::default()
        .num("maxTokens", u64::from(b.max_tokens))
        .opt("tokensPerFill", b.tokens_per_fill.map(|v| json!(v.value)))
        .opt("fillInterval", b.fill_interval.as_ref().map(duration))
        .done()
}

fn local(c: &LocalRateLimit) -> Value {
    let descriptors = c
        .descriptors
        .iter()
        .map(|d| {
            let entries = d
                .entries
                .iter()
                .map(|e| {
                    Obj::default()
                        .str("key", &e.key)
                        .str("value", &e.value)
                        .done()
                })
                .collect();
            Obj::default()
                .list("entries", entries)
                .opt("tokenBucket", d.token_bucket.as_ref().map(bucket))
                .flag("shadowMode", d.shadow_mode)
                .done()
        })
        .collect();
    Obj::typed(&LocalRateLimit::type_url())
        .str("statPrefix", &c.stat_prefix)
        .opt("tokenBucket", c.token_bucket.as_ref().map(bucket))
        .opt(
            "filterEnabled",
            c.filter_enabled.as_ref().map(runtime_percent),
        )
        .opt(
            "filterEnforced",
            c.filter_enforced.as_ref().map(runtime_percent),
        )
        .list("descriptors", descriptors)
        .num("stage", u64::from(c.stage))
        .opt(
            "enableXRatelimitHeaders",
            headers_version(c.enable_x_ratelimit_headers),
        )
        .opt(
            "alwaysConsumeDefaultTokenBucket",
            c.always_consume_default_token_bucket
                .map(|v| json!(v.value)),
        )
        .flag(
            "rateLimitedAsResourceExhausted",
            c.rate_limited_as_resource_exhausted,
        )
        .opt(
            "maxDynamicDescriptors",
            c.max_dynamic_descriptors.map(|v| json!(v.value)),
        )
        .flag("enableRetryAfterHeader", c.enable_retry_after_header)
        .done()
}

fn global(c: &RateLimitFilter) -> Value {
    let service = c.rate_limit_service.as_ref().map(|s| {
        let cluster = s
            .grpc_service
            .as_ref()
            .and_then(|g| match &g.target_specifier {
                Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => Some(e.cluster_name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        json!({
            "grpcService": {"envoyGrpc": {"clusterName": cluster}},
            "transportApiVersion": "V3",
        })
    });
    Obj::typed(&RateLimitFilter::type_url())
        .str("domain", &c.domain)
        .num("stage", u64::from(c.stage))
        .str("requestType", &c.request_type)
        .opt("timeout", c.timeout.as_ref().map(duration))
        .flag("failureModeDeny", c.failure_mode_deny)
        .flag(
            "rateLimitedAsResourceExhausted",
            c.rate_limited_as_resource_exhausted,
        )
        .opt("rateLimitService", service)
        .opt(
            "enableXRatelimitHeaders",
            headers_version(c.enable_x_ratelimit_headers),
        )
        .str("statPrefix", &c.stat_prefix)
        .flag("enableRetryAfterHeader", c.enable_retry_after_header)
        .done()
}

/// A route action's `rateLimits`.
pub(super) fn rate_limits(limits: &[RateLimit]) -> Vec<Value> {
    limits.iter().map(rate_limit).collect()
}

fn rate_limit(r: &RateLimit) -> Value {
    let actions = r
        .actions
        .iter()
        .filter_map(|a| a.action_specifier.as_ref())
        .map(action)
        .collect();
    Obj::default()
        .opt("stage", r.stage.map(|s| json!(s.value)))
        .list("actions", actions)
        .done()
}

fn action(a: &ActionSpecifier) -> Value {
    match a {
        ActionSpecifier::RequestHeaders(h) => json!({"requestHeaders": Obj::default()
            .str("headerName", &h.header_name)
            .str("descriptorKey", &h.descriptor_key)
            .flag("skipIfAbsent", h.skip_if_absent)
            .done()}),
        ActionSpecifier::GenericKey(g) => json!({"genericKey": Obj::default()
            .str("descriptorValue", &g.descriptor_value)
            .str("descriptorKey", &g.descriptor_key)
            .done()}),
        ActionSpecifier::HeaderValueMatch(h) => json!({"headerValueMatch": Obj::default()
            .str("descriptorValue", &h.descriptor_value)
            .str("descriptorKey", &h.descriptor_key)
            .opt("expectMatch", h.expect_match.map(|v| json!(v.value)))
            .list("headers", h.headers.iter().map(header_matcher).collect())
            .done()}),
        ActionSpecifier::RemoteAddress(_) => json!({"remoteAddress": {}}),
        ActionSpecifier::Metadata(m) => {
            let key = m.metadata_key.as_ref().map(|k| {
                let path: Vec<Value> = k
                    .path
                    .iter()
                    .filter_map(|p| match &p.segment {
                        Some(metadata_key::path_segment::Segment::Key(s)) => {
                            Some(json!({"key": s}))
                        }
                        _ => None,
                    })
                    .collect();
                json!({"key": k.key, "path": path})
            });
            let source = if m.source == meta_data::Source::RouteEntry as i32 {
                "ROUTE_ENTRY"
            } else {
                "DYNAMIC"
            };
            json!({"metadata": Obj::default()
                .str("descriptorKey", &m.descriptor_key)
                .opt("metadataKey", key)
                .str("defaultValue", &m.default_value)
                .str("source", source)
                .flag("skipIfAbsent", m.skip_if_absent)
                .done()})
        }
        _ => json!({}),
    }
}
