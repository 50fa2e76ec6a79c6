//! Istio's standard TCP metrics: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total` and
//! `istio_tcp_received_bytes_total`, with Istio's labels (`request_protocol="tcp"`, no
//! response code).
//!
//! Owns the per-label-set series and their encoding. A connection looks its series up once (a
//! hash of the borrowed label values and one shard read lock) and then bumps the series'
//! atomics for every read and write. The number of series is bounded like the HTTP ones
//! ([`super::metrics::MAX_SERIES`]); connections past the bound are dropped from the metrics
//! and counted. It knows nothing about sockets.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use trellis_xds::ProxyIdentity;

use super::metrics::{MAX_SERIES, source_labels};

const UNKNOWN: &str = "unknown";

/// The label values of one TCP connection that vary per connection; empty means unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpLabels<'a> {
    pub destination_workload: &'a str,
    pub destination_workload_namespace: &'a str,
    pub destination_app: &'a str,
    pub destination_version: &'a str,
    pub destination_service: &'a str,
    pub destination_service_name: &'a str,
    pub destination_service_namespace: &'a str,
    /// Envoy's response flags (`UF`, `UH`, `NR`, …); empty means none (`-`).
    pub response_flags: &'a str,
}

/// The counters of one label set; a connection holds it while it lives.
#[derive(Debug)]
pub struct TcpSeries {
    key: [Box<str>; 8],
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Bytes sent to the downstream client.
    pub sent: AtomicU64,
    /// Bytes received from the downstream client.
    pub received: AtomicU64,
}

