//! Traffic to hosts outside the registry, as Istio's sidecars handle it: the mesh's
//! `outboundTrafficPolicy` decides whether an unknown HTTP host is forwarded where the client
//! meant (`allow_any` virtual host → `PassthroughCluster`, an ORIGINAL_DST cluster) or answered
//! 502 (`block_all` virtual host, a direct response), and whether a TLS port keeps a catch-all
//! filter chain for unknown SNI names. Also the DNS settings of `resolution: DNS` clusters
//! (`dns_refresh_rate`, `respect_dns_ttl`, `dns_lookup_family`).
//!
//! Owns those names and shapes only; which hosts are known is `sidecar.rs` and `l4.rs`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbConfig, LbPolicy, OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::google::protobuf::Duration;
use trellis_config::OutboundTrafficMode;

use crate::Context;
use crate::cluster::DEFAULT_CONNECT_TIMEOUT_SECS;
use crate::listener::seconds;
use crate::route::{default_route, virtual_host};

/// Istio's ORIGINAL_DST cluster for traffic to unknown hosts under ALLOW_ANY.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's cluster without endpoints (REGISTRY_ONLY TCP traffic goes nowhere).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's default `dnsRefreshRate`.
pub const DEFAULT_DNS_REFRESH_SECS: i64 = 60;

/// The mesh's `outboundTrafficPolicy.mode`.
pub fn mode(ctx: &Context<'_>) -> OutboundTrafficMode {
    ctx.snapshot.mesh_config().outbound_mode()
}

/// `PassthroughCluster` and `BlackHoleCluster`, which every sidecar gets (as in Istio).
pub fn sidecar_clusters() -> Vec<Cluster> {
    let passthrough = Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        // The destination comes from `x-envoy-original-dst-host` when the client sets it.
        lb_config: Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
            use_http_header: true,
            ..Default::default()
        })),
        // Telemetry names the destination service `PassthroughCluster`, as Istio's does.
        metadata: Some(crate::cluster::cluster_metadata(
            PASSTHROUGH_CLUSTER,
            None,
            "",
        )),
        ..Default::default()
    };
    let blackhole = Cluster {
        name: BLACKHOLE_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        ..Default::default()
    };
    vec![passthrough, blackhole]
}

/// The last virtual host of an outbound route config, for every host no other one names:
/// `allow_any` (to `PassthroughCluster`) or `block_all` (502).
pub fn catch_all_virtual_host(mode: OutboundTrafficMode) -> VirtualHost {
    match mode {
        OutboundTrafficMode::AllowAny => {
            let mut r = default_route(PASSTHROUGH_CLUSTER.into());
            r.name = "allow_any".into();
            if let Some(route::Action::Route(a)) = &mut r.action {
                // As Istio: no route timeout toward unknown hosts.
                a.timeout = Some(Duration::default());
            }
            virtual_host("allow_any", vec!["*".into()], vec![r])
        }
        OutboundTrafficMode::RegistryOnly => {
            let r = Route {
                name: "block_all".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
                ..Default::default()
            };
            virtual_host("block_all", vec!["*".into()], vec![r])
        }
    }
}

/// DNS settings of a `resolution: DNS` cluster, as Istio sets them: re-resolve at the record's
/// TTL (`respect_dns_ttl`), every `dnsRefreshRate` when it has none, IPv4 answers only.
#[allow(deprecated)] // Istio still sets the cluster-level fields; Envoy 1.40 reads them
pub fn apply_dns(ctx: &Context<'_>, cluster: &mut Cluster) {
    let rate = ctx
        .snapshot
        .mesh_config()
        .dns_refresh_rate
        .as_ref()
        .and_then(|d| d.get())
        .filter(|d| !d.is_zero());
    cluster.dns_refresh_rate = Some(match rate {
        Some(d) => Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        None => seconds(DEFAULT_DNS_REFRESH_SECS),
    });
    cluster.respect_dns_ttl = true;
    cluster.dns_lookup_family = DnsLookupFamily::V4Only as i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_only_answers_502_and_allow_any_passes_through() {
        let block = catch_all_virtual_host(OutboundTrafficMode::RegistryOnly);
        assert_eq!(
            (block.name.as_str(), block.domains.as_slice()),
            ("block_all", &["*".to_string()][..])
        );
        assert!(matches!(
            &block.routes[0].action,
            Some(route::Action::DirectResponse(d)) if d.status == 502
        ));
        let allow = catch_all_virtual_host(OutboundTrafficMode::AllowAny);
        assert_eq!(allow.routes[0].name, "allow_any");
        let clusters = sidecar_clusters();
        assert_eq!(clusters[0].name, PASSTHROUGH_CLUSTER);
        assert_eq!(clusters[0].lb_policy, LbPolicy::ClusterProvided as i32);
        assert_eq!(clusters[1].name, BLACKHOLE_CLUSTER);
    }
}
