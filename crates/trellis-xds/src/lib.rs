//! The compiler: (config snapshot + service registry + proxy identity) -> xDS resources.
//!
//! Pure: no sockets, no tokio. What the emitted resources mean is written down in
//! `docs/xds-contract.md`; the proxy reads exactly that subset.
//!
//! [`compile`] dispatches on the proxy's role to `gateway.rs` (Gateway servers -> listeners and
//! `http.<port>` route configs) or `sidecar.rs` (`virtualOutbound` / `virtualInbound`); both use
//! `route.rs` (VirtualService HTTP routes) and report the service ports they reference, which
//! `cluster.rs` turns into clusters and load assignments. `listener.rs` holds the HCM defaults,
//! `json.rs` the `/config_dump` rendering ([`to_json`]).

mod authz;
mod cluster;
mod content_hash;
mod egress;
mod gateway;
pub mod gateway_api;
mod health;
pub mod istio_ca;
mod json;
pub mod jwt;
mod l4;
mod lb;
mod listener;
pub mod mtls;
mod node;
mod peer_authentication;
mod proxyless;
pub mod ratelimit;
pub mod resilience;
mod route;
mod sidecar;

use std::collections::BTreeMap;

pub use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};

pub use content_hash::{cluster_hash, listener_hash, load_assignment_hash, route_hash};
pub use json::to_json;

/// What a proxy is: everything the compiler needs to know about the proxy it compiles for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    /// Unique id of the proxy (xDS `Node.id`), e.g. `gateway~127.0.0.1~ingress.istio-system`.
    pub id: String,
    pub role: Role,
    pub namespace: String,
    /// Workload labels; a Gateway's `selector` matches these.
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub locality: Locality,
    /// Address listeners bind to (`0.0.0.0` in production, `127.0.0.1` in tests and `trellis up`).
    pub bind_address: String,
    /// Sidecar: outbound capture port (15001) and inbound capture port (15006).
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Sidecar: where the local application listens (inbound clusters point here).
    pub app_address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Sidecar,
    /// A gRPC client with its own xDS client (`proxyless.rs`).
    Proxyless,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// One compiled snapshot of xDS resources for one proxy: the seam between the compiler (or, in a
/// later issue, the xDS client) and the proxy runtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// A version string that changes whenever the content changes.
    pub version: String,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

impl Default for ProxyIdentity {
    fn default() -> Self {
        ProxyIdentity {
            id: String::new(),
            role: Role::Gateway,
            namespace: "default".into(),
            labels: BTreeMap::new(),
            service_account: "default".into(),
            locality: Locality::default(),
            bind_address: "0.0.0.0".into(),
            outbound_port: 15001,
            inbound_port: 15006,
            app_address: "127.0.0.1".into(),
        }
    }
}

/// Everything one compilation reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub snapshot: &'a trellis_config::Snapshot,
    pub registry: &'a trellis_config::Registry,
    pub proxy: &'a ProxyIdentity,
}

/// Compiles the configuration into the xDS resources of one proxy. Deterministic: resources are
/// sorted by name and `version` is a hash of their content.
pub fn compile(
    snapshot: &trellis_config::Snapshot,
    registry: &trellis_config::Registry,
    proxy: &ProxyIdentity,
) -> Resources {
    let lowered = gateway_api::lower(snapshot, registry, proxy);
    let snapshot = lowered.as_ref().unwrap_or(snapshot);
    let ctx = Context {
        snapshot,
        registry,
        proxy,
    };
    if proxy.role == Role::Proxyless {
        return proxyless::compile(&ctx);
    }
    let front = Front::compile(&ctx);
    let (clusters, endpoints) = cluster::outbound(&ctx, &front.refs);
    front.finish(clusters, endpoints)
}

