//! Which endpoint a request goes to, as Istio compiles it: `outlierDetection` → the cluster's
//! `outlier_detection` and panic threshold; `consistentHash` → `RING_HASH`/`MAGLEV` on the cluster
//! and `hash_policy` on the route; `warmupDurationSecs` → slow start; `localityLbSetting` →
//! per-proxy priorities (failover, failoverPriority) or locality weights (distribute) in the
//! `ClusterLoadAssignment`.
//!
//! Follows Istio's `pilot/pkg/networking/core/loadbalancer` semantics (locality LB only when
//! outlier detection is set, since otherwise traffic never fails over). It does not choose which
//! clusters exist (`cluster.rs`) nor match routes (`route.rs`).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    RoundRobinLbConfig, SlowStartConfig, common_lb_config,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection as XOutlier};
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use envoy_types::pb::envoy::config::route::v3::{Route, route, route_action};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value, UInt64Value};
use trellis_config::{
    ConsistentHashLb, Endpoint, LoadBalancerSettings, LocalityLoadBalancerSetting, OutlierDetection,
};

use crate::cluster::{EndpointSpec, load_balancer_for, parse_locality};
use crate::{Context, ProxyIdentity};

/// Istio's default ring size for `consistentHash` without `ringHash`/`maglev`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Labels `failoverPriority` compares through the locality instead of endpoint labels.
const REGION_LABEL: &str = "topology.kubernetes.io/region";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// Cluster-level load-balancing fields: `lb_policy` (+ ring hash / maglev / slow start config),
/// `outlier_detection` and `common_lb_config` (panic threshold, locality weighted LB).
pub fn apply_cluster(
    c: &mut Cluster,
    lb: Option<&LoadBalancerSettings>,
    outlier: Option<&OutlierDetection>,
) {
    if let Some(ch) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        if let Some(m) = &ch.maglev {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: (m.table_size > 0).then_some(UInt64Value {
                    value: m.table_size,
                }),
            }));
        } else {
            let size = ch
                .ring_hash
                .as_ref()
                .map(|r| r.minimum_ring_size)
                .filter(|s| *s > 0)
                .or(ch.minimum_ring_size.filter(|s| *s > 0))
                .unwrap_or(DEFAULT_MIN_RING_SIZE);
            c.lb_policy = LbPolicy::RingHash as i32;
            c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: size }),
                ..Default::default()
            }));
        }
    } else if let Some(window) = lb.and_then(warmup_window) {
        let slow_start = Some(SlowStartConfig {
            slow_start_window: Some(window),
            ..Default::default()
        });
        c.lb_config = Some(if c.lb_policy == LbPolicy::RoundRobin as i32 {
            LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                slow_start_config: slow_start,
            })
        } else {
            LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                slow_start_config: slow_start,
                ..Default::default()
            })
        });
    }
    let mut common = CommonLbConfig::default();
    if let Some(od) = outlier {
        c.outlier_detection = Some(outlier_detection(od));
        // Istio: minHealthPercent (default 0) is Envoy's panic threshold.
        let min = od.min_health_percent.unwrap_or(0).clamp(0, 100);
        common.healthy_panic_threshold = Some(Percent {
            value: f64::from(min),
        });
    }
    let locality = lb.and_then(|l| l.locality_lb_setting.as_ref());
    if outlier.is_some() && locality.is_some_and(|l| !l.distribute.is_empty() && enabled(l)) {
        common.locality_config_specifier = Some(
            common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                common_lb_config::LocalityWeightedLbConfig {},
            ),
        );
    }
    if common != CommonLbConfig::default() {
        c.common_lb_config = Some(common);
    }
}

/// `warmupDurationSecs` (or `warmup.duration`) as a protobuf duration, when set and positive.
fn warmup_window(lb: &LoadBalancerSettings) -> Option<Duration> {
    let d = lb
        .warmup_duration_secs
        .as_ref()
        .or(lb.warmup.as_ref().and_then(|w| w.duration.as_ref()))
        .and_then(|d| d.get())
        .filter(|d| !d.is_zero())?;
    Some(proto_duration(d))
}

