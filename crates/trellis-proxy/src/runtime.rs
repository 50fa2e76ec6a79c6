//! The runtime snapshot: `trellis_xds::Resources` translated once into hot-path tables
//! (listeners, route tables, clusters). A snapshot is immutable; a new config builds a new one
//! (carrying balancer state and connection pools over by name) and is swapped in atomically.
//! A resource that cannot be translated fails the whole compile with an error naming the
//! resource and field, so nothing partial is ever applied. No sockets are bound here.

pub mod authz;
pub mod balancer;
pub mod circuit;
pub mod cluster;
pub mod hash;
pub mod health;
pub mod jwt;
pub mod listener;
pub mod locality;
pub mod outlier;
pub mod pool;
pub mod rbac;
pub mod retry;
pub mod route;
pub mod sni;
pub mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use trellis_xds::Resources;

pub use cluster::{Cluster, Endpoint, UpstreamProtocol};
pub use listener::{HttpSettings, Listener, RouteSource};
pub use route::{Route, RouteTable};
pub use tcp::{TcpChain, TcpListener};

/// Why a snapshot could not be built; names the resource and the field.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("listener {name:?}: {field}: {reason}")]
    Listener {
        name: String,
        field: String,
        reason: String,
    },
    #[error("route configuration {name:?}: {field}: {reason}")]
    Route {
        name: String,
        field: String,
        reason: String,
    },
    #[error("cluster {name:?}: {field}: {reason}")]
    Cluster {
        name: String,
        field: String,
        reason: String,
    },
    #[error("{kind} {name:?} appears twice in the snapshot; names must be unique")]
    Duplicate { kind: &'static str, name: String },
}

/// One immutable, fully compiled configuration.
#[derive(Debug, Default)]
pub struct Runtime {
    pub version: String,
    pub listeners: HashMap<Arc<str>, Arc<Listener>>,
    pub routes: HashMap<Arc<str>, Arc<RouteTable>>,
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// L4 (tcp_proxy) listeners; names are unique across both listener maps.
    pub tcp_listeners: HashMap<Arc<str>, Arc<TcpListener>>,
    /// Gateway listeners that terminate TLS by SNI; their HTTP chains are in `listeners`.
    pub sni_listeners: HashMap<Arc<str>, Arc<sni::SniListener>>,
    /// The workload's identity, carried from snapshot to snapshot (upstream TLS reads it).
    pub identity: Arc<crate::security::IdentityStore>,
}

impl Runtime {
    /// Translate `res`; `prev` is the running snapshot whose per-cluster state carries over.
    pub fn compile(res: &Resources, prev: Option<&Runtime>) -> Result<Runtime, RuntimeError> {
        Runtime::compile_owned(res.clone(), prev)
    }

