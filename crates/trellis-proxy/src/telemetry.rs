//! Per-request telemetry of the proxy: Istio's standard metrics, the proxy's own counters, and the
//! JSON access log.
//!
//! Owns what happens once a request is finished ([`Telemetry::record`]) and the Prometheus text
//! exposition ([`Telemetry::encode_prometheus`]). It must not block or allocate per label set on
//! the request path (see [`metrics`]), must not write to stdout from a request thread (see
//! [`access_log`]), and knows nothing about sockets or the admin server that serves it.

pub mod access_log;
pub mod authz_stats;
pub mod metrics;
pub mod tcp_metrics;
pub mod upstream;
pub mod upstream_stats;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trellis_xds::ProxyIdentity;

use access_log::AccessLog;
use metrics::{IstioCollector, IstioMetrics, LabelValues, Observation};
use tcp_metrics::{TcpCollector, TcpLabels, TcpMetrics, TcpSeries};
use upstream::{UpstreamCollector, UpstreamHealth};
use upstream_stats::{UpstreamStats, UpstreamStatsCollector};

/// `Content-Type` of [`Telemetry::encode_prometheus`]'s output (Prometheus text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Telemetry of one proxy process; shared as `Arc<Telemetry>`.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    istio: Arc<IstioMetrics>,
    tcp: Arc<TcpMetrics>,
    /// Per-cluster upstream counters (`trellis_upstream_rq_*`).
    pub upstream_stats: Arc<UpstreamStats>,
    /// RBAC filter counters of the current snapshot.
    pub authz_stats: Arc<authz_stats::AuthzStats>,
    access_log: Option<AccessLog>,
    config_applies: Counter,
    config_rejections: Counter,
    requests_active: Gauge,
    connections_active: Gauge,
    /// Upstream clusters' health (outlier ejections), read at scrape time.
    pub upstream: UpstreamHealth,
    /// The xDS client's connection gauge and update counters.
    pub xds: crate::xds_client::XdsMetrics,
    /// The workload certificate's expiry and renewals (`trellis_cert_*`).
    pub certs: crate::ca_client::CertMetrics,
}

/// Everything telemetry needs to know about one finished request (borrowed from it).
#[derive(Debug, Clone)]
pub struct RequestRecord<'a> {
    pub start: SystemTime,
    pub duration: Duration,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    /// `"HTTP/1.1"` or `"HTTP/2"`.
    pub protocol: &'a str,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_status: Option<&'a str>,
    /// Envoy's response flags (`NR`, `UH`, …), `"-"` when none.
    pub response_flags: &'a str,
    pub request_id: &'a str,
    pub user_agent: &'a str,
    pub x_forwarded_for: &'a str,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub destination_service: &'a str,
    pub destination_service_name: &'a str,
    pub destination_service_namespace: &'a str,
    pub destination_workload: &'a str,
    pub destination_workload_namespace: &'a str,
    pub destination_version: &'a str,
    pub destination_app: &'a str,
}

/// Where access-log lines go.
pub enum AccessLogSink {
    /// Standard output, unless `TRELLIS_ACCESS_LOG=off` (what [`Telemetry::new`] uses).
    StdoutUnlessDisabled,
    /// No access log at all.
    Off,
    /// Any writer (a file, or a buffer in tests); written by the access-log thread.
    Writer(Box<dyn Write + Send>),
}

/// Counts one in-flight downstream request until dropped (`trellis_proxy_downstream_requests_active`).
#[derive(Debug)]
#[must_use = "the request counts as active only while the guard lives"]
pub struct ActiveRequest(Gauge);

/// Counts one open downstream connection until dropped (`trellis_proxy_downstream_connections_active`).
#[derive(Debug)]
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ActiveConnection(Gauge);

impl Telemetry {
    /// Telemetry for `proxy`, logging requests to stdout unless `TRELLIS_ACCESS_LOG=off`.
    pub fn new(proxy: &ProxyIdentity) -> Telemetry {
        Telemetry::with_access_log(proxy, AccessLogSink::StdoutUnlessDisabled)
    }

