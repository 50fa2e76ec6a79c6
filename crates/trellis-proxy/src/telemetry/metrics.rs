//! Istio's standard request metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`) with Istio's label names and label order.
//!
//! Owns the per-label-set series and their encoding (through a `prometheus-client` [`Collector`],
//! so the text format and label escaping are the library's). The hot path never allocates once a
//! label set has been seen: it hashes the borrowed label values, takes one shard's read lock and
//! bumps atomics. The number of series is bounded ([`MAX_SERIES`]); label sets past the bound are
//! dropped and counted, never stored. It must not know about sockets, HTTP types or the access log.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use trellis_xds::ProxyIdentity;

/// Upper bounds (`le`) of `istio_request_duration_milliseconds`, as Istio configures them.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// The same bounds in microseconds, for an integer comparison on the hot path.
const DURATION_BUCKETS_US: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        out[i] = (DURATION_BUCKETS_MS[i] * 1000.0) as u64;
        i += 1;
    }
    out
};
/// Upper bounds (`le`) of `istio_request_bytes` and `istio_response_bytes`: 1, 10, …, 10^9.
pub const SIZE_BUCKETS: [u64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];
/// At most this many distinct label sets are kept; more would let a misbehaving upstream (say, a
/// random `grpc-status` per response) grow memory without bound.
pub const MAX_SERIES: usize = 10_000;

const SHARDS: usize = 16;
const UNKNOWN: &str = "unknown";

/// The label values that vary per request, borrowed from the request. Empty strings are already
/// replaced by `"unknown"` (see [`LabelValues::normalized`]) so that equal label sets hash equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelValues<'a> {
    pub destination_workload: &'a str,
    pub destination_workload_namespace: &'a str,
    pub destination_app: &'a str,
    pub destination_version: &'a str,
    pub destination_service: &'a str,
    pub destination_service_name: &'a str,
    pub destination_service_namespace: &'a str,
    pub grpc: bool,
    pub response_code: u16,
    pub grpc_status: &'a str,
    pub response_flags: &'a str,
}

/// One observation: what `record` adds to a series.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub duration_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// The store of Istio request series for one proxy. Shared between the request path (`record`)
/// and the scrape path (the [`Collector`] impl) behind an `Arc`.
pub struct IstioMetrics {
    source: Vec<(&'static str, String)>,
    shards: [RwLock<Shard>; SHARDS],
    series: AtomicUsize,
    series_dropped: Counter,
}

type Shard = HashMap<u64, Vec<Series>, BuildHasherDefault<PassThroughHasher>>;

struct Series {
    key: OwnedLabelValues,
    requests: AtomicU64,
    duration: AtomicHistogram<20>,
    request_bytes: AtomicHistogram<11>,
    response_bytes: AtomicHistogram<11>,
}

/// Non-cumulative bucket counts (the last one is `+Inf`) and an integer sum.
struct AtomicHistogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

struct OwnedLabelValues {
    strings: [Box<str>; 9],
    grpc: bool,
    response_code: u16,
}

/// A consistent-enough copy of one series, taken at scrape time.
struct Snapshot {
    labels: Vec<(&'static str, String)>,
    requests: u64,
    duration: HistogramSnapshot,
    request_bytes: HistogramSnapshot,
    response_bytes: HistogramSnapshot,
}

/// Non-cumulative `(le, count)` pairs ending with `+Inf`, and the sum.
type HistogramSnapshot = (Vec<(f64, u64)>, f64);

/// Selects one of a [`Snapshot`]'s histograms.
type PickHistogram = fn(&Snapshot) -> &HistogramSnapshot;

/// FxHash-style hasher: a few cycles per word, good enough to spread label sets over shards.
#[derive(Default)]
struct FxHasher(u64);

/// The shard maps are keyed by an already-mixed `u64`; hashing it again would be wasted work.
#[derive(Default)]
struct PassThroughHasher(u64);

/// The [`Collector`] that encodes an [`IstioMetrics`] at scrape time.
#[derive(Debug)]
pub struct IstioCollector(pub Arc<IstioMetrics>);

impl<'a> LabelValues<'a> {
    /// Replaces empty values by `"unknown"` (as Istio does), except `grpc_status`, which Istio
    /// leaves empty for plain HTTP, and `response_flags`, which becomes `"-"`.
    pub fn normalized(self) -> LabelValues<'a> {
        let or_unknown = |s: &'a str| if s.is_empty() { UNKNOWN } else { s };
        LabelValues {
            destination_workload: or_unknown(self.destination_workload),
            destination_workload_namespace: or_unknown(self.destination_workload_namespace),
            destination_app: or_unknown(self.destination_app),
            destination_version: or_unknown(self.destination_version),
            destination_service: or_unknown(self.destination_service),
            destination_service_name: or_unknown(self.destination_service_name),
            destination_service_namespace: or_unknown(self.destination_service_namespace),
            response_flags: if self.response_flags.is_empty() {
                "-"
            } else {
                self.response_flags
            },
            ..self
        }
    }
}

impl IstioMetrics {
    /// A store whose `source_*` labels describe `proxy`, the reporter.
    pub fn new(proxy: &ProxyIdentity, series_dropped: Counter) -> IstioMetrics {
        IstioMetrics {
            source: source_labels(proxy),
            shards: std::array::from_fn(|_| RwLock::new(Shard::default())),
            series: AtomicUsize::new(0),
            series_dropped,
        }
    }

