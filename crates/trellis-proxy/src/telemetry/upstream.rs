//! Upstream health as operators see it: `trellis_outlier_ejections_total{cluster_name}` and
//! `trellis_outlier_ejected{cluster_name}` in the Prometheus exposition, and the per-endpoint
//! table of the admin `/clusters` page.
//!
//! Reads whatever [`ClusterSource`] the application installs (the current runtime snapshot's
//! clusters) at scrape time only; the request path never touches this module.

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// One cluster's health, copied at scrape time.
#[derive(Debug, Clone)]
pub struct ClusterHealth {
    pub name: Arc<str>,
    /// Whether the cluster has `outlier_detection` (only those get outlier series).
    pub outlier_detection: bool,
    pub ejections_total: u64,
    pub ejected: i64,
    pub endpoints: Vec<EndpointHealthView>,
}

#[derive(Debug, Clone)]
pub struct EndpointHealthView {
    pub address: String,
    pub priority: u32,
    /// `region/zone/subzone`.
    pub locality: String,
    pub weight: u32,
    /// `healthy`, `ejected` (outlier detection) or `failed_active_hc`.
    pub health: &'static str,
    pub active_requests: u64,
}

/// Produces the current clusters' health: every cluster with its endpoints (`true`, for
/// `/clusters`), or only the clusters with outlier detection and no endpoint rows (`false`, for
/// each metrics scrape).
pub type ClusterSource = Box<dyn Fn(bool) -> Vec<ClusterHealth> + Send + Sync>;

/// The installed source, shared by the collector and the admin page.
#[derive(Clone, Default)]
pub struct UpstreamHealth(Arc<OnceLock<ClusterSource>>);

impl fmt::Debug for UpstreamHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamHealth")
    }
}

impl UpstreamHealth {
    /// Installs the source; later calls are ignored.
    pub fn install(&self, source: ClusterSource) {
        let _ = self.0.set(source);
    }

    pub fn clusters(&self, endpoints: bool) -> Vec<ClusterHealth> {
        let mut all = self.0.get().map(|f| f(endpoints)).unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Envoy's `/clusters` text shape, one line per endpoint field:
    /// `<cluster>::<address>::health_flags::<healthy|ejected|failed_active_hc>` and friends.
    pub fn clusters_text(&self) -> String {
        let mut out = String::new();
        for c in self.clusters(true) {
            if c.outlier_detection {
                let _ = writeln!(
                    out,
                    "{}::outlier::ejections_total::{}",
                    c.name, c.ejections_total
                );
                let _ = writeln!(out, "{}::outlier::ejected::{}", c.name, c.ejected);
            }
            for e in &c.endpoints {
                let p = format!("{}::{}", c.name, e.address);
                let _ = writeln!(out, "{p}::health_flags::{}", e.health);
                let _ = writeln!(out, "{p}::priority::{}", e.priority);
                let _ = writeln!(out, "{p}::locality::{}", e.locality);
                let _ = writeln!(out, "{p}::weight::{}", e.weight);
                let _ = writeln!(out, "{p}::rq_active::{}", e.active_requests);
            }
        }
        out
    }
}

/// Registers the outlier series.
#[derive(Debug)]
pub struct UpstreamCollector(pub UpstreamHealth);

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let clusters: Vec<ClusterHealth> = self
            .0
            .clusters(false)
            .into_iter()
            .filter(|c| c.outlier_detection)
            .collect();
        {
            let mut family = encoder.encode_descriptor(
                "trellis_outlier_ejections",
                "Endpoints ejected by outlier detection, per cluster.",
                None,
                MetricType::Counter,
            )?;
            for c in &clusters {
                let labels = [("cluster_name", c.name.to_string())];
                let mut metric = family.encode_family(&labels)?;
                metric.encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(
                    &c.ejections_total,
                    None,
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "trellis_outlier_ejected",
            "Endpoints ejected by outlier detection right now, per cluster.",
            None,
            MetricType::Gauge,
        )?;
        for c in &clusters {
            let labels = [("cluster_name", c.name.to_string())];
            let mut metric = family.encode_family(&labels)?;
            metric.encode_gauge(&c.ejected)?;
        }
        Ok(())
    }
}
