//! Envoy's RBAC filter counters for Prometheus: `envoy_http_rbac_allowed`, `_denied`, `_logged`,
//! `_shadow_allowed` and `_shadow_denied`, labelled with the HTTP connection manager's stat
//! prefix (and, for shadow rules, their stat prefix, e.g. Istio's `istio_dry_run_allow_`).
//! The request path bumps atomics held by each compiled RBAC filter; the config path hands the
//! current snapshot's filters over with [`AuthzStats::set_filters`]. Knows nothing about HTTP.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::runtime::rbac::RbacStats;

/// One RBAC filter of the current snapshot: (HCM stat prefix, shadow rules prefix, counters).
pub type FilterStats = (Arc<str>, Arc<str>, Arc<RbacStats>);

#[derive(Debug, Default)]
pub struct AuthzStats {
    filters: RwLock<Vec<FilterStats>>,
}

/// The [`Collector`] that encodes [`AuthzStats`].
#[derive(Debug)]
pub struct AuthzCollector(pub Arc<AuthzStats>);

impl AuthzStats {
    /// Replace the filters reported (called once per applied snapshot).
    pub fn set_filters(&self, filters: Vec<FilterStats>) {
        *self.filters.write().unwrap_or_else(PoisonError::into_inner) = filters;
    }
}

type Field = fn(&RbacStats) -> &AtomicU64;

const FAMILIES: [(&str, &str, bool, Field); 5] = [
    (
        "envoy_http_rbac_allowed",
        "Requests the enforced RBAC rules allowed",
        false,
        |s| &s.allowed,
    ),
    (
        "envoy_http_rbac_denied",
        "Requests the enforced RBAC rules denied (403)",
        false,
        |s| &s.denied,
    ),
    (
        "envoy_http_rbac_logged",
        "Requests a LOG (Istio AUDIT) RBAC filter marked for logging",
        false,
        |s| &s.logged,
    ),
    (
        "envoy_http_rbac_shadow_allowed",
        "Requests the shadow (dry-run) RBAC rules would have allowed",
        true,
        |s| &s.shadow_allowed,
    ),
    (
        "envoy_http_rbac_shadow_denied",
        "Requests the shadow (dry-run) RBAC rules would have denied",
        true,
        |s| &s.shadow_denied,
    ),
];

impl Collector for AuthzCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let filters = self
            .0
            .filters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, help, shadow, field) in FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            // Several filters of one listener (DENY, ALLOW, …) add up in one series.
            let mut series: Vec<(&str, &str, u64)> = Vec::new();
            for (prefix, shadow_prefix, stats) in &filters {
                let shadow_prefix = if shadow { &**shadow_prefix } else { "" };
                let v = field(stats).load(Relaxed);
                match series
                    .iter_mut()
                    .find(|(p, s, _)| *p == &**prefix && *s == shadow_prefix)
                {
                    Some(entry) => entry.2 += v,
                    None => series.push((prefix, shadow_prefix, v)),
                }
            }
            series.sort();
            for (prefix, shadow_prefix, v) in series {
                if shadow {
                    let labels = [
                        ("envoy_http_conn_manager_prefix", prefix),
                        ("shadow_rules_prefix", shadow_prefix),
                    ];
                    ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
                } else {
                    let labels = [("envoy_http_conn_manager_prefix", prefix)];
                    ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
