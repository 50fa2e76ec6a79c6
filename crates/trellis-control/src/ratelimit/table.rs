//! The limit table: every global rate of a `RateLimitPolicy` and every quota of a
//! `QuotaPolicy` in the served configuration, found by a descriptor's first entry
//! (`("limit", "<ns>/<policy>/<limit>")` or `("quota", "<ns>/<policy>/<quota>")`), plus the
//! Redis key of a descriptor in a window. Built once per configuration, then read-only.

use std::collections::HashMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use trellis_config::Snapshot;

use super::window::{Window, WindowKind};

/// First-entry key of a RateLimitPolicy limit's descriptor.
pub const LIMIT_KEY: &str = "limit";
/// First-entry key of a QuotaPolicy quota's descriptor.
pub const QUOTA_KEY: &str = "quota";
/// Second entry of a quota's descriptor: who is counted.
pub const CONSUMER_KEY: &str = "consumer";
/// The rate limit domain when `MeshConfig.rateLimitService.domain` is empty.
pub const DEFAULT_DOMAIN: &str = "trellis";

/// Every rule of one configuration.
#[derive(Debug, Default)]
pub struct LimitTable {
    /// Requests must name this domain; others have no limits here.
    pub domain: String,
    limits: HashMap<String, Rule>,
    quota_rules: HashMap<String, Rule>,
    /// `<ns>/<policy>` → its quotas' names, in order (for the usage API).
    quota_policies: HashMap<String, Vec<String>>,
}

/// One limit or quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `<ns>/<policy>/<name>`: the `key` label of the metrics.
    pub name: String,
    /// Requests per window.
    pub requests: u64,
    pub window: WindowKind,
    /// Count and report only, never over limit.
    pub shadow: bool,
}

impl LimitTable {
    pub fn from_snapshot(snapshot: &Snapshot) -> LimitTable {
        let domain = snapshot
            .mesh_config()
            .rate_limit_service
            .map(|s| s.domain)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
        let mut table = LimitTable {
            domain,
            ..LimitTable::default()
        };
        for policy in &snapshot.rate_limit_policies {
            let prefix = format!("{}/{}", policy.meta.namespace, policy.meta.name);
            for limit in &policy.spec.limits {
                let Some(global) = &limit.global else {
                    continue;
                };
                let name = format!("{prefix}/{}", limit.name);
                table.limits.insert(
                    name.clone(),
                    Rule {
                        name,
                        requests: u64::from(global.requests_per_unit),
                        window: WindowKind::Fixed(global.unit.unwrap_or_default()),
                        shadow: policy.spec.shadow,
                    },
                );
            }
        }
        for policy in &snapshot.quota_policies {
            let prefix = format!("{}/{}", policy.meta.namespace, policy.meta.name);
            let mut names = Vec::new();
            for quota in &policy.spec.quotas {
                let name = format!("{prefix}/{}", quota.name);
                names.push(quota.name.clone());
                table.quota_rules.insert(
                    name.clone(),
                    Rule {
                        name,
                        requests: quota.requests,
                        window: WindowKind::Calendar(quota.window.unwrap_or_default()),
                        shadow: policy.spec.shadow,
                    },
                );
            }
            table.quota_policies.insert(prefix, names);
        }
        table
    }

    /// The rule a descriptor's first entry names; `None` for anything else (no limit).
    pub fn rule(&self, entries: &[Entry]) -> Option<&Rule> {
        let first = entries.first()?;
        match first.key.as_str() {
            LIMIT_KEY => self.limits.get(&first.value),
            QUOTA_KEY => self.quota_rules.get(&first.value),
            _ => None,
        }
    }

    /// The quotas of QuotaPolicy `namespace/policy`, in order, or `None` if there is none.
    pub fn quotas(&self, namespace: &str, policy: &str) -> Option<Vec<&Rule>> {
        let prefix = format!("{namespace}/{policy}");
        let names = self.quota_policies.get(&prefix)?;
        Some(
            names
                .iter()
                .filter_map(|n| self.quota_rules.get(&format!("{prefix}/{n}")))
                .collect(),
        )
    }

