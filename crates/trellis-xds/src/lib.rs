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

mod cluster;
mod gateway;
mod json;
mod listener;
mod route;
mod sidecar;

use std::collections::BTreeMap;

pub use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};

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
    let ctx = Context {
        snapshot,
        registry,
        proxy,
    };
    let (listeners, routes, refs, inbound) = match proxy.role {
        Role::Gateway => {
            let (listeners, routes, refs) = gateway::compile(&ctx);
            (listeners, routes, refs, Vec::new())
        }
        Role::Sidecar => {
            let s = sidecar::compile(&ctx);
            (s.listeners, s.routes, s.refs, s.inbound_clusters)
        }
    };
    let (mut clusters, endpoints) = cluster::outbound(&ctx, &refs);
    clusters.extend(inbound);
    let mut resources = Resources {
        version: String::new(),
        listeners,
        routes,
        clusters,
        endpoints,
    };
    resources.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    resources.routes.sort_by(|a, b| a.name.cmp(&b.name));
    resources.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    resources
        .endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    resources.version = content_version(&resources);
    resources
}

/// A hash of everything but the version: FNV-1a (64 bit) over the JSON rendering, which, unlike
/// the protobuf encoding of maps, has a stable order.
pub fn content_version(resources: &Resources) -> String {
    let mut content = json::to_json(resources);
    if let Some(obj) = content.as_object_mut() {
        obj.remove("version");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in content.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}
