//! Proxyless gRPC clients (gRPC's own xDS client, `xds:///<host>:<port>` targets; Istio's
//! "proxyless gRPC"): what a sidecar would route, reshaped into what gRPC reads.
//!
//! gRPC asks for a listener named exactly like its target's authority and reads only its
//! `api_listener` (an HttpConnectionManager with RDS and the router filter); route
//! configurations as usual; EDS clusters (ROUND_ROBIN); and load assignments whose locality
//! groups carry a `locality` (gRPC rejects them without one) and a weight (gRPC skips
//! unweighted localities). So each outbound virtual host
//! `<fqdn>:<port>` of the sidecar compilation becomes a route configuration of that name (one
//! virtual host, domain `*`), reachable through one API listener per `host:port` name a client
//! may use (`reviews:9080`, `reviews.default:9080`, …, the FQDN). Must not build routes itself:
//! route translation stays in `route.rs` via `sidecar.rs`.

use envoy_types::pb::envoy::config::cluster::v3::cluster;
use envoy_types::pb::envoy::config::listener::v3::ApiListener;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use crate::listener::{HcmSpec, Routes, http_connection_manager};
use crate::{Context, Listener, ProxyIdentity, Resources, Role, RouteConfiguration};

/// The resources of a proxyless gRPC client.
pub fn compile(ctx: &Context<'_>) -> Resources {
    let as_sidecar = ProxyIdentity {
        role: Role::Sidecar,
        ..ctx.proxy.clone()
    };
    let sidecar = crate::compile(ctx.snapshot, ctx.registry, &as_sidecar);
    let outbound = ctx.proxy.outbound_port.to_string();
    let mut out = Resources::default();
    for rc in sidecar.routes.into_iter().filter(|rc| rc.name == outbound) {
        // The catch-all for hosts outside the registry (`egress.rs`) is a sidecar's only.
        let known = rc
            .virtual_hosts
            .into_iter()
            .filter(|vh| !vh.domains.iter().any(|d| d == "*"));
        for mut vhost in known {
            let name = vhost.name.clone();
            let mut names: Vec<String> = vhost
                .domains
                .iter()
                .filter(|d| d.contains(':') && !d.starts_with('*'))
                .cloned()
                .collect();
            if !names.contains(&name) {
                names.push(name.clone());
            }
            for listener in names {
                out.listeners.push(api_listener(&listener, &name));
            }
            vhost.domains = vec!["*".to_string()];
            out.routes.push(RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![vhost],
                ..Default::default()
            });
        }
    }
    for mut c in sidecar.clusters {
        let eds = c.cluster_discovery_type
            == Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
        if !eds || !c.name.starts_with("outbound|") {
            continue;
        }
        // gRPC balances ROUND_ROBIN (or RING_HASH); it speaks HTTP/2 to every backend.
        c.lb_policy = cluster::LbPolicy::RoundRobin as i32;
        c.typed_extension_protocol_options.clear();
        out.clusters.push(c);
    }
    for mut cla in sidecar.endpoints {
        if !out.clusters.iter().any(|c| c.name == cla.cluster_name) {
            continue;
        }
        for locality in &mut cla.endpoints {
            // gRPC rejects a locality group without `locality`, even an empty one.
            locality.locality.get_or_insert_default();
            locality
                .load_balancing_weight
                .get_or_insert(UInt32Value { value: 1 });
        }
        out.endpoints.push(cla);
    }
    out.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    out.listeners.dedup_by(|a, b| a.name == b.name);
    out.routes.sort_by(|a, b| a.name.cmp(&b.name));
    out.version = crate::content_version(&out);
    out
}

/// An API listener named `name` whose HCM takes route configuration `route` over ADS.
fn api_listener(name: &str, route: &str) -> Listener {
    let mut hcm = http_connection_manager(HcmSpec {
        stat_prefix: name.to_string(),
        routes: Routes::Rds(route.to_string()),
        use_remote_address: false,
    });
    // gRPC's xDS client knows the fault and router filters but rejects the whole listener for
    // any other (CORS means nothing to a gRPC client).
    hcm.http_filters
        .retain(|f| f.name != "envoy.filters.http.cors");
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_become_api_listeners_routes_and_weighted_eds() {
        let loaded = trellis_config::load_str(
            "t.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo, namespace: default}\nspec:\n  hosts: [echo.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 7070, name: grpc, protocol: GRPC}]\n  endpoints: [{address: 127.0.0.1, ports: {grpc: 17070}}]\n",
        )
        .unwrap();
        let proxy = ProxyIdentity {
            id: "grpc-client".into(),
            role: Role::Proxyless,
            ..Default::default()
        };
        let r = crate::compile(&loaded.snapshot, &loaded.registry, &proxy);
        let fqdn = "echo.default.svc.cluster.local:7070";
        let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
        for want in ["echo:7070", "echo.default:7070", fqdn] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(
            r.listeners
                .iter()
                .all(|l| l.api_listener.is_some() && l.address.is_none())
        );
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].name, fqdn);
        assert_eq!(r.routes[0].virtual_hosts[0].domains, ["*"]);
        assert_eq!(r.clusters.len(), 1);
        assert_eq!(
            r.clusters[0].name,
            "outbound|7070||echo.default.svc.cluster.local"
        );
        assert_eq!(
            r.clusters[0].lb_policy,
            cluster::LbPolicy::RoundRobin as i32
        );
        assert_eq!(
            r.endpoints[0].endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        // The API listener's HCM takes its routes over RDS, named like the virtual host.
        let json = crate::to_json(&r).to_string();
        assert!(
            json.contains(&format!("\"routeConfigName\":\"{fqdn}\"")),
            "{json}"
        );
    }
}