    /// Number of rules (limits and quotas).
    pub fn len(&self) -> usize {
        self.limits.len() + self.quota_rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Redis key of a descriptor's counter in `window`, as envoyproxy/ratelimit builds it:
/// `<domain>_<k1>_<v1>_<k2>_<v2>…_<window start>`.
pub fn counter_key(domain: &str, entries: &[Entry], window: Window) -> String {
    let mut key = String::with_capacity(
        domain.len()
            + 12
            + entries
                .iter()
                .map(|e| e.key.len() + e.value.len() + 2)
                .sum::<usize>(),
    );
    key.push_str(domain);
    key.push('_');
    for entry in entries {
        key.push_str(&entry.key);
        key.push('_');
        key.push_str(&entry.value);
        key.push('_');
    }
    key.push_str(&window.start.to_string());
    key
}

/// The entries of a quota's descriptor for `consumer`.
pub fn quota_entries(rule: &Rule, consumer: &str) -> Vec<Entry> {
    vec![
        Entry {
            key: QUOTA_KEY.into(),
            value: rule.name.clone(),
        },
        Entry {
            key: CONSUMER_KEY.into(),
            value: consumer.into(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_config::types::ratelimit::{QuotaWindow, RateUnit};

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    const CONFIG: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: ratelimit, namespace: istio-system}
spec:
  shadow: true
  limits:
  - name: productpage
    descriptors: [{path: {exact: /productpage}}]
    global: {requestsPerUnit: 1, unit: MINUTE}
  - name: local-only
    descriptors: [{header: {name: x-user}}]
    local: {maxTokens: 4, tokensPerFill: 4, fillInterval: 60s}
---
apiVersion: trellis.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: api-plan, namespace: default}
spec:
  consumer: {header: x-api-key}
  quotas:
  - {name: hourly, requests: 100, window: HOUR}
  - {name: monthly, requests: 1000, window: MONTH}
---
apiVersion: trellis.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec:
  rateLimitService: {service: ratelimit.istio-system.svc.cluster.local, port: 8081, domain: shop}
"#;

    #[test]
    fn the_table_holds_global_limits_and_quotas_by_first_entry() {
        let loaded = trellis_config::load_str("t.yaml", CONFIG).expect("config loads");
        let table = LimitTable::from_snapshot(&loaded.snapshot);
        assert_eq!(table.domain, "shop");
        assert_eq!(table.len(), 3, "the local-only limit has no global rate");
        let rule = table
            .rule(&[
                entry("limit", "istio-system/ratelimit/productpage"),
                entry("path", "exact:/productpage"),
            ])
            .expect("productpage");
        assert_eq!(rule.requests, 1);
        assert_eq!(rule.window, WindowKind::Fixed(RateUnit::Minute));
        assert!(rule.shadow);
        assert!(
            table
                .rule(&[entry("limit", "istio-system/ratelimit/local-only")])
                .is_none()
        );
        assert!(
            table
                .rule(&[entry("path", "istio-system/ratelimit/productpage")])
                .is_none()
        );
        assert!(table.rule(&[]).is_none());
        let quotas = table.quotas("default", "api-plan").expect("api-plan");
        assert_eq!(
            quotas
                .iter()
                .map(|r| (r.name.as_str(), r.requests, r.window))
                .collect::<Vec<_>>(),
            vec![
                (
                    "default/api-plan/hourly",
                    100,
                    WindowKind::Calendar(QuotaWindow::Hour)
                ),
                (
                    "default/api-plan/monthly",
                    1000,
                    WindowKind::Calendar(QuotaWindow::Month)
                ),
            ]
        );
        assert!(table.rule(&quota_entries(quotas[1], "alice")).is_some());
        assert!(table.quotas("default", "other").is_none());
        let empty = LimitTable::from_snapshot(&Snapshot::default());
        assert_eq!(empty.domain, "trellis");
        assert!(empty.is_empty());
    }

    #[test]
    fn keys_are_envoyproxy_ratelimit_shaped() {
        let window = WindowKind::Fixed(RateUnit::Minute).at(1_700_000_000);
        let entries = [
            entry("limit", "istio-system/ratelimit/productpage"),
            entry("path", "exact:/productpage"),
        ];
        assert_eq!(
            counter_key("trellis", &entries, window),
            "trellis_limit_istio-system/ratelimit/productpage_path_exact:/productpage_1699999980"
        );
        let rule = Rule {
            name: "default/api-plan/daily".into(),
            requests: 3,
            window: WindowKind::Calendar(QuotaWindow::Day),
            shadow: false,
        };
        assert_eq!(
            counter_key(
                "trellis",
                &quota_entries(&rule, "alice"),
                rule.window.at(1_700_000_000)
            ),
            "trellis_quota_default/api-plan/daily_consumer_alice_1699920000"
        );
    }
}
