//! Retries and circuit breakers: Istio `HTTPRetry` -> Envoy `RetryPolicy` (Istio's
//! `ConvertPolicy`, including its default policy for routes without `retries`), and
//! DestinationRule `connectionPool` plus the Trellis retry budget -> the cluster's
//! `circuit_breakers`, upstream `common_http_protocol_options` and
//! `upstream_connection_options`. Builds no routes or clusters of its own; it fills fields of
//! the ones `route.rs` and `cluster.rs` build.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::{
    Thresholds, thresholds::RetryBudget,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, UpstreamConnectionOptions};
use envoy_types::pb::envoy::config::core::v3::TcpKeepalive;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, header_matcher, retry_policy,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use trellis_config::{
    ConnectionPoolSettings, DestinationPolicy, HttpRetry, Resource, resolve_host,
};

use crate::cluster::HTTP_PROTOCOL_OPTIONS;
use crate::route::host_matches;
use crate::{Cluster, Context};

/// Istio's default `retryOn` for routes without `retries`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Methods retried on every `retryOn` condition unless a route opts in to more (RFC 9110
/// idempotent methods). `:method` must match this for `retriable_request_headers`.
pub const IDEMPOTENT_METHODS: &str = "GET|HEAD|OPTIONS|TRACE|PUT|DELETE";
pub const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
pub const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";
/// Istio's `update_frequency` for `retryRemoteLocalities`.
pub const PREVIOUS_PRIORITIES_UPDATE_FREQUENCY: i32 = 2;
/// Linkerd's default retry budget: retries may add 20% to the requests, plus 10 a second.
pub const DEFAULT_RETRY_PERCENT: f64 = 20.0;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// A per-destination retry budget (`DestinationPolicy.retryBudget`, or the default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetSpec {
    pub retry_percent: f64,
    pub min_retries_per_second: u32,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        RetryBudgetSpec {
            retry_percent: DEFAULT_RETRY_PERCENT,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

impl RetryBudgetSpec {
    /// The budget for `host`: from the most specific `DestinationPolicy` (exact host, then the
    /// longest wildcard; ties by namespace/name), unset fields at their defaults.
    pub(crate) fn for_host(ctx: &Context<'_>, host: &str) -> RetryBudgetSpec {
        let mut best: Option<(usize, &Resource<DestinationPolicy>)> = None;
        for p in &ctx.snapshot.destination_policies {
            let pattern = resolve_host(&p.spec.host, &p.meta.namespace);
            let rank = if pattern == host {
                usize::MAX
            } else if host_matches(&pattern, host) {
                pattern.len()
            } else {
                continue;
            };
            if best.is_none_or(|(r, b)| rank > r || (rank == r && p.key() < b.key())) {
                best = Some((rank, p));
            }
        }
        let mut out = RetryBudgetSpec::default();
        if let Some(b) = best.and_then(|(_, p)| p.spec.retry_budget.as_ref()) {
            if let Some(pct) = b.retry_percent {
                out.retry_percent = pct;
            }
            if let Some(min) = b.min_retries_per_second {
                out.min_retries_per_second = min;
            }
        }
        out
    }
}

/// Istio's `ConvertPolicy`: `None` retries disable nothing (the default policy), `attempts: 0`
/// disables retries. Unless `non_idempotent`, `retriable_request_headers` limits retries to
/// idempotent methods (the proxy still retries any request that never reached the upstream).
pub fn retry_policy(retries: Option<&HttpRetry>, non_idempotent: bool) -> Option<RetryPolicy> {
    let mut out = RetryPolicy {
        num_retries: Some(UInt32Value { value: 2 }),
        retry_on: DEFAULT_RETRY_ON.into(),
        retriable_status_codes: vec![503],
        host_selection_retry_max_attempts: 5,
        retry_host_predicate: vec![previous_hosts()],
        ..Default::default()
    };
    if let Some(r) = retries {
        if r.attempts <= 0 {
            return None;
        }
        out.num_retries = Some(UInt32Value {
            value: r.attempts.unsigned_abs(),
        });
        if !r.retry_on.trim().is_empty() {
            let (conditions, codes) = parse_retry_on(&r.retry_on);
            out.retry_on = conditions;
            out.retriable_status_codes = codes;
            if !out.retriable_status_codes.is_empty()
                && !out.retry_on.contains("retriable-status-codes")
            {
                if !out.retry_on.is_empty() {
                    out.retry_on.push(',');
                }
                out.retry_on.push_str("retriable-status-codes");
            }
        }
        if let Some(d) = r.per_try_timeout.as_ref().and_then(|d| d.get()) {
            out.per_try_timeout = Some(proto_duration(d));
        }
        if r.retry_ignore_previous_hosts == Some(false) {
            out.retry_host_predicate.clear();
        }
        if r.retry_remote_localities == Some(true) {
            out.retry_priority = Some(previous_priorities());
        }
        if let Some(d) = r.backoff.as_ref().and_then(|d| d.get()) {
            out.retry_back_off = Some(retry_policy::RetryBackOff {
                base_interval: Some(proto_duration(d)),
                max_interval: None,
            });
        }
    }
    if !non_idempotent {
        out.retriable_request_headers = vec![HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                        regex: IDEMPOTENT_METHODS.into(),
                        ..Default::default()
                    })),
                    ignore_case: false,
                },
            )),
            ..Default::default()
        }];
    }
    Some(out)
}

