//! Passive health: Envoy's consecutive-error outlier detection (consecutive 5xx, consecutive
//! gateway errors, consecutive locally originated failures), ejection for
//! `base_ejection_time × times ejected` (capped by `max_ejection_time`), at most
//! `max_ejection_percent` of the cluster ejected at once. Also holds the active health-check
//! verdict of each endpoint, so [`EndpointHealth::is_healthy`] is the one question the balancer
//! asks.
//!
//! State is per endpoint (carried over by address) and per cluster (carried over by name), all
//! atomics: reporting an outcome takes no lock. Ejected endpoints come back lazily: the first
//! pick after the ejection time un-ejects them. Owns no timers and no sockets.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as XOutlier;

use super::duration;

const DEFAULT_CONSECUTIVE: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// What happened to one upstream attempt, as the outlier detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// The TCP (or HTTP/2) connection could not be established.
    ConnectFailed,
    /// The upstream reset or closed the request before answering.
    Reset,
    /// No response within the route timeout.
    Timeout,
}

/// A cluster's `outlier_detection`, with Envoy's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub enforcing_5xx: u32,
    pub consecutive_gateway: u32,
    pub enforcing_gateway: u32,
    pub split_local_origin: bool,
    pub consecutive_local_origin: u32,
    pub enforcing_local_origin: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// Health of one endpoint; shared by every snapshot that has the endpoint.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint is ejected; 0 when it is not.
    ejected_until_ms: AtomicU64,
    /// Envoy's ejection multiplier: times ejected, decremented per healthy interval.
    times_ejected: AtomicU32,
    /// When the multiplier last changed (ms since [`epoch`]).
    multiplier_at_ms: AtomicU64,
    /// Set by active health checking.
    pub hc_failed: AtomicBool,
    /// When the endpoint first appeared (for slow start).
    pub added: OnceLock<Instant>,
}

/// Per-cluster outlier counters; carried over by cluster name.
#[derive(Debug, Default)]
pub struct OutlierStats {
    /// Ejections since the cluster appeared (`trellis_outlier_ejections_total`).
    pub ejections_total: AtomicU64,
    /// Endpoints ejected right now (`trellis_outlier_ejected`).
    pub ejected: AtomicI64,
}

/// Milliseconds since a process-wide start instant (never 0).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

impl OutlierConfig {
    pub fn from_xds(o: &XOutlier) -> OutlierConfig {
        let v = |w: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
            w.as_ref().map_or(d, |w| w.value)
        };
        OutlierConfig {
            consecutive_5xx: v(&o.consecutive_5xx, DEFAULT_CONSECUTIVE),
            enforcing_5xx: v(&o.enforcing_consecutive_5xx, 100),
            consecutive_gateway: v(&o.consecutive_gateway_failure, DEFAULT_CONSECUTIVE),
            enforcing_gateway: v(&o.enforcing_consecutive_gateway_failure, 0),
            split_local_origin: o.split_external_local_origin_errors,
            consecutive_local_origin: v(&o.consecutive_local_origin_failure, DEFAULT_CONSECUTIVE),
            enforcing_local_origin: v(&o.enforcing_consecutive_local_origin_failure, 100),
            interval: o.interval.as_ref().map_or(DEFAULT_INTERVAL, duration),
            base_ejection_time: o
                .base_ejection_time
                .as_ref()
                .map_or(DEFAULT_BASE_EJECTION, duration),
            max_ejection_time: o
                .max_ejection_time
                .as_ref()
                .map_or(DEFAULT_MAX_EJECTION, duration),
            max_ejection_percent: v(&o.max_ejection_percent, DEFAULT_MAX_EJECTION_PERCENT).min(100),
        }
    }

    /// How long the `n`th ejection lasts: base × n, capped by `max_ejection_time` (Envoy never
    /// caps below the base).
    pub fn ejection_time(&self, n: u32) -> Duration {
        let cap = self.max_ejection_time.max(self.base_ejection_time);
        self.base_ejection_time.saturating_mul(n.max(1)).min(cap)
    }
}

impl EndpointHealth {
    /// Whether the endpoint may take traffic now: not failing active health checks and not
    /// ejected (an ejection whose time has passed ends here, counted in `stats`).
    pub fn is_healthy(&self, stats: &OutlierStats) -> bool {
        !self.hc_failed.load(Relaxed) && !self.is_ejected(stats)
    }

    /// Whether an ejection is recorded (expired or not), without ending it.
    pub fn ejected_now(&self) -> bool {
        self.ejected_until_ms.load(Relaxed) != 0
    }