    /// Like [`Runtime::compile`], consuming `res`: each cluster's xDS messages (and its endpoints)
    /// are freed as soon as they are translated, so a large config never exists twice in memory.
    pub fn compile_owned(res: Resources, prev: Option<&Runtime>) -> Result<Runtime, RuntimeError> {
        let Resources {
            version,
            listeners: xlisteners,
            routes: xroutes,
            clusters: xclusters,
            endpoints,
        } = res;
        let identity = prev.map(|p| Arc::clone(&p.identity)).unwrap_or_default();
        let eds_names: Vec<String> = xclusters.iter().map(|c| eds_name(c).to_owned()).collect();
        let mut users: HashMap<&str, usize> = HashMap::with_capacity(eds_names.len());
        for n in &eds_names {
            *users.entry(n.as_str()).or_default() += 1;
        }
        let mut assignments: HashMap<String, _> = endpoints
            .into_iter()
            .map(|a| (a.cluster_name.clone(), a))
            .collect();
        let mut clusters = HashMap::with_capacity(xclusters.len());
        for (c, eds) in xclusters.into_iter().zip(&eds_names) {
            let before = prev.and_then(|p| p.clusters.get(c.name.as_str()));
            let remaining = users.get_mut(eds.as_str()).map(|u| {
                *u -= 1;
                *u
            });
            // The last cluster that reads an assignment takes (and then frees) it.
            let owned = if remaining == Some(0) {
                assignments.remove(eds.as_str())
            } else {
                None
            };
            let assignment = owned.as_ref().or_else(|| assignments.get(eds.as_str()));
            let compiled = Cluster::compile(&c, assignment, before.map(|c| &**c), &identity)?;
            if clusters
                .insert(Arc::clone(&compiled.name), Arc::new(compiled))
                .is_some()
            {
                return Err(RuntimeError::Duplicate {
                    kind: "cluster",
                    name: c.name.clone(),
                });
            }
        }
        drop(assignments);
        let mut routes = HashMap::with_capacity(xroutes.len());
        for rc in xroutes {
            let table = RouteTable::compile(&rc, &clusters)?;
            if routes
                .insert(Arc::clone(&table.name), Arc::new(table))
                .is_some()
            {
                return Err(RuntimeError::Duplicate {
                    kind: "route configuration",
                    name: rc.name.clone(),
                });
            }
        }
        let mut listeners = HashMap::with_capacity(xlisteners.len());
        let mut tcp_listeners = HashMap::new();
        let mut sni_listeners = HashMap::new();
        for l in xlisteners {
            let dup = if sni::SniListener::is_sni_tls(&l) {
                let (compiled, chains) = sni::SniListener::compile(&l, &clusters)?;
                let mut dup = listeners.contains_key(&compiled.name)
                    || tcp_listeners.contains_key(&compiled.name);
                for c in chains {
                    dup |= listeners.insert(Arc::clone(&c.name), Arc::new(c)).is_some();
                }
                dup || sni_listeners
                    .insert(Arc::clone(&compiled.name), Arc::new(compiled))
                    .is_some()
            } else if TcpListener::is_l4(&l) {
                let compiled = TcpListener::compile(&l, &clusters)?;
                listeners.contains_key(&compiled.name)
                    || tcp_listeners
                        .insert(Arc::clone(&compiled.name), Arc::new(compiled))
                        .is_some()
            } else {
                let compiled = Listener::compile(&l, &clusters)?;
                tcp_listeners.contains_key(&compiled.name)
                    || listeners
                        .insert(Arc::clone(&compiled.name), Arc::new(compiled))
                        .is_some()
            };
            if dup {
                return Err(RuntimeError::Duplicate {
                    kind: "listener",
                    name: l.name.clone(),
                });
            }
        }
        Ok(Runtime {
            version,
            listeners,
            routes,
            clusters,
            tcp_listeners,
            sni_listeners,
            identity,
        })
    }

    /// Every listener's name and configured address, HTTP, L4 and gateway TLS (not the HTTP
    /// chains of the latter, which share their listener's socket).
    pub fn listener_addrs(&self) -> impl Iterator<Item = (&Arc<str>, SocketAddr)> {
        let http = self
            .listeners
            .iter()
            .filter(|(_, l)| l.chain_of.is_none())
            .map(|(n, l)| (n, l.addr));
        http.chain(self.tcp_listeners.iter().map(|(n, l)| (n, l.addr)))
            .chain(self.sni_listeners.iter().map(|(n, l)| (n, l.addr)))
    }

    /// The route table a listener uses right now.
    pub fn route_table<'a>(&'a self, listener: &'a Listener) -> Option<&'a Arc<RouteTable>> {
        match &listener.routes {
            RouteSource::Inline(t) => Some(t),
            RouteSource::Rds(name) => self.routes.get(&**name),
        }
    }
}

/// The name of the `ClusterLoadAssignment` a cluster reads (EDS service name, else its own name).
fn eds_name(c: &envoy_types::pb::envoy::config::cluster::v3::Cluster) -> &str {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(&c.name)
}

/// protobuf `Duration` → std (negative → zero).
pub(crate) fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// A string field of a protobuf `Struct`.
pub(crate) fn istio_string<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match &s.fields.get(key)?.kind {
        Some(Kind::StringValue(v)) => Some(v.as_str()),
        _ => None,
    }
}
