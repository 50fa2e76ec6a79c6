//! Rendering of the load-balancing fields (`lb.rs` sets them): outlier detection, common LB
//! config, ring hash / maglev / slow start, active health checks and route hash policies.

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, LbConfig, SlowStartConfig, common_lb_config,
};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, health_check};
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use envoy_types::pb::google::protobuf::UInt32Value;
use serde_json::{Value, json};

use super::{Obj, duration};

pub fn outlier_detection(o: &OutlierDetection) -> Value {
    let u = |v: &Option<UInt32Value>| v.as_ref().map(|v| json!(v.value));
    Obj::default()
        .opt("consecutive5xx", u(&o.consecutive_5xx))
        .opt("interval", o.interval.as_ref().map(duration))
        .opt(
            "baseEjectionTime",
            o.base_ejection_time.as_ref().map(duration),
        )
        .opt("maxEjectionPercent", u(&o.max_ejection_percent))
        .opt("enforcingConsecutive5xx", u(&o.enforcing_consecutive_5xx))
        .opt("enforcingSuccessRate", u(&o.enforcing_success_rate))
        .opt(
            "consecutiveGatewayFailure",
            u(&o.consecutive_gateway_failure),
        )
        .opt(
            "enforcingConsecutiveGatewayFailure",
            u(&o.enforcing_consecutive_gateway_failure),
        )
        .flag(
            "splitExternalLocalOriginErrors",
            o.split_external_local_origin_errors,
        )
        .opt(
            "consecutiveLocalOriginFailure",
            u(&o.consecutive_local_origin_failure),
        )
        .opt(
            "enforcingConsecutiveLocalOriginFailure",
            u(&o.enforcing_consecutive_local_origin_failure),
        )
        .opt(
            "enforcingLocalOriginSuccessRate",
            u(&o.enforcing_local_origin_success_rate),
        )
        .opt(
            "maxEjectionTime",
            o.max_ejection_time.as_ref().map(duration),
        )
        .done()
}

pub fn common_lb_config(c: &CommonLbConfig) -> Value {
    let locality = match &c.locality_config_specifier {
        Some(common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => {
            Some(("localityWeightedLbConfig", json!({})))
        }
        _ => None,
    };
    let mut o = Obj::default().opt(
        "healthyPanicThreshold",
        c.healthy_panic_threshold
            .as_ref()
            .map(|p| json!({ "value": p.value })),
    );
    if let Some((k, v)) = locality {
        o = o.opt(k, Some(v));
    }
    o.done()
}

/// `(field name, value)` of the cluster's `lb_config` oneof.
pub fn lb_config(c: &LbConfig) -> Option<(&'static str, Value)> {
    let slow = |s: &Option<SlowStartConfig>| {
        s.as_ref().map(|s| {
            Obj::default()
                .opt(
                    "slowStartWindow",
                    s.slow_start_window.as_ref().map(duration),
                )
                .done()
        })
    };
    Some(match c {
        LbConfig::RingHashLbConfig(r) => (
            "ringHashLbConfig",
            Obj::default()
                .opt(
                    "minimumRingSize",
                    r.minimum_ring_size
                        .as_ref()
                        .map(|v| json!(v.value.to_string())),
                )
                .done(),
        ),
        LbConfig::MaglevLbConfig(m) => (
            "maglevLbConfig",
            Obj::default()
                .opt(
                    "tableSize",
                    m.table_size.as_ref().map(|v| json!(v.value.to_string())),
                )
                .done(),
        ),
        LbConfig::RoundRobinLbConfig(r) => (
            "roundRobinLbConfig",
            Obj::default()
                .opt("slowStartConfig", slow(&r.slow_start_config))
                .done(),
        ),
        LbConfig::LeastRequestLbConfig(r) => (
            "leastRequestLbConfig",
            Obj::default()
                .opt("slowStartConfig", slow(&r.slow_start_config))
                .done(),
        ),
        LbConfig::OriginalDstLbConfig(o) => (
            "originalDstLbConfig",
            Obj::default()
                .opt("useHttpHeader", o.use_http_header.then_some(json!(true)))
                .str("httpHeaderName", &o.http_header_name)
                .done(),
        ),
    })
}

pub fn hash_policy(h: &HashPolicy) -> Value {
    use hash_policy::PolicySpecifier as P;
    let o = match &h.policy_specifier {
        Some(P::Header(x)) => Obj::default().opt(
            "header",
            Some(Obj::default().str("headerName", &x.header_name).done()),
        ),
        Some(P::Cookie(c)) => {
            let attributes = c
                .attributes
                .iter()
                .map(|a| {
                    Obj::default()
                        .str("name", &a.name)
                        .str("value", &a.value)
                        .done()
                })
                .collect();
            Obj::default().opt(
                "cookie",
                Some(
                    Obj::default()
                        .str("name", &c.name)
                        .opt("ttl", c.ttl.as_ref().map(duration))
                        .str("path", &c.path)
                        .list("attributes", attributes)
                        .done(),
                ),
            )
        }
        Some(P::ConnectionProperties(c)) => Obj::default().opt(
            "connectionProperties",
            Some(Obj::default().flag("sourceIp", c.source_ip).done()),
        ),
        Some(P::QueryParameter(q)) => Obj::default().opt(
            "queryParameter",
            Some(Obj::default().str("name", &q.name).done()),
        ),
        _ => Obj::default(),
    };
    o.flag("terminal", h.terminal).done()
}

pub fn health_check(h: &HealthCheck) -> Value {
    use health_check::HealthChecker as C;
    let u = |v: &Option<UInt32Value>| v.as_ref().map(|v| json!(v.value));
    let o = Obj::default()
        .opt("timeout", h.timeout.as_ref().map(duration))
        .opt("interval", h.interval.as_ref().map(duration))
        .opt("unhealthyThreshold", u(&h.unhealthy_threshold))
        .opt("healthyThreshold", u(&h.healthy_threshold));
    let checker = match &h.health_checker {
        Some(C::HttpHealthCheck(x)) => {
            let statuses = x
                .expected_statuses
                .iter()
                .map(|r| json!({"start": r.start.to_string(), "end": r.end.to_string()}))
                .collect();
            Some((
                "httpHealthCheck",
                Obj::default()
                    .str("path", &x.path)
                    .list("expectedStatuses", statuses)
                    .done(),
            ))
        }
        Some(C::GrpcHealthCheck(g)) => Some((
            "grpcHealthCheck",
            Obj::default().str("serviceName", &g.service_name).done(),
        )),
        Some(C::TcpHealthCheck(_)) => Some(("tcpHealthCheck", json!({}))),
        _ => None,
    };
    match checker {
        Some((k, v)) => o.opt(k, Some(v)).done(),
        None => o.done(),
    }
}