/// [`compile`] for a caller that no longer needs the configuration (the proxy's standalone
/// mode): the same resources, but each input is freed as soon as nothing reads it any more.
/// Once listeners and routes are built only the DestinationRules and the registry are kept,
/// and each registry service is dropped once its host's clusters are built, so the whole
/// input and the whole output are never in memory together.
pub fn compile_owned(
    mut snapshot: trellis_config::Snapshot,
    registry: trellis_config::Registry,
    proxy: &ProxyIdentity,
) -> Resources {
    if proxy.role == Role::Proxyless {
        return compile(&snapshot, &registry, proxy);
    }
    gateway_api::lower_into(&mut snapshot, &registry, proxy);
    let front = Front::compile(&Context {
        snapshot: &snapshot,
        registry: &registry,
        proxy,
    });
    // Clusters read only the DestinationRules, HealthCheckPolicies and DestinationPolicies of
    // the snapshot.
    let rules = trellis_config::Snapshot {
        destination_rules: std::mem::take(&mut snapshot.destination_rules),
        health_check_policies: std::mem::take(&mut snapshot.health_check_policies),
        destination_policies: std::mem::take(&mut snapshot.destination_policies),
        mesh_configs: std::mem::take(&mut snapshot.mesh_configs),
        ..Default::default()
    };
    drop(snapshot);
    let empty = trellis_config::Registry::default();
    let ctx = Context {
        snapshot: &rules,
        registry: &empty,
        proxy,
    };
    let (clusters, endpoints) = cluster::outbound_owned(&ctx, registry, &front.refs);
    drop(rules);
    front.finish(clusters, endpoints)
}

/// What is built before the outbound clusters: listeners, route configurations, the service
/// ports they reference and (sidecars) the inbound clusters.
struct Front {
    listeners: Vec<Listener>,
    routes: Vec<RouteConfiguration>,
    refs: route::ClusterRefs,
    inbound: Vec<Cluster>,
}

impl Front {
    fn compile(ctx: &Context<'_>) -> Front {
        let mut front = Front::compile_role(ctx);
        if let Some(jwt) = jwt::apply(ctx, &mut front.listeners) {
            front.inbound.extend(jwt.clusters);
            front.refs.extend(jwt.refs);
        }
        ratelimit::apply(
            ctx,
            &mut front.listeners,
            &mut front.routes,
            &mut front.refs,
        );
        front
    }

    fn compile_role(ctx: &Context<'_>) -> Front {
        match ctx.proxy.role {
            Role::Gateway => {
                let (mut listeners, routes, mut refs) = gateway::compile(ctx);
                for l in &mut listeners {
                    authz::secure_listener(ctx, l);
                }
                authz::provider_refs(ctx, &mut refs);
                Front {
                    listeners,
                    routes,
                    refs,
                    inbound: Vec::new(),
                }
            }
            Role::Sidecar | Role::Proxyless => {
                let mut s = sidecar::compile(ctx);
                for l in s.listeners.iter_mut().filter(|l| sidecar::is_inbound(l)) {
                    authz::secure_listener(ctx, l);
                }
                Front {
                    listeners: s.listeners,
                    routes: s.routes,
                    refs: s.refs,
                    inbound: s.inbound_clusters,
                }
            }
        }
    }

    /// Adds the outbound clusters, sorts everything by name and sets the version.
    fn finish(
        self,
        mut clusters: Vec<Cluster>,
        endpoints: Vec<ClusterLoadAssignment>,
    ) -> Resources {
        clusters.reserve_exact(self.inbound.len());
        clusters.extend(self.inbound);
        let mut resources = Resources {
            version: String::new(),
            listeners: self.listeners,
            routes: self.routes,
            clusters,
            endpoints,
        };
        sort_by_name(&mut resources.listeners, |l| &l.name);
        sort_by_name(&mut resources.routes, |r| &r.name);
        sort_by_name(&mut resources.clusters, |c| &c.name);
        sort_by_name(&mut resources.endpoints, |a| &a.cluster_name);
        resources.version = content_version(&resources);
        resources
    }
}