    /// Whether the endpoint is ejected; ends an expired ejection.
    pub fn is_ejected(&self, stats: &OutlierStats) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        if until == 0 {
            return false;
        }
        let now = now_ms();
        if now < until {
            return true;
        }
        if self
            .ejected_until_ms
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            stats.ejected.fetch_sub(1, Relaxed);
            self.multiplier_at_ms.store(now, Relaxed);
            tracing::info!("outlier detection: ejection time passed; endpoint back in rotation");
        }
        false
    }

    /// Records one outcome; returns true when it ejected the endpoint. `total` is the number of
    /// endpoints in the cluster (for `max_ejection_percent`).
    pub fn report(
        &self,
        outcome: Outcome,
        cfg: &OutlierConfig,
        stats: &OutlierStats,
        total: usize,
    ) -> bool {
        // Without the split, local-origin failures count as the 5xx Envoy maps them to.
        let status = match outcome {
            Outcome::Status(s) => s,
            Outcome::ConnectFailed | Outcome::Reset if !cfg.split_local_origin => 503,
            Outcome::Timeout if !cfg.split_local_origin => 504,
            _ => {
                let n = self.consecutive_local.fetch_add(1, Relaxed) + 1;
                return n == cfg.consecutive_local_origin
                    && self.try_eject(cfg, stats, total, cfg.enforcing_local_origin);
            }
        };
        if cfg.split_local_origin {
            // A response arrived: the connection side is fine.
            self.consecutive_local.store(0, Relaxed);
        }
        if !(500..600).contains(&status) {
            self.consecutive_5xx.store(0, Relaxed);
            self.consecutive_gateway.store(0, Relaxed);
            return false;
        }
        let mut ejected = false;
        if matches!(status, 502..=504) {
            let n = self.consecutive_gateway.fetch_add(1, Relaxed) + 1;
            if n == cfg.consecutive_gateway {
                ejected = self.try_eject(cfg, stats, total, cfg.enforcing_gateway);
            }
        } else {
            self.consecutive_gateway.store(0, Relaxed);
        }
        let n = self.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        if !ejected && n == cfg.consecutive_5xx {
            ejected = self.try_eject(cfg, stats, total, cfg.enforcing_5xx);
        }
        ejected
    }

    fn try_eject(
        &self,
        cfg: &OutlierConfig,
        stats: &OutlierStats,
        total: usize,
        enforcing: u32,
    ) -> bool {
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway.store(0, Relaxed);
        self.consecutive_local.store(0, Relaxed);
        if enforcing == 0 || (enforcing < 100 && fastrand::u32(..100) >= enforcing) {
            return false;
        }
        if self.is_ejected(stats) {
            return false;
        }
        // Envoy: eject only while (ejected + 1) stays within max_ejection_percent of the hosts.
        let ejected = u64::try_from(stats.ejected.load(Relaxed)).unwrap_or(0);
        if total == 0 || (ejected + 1) * 100 > u64::from(cfg.max_ejection_percent) * total as u64 {
            return false;
        }
        let now = now_ms();
        // The multiplier decays by one per interval spent healthy since it last changed.
        let since = now.saturating_sub(self.multiplier_at_ms.load(Relaxed));
        let intervals = since / (cfg.interval.as_millis().max(1) as u64);
        let before = self.times_ejected.load(Relaxed);
        let times = before.saturating_sub(u32::try_from(intervals).unwrap_or(u32::MAX)) + 1;
        let until = now + cfg.ejection_time(times).as_millis() as u64;
        if self
            .ejected_until_ms
            .compare_exchange(0, until, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        self.times_ejected.store(times, Relaxed);
        self.multiplier_at_ms.store(now, Relaxed);
        stats.ejected.fetch_add(1, Relaxed);
        stats.ejections_total.fetch_add(1, Relaxed);
        tracing::warn!(
            times,
            ejection_ms = until - now,
            "outlier detection: endpoint ejected"
        );
        true
    }

    /// Time since the endpoint first appeared.
    pub fn age(&self) -> Duration {
        self.added.get_or_init(Instant::now).elapsed()
    }
}

/// Envoy's gRPC status → HTTP status mapping (`Grpc::Utility::grpcToHttpStatus`), for a
/// `grpc-status` value; unknown or malformed values are 500.
pub fn grpc_to_http(code: &[u8]) -> u16 {
    match std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.trim().parse::<u8>().ok())
    {
        Some(0) => 200,
        Some(1) => 499,
        Some(3 | 9 | 11) => 400,
        Some(4) => 504,
        Some(5) => 404,
        Some(6 | 10) => 409,
        Some(7) => 403,
        Some(8) => 429,
        Some(12) => 501,
        Some(14) => 503,
        Some(16) => 401,
        _ => 500,
    }
}