    /// Adds one request to the series of `values` (which must be [`LabelValues::normalized`]).
    pub fn record(&self, values: &LabelValues<'_>, obs: Observation) {
        let mut hasher = FxHasher::default();
        values.hash(&mut hasher);
        let hash = hasher.finish();
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = find(&map, hash, values) {
                series.observe(obs);
                return;
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = find(&map, hash, values) {
            series.observe(obs);
            return;
        }
        if self.series.fetch_add(1, Relaxed) >= MAX_SERIES {
            self.series.fetch_sub(1, Relaxed);
            self.series_dropped.inc();
            return;
        }
        let series = Series::new(values);
        series.observe(obs);
        map.entry(hash).or_default().push(series);
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        let mut out = Vec::with_capacity(self.series.load(Relaxed));
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(map.values().flatten().map(|s| s.snapshot(&self.source)));
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

impl fmt::Debug for IstioMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IstioMetrics")
            .field("source", &self.source)
            .field("series", &self.series.load(Relaxed))
            .finish()
    }
}

impl Series {
    fn new(v: &LabelValues<'_>) -> Series {
        Series {
            key: OwnedLabelValues {
                strings: [
                    v.destination_workload,
                    v.destination_workload_namespace,
                    v.destination_app,
                    v.destination_version,
                    v.destination_service,
                    v.destination_service_name,
                    v.destination_service_namespace,
                    v.grpc_status,
                    v.response_flags,
                ]
                .map(Box::from),
                grpc: v.grpc,
                response_code: v.response_code,
            },
            requests: AtomicU64::new(0),
            duration: AtomicHistogram::new(),
            request_bytes: AtomicHistogram::new(),
            response_bytes: AtomicHistogram::new(),
        }
    }

    fn observe(&self, obs: Observation) {
        self.requests.fetch_add(1, Relaxed);
        let duration_bucket = DURATION_BUCKETS_US.partition_point(|&le| le < obs.duration_us);
        self.duration.observe(duration_bucket, obs.duration_us);
        self.request_bytes
            .observe(size_bucket(obs.request_bytes), obs.request_bytes);
        self.response_bytes
            .observe(size_bucket(obs.response_bytes), obs.response_bytes);
    }

