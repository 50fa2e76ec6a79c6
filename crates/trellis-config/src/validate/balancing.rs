//! Istio's rules for `localityLbSetting` and the consistent-hash table sizes: one of
//! `distribute` / `failover` (and `failoverPriority` not with `distribute`), failover between
//! two different regions, locality patterns with `*` only as a whole last segment, positive
//! weights, ring sizes within Envoy's 2^23 and Maglev table sizes that are prime.

use super::Reporter;
use crate::types::{ConsistentHashLb, LocalityLoadBalancerSetting};

/// Envoy's largest ring.
const MAX_RING_SIZE: u64 = 1 << 23;

pub(super) fn locality_lb_setting(
    rep: &mut Reporter<'_>,
    path: &str,
    l: &LocalityLoadBalancerSetting,
) {
    let path = format!("{path}.localityLbSetting");
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        rep.error(&path, "set either `distribute` or `failover`, not both");
    }
    if !l.distribute.is_empty() && !l.failover_priority.is_empty() {
        rep.error(
            &path,
            "set either `distribute` or `failoverPriority`, not both",
        );
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let at = format!("{path}.distribute[{i}]");
        locality_pattern(rep, &format!("{at}.from"), &d.from);
        if d.to.is_empty() {
            rep.error(
                &format!("{at}.to"),
                "at least one destination locality is required",
            );
        }
        for (to, weight) in &d.to {
            locality_pattern(rep, &format!("{at}.to"), to);
            if *weight == 0 {
                rep.error(
                    &format!("{at}.to"),
                    format!("weight of `{to}` is 0; use 1..=100 or leave the locality out"),
                );
            }
        }
    }
    for (i, f) in l.failover.iter().enumerate() {
        let at = format!("{path}.failover[{i}]");
        for (field, region) in [("from", &f.from), ("to", &f.to)] {
            if region.is_empty() || region.contains('/') || region.contains('*') {
                rep.error(
                    &format!("{at}.{field}"),
                    format!("`{region}` is not a region; failover goes from one region to another"),
                );
            }
        }
        if f.from == f.to && !f.from.is_empty() {
            rep.error(
                &at,
                format!(
                    "failover from `{}` to itself; name two different regions",
                    f.from
                ),
            );
        }
    }
    for (i, label) in l.failover_priority.iter().enumerate() {
        if label.is_empty() {
            rep.error(
                &format!("{path}.failoverPriority[{i}]"),
                "label name must not be empty",
            );
        }
    }
}

/// `region[/zone[/subzone]]`; `*` only as a whole segment and only last.
fn locality_pattern(rep: &mut Reporter<'_>, path: &str, pattern: &str) {
    let parts: Vec<&str> = pattern.split('/').collect();
    let bad_wildcard = parts
        .iter()
        .enumerate()
        .any(|(i, p)| p.contains('*') && (*p != "*" || i + 1 != parts.len()));
    if pattern.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) || bad_wildcard {
        rep.error(
            path,
            format!("locality `{pattern}` must be `region[/zone[/subzone]]`, with `*` only as the last part"),
        );
    }
}

pub(super) fn hash_tables(rep: &mut Reporter<'_>, path: &str, ch: &ConsistentHashLb) {
    let path = format!("{path}.consistentHash");
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        rep.error(&path, "set either `ringHash` or `maglev`, not both");
    }
    let ring = ch
        .ring_hash
        .as_ref()
        .map(|r| ("ringHash.minimumRingSize", r.minimum_ring_size))
        .or(ch.minimum_ring_size.map(|s| ("minimumRingSize", s)));
    if let Some((field, size)) = ring
        && size > MAX_RING_SIZE
    {
        rep.error(
            &format!("{path}.{field}"),
            format!("ring size {size} is larger than {MAX_RING_SIZE}"),
        );
    }
    if let Some(m) = &ch.maglev
        && m.table_size != 0
        && !is_prime(m.table_size)
    {
        rep.error(
            &format!("{path}.maglev.tableSize"),
            format!("table size {} is not prime (e.g. 65537)", m.table_size),
        );
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    fn errors(traffic_policy: &str) -> Vec<String> {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: r\n  trafficPolicy:\n{traffic_policy}"
        );
        match load_str("dr.yaml", &yaml) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn locality_settings_follow_istio_rules() {
        let e = errors(
            "    loadBalancer:\n      localityLbSetting:\n        distribute: [{from: \"r1/*/z\", to: {\"r1/z1\": 100}}]\n        failover: [{from: r1, to: r1}, {from: r1/z1, to: r2}]\n",
        );
        for want in [
            "set either `distribute` or `failover`, not both",
            "distribute[0].from: locality `r1/*/z` must be `region[/zone[/subzone]]`",
            "failover[0]: failover from `r1` to itself",
            "failover[1].from: `r1/z1` is not a region",
        ] {
            assert!(
                e.iter().any(|e| e.contains(want)),
                "missing {want:?} in {e:?}"
            );
        }
        assert!(errors(
            "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r1, to: r3}]\n        failoverPriority: [topology.istio.io/network]\n"
        )
        .is_empty());
    }

    #[test]
    fn hash_table_sizes_are_checked() {
        let e = errors(
            "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x\n        maglev: {tableSize: 65536}\n",
        );
        assert!(
            e.iter()
                .any(|e| e.contains("maglev.tableSize: table size 65536 is not prime")),
            "{e:?}"
        );
        let e = errors(
            "    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        ringHash: {minimumRingSize: 100000000}\n",
        );
        assert!(
            e.iter()
                .any(|e| e.contains("ringHash.minimumRingSize: ring size")),
            "{e:?}"
        );
        assert!(errors("    loadBalancer:\n      consistentHash: {httpHeaderName: x, maglev: {tableSize: 65537}}\n").is_empty());
    }
}
