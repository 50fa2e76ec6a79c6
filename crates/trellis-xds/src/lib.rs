//! The compiler: (config snapshot + service registry + proxy identity) -> xDS resources.
//!
//! Pure: no sockets, no tokio. What the emitted resources mean is written down in
//! `docs/xds-contract.md`; the proxy reads exactly that subset.

use std::collections::BTreeMap;

pub use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};

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
