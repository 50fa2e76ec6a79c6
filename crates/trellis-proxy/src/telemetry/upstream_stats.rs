//! Per-cluster upstream counters in the spirit of Envoy's `cluster.<name>.upstream_rq_*` stats:
//! requests, retries (and their successes and budget/circuit overflows), pending-queue and
//! connection overflows. The request path bumps plain atomics held by the cluster (carried over
//! across config swaps by cluster name); the scrape path reads the clusters of the current
//! snapshot, which the config path hands over with [`UpstreamStats::set_clusters`]. Knows
//! nothing about HTTP or sockets.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// Counters of one upstream cluster.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests routed to the cluster (first attempts).
    pub rq_total: AtomicU64,
    /// Retries sent (attempts after the first).
    pub rq_retry: AtomicU64,
    /// Retried requests whose final attempt got a response that was not retriable.
    pub rq_retry_success: AtomicU64,
    /// Retries not sent because the retry budget or `max_retries` was exhausted.
    pub rq_retry_overflow: AtomicU64,
    /// Retries not sent because the retry limit (`attempts`) was reached (`URX`).
    pub rq_retry_limit_exceeded: AtomicU64,
    /// Requests refused because the pending queue was full (`http1MaxPendingRequests`).
    pub rq_pending_overflow: AtomicU64,
    /// Requests refused because `max_requests` (`http2MaxRequests`) were in flight.
    pub rq_overflow: AtomicU64,
}

/// The clusters of the current snapshot, for the scrape path.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    clusters: RwLock<Vec<(Arc<str>, Arc<ClusterStats>)>>,
}

/// The [`Collector`] that encodes [`UpstreamStats`].
#[derive(Debug)]
pub struct UpstreamStatsCollector(pub Arc<UpstreamStats>);

impl ClusterStats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

impl UpstreamStats {
    /// Replace the set of clusters reported (called once per applied snapshot).
    pub fn set_clusters(&self, clusters: Vec<(Arc<str>, Arc<ClusterStats>)>) {
        let mut sorted = clusters;
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        *self
            .clusters
            .write()
            .unwrap_or_else(PoisonError::into_inner) = sorted;
    }
}

type Field = fn(&ClusterStats) -> &AtomicU64;

const FAMILIES: [(&str, &str, Field); 7] = [
    (
        "trellis_upstream_rq",
        "Requests routed to the cluster (first attempts; retries are counted apart)",
        |s| &s.rq_total,
    ),
    (
        "trellis_upstream_rq_retry",
        "Retries sent to the cluster",
        |s| &s.rq_retry,
    ),
    (
        "trellis_upstream_rq_retry_success",
        "Retried requests whose last attempt succeeded (response not retriable)",
        |s| &s.rq_retry_success,
    ),
    (
        "trellis_upstream_rq_retry_overflow",
        "Retries not sent: retry budget or max_retries circuit breaker exhausted (UO)",
        |s| &s.rq_retry_overflow,
    ),
    (
        "trellis_upstream_rq_retry_limit_exceeded",
        "Requests still failing when their retry attempts ran out (URX)",
        |s| &s.rq_retry_limit_exceeded,
    ),
    (
        "trellis_upstream_rq_pending_overflow",
        "Requests refused because the pending queue was full (http1MaxPendingRequests, UO)",
        |s| &s.rq_pending_overflow,
    ),
    (
        "trellis_upstream_rq_overflow",
        "Requests refused because max_requests were in flight (http2MaxRequests, UO)",
        |s| &s.rq_overflow,
    ),
];

impl Collector for UpstreamStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let clusters = self
            .0
            .clusters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, help, field) in FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (cluster, stats) in &clusters {
                let labels = [("cluster_name", &**cluster)];
                let metric = family.encode_family(&labels)?;
                ConstCounter::new(field(stats).load(Relaxed)).encode(metric)?;
            }
        }
        Ok(())
    }
}