    /// Telemetry for `proxy` with the access log going to `sink`. If the access-log thread cannot
    /// be started, the access log is off (and a warning says so); metrics still work.
    pub fn with_access_log(proxy: &ProxyIdentity, sink: AccessLogSink) -> Telemetry {
        let mut registry = Registry::default();
        let series_dropped = Counter::default();
        let istio = Arc::new(IstioMetrics::new(proxy, series_dropped.clone()));
        registry.register_collector(Box::new(IstioCollector(Arc::clone(&istio))));
        let tcp = Arc::new(TcpMetrics::new(proxy, series_dropped.clone()));
        registry.register_collector(Box::new(TcpCollector(Arc::clone(&tcp))));
        let upstream = UpstreamHealth::default();
        registry.register_collector(Box::new(UpstreamCollector(upstream.clone())));
        let upstream_stats = Arc::new(UpstreamStats::default());
        registry.register_collector(Box::new(UpstreamStatsCollector(Arc::clone(
            &upstream_stats,
        ))));
        let authz_stats = Arc::new(authz_stats::AuthzStats::default());
        registry.register_collector(Box::new(authz_stats::AuthzCollector(Arc::clone(
            &authz_stats,
        ))));
        let access_log_dropped = Counter::default();
        let out: Option<Box<dyn Write + Send>> = match sink {
            AccessLogSink::StdoutUnlessDisabled => {
                let setting = std::env::var("TRELLIS_ACCESS_LOG").ok();
                access_log_enabled(setting.as_deref()).then(|| Box::new(std::io::stdout()) as _)
            }
            AccessLogSink::Off => None,
            AccessLogSink::Writer(w) => Some(w),
        };
        let access_log = out.and_then(|out| {
            AccessLog::start(out, access_log_dropped.clone())
                .inspect_err(
                    |e| tracing::warn!(error = %e, "start access-log thread: access log is off"),
                )
                .ok()
        });
        let (config_applies, config_rejections) = (Counter::default(), Counter::default());
        let (requests_active, connections_active) = (Gauge::default(), Gauge::default());
        registry.register(
            "trellis_proxy_config_applies",
            "Configuration snapshots applied by the proxy",
            config_applies.clone(),
        );
        registry.register(
            "trellis_proxy_config_rejections",
            "Configuration updates the proxy rejected (NACKed); the last good config kept serving",
            config_rejections.clone(),
        );
        registry.register(
            "trellis_proxy_downstream_requests_active",
            "Downstream requests in flight",
            requests_active.clone(),
        );
        registry.register(
            "trellis_proxy_downstream_connections_active",
            "Downstream connections open",
            connections_active.clone(),
        );
        registry.register(
            "trellis_proxy_access_log_dropped",
            "Access-log lines dropped because the log writer fell behind",
            access_log_dropped,
        );
        let mirror = [
            (
                "trellis_proxy_mirror_requests",
                "Shadow (mirror) requests sent",
                &crate::proxy::mirror::SENT,
            ),
            (
                "trellis_proxy_mirror_failures",
                "Shadow requests that failed or timed out",
                &crate::proxy::mirror::FAILED,
            ),
            (
                "trellis_proxy_mirror_dropped",
                "Mirrors not sent: in-flight cap, body over 64 KiB, no endpoint",
                &crate::proxy::mirror::DROPPED,
            ),
        ];
        for (name, help, counter) in mirror {
            registry.register(name, help, Counter::clone(counter));
        }
        registry.register(
            "trellis_proxy_metric_series_dropped",
            "Requests and TCP connections left out of istio_* metrics because the label-set limit was reached",
            series_dropped,
        );
        crate::proxy::jwt::metrics::register(&mut registry);
        crate::proxy::ratelimit::metrics::register(&mut registry);
        let xds = crate::xds_client::XdsMetrics::register(&mut registry);
        let certs = crate::ca_client::CertMetrics::register(&mut registry);
        Telemetry {
            xds,
            certs,
            registry,
            istio,
            tcp,
            upstream_stats,
            authz_stats,
            access_log,
            config_applies,
            config_rejections,
            requests_active,
            connections_active,
            upstream,
        }
    }

    /// Records one finished request: Istio metrics plus one access-log line. Never blocks.
    pub fn record(&self, r: &RequestRecord<'_>) {
        let values = LabelValues {
            destination_workload: r.destination_workload,
            destination_workload_namespace: r.destination_workload_namespace,
            destination_app: r.destination_app,
            destination_version: r.destination_version,
            destination_service: r.destination_service,
            destination_service_name: r.destination_service_name,
            destination_service_namespace: r.destination_service_namespace,
            grpc: r.grpc,
            response_code: r.response_code,
            grpc_status: if r.grpc {
                r.grpc_status.unwrap_or("")
            } else {
                ""
            },
            response_flags: r.response_flags,
        }
        .normalized();
        let obs = Observation {
            duration_us: u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
            request_bytes: r.bytes_received,
            response_bytes: r.bytes_sent,
        };
        self.istio.record(&values, obs);
        if let Some(log) = &self.access_log {
            log.log(r);
        }
    }

    /// The `istio_tcp_*` series of a connection's labels (`None` past the series bound).
    pub fn tcp_series(&self, labels: &TcpLabels<'_>) -> Option<Arc<TcpSeries>> {
        self.tcp.series(labels)
    }

    /// One access-log line for a finished TCP connection (no metrics: those are live).
    pub fn log_connection(&self, r: &RequestRecord<'_>) {
        if let Some(log) = &self.access_log {
            log.log(r);
        }
    }

    /// All metrics in the Prometheus text format ([`PROMETHEUS_CONTENT_TYPE`]).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String only fails if an encoder does, which ours do not.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encode metrics");
        }
        out
    }

    /// Counts a configuration snapshot the proxy applied (`trellis_proxy_config_applies_total`).
    pub fn config_applied(&self) {
        self.config_applies.inc();
    }

    /// Counts a configuration update the proxy rejected (`trellis_proxy_config_rejections_total`).
    pub fn config_rejected(&self) {
        self.config_rejections.inc();
    }

    /// Marks a downstream request in flight until the guard is dropped.
    pub fn request_started(&self) -> ActiveRequest {
        self.requests_active.inc();
        ActiveRequest(self.requests_active.clone())
    }

    /// Marks a downstream connection open until the guard is dropped.
    pub fn connection_opened(&self) -> ActiveConnection {
        self.connections_active.inc();
        ActiveConnection(self.connections_active.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `TRELLIS_ACCESS_LOG`: unset or anything else means on; `off`, `false`, `0` mean off.
fn access_log_enabled(setting: Option<&str>) -> bool {
    !matches!(setting.map(str::trim), Some(v) if ["off", "false", "0"].iter().any(|o| v.eq_ignore_ascii_case(o)))
}

#[cfg(test)]
pub(crate) mod tests;