/// Conditions joined by commas, and the integer parts as status codes (Istio's `parseRetryOn`).
fn parse_retry_on(s: &str) -> (String, Vec<u32>) {
    let mut conditions = Vec::new();
    let mut codes = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(c) if (100..=599).contains(&c) => codes.push(c),
            _ => conditions.push(part),
        }
    }
    (conditions.join(","), codes)
}

/// `retryRemoteLocalities`: Istio's `previous_priorities` retry priority, updated every two
/// attempts (the first two use the normal priority load, later ones avoid the priorities
/// already tried).
fn previous_priorities() -> retry_policy::RetryPriority {
    retry_policy::RetryPriority {
        name: PREVIOUS_PRIORITIES.into(),
        config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
            pack_any(PreviousPrioritiesConfig {
                update_frequency: PREVIOUS_PRIORITIES_UPDATE_FREQUENCY,
            }),
        )),
    }
}

fn previous_hosts() -> retry_policy::RetryHostPredicate {
    retry_policy::RetryHostPredicate {
        name: PREVIOUS_HOSTS.into(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            pack_any(PreviousHostsPredicate::default()),
        )),
    }
}

/// Istio's circuit breaker thresholds (unset limits are u32::MAX, as Istio emits them) plus
/// the retry budget, and the connection pool's upstream HTTP and TCP options.
pub fn apply_connection_pool(
    cluster: &mut Cluster,
    pool: Option<&ConnectionPoolSettings>,
    budget: RetryBudgetSpec,
) {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let limit = |v: Option<i32>| {
        Some(UInt32Value {
            value: v.filter(|v| *v > 0).map_or(u32::MAX, |v| v.unsigned_abs()),
        })
    };
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: limit(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
            retry_budget: Some(RetryBudget {
                budget_percent: Some(Percent {
                    value: budget.retry_percent,
                }),
                min_retry_concurrency: Some(UInt32Value {
                    value: budget.min_retries_per_second,
                }),
                budget_interval: None,
            }),
            track_remaining: true,
            ..Default::default()
        }],
        per_host_thresholds: Vec::new(),
    });
    if let Some(k) = tcp.and_then(|t| t.tcp_keepalive.as_ref()) {
        let secs = |d: Option<&trellis_config::Duration>| {
            d.and_then(|d| d.get()).map(|d| UInt32Value {
                value: u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
            })
        };
        cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive {
                keepalive_probes: k.probes.map(|value| UInt32Value { value }),
                keepalive_time: secs(k.time.as_ref()),
                keepalive_interval: secs(k.interval.as_ref()),
            }),
            ..Default::default()
        });
    }
    // Istio: `http.idleTimeout`, else `tcp.idleTimeout`, is the upstream connection idle
    // timeout; `tcp.maxConnectionDuration` the connection age limit; `http.maxConcurrentStreams`
    // applies to HTTP/2 clusters only.
    let idle = http
        .and_then(|h| h.idle_timeout.as_ref())
        .or_else(|| tcp.and_then(|t| t.idle_timeout.as_ref()))
        .and_then(|d| d.get());
    let per_connection = http
        .and_then(|h| h.max_requests_per_connection)
        .filter(|v| *v > 0);
    let max_duration = tcp
        .and_then(|t| t.max_connection_duration.as_ref())
        .and_then(|d| d.get());
    let max_streams = http
        .and_then(|h| h.max_concurrent_streams)
        .filter(|v| *v > 0);
    if idle.is_none() && per_connection.is_none() && max_duration.is_none() && max_streams.is_none()
    {
        return;
    }
    let Some(any) = cluster
        .typed_extension_protocol_options
        .get_mut(HTTP_PROTOCOL_OPTIONS)
    else {
        return;
    };
    let Ok(mut opts) = HttpProtocolOptions::decode(any.value.as_slice()) else {
        return;
    };
    let common = opts.common_http_protocol_options.get_or_insert_default();
    if let Some(d) = idle {
        common.idle_timeout = Some(proto_duration(d));
    }
    if let Some(n) = per_connection {
        common.max_requests_per_connection = Some(UInt32Value {
            value: n.unsigned_abs(),
        });
    }
    if let Some(d) = max_duration {
        common.max_connection_duration = Some(proto_duration(d));
    }
    if let Some(n) = max_streams
        && let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
            &mut opts.upstream_protocol_options
        && let Some(ProtocolConfig::Http2ProtocolOptions(h2)) = &mut explicit.protocol_config
    {
        h2.max_concurrent_streams = Some(UInt32Value {
            value: n.unsigned_abs(),
        });
    }
    *any = pack_any(opts);
}

fn proto_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(attempts: i32, on: &str) -> HttpRetry {
        HttpRetry {
            attempts,
            retry_on: on.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_policy_is_istios() {
        let p = retry_policy(None, false).unwrap();
        assert_eq!(p.num_retries.unwrap().value, 2);
        assert_eq!(p.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert_eq!(p.retry_host_predicate[0].name, PREVIOUS_HOSTS);
        assert_eq!(p.retriable_request_headers.len(), 1);
        assert!(
            retry_policy(None, true)
                .unwrap()
                .retriable_request_headers
                .is_empty()
        );
    }

    #[test]
    fn attempts_zero_disables_and_codes_become_retriable_status_codes() {
        assert!(retry_policy(Some(&retry(0, "5xx")), false).is_none());
        let p = retry_policy(Some(&retry(3, "gateway-error, 409,429")), false).unwrap();
        assert_eq!(p.num_retries.unwrap().value, 3);
        assert_eq!(p.retry_on, "gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![409, 429]);
        let p = retry_policy(Some(&retry(1, "")), false).unwrap();
        assert_eq!(p.retry_on, DEFAULT_RETRY_ON);
    }
}
