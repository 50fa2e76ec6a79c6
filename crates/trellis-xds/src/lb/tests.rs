use super::*;
use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};
use trellis_config::{LocalityDistribute, LocalityFailover};

fn group(locality: &str) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(parse_locality(locality)),
        lb_endpoints: vec![LbEndpoint::default()],
        ..Default::default()
    }
}

fn cla(localities: &[&str]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: localities.iter().map(|l| group(l)).collect(),
        ..Default::default()
    }
}

fn proxy(locality: &str) -> ProxyIdentity {
    let l = parse_locality(locality);
    ProxyIdentity {
        locality: crate::Locality {
            region: l.region,
            zone: l.zone,
            subzone: l.sub_zone,
        },
        ..Default::default()
    }
}

fn priorities(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
    cla.endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            (
                format!("{}/{}/{}", l.region, l.zone, l.sub_zone),
                g.priority,
            )
        })
        .collect()
}

fn settings(l: LocalityLoadBalancerSetting) -> LoadBalancerSettings {
    LoadBalancerSettings {
        locality_lb_setting: Some(l),
        ..Default::default()
    }
}

#[test]
fn failover_priorities_follow_istio() {
    let mut c = cla(&["r1/z1/a", "r1/z2/a", "r2/z1/a", "r3/z1/a", "r1/z1/b"]);
    let lb = settings(LocalityLoadBalancerSetting {
        failover: vec![LocalityFailover {
            from: "r1".into(),
            to: "r3".into(),
        }],
        ..Default::default()
    });
    apply_locality(&mut c, &proxy("r1/z1/a"), Some(&lb), true);
    assert_eq!(
        priorities(&c),
        vec![
            ("r1/z1/a".into(), 0),
            ("r1/z1/b".into(), 1),
            ("r1/z2/a".into(), 2),
            ("r3/z1/a".into(), 3),
            ("r2/z1/a".into(), 4),
        ]
    );
}

#[test]
fn locality_lb_needs_outlier_detection() {
    let mut c = cla(&["r1/z1/a", "r2/z1/a"]);
    apply_locality(&mut c, &proxy("r2/z1/a"), None, false);
    assert!(c.endpoints.iter().all(|g| g.priority == 0));
    // With outlier detection and no setting: Istio's default failover is on.
    apply_locality(&mut c, &proxy("r2/z1/a"), None, true);
    assert_eq!(priorities(&c)[0], ("r2/z1/a".into(), 0));
    assert_eq!(priorities(&c)[1], ("r1/z1/a".into(), 1));
}

#[test]
fn distribute_sets_weights_and_drops_the_rest() {
    let mut c = cla(&["r1/z1/a", "r1/z2/a", "r1/z2/b", "r2/z1/a"]);
    let lb = settings(LocalityLoadBalancerSetting {
        distribute: vec![LocalityDistribute {
            from: "r1/z1/*".into(),
            to: [("r1/z1/*".to_string(), 70), ("r1/z2/*".to_string(), 30)].into(),
        }],
        ..Default::default()
    });
    apply_locality(&mut c, &proxy("r1/z1/a"), Some(&lb), true);
    let weights: Vec<(String, u32)> = c
        .endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            let w = g.load_balancing_weight.as_ref().map_or(0, |w| w.value);
            (format!("{}/{}", l.region, l.zone), w)
        })
        .collect();
    assert_eq!(
        weights,
        vec![
            ("r1/z1".into(), 70),
            ("r1/z2".into(), 15),
            ("r1/z2".into(), 15)
        ]
    );
}

#[test]
fn locality_patterns() {
    let l = parse_locality("r1/z1/s1");
    assert!(locality_match(&l, "r1"));
    assert!(locality_match(&l, "r1/*"));
    assert!(locality_match(&l, "*"));
    assert!(locality_match(&l, "r1/z1/s1"));
    assert!(!locality_match(&l, "r1/z2"));
    assert!(!locality_match(&l, "r2/*"));
}

#[test]
fn outlier_detection_maps_like_istio() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(3),
        consecutive_gateway_errors: Some(0),
        interval: Some(trellis_config::Duration("1s".into())),
        base_ejection_time: Some(trellis_config::Duration("30s".into())),
        max_ejection_percent: Some(50),
        split_external_local_origin_errors: Some(true),
        consecutive_local_origin_failures: Some(2),
        ..Default::default()
    };
    let x = outlier_detection(&od);
    assert_eq!(x.consecutive_5xx.map(|v| v.value), Some(3));
    assert_eq!(x.enforcing_consecutive_5xx.map(|v| v.value), Some(100));
    assert_eq!(
        x.enforcing_consecutive_gateway_failure.map(|v| v.value),
        Some(0)
    );
    assert_eq!(x.max_ejection_percent.map(|v| v.value), Some(50));
    assert_eq!(x.consecutive_local_origin_failure.map(|v| v.value), Some(2));
    assert!(x.split_external_local_origin_errors);
    assert_eq!(x.enforcing_success_rate.map(|v| v.value), Some(0));
}

#[test]
fn failover_priority_ranks_by_matching_label_prefix() {
    use std::collections::BTreeMap;
    let labels = |net: &str, cluster: &str| -> BTreeMap<String, String> {
        [
            ("topology.istio.io/network".to_string(), net.to_string()),
            ("topology.istio.io/cluster".to_string(), cluster.to_string()),
        ]
        .into()
    };
    let ep = |net: &str, cluster: &str| Endpoint {
        address: "10.0.0.1".into(),
        labels: labels(net, cluster),
        ..Default::default()
    };
    let eps = [ep("n1", "c1"), ep("n1", "c2"), ep("n2", "c1")];
    let mut specs: Vec<EndpointSpec> = eps
        .iter()
        .map(|_| EndpointSpec {
            address: "10.0.0.1".into(),
            port: 80,
            locality: Locality::default(),
            weight: 1,
            metadata: None,
            priority: 0,
        })
        .collect();
    let mut me = proxy("r1/z1");
    me.labels = labels("n1", "c1");
    let lb = settings(LocalityLoadBalancerSetting {
        failover_priority: vec![
            "topology.istio.io/network".into(),
            "topology.istio.io/cluster".into(),
        ],
        ..Default::default()
    });
    let refs: Vec<&Endpoint> = eps.iter().collect();
    apply_failover_priority(&mut specs, &refs, &me, Some(&lb), false);
    assert!(
        specs.iter().all(|s| s.priority == 0),
        "needs outlier detection"
    );
    apply_failover_priority(&mut specs, &refs, &me, Some(&lb), true);
    let got: Vec<u32> = specs.iter().map(|s| s.priority).collect();
    assert_eq!(got, vec![0, 1, 2]);
}
