//! `HealthCheckPolicy` (`trellis.dev/v1alpha1`) → the cluster's Envoy `health_checks`.
//!
//! A policy applies to the clusters of its host (resolved against its namespace, wildcards as
//! in DestinationRule hosts), of its `subset` when set and of its `port` when set. The first
//! matching policy (by namespace/name) wins. Owns this mapping only.

use envoy_types::pb::envoy::config::core::v3::{HealthCheck, health_check};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use trellis_config::{HealthCheckPolicy, Resource, resolve_host};

use crate::Context;
use crate::route::host_matches;

const DEFAULT_INTERVAL_SECS: i64 = 10;
const DEFAULT_TIMEOUT_SECS: i64 = 1;
const DEFAULT_UNHEALTHY: u32 = 3;
const DEFAULT_HEALTHY: u32 = 1;

/// The `health_checks` of cluster `outbound|port|subset|host`. A gRPC check needs an HTTP/2
/// cluster (Envoy rejects it otherwise), so on an HTTP/1 cluster it is left out.
pub fn health_checks(
    ctx: &Context<'_>,
    host: &str,
    port: u32,
    subset: &str,
    http2: bool,
) -> Vec<HealthCheck> {
    let mut matching: Vec<&Resource<HealthCheckPolicy>> = ctx
        .snapshot
        .health_check_policies
        .iter()
        .filter(|p| {
            let pattern = resolve_host(&p.spec.host, &p.meta.namespace);
            (pattern == host || host_matches(&pattern, host))
                && (p.spec.subset.is_empty() || p.spec.subset == subset)
                && p.spec.port.as_ref().is_none_or(|s| s.number == port)
                && (http2 || p.spec.grpc.is_none() || p.spec.http.is_some())
        })
        .collect();
    matching.sort_by_key(|p| p.key());
    matching
        .first()
        .map(|p| health_check(&p.spec))
        .into_iter()
        .collect()
}

fn health_check(p: &HealthCheckPolicy) -> HealthCheck {
    use health_check::HealthChecker;
    let dur = |d: Option<&trellis_config::Duration>, default: i64| match d.and_then(|d| d.get()) {
        Some(d) => Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        None => Duration {
            seconds: default,
            nanos: 0,
        },
    };
    let checker = match (&p.http, &p.grpc) {
        (Some(h), _) => {
            let statuses = if h.expected_statuses.is_empty() {
                vec![200]
            } else {
                h.expected_statuses.clone()
            };
            HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: h.path.clone(),
                expected_statuses: statuses
                    .into_iter()
                    .map(|c| Int64Range {
                        start: i64::from(c),
                        end: i64::from(c) + 1,
                    })
                    .collect(),
                ..Default::default()
            })
        }
        (None, Some(g)) => HealthChecker::GrpcHealthCheck(health_check::GrpcHealthCheck {
            service_name: g.service_name.clone(),
            ..Default::default()
        }),
        (None, None) => HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default()),
    };
    HealthCheck {
        timeout: Some(dur(p.timeout.as_ref(), DEFAULT_TIMEOUT_SECS)),
        interval: Some(dur(p.interval.as_ref(), DEFAULT_INTERVAL_SECS)),
        unhealthy_threshold: Some(UInt32Value {
            value: p.unhealthy_threshold.unwrap_or(DEFAULT_UNHEALTHY),
        }),
        healthy_threshold: Some(UInt32Value {
            value: p.healthy_threshold.unwrap_or(DEFAULT_HEALTHY),
        }),
        health_checker: Some(checker),
        ..Default::default()
    }
}