fn proto_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Istio's `applyOutlierDetection`: success-rate ejection off, each consecutive-error detector
/// enforced at 100% when its threshold is positive.
pub fn outlier_detection(od: &OutlierDetection) -> XOutlier {
    let u32v = |value: u32| Some(UInt32Value { value });
    let enforce = |v: u32| u32v(if v > 0 { 100 } else { 0 });
    let mut out = XOutlier {
        enforcing_success_rate: u32v(0),
        ..Default::default()
    };
    let five_xx = od
        .consecutive_5xx_errors
        .or(od.consecutive_errors.map(|v| u32::try_from(v).unwrap_or(0)));
    if let Some(v) = five_xx {
        out.consecutive_5xx = u32v(v);
        out.enforcing_consecutive_5xx = enforce(v);
    }
    if let Some(v) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = u32v(v);
        out.enforcing_consecutive_gateway_failure = enforce(v);
    }
    if let Some(d) = od.interval.as_ref().and_then(|d| d.get()) {
        out.interval = Some(proto_duration(d));
    }
    if let Some(d) = od.base_ejection_time.as_ref().and_then(|d| d.get()) {
        out.base_ejection_time = Some(proto_duration(d));
    }
    if let Some(p) = od.max_ejection_percent.filter(|p| *p > 0) {
        out.max_ejection_percent = u32v(u32::try_from(p.min(100)).unwrap_or(100));
    }
    if od.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = od.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = u32v(v);
            out.enforcing_consecutive_local_origin_failure = u32v(100);
        }
        out.enforcing_local_origin_success_rate = u32v(0);
    }
    out
}

/// The route's `hash_policy` for a destination's `consistentHash` (Istio's
/// `consistentHashToHashPolicy`).
pub fn hash_policy(lb: Option<&LoadBalancerSettings>) -> Vec<HashPolicy> {
    let Some(ch) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return Vec::new();
    };
    hash_policy_of(ch).into_iter().collect()
}

/// The route's `hash_policy`: that of the first destination cluster (`outbound|port|subset|host`)
/// whose merged DestinationRule policy has `consistentHash`, as Istio does for a split.
pub fn route_hash_policy<'a>(
    ctx: &Context<'_>,
    clusters: impl Iterator<Item = &'a String>,
) -> Vec<HashPolicy> {
    for name in clusters {
        let mut parts = name.splitn(4, '|');
        let (Some("outbound"), Some(port), Some(subset), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(port) = port.parse::<u32>() else {
            continue;
        };
        let lb = load_balancer_for(ctx, host, port, subset);
        let policy = hash_policy(lb.as_ref());
        if !policy.is_empty() {
            return policy;
        }
    }
    Vec::new()
}

/// Sets the `hash_policy` of a generated route (services without a VirtualService).
pub fn add_hash_policy(ctx: &Context<'_>, route: &mut Route) {
    if let Some(route::Action::Route(action)) = &mut route.action
        && let Some(route_action::ClusterSpecifier::Cluster(c)) = &action.cluster_specifier
    {
        action.hash_policy = route_hash_policy(ctx, std::iter::once(c));
    }
}

fn hash_policy_of(ch: &ConsistentHashLb) -> Option<HashPolicy> {
    use hash_policy::PolicySpecifier;
    let spec = if let Some(h) = ch.http_header_name.as_ref().filter(|h| !h.is_empty()) {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: h.to_ascii_lowercase(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.as_ref().and_then(|d| d.get()).map(proto_duration),
            path: c.path.clone(),
            attributes: c
                .attributes
                .iter()
                .map(|a| hash_policy::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                })
                .collect(),
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(q) = ch
        .http_query_parameter_name
        .as_ref()
        .filter(|q| !q.is_empty())
    {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: q.clone() })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    })
}

fn enabled(l: &LocalityLoadBalancerSetting) -> bool {
    l.enabled != Some(false)
}

/// `failoverPriority` on endpoint labels: priority = (number of labels) − (index of the first
/// label whose value differs from the proxy's); every label equal gives 0. Region, zone and
/// subzone labels compare localities. Only with outlier detection, as Istio.
pub fn apply_failover_priority(
    specs: &mut [EndpointSpec],
    endpoints: &[&Endpoint],
    proxy: &ProxyIdentity,
    lb: Option<&LoadBalancerSettings>,
    outlier: bool,
) {
    let Some(l) = lb.and_then(|l| l.locality_lb_setting.as_ref()) else {
        return;
    };
    if !outlier || !enabled(l) || !l.distribute.is_empty() || l.failover_priority.is_empty() {
        return;
    }
    let n = l.failover_priority.len() as u32;
    for (spec, ep) in specs.iter_mut().zip(endpoints) {
        let mut priority = 0;
        for (j, label) in l.failover_priority.iter().enumerate() {
            if !label_matches(label, ep, &spec.locality, proxy) {
                priority = n - j as u32;
                break;
            }
        }
        spec.priority = priority;
    }
}

fn label_matches(label: &str, ep: &Endpoint, loc: &Locality, proxy: &ProxyIdentity) -> bool {
    let l = &proxy.locality;
    match label {
        REGION_LABEL => loc.region == l.region,
        ZONE_LABEL => loc.region == l.region && loc.zone == l.zone,
        SUBZONE_LABEL => loc.region == l.region && loc.zone == l.zone && loc.sub_zone == l.subzone,
        _ => proxy.labels.get(label) == ep.labels.get(label),
    }
}