    fn snapshot(&self, source: &[(&'static str, String)]) -> Snapshot {
        let v = self.key.view();
        let code = v.response_code.to_string();
        let known = |s: &str| s != UNKNOWN;
        let canonical_service = if known(v.destination_app) {
            v.destination_app
        } else {
            v.destination_workload
        };
        let canonical_revision = match (known(v.destination_version), known(v.destination_workload))
        {
            (true, _) => v.destination_version,
            (false, true) => "latest",
            (false, false) => UNKNOWN,
        };
        let cluster = if known(v.destination_workload) {
            "Kubernetes"
        } else {
            UNKNOWN
        };
        let mut labels: Vec<(&'static str, String)> = source.to_vec();
        labels.extend(
            [
                ("destination_workload", v.destination_workload),
                (
                    "destination_workload_namespace",
                    v.destination_workload_namespace,
                ),
                ("destination_principal", UNKNOWN),
                ("destination_app", v.destination_app),
                ("destination_version", v.destination_version),
                ("destination_service", v.destination_service),
                ("destination_canonical_service", canonical_service),
                ("destination_canonical_revision", canonical_revision),
                ("destination_service_name", v.destination_service_name),
                (
                    "destination_service_namespace",
                    v.destination_service_namespace,
                ),
                ("destination_cluster", cluster),
                ("request_protocol", if v.grpc { "grpc" } else { "http" }),
                ("response_code", &code),
                ("grpc_response_status", v.grpc_status),
                ("response_flags", v.response_flags),
                ("connection_security_policy", UNKNOWN),
            ]
            .map(|(k, v)| (k, v.to_owned())),
        );
        let durations: Vec<f64> = DURATION_BUCKETS_MS.to_vec();
        let sizes: Vec<f64> = SIZE_BUCKETS.iter().map(|&b| b as f64).collect();
        let (duration_buckets, duration_sum_us) = self.duration.snapshot(&durations);
        Snapshot {
            labels,
            requests: self.requests.load(Relaxed),
            duration: (duration_buckets, duration_sum_us / 1000.0),
            request_bytes: self.request_bytes.snapshot(&sizes),
            response_bytes: self.response_bytes.snapshot(&sizes),
        }
    }
}

impl<const N: usize> AtomicHistogram<N> {
    fn new() -> Self {
        AtomicHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, bucket: usize, value: u64) {
        self.buckets[bucket.min(N - 1)].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Non-cumulative `(le, count)` pairs ending with `+Inf`, and the sum.
    fn snapshot(&self, bounds: &[f64]) -> HistogramSnapshot {
        let buckets = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(le, n)| (le, n.load(Relaxed)))
            .collect();
        (buckets, self.sum.load(Relaxed) as f64)
    }
}

impl OwnedLabelValues {
    fn view(&self) -> LabelValues<'_> {
        let s = &self.strings;
        LabelValues {
            destination_workload: &s[0],
            destination_workload_namespace: &s[1],
            destination_app: &s[2],
            destination_version: &s[3],
            destination_service: &s[4],
            destination_service_name: &s[5],
            destination_service_namespace: &s[6],
            grpc_status: &s[7],
            response_flags: &s[8],
            grpc: self.grpc,
            response_code: self.response_code,
        }
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // A final avalanche so the top bits (used to pick a shard) depend on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for PassThroughHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Collector for IstioCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshots = self.0.snapshots();
        {
            let mut family = encoder.encode_descriptor(
                "istio_requests",
                "Requests processed by this proxy, by Istio's standard labels.",
                None,
                MetricType::Counter,
            )?;
            for s in &snapshots {
                let mut metric = family.encode_family(&s.labels)?;
                metric.encode_counter::<NoLabelSet, u64, u64>(&s.requests, None)?;
            }
        }
        let histograms: [(&str, &str, PickHistogram); 3] = [
            (
                "istio_request_duration_milliseconds",
                "Duration of requests in milliseconds.",
                |s| &s.duration,
            ),
            (
                "istio_request_bytes",
                "Sizes of request bodies in bytes.",
                |s| &s.request_bytes,
            ),
            (
                "istio_response_bytes",
                "Sizes of response bodies in bytes.",
                |s| &s.response_bytes,
            ),
        ];
        for (name, help, pick) in histograms {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for s in &snapshots {
                let (buckets, sum) = pick(s);
                let count = buckets.iter().map(|(_, n)| n).sum();
                let mut metric = family.encode_family(&s.labels)?;
                metric.encode_histogram::<NoLabelSet>(*sum, count, buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The `reporter` and `source_*` labels, which are the same for every request of one proxy.
pub fn source_labels(proxy: &ProxyIdentity) -> Vec<(&'static str, String)> {
    let label = |keys: &[&str]| -> Option<String> {
        keys.iter()
            .find_map(|k| proxy.labels.get(*k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let or_unknown = |s: Option<String>| s.unwrap_or_else(|| UNKNOWN.to_owned());
    let app = label(&["app", "app.kubernetes.io/name"]);
    let version = label(&["version", "app.kubernetes.io/version"]);
    let service_account = Some(proxy.service_account.clone()).filter(|s| !s.is_empty());
    let workload = label(&["service.istio.io/canonical-name"])
        .or_else(|| app.clone())
        .or(service_account);
    let canonical_service =
        label(&["service.istio.io/canonical-name"]).or_else(|| workload.clone());
    let canonical_revision = label(&["service.istio.io/canonical-revision"])
        .or_else(|| version.clone())
        .unwrap_or_else(|| "latest".to_owned());
    let namespace = Some(proxy.namespace.clone()).filter(|s| !s.is_empty());
    vec![
        ("reporter", "source".to_owned()),
        ("source_workload", or_unknown(workload)),
        ("source_canonical_service", or_unknown(canonical_service)),
        ("source_canonical_revision", canonical_revision),
        ("source_workload_namespace", or_unknown(namespace)),
        ("source_principal", UNKNOWN.to_owned()),
        ("source_app", or_unknown(app)),
        ("source_version", or_unknown(version)),
        ("source_cluster", "Kubernetes".to_owned()),
    ]
}

fn find<'m>(map: &'m Shard, hash: u64, values: &LabelValues<'_>) -> Option<&'m Series> {
    map.get(&hash)?.iter().find(|s| s.key.view() == *values)
}

fn size_bucket(bytes: u64) -> usize {
    SIZE_BUCKETS.partition_point(|&le| le < bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_inclusive() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 0);
        assert_eq!(size_bucket(2), 1);
        assert_eq!(size_bucket(10), 1);
        assert_eq!(size_bucket(1_000_000_000), 9);
        assert_eq!(size_bucket(1_000_000_001), 10);
        assert_eq!(size_bucket(u64::MAX), 10);
    }

    #[test]
    fn source_labels_prefer_canonical_name_then_app_then_service_account() {
        let mut proxy = ProxyIdentity {
            service_account: "ingress-sa".into(),
            ..Default::default()
        };
        let get = |p: &ProxyIdentity, k: &str| {
            source_labels(p)
                .into_iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v)
                .unwrap()
        };
        assert_eq!(get(&proxy, "source_workload"), "ingress-sa");
        assert_eq!(get(&proxy, "source_app"), "unknown");
        assert_eq!(get(&proxy, "source_canonical_revision"), "latest");
        proxy
            .labels
            .insert("app".into(), "istio-ingressgateway".into());
        proxy.labels.insert("version".into(), "v2".into());
        assert_eq!(get(&proxy, "source_workload"), "istio-ingressgateway");
        assert_eq!(get(&proxy, "source_canonical_revision"), "v2");
        proxy
            .labels
            .insert("service.istio.io/canonical-name".into(), "ingress".into());
        assert_eq!(get(&proxy, "source_workload"), "ingress");
        assert_eq!(get(&proxy, "source_app"), "istio-ingressgateway");
        assert_eq!(get(&proxy, "source_workload_namespace"), "default");
    }

    #[test]
    fn series_beyond_the_limit_are_dropped_and_counted() {
        let dropped = Counter::default();
        let metrics = IstioMetrics::new(&ProxyIdentity::default(), dropped.clone());
        let obs = Observation {
            duration_us: 1,
            request_bytes: 0,
            response_bytes: 0,
        };
        let statuses: Vec<String> = (0..MAX_SERIES + 5).map(|i| i.to_string()).collect();
        for status in &statuses {
            let values = LabelValues {
                destination_workload: "",
                destination_workload_namespace: "",
                destination_app: "",
                destination_version: "",
                destination_service: "",
                destination_service_name: "",
                destination_service_namespace: "",
                grpc: true,
                response_code: 200,
                grpc_status: status,
                response_flags: "-",
            };
            metrics.record(&values.normalized(), obs);
        }
        assert_eq!(metrics.series.load(Relaxed), MAX_SERIES);
        assert_eq!(dropped.get(), 5);
        assert_eq!(metrics.snapshots().len(), MAX_SERIES);
    }
}