/// The health of the clusters of `rt`: all of them with their endpoints (`endpoints`, for the
/// admin `/clusters` page), or only those with outlier detection and no endpoint rows (metrics).
pub fn health_report(
    rt: &super::Runtime,
    endpoints: bool,
) -> Vec<crate::telemetry::upstream::ClusterHealth> {
    use crate::telemetry::upstream::{ClusterHealth, EndpointHealthView};
    rt.clusters
        .values()
        .filter(|c| endpoints || c.outlier.is_some())
        .map(|c| ClusterHealth {
            name: Arc::clone(&c.name),
            outlier_detection: c.outlier.is_some(),
            ejections_total: c.outlier_stats.ejections_total.load(Relaxed),
            ejected: c.outlier_stats.ejected.load(Relaxed),
            endpoints: c
                .endpoints
                .iter()
                .take(if endpoints { usize::MAX } else { 0 })
                .map(|e| EndpointHealthView {
                    address: e.addr.to_string(),
                    priority: e.priority,
                    locality: format!(
                        "{}/{}/{}",
                        e.locality.region, e.locality.zone, e.locality.subzone
                    ),
                    weight: e.weight,
                    health: if e.health.hc_failed.load(Relaxed) {
                        "failed_active_hc"
                    } else if e.health.is_ejected(&c.outlier_stats) {
                        "ejected"
                    } else {
                        "healthy"
                    },
                    active_requests: e.state.in_flight.load(Relaxed),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig::from_xds(&XOutlier {
            consecutive_5xx: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 3 }),
            max_ejection_percent: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: 50,
            }),
            base_ejection_time: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            ..Default::default()
        })
    }

    #[test]
    fn grpc_statuses_map_like_envoy() {
        assert_eq!(grpc_to_http(b"0"), 200);
        assert_eq!(grpc_to_http(b"14"), 503);
        assert_eq!(grpc_to_http(b"4"), 504);
        assert_eq!(grpc_to_http(b"5"), 404);
        assert_eq!(grpc_to_http(b"2"), 500);
        assert_eq!(grpc_to_http(b"x"), 500);
    }

    #[test]
    fn defaults_follow_envoy() {
        let c = OutlierConfig::from_xds(&XOutlier::default());
        assert_eq!(c.consecutive_5xx, 5);
        assert_eq!(c.enforcing_gateway, 0);
        assert_eq!(c.max_ejection_percent, 10);
        assert_eq!(c.base_ejection_time, Duration::from_secs(30));
        assert_eq!(c.ejection_time(3), Duration::from_secs(90));
        assert_eq!(c.ejection_time(20), Duration::from_secs(300));
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets() {
        let (c, stats, h) = (cfg(), OutlierStats::default(), EndpointHealth::default());
        assert!(!h.report(Outcome::Status(500), &c, &stats, 2));
        assert!(!h.report(Outcome::Status(503), &c, &stats, 2));
        assert!(!h.report(Outcome::Status(200), &c, &stats, 2));
        assert!(!h.report(Outcome::Status(500), &c, &stats, 2));
        assert!(!h.report(Outcome::Status(500), &c, &stats, 2));
        assert!(h.is_healthy(&stats));
        assert!(h.report(Outcome::Status(500), &c, &stats, 2));
        assert!(!h.is_healthy(&stats));
        assert_eq!(stats.ejected.load(Relaxed), 1);
        assert_eq!(stats.ejections_total.load(Relaxed), 1);
    }

    #[test]
    fn ejection_ends_after_its_time_and_grows_when_repeated() {
        let (c, stats, h) = (cfg(), OutlierStats::default(), EndpointHealth::default());
        for _ in 0..3 {
            h.report(Outcome::ConnectFailed, &c, &stats, 2);
        }
        assert!(!h.is_healthy(&stats));
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.is_healthy(&stats));
        assert_eq!(stats.ejected.load(Relaxed), 0);
        for _ in 0..3 {
            h.report(Outcome::Timeout, &c, &stats, 2);
        }
        // Second ejection within one interval: 2 × 200 ms.
        std::thread::sleep(Duration::from_millis(250));
        assert!(!h.is_healthy(&stats));
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.is_healthy(&stats));
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let (c, stats) = (cfg(), OutlierStats::default());
        let hosts: Vec<EndpointHealth> = (0..4).map(|_| EndpointHealth::default()).collect();
        for h in &hosts {
            for _ in 0..3 {
                h.report(Outcome::Status(502), &c, &stats, hosts.len());
            }
        }
        // 50% of 4 hosts: two ejected, the others keep serving.
        assert_eq!(stats.ejected.load(Relaxed), 2);
        assert_eq!(hosts.iter().filter(|h| h.is_healthy(&stats)).count(), 2);
    }

    #[test]
    fn split_local_origin_counts_separately() {
        let mut c = cfg();
        c.split_local_origin = true;
        c.consecutive_local_origin = 2;
        let (stats, h) = (OutlierStats::default(), EndpointHealth::default());
        assert!(!h.report(Outcome::Status(500), &c, &stats, 2));
        assert!(!h.report(Outcome::ConnectFailed, &c, &stats, 2));
        assert!(!h.report(Outcome::Status(500), &c, &stats, 2));
        // A response reset the local-origin count; two failures in a row eject.
        assert!(!h.report(Outcome::Reset, &c, &stats, 2));
        assert!(h.report(Outcome::Timeout, &c, &stats, 2));
    }
}