/// The store of TCP series for one proxy.
pub struct TcpMetrics {
    source: Vec<(&'static str, String)>,
    series: RwLock<HashMap<u64, Vec<Arc<TcpSeries>>>>,
    count: AtomicUsize,
    dropped: Counter,
}

/// One series at scrape time: its labels and opened, closed, sent, received.
type Snapshot = (Vec<(&'static str, String)>, [u64; 4]);

/// The [`Collector`] that encodes a [`TcpMetrics`] at scrape time.
#[derive(Debug)]
pub struct TcpCollector(pub Arc<TcpMetrics>);

impl<'a> TcpLabels<'a> {
    fn values(&self) -> [&'a str; 8] {
        fn or_unknown(s: &str) -> &str {
            if s.is_empty() { UNKNOWN } else { s }
        }
        [
            or_unknown(self.destination_workload),
            or_unknown(self.destination_workload_namespace),
            or_unknown(self.destination_app),
            or_unknown(self.destination_version),
            or_unknown(self.destination_service),
            or_unknown(self.destination_service_name),
            or_unknown(self.destination_service_namespace),
            if self.response_flags.is_empty() {
                "-"
            } else {
                self.response_flags
            },
        ]
    }
}

impl TcpMetrics {
    /// A store whose `source_*` labels describe `proxy`; `dropped` counts connections left out.
    pub fn new(proxy: &ProxyIdentity, dropped: Counter) -> TcpMetrics {
        TcpMetrics {
            source: source_labels(proxy),
            series: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
            dropped,
        }
    }

    /// The series of `labels`, created on first use; `None` past the series bound.
    pub fn series(&self, labels: &TcpLabels<'_>) -> Option<Arc<TcpSeries>> {
        let values = labels.values();
        let mut hasher = DefaultHasher::new();
        values.hash(&mut hasher);
        let hash = hasher.finish();
        let find = |map: &HashMap<u64, Vec<Arc<TcpSeries>>>| {
            map.get(&hash)?
                .iter()
                .find(|s| s.key.iter().map(|k| &**k).eq(values.iter().copied()))
                .cloned()
        };
        if let Some(s) = find(&self.series.read().unwrap_or_else(PoisonError::into_inner)) {
            return Some(s);
        }
        let mut map = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = find(&map) {
            return Some(s);
        }
        if self.count.fetch_add(1, Relaxed) >= MAX_SERIES {
            self.count.fetch_sub(1, Relaxed);
            self.dropped.inc();
            return None;
        }
        let series = Arc::new(TcpSeries {
            key: values.map(Box::from),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        map.entry(hash).or_default().push(Arc::clone(&series));
        Some(series)
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map
            .values()
            .flatten()
            .map(|s| {
                let counts = [&s.opened, &s.closed, &s.sent, &s.received].map(|c| c.load(Relaxed));
                (self.labels(s), counts)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Istio's label set for a series, in Istio's order.
    fn labels(&self, s: &TcpSeries) -> Vec<(&'static str, String)> {
        let [
            workload,
            workload_ns,
            app,
            version,
            service,
            service_name,
            service_ns,
            flags,
        ] = &s.key;
        let known = |v: &str| v != UNKNOWN;
        let canonical_service = if known(app) { app } else { workload };
        let canonical_revision: &str = match (known(version), known(workload)) {
            (true, _) => version,
            (false, true) => "latest",
            (false, false) => UNKNOWN,
        };
        let cluster = if known(workload) {
            "Kubernetes"
        } else {
            UNKNOWN
        };
        let mut labels = self.source.clone();
        labels.extend(
            [
                ("destination_workload", &**workload),
                ("destination_workload_namespace", workload_ns),
                ("destination_principal", UNKNOWN),
                ("destination_app", app),
                ("destination_version", version),
                ("destination_service", service),
                ("destination_canonical_service", canonical_service),
                ("destination_canonical_revision", canonical_revision),
                ("destination_service_name", service_name),
                ("destination_service_namespace", service_ns),
                ("destination_cluster", cluster),
                ("request_protocol", "tcp"),
                ("response_flags", flags),
                ("connection_security_policy", UNKNOWN),
            ]
            .map(|(k, v)| (k, v.to_owned())),
        );
        labels
    }
}

impl fmt::Debug for TcpMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpMetrics")
            .field("series", &self.count.load(Relaxed))
            .finish()
    }
}

impl Collector for TcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshots = self.0.snapshots();
        let families = [
            (
                "istio_tcp_connections_opened",
                "TCP connections opened by this proxy, by Istio's standard labels.",
            ),
            (
                "istio_tcp_connections_closed",
                "TCP connections closed by this proxy, by Istio's standard labels.",
            ),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent to downstream clients on TCP connections.",
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from downstream clients on TCP connections.",
            ),
        ];
        for (i, (name, help)) in families.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, counts) in &snapshots {
                let mut metric = family.encode_family(labels)?;
                metric.encode_counter::<NoLabelSet, u64, u64>(&counts[i], None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(flags: &str) -> TcpLabels<'_> {
        TcpLabels {
            destination_workload: "",
            destination_workload_namespace: "",
            destination_app: "echo",
            destination_version: "v1",
            destination_service: "echo.default.svc.cluster.local",
            destination_service_name: "echo",
            destination_service_namespace: "default",
            response_flags: flags,
        }
    }

    #[test]
    fn same_labels_share_a_series_and_encode_with_istio_names() {
        let metrics = Arc::new(TcpMetrics::new(
            &ProxyIdentity::default(),
            Counter::default(),
        ));
        let a = metrics.series(&labels("")).unwrap();
        let b = metrics.series(&labels("")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let uf = metrics.series(&labels("UF")).unwrap();
        a.opened.fetch_add(2, Relaxed);
        a.sent.fetch_add(10, Relaxed);
        uf.closed.fetch_add(1, Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(TcpCollector(Arc::clone(&metrics))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE istio_tcp_connections_opened counter"),
            "{text}"
        );
        let opened = text
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("response_flags=\"-\"")
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(opened.ends_with(" 2"), "{opened}");
        assert!(opened.contains("request_protocol=\"tcp\""), "{opened}");
        assert!(
            opened.contains("destination_canonical_revision=\"v1\""),
            "{opened}"
        );
        assert!(text.contains("istio_tcp_sent_bytes_total{"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_tcp_connections_closed_total{")
                    && l.contains("response_flags=\"UF\"")
                    && l.ends_with(" 1")),
            "{text}"
        );
    }
}