/// Stable sort by name without a merge buffer of whole resources (a `Cluster` is ~3 KiB, so
/// `sort_by` on 1,000 clusters would allocate megabytes): sorts indices, then permutes in place.
fn sort_by_name<T>(items: &mut [T], name: impl Fn(&T) -> &str) {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| name(&items[a]).cmp(name(&items[b])));
    // Position `j` must receive the item now at `order[j]`; follow each cycle once.
    for start in 0..order.len() {
        let mut j = start;
        loop {
            let k = order[j];
            order[j] = j;
            if k == start || k == j {
                break;
            }
            items.swap(j, k);
            j = k;
        }
    }
}

/// A hash of everything but the version: FNV-1a (64 bit) over the compact JSON rendering of
/// [`to_json`] without `version`, which, unlike the protobuf encoding of maps, has a stable order.
///
/// The rendering is streamed into the hasher one resource at a time (keys in the sorted order
/// `serde_json` maps use), so the JSON of the whole snapshot is never held in memory.
pub fn content_version(resources: &Resources) -> String {
    let mut hasher = Fnv1a::default();
    hasher.bytes(b"{\"clusters\":");
    hash_list(&mut hasher, &resources.clusters, |c, h| {
        serde_json::to_writer(h, &json::cluster(c))
    });
    hasher.bytes(b",\"endpoints\":");
    hash_list(&mut hasher, &resources.endpoints, |a, h| {
        serde_json::to_writer(h, &json::load_assignment(a))
    });
    hasher.bytes(b",\"listeners\":");
    hash_list(&mut hasher, &resources.listeners, |l, h| {
        serde_json::to_writer(h, &json::listener(l))
    });
    hasher.bytes(b",\"routes\":");
    // A route configuration holds every virtual host of a port: stream it per virtual host.
    hash_list(
        &mut hasher,
        &resources.routes,
        json::write_route_configuration,
    );
    hasher.bytes(b"}");
    format!("{:016x}", hasher.0)
}

/// Hashes `[a,b,...]`, rendering one item at a time.
fn hash_list<T>(
    hasher: &mut Fnv1a,
    items: &[T],
    write: impl Fn(&T, &mut Fnv1a) -> serde_json::Result<()>,
) {
    hasher.bytes(b"[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            hasher.bytes(b",");
        }
        // Writing into a hasher cannot fail, and a `Value` always serializes.
        let _ = write(item, hasher);
    }
    hasher.bytes(b"]");
}

/// FNV-1a, 64 bit.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_by_name_is_stable_and_complete() {
        let mut items = vec![
            ("c", 0),
            ("a", 1),
            ("b", 2),
            ("a", 3),
            ("e", 4),
            ("d", 5),
            ("a", 6),
        ];
        let mut expected = items.clone();
        expected.sort_by(|a, b| a.0.cmp(b.0));
        sort_by_name(&mut items, |i| i.0);
        assert_eq!(items, expected);
        for n in 0..40usize {
            // Pseudo-random names with many ties.
            let mut items: Vec<(String, usize)> = (0..n)
                .map(|i| (format!("{}", (i * 7919) % 13), i))
                .collect();
            let mut expected = items.clone();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            sort_by_name(&mut items, |i| &i.0);
            assert_eq!(items, expected, "n = {n}");
        }
    }

    /// The streamed hash is the hash of the whole JSON rendering (what versions always were).
    #[test]
    fn content_version_hashes_the_json_rendering() {
        let loaded = trellis_config::load_str(
            "t.yaml",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.1, labels: {version: v1}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a.example]\n  gateways: [gw]\n  http: [{route: [{destination: {host: a.example}}]}]\n",
        )
        .unwrap();
        let proxy = ProxyIdentity {
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..ProxyIdentity::default()
        };
        let resources = compile(&loaded.snapshot, &loaded.registry, &proxy);
        assert!(!resources.clusters.is_empty() && !resources.endpoints.is_empty());
        let mut content = to_json(&resources);
        content.as_object_mut().unwrap().remove("version");
        let mut whole = Fnv1a::default();
        whole.bytes(content.to_string().as_bytes());
        assert_eq!(resources.version, format!("{:016x}", whole.0));
    }
}