/// Istio's `ApplyLocalityLoadBalancer` on one assignment for this proxy: `distribute` sets
/// locality weights (and drops localities it does not name); otherwise, with outlier detection,
/// failover priorities by locality (and `failover` region pairs), on top of any
/// `failoverPriority` already applied. Priorities end up consecutive from 0.
pub fn apply_locality(
    cla: &mut ClusterLoadAssignment,
    proxy: &ProxyIdentity,
    lb: Option<&LoadBalancerSettings>,
    outlier: bool,
) {
    let setting = lb.and_then(|l| l.locality_lb_setting.as_ref());
    if setting.is_some_and(|l| !enabled(l)) || !outlier {
        return;
    }
    let empty = LocalityLoadBalancerSetting::default();
    let setting = setting.unwrap_or(&empty);
    if !setting.distribute.is_empty() {
        apply_distribute(cla, proxy, setting);
        return;
    }
    let me = &proxy.locality;
    if me.region.is_empty() {
        return; // a proxy without a locality has nothing to prefer
    }
    let label_based = !setting.failover_priority.is_empty();
    if label_based && setting.failover.is_empty() {
        normalize(cla);
        return;
    }
    for group in &mut cla.endpoints {
        let loc = group.locality.clone().unwrap_or_default();
        let by_locality = if loc.region == me.region {
            if loc.zone == me.zone {
                if loc.sub_zone == me.subzone { 0 } else { 1 }
            } else {
                2
            }
        } else {
            let mut p = 3;
            if let Some(f) = setting.failover.iter().find(|f| f.from == me.region)
                && loc.region != f.to
            {
                p = 4;
            }
            p
        };
        group.priority = group.priority * 5 + by_locality;
    }
    normalize(cla);
}

/// Renumbers priorities to 0, 1, 2, … keeping their order (Envoy requires no gaps).
fn normalize(cla: &mut ClusterLoadAssignment) {
    let used: BTreeSet<u32> = cla
        .endpoints
        .iter()
        .filter(|g| !g.lb_endpoints.is_empty())
        .map(|g| g.priority)
        .collect();
    let rank: BTreeMap<u32, u32> = used.into_iter().zip(0..).collect();
    cla.endpoints.retain(|g| !g.lb_endpoints.is_empty());
    for g in &mut cla.endpoints {
        g.priority = rank.get(&g.priority).copied().unwrap_or(0);
    }
    cla.endpoints.sort_by_key(|g| g.priority);
}

/// Istio's `applyLocalityWeights`: for the first `distribute` entry whose `from` matches the
/// proxy, each `to` pattern's weight is split over the localities it matches (in proportion to
/// their own weights); localities no pattern matches get no traffic.
fn apply_distribute(
    cla: &mut ClusterLoadAssignment,
    proxy: &ProxyIdentity,
    setting: &LocalityLoadBalancerSetting,
) {
    let me = Locality {
        region: proxy.locality.region.clone(),
        zone: proxy.locality.zone.clone(),
        sub_zone: proxy.locality.subzone.clone(),
    };
    let Some(rule) = setting
        .distribute
        .iter()
        .find(|d| locality_match(&me, &d.from))
    else {
        return;
    };
    let mut unmatched: BTreeSet<usize> = (0..cla.endpoints.len()).collect();
    for (pattern, weight) in &rule.to {
        let mut matched = Vec::new();
        let mut total = 0u64;
        for (i, g) in cla.endpoints.iter().enumerate() {
            let loc = g.locality.clone().unwrap_or_default();
            if unmatched.contains(&i) && locality_match(&loc, pattern) {
                unmatched.remove(&i);
                let own = g.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                matched.push((i, own));
                total += u64::from(own);
            }
        }
        for (i, own) in matched {
            let w = (u64::from(own) * u64::from(*weight)).div_ceil(total.max(1));
            if w > 0 {
                cla.endpoints[i].load_balancing_weight = Some(UInt32Value {
                    value: u32::try_from(w).unwrap_or(u32::MAX),
                });
            }
        }
    }
    for i in unmatched {
        cla.endpoints[i].lb_endpoints.clear();
    }
    cla.endpoints.retain(|g| !g.lb_endpoints.is_empty());
    for g in &mut cla.endpoints {
        g.priority = 0;
        if g.load_balancing_weight.is_none() {
            g.load_balancing_weight = Some(UInt32Value { value: 1 });
        }
    }
}

/// Istio's `LocalityMatch`: `region[/zone[/subzone]]`, each part `*` or absent for any.
pub fn locality_match(loc: &Locality, pattern: &str) -> bool {
    let rule = parse_locality(pattern);
    let part = |rule: &str, value: &str, optional: bool| {
        rule == "*" || (optional && rule.is_empty()) || rule == value
    };
    part(&rule.region, &loc.region, false)
        && part(&rule.zone, &loc.zone, true)
        && part(&rule.sub_zone, &loc.sub_zone, true)
}

#[cfg(test)]
mod tests;
