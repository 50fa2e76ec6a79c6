//! The rate limit service's metrics, named after envoyproxy/ratelimit's
//! (`ratelimit.service.rate_limit.<domain>.<key>.total_hits` … as its Prometheus exporter
//! renders them), by `domain` and limit `key` (`<ns>/<policy>/<limit or quota>`), plus Redis
//! errors by reason and the size of the limit table. Counters carry Prometheus' `_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `domain` and `key` of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    pub domain: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    total_hits: Family<LimitLabels, Counter>,
    over_limit: Family<LimitLabels, Counter>,
    near_limit: Family<LimitLabels, Counter>,
    within_limit: Family<LimitLabels, Counter>,
    shadow_mode: Family<LimitLabels, Counter>,
    redis_errors: Family<ReasonLabel, Counter>,
    rules: Gauge,
}

/// What one descriptor's check found, for the counters.
pub struct Outcome {
    pub hits: u64,
    /// The count after this check's increment.
    pub after: u64,
    pub limit: u64,
    pub shadow: bool,
}

/// envoyproxy/ratelimit's near-limit ratio: a count past 80% of the limit is "near".
const NEAR_LIMIT_RATIO: f64 = 0.8;

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let total_hits = Family::<LimitLabels, Counter>::default();
        let over_limit = Family::<LimitLabels, Counter>::default();
        let near_limit = Family::<LimitLabels, Counter>::default();
        let within_limit = Family::<LimitLabels, Counter>::default();
        let shadow_mode = Family::<LimitLabels, Counter>::default();
        let redis_errors = Family::<ReasonLabel, Counter>::default();
        let rules = Gauge::default();
        registry.register(
            "ratelimit_service_rate_limit_total_hits",
            "Hits counted against a limit",
            total_hits.clone(),
        );
        registry.register(
            "ratelimit_service_rate_limit_over_limit",
            "Hits over a limit",
            over_limit.clone(),
        );
        registry.register(
            "ratelimit_service_rate_limit_near_limit",
            "Hits within a limit but past 80% of it",
            near_limit.clone(),
        );
        registry.register(
            "ratelimit_service_rate_limit_within_limit",
            "Hits within a limit",
            within_limit.clone(),
        );
        registry.register(
            "ratelimit_service_rate_limit_shadow_mode",
            "Hits over the limit of a shadow policy, answered OK",
            shadow_mode.clone(),
        );
        registry.register(
            "ratelimit_redis_errors",
            "ShouldRateLimit calls answered UNAVAILABLE because Redis failed, by reason",
            redis_errors.clone(),
        );
        registry.register(
            "ratelimit_service_config_rules",
            "Global limits and quotas in the limit table",
            rules.clone(),
        );
        Metrics {
            registry,
            total_hits,
            over_limit,
            near_limit,
            within_limit,
            shadow_mode,
            redis_errors,
            rules,
        }
    }
}

impl Metrics {
    /// Counts one descriptor's hits as envoyproxy/ratelimit does: the hits past the limit are
    /// over (and, for a shadow policy, shadow), the others within, and those within but past
    /// the near-limit threshold also near.
    pub fn record(&self, labels: &LimitLabels, o: &Outcome) {
        self.total_hits.get_or_create(labels).inc_by(o.hits);
        let before = o.after.saturating_sub(o.hits);
        let over = o.after.saturating_sub(o.limit.max(before)).min(o.hits);
        let within = o.hits - over;
        if over > 0 {
            self.over_limit.get_or_create(labels).inc_by(over);
            if o.shadow {
                self.shadow_mode.get_or_create(labels).inc_by(over);
            }
        }
        if within > 0 {
            self.within_limit.get_or_create(labels).inc_by(within);
            let threshold = (o.limit as f64 * NEAR_LIMIT_RATIO).floor() as u64;
            let last_within = o.after.min(o.limit);
            let near = last_within
                .saturating_sub(threshold.max(before))
                .min(within);
            if near > 0 {
                self.near_limit.get_or_create(labels).inc_by(near);
            }
        }
    }

    pub fn redis_error(&self, reason: &str) {
        self.redis_errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn set_rules(&self, n: usize) {
        self.rules.set(n as i64);
    }

    /// Appends the metrics in Prometheus text format.
    pub fn encode(&self, out: &mut String) {
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(out, &self.registry) {
            tracing::error!(error = %e, "encoding rate limit metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn hits_split_into_within_near_and_over_like_envoyproxy_ratelimit() {
        let m = Metrics::default();
        let labels = LimitLabels {
            domain: "trellis".into(),
            key: "ns/p/l".into(),
        };
        // Limit 10: hits 1..=12 one by one: 8 within (not near), 2 near (9, 10), 2 over.
        for after in 1..=12 {
            m.record(
                &labels,
                &Outcome {
                    hits: 1,
                    after,
                    limit: 10,
                    shadow: true,
                },
            );
        }
        let mut text = String::new();
        m.encode(&mut text);
        assert_eq!(
            value(&text, "ratelimit_service_rate_limit_total_hits_total{"),
            12
        );
        assert_eq!(
            value(&text, "ratelimit_service_rate_limit_within_limit_total{"),
            10
        );
        assert_eq!(
            value(&text, "ratelimit_service_rate_limit_near_limit_total{"),
            2
        );
        assert_eq!(
            value(&text, "ratelimit_service_rate_limit_over_limit_total{"),
            2
        );
        assert_eq!(
            value(&text, "ratelimit_service_rate_limit_shadow_mode_total{"),
            2
        );
        assert!(text.contains(r#"domain="trellis",key="ns/p/l""#), "{text}");
    }
}
