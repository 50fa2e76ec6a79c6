//! What one proxy is served: its compiled resources, packed once into `Any`s and hashed per
//! resource, grouped by xDS type; and the cache that lets proxies with the same identity (all
//! but the id) share one compilation per configuration revision.
//!
//! Must not know about streams: the SotW and delta bookkeeping only read [`ProxySnapshot`]s.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use trellis_xds::{
    Cluster, ClusterLoadAssignment, Listener, ProxyIdentity, Resources, RouteConfiguration,
};

use super::debounce::Generation;

/// The four resource types served over ADS, in the order a push sends them (CDS before EDS,
/// LDS before RDS, as the xDS protocol recommends to avoid traffic drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

/// One resource as served: its content hash (also its delta version) and its packed bytes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub hash: u64,
    pub any: Any,
}

/// Every resource of one proxy, by type and name, with one version per type.
#[derive(Debug, Default)]
pub struct ProxySnapshot {
    /// Unique per snapshot built by [`ProxySnapshot::new`] (0 for an empty default one).
    id: u64,
    resources: [BTreeMap<String, Entry>; 4],
    versions: [String; 4],
    /// What changed since the previous revision's snapshot of the same identity, so a push
    /// to a stream that holds that snapshot looks only at these names, not at every resource.
    changes: Option<Changes>,
}

/// The names (per type) added, changed or removed since the snapshot `since`.
#[derive(Debug)]
pub struct Changes {
    pub since: u64,
    names: [Vec<String>; 4],
}

/// Compiled snapshots of the current revision, keyed by the proxy identity without its id.
#[derive(Debug, Default)]
pub struct CompileCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    revision: u64,
    entries: HashMap<ProxyIdentity, Arc<tokio::sync::OnceCell<Arc<ProxySnapshot>>>>,
    /// The previous revision's entries, which new snapshots are diffed against.
    previous: HashMap<ProxyIdentity, Arc<tokio::sync::OnceCell<Arc<ProxySnapshot>>>>,
}

static NEXT_SNAPSHOT_ID: AtomicU64 = AtomicU64::new(1);

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn type_url(self) -> String {
        match self {
            Kind::Cluster => Cluster::type_url(),
            Kind::Endpoint => ClusterLoadAssignment::type_url(),
            Kind::Listener => Listener::type_url(),
            Kind::Route => RouteConfiguration::type_url(),
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Istio's short name, used as the `type` label of metrics and in proxy-status.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
        }
    }

    /// LDS and CDS are wildcard by default (an empty first request asks for everything) and
    /// their SotW responses carry the full set; RDS and EDS are asked for by name.
    pub fn is_full_set(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl ProxySnapshot {
    /// Packs and hashes every resource once.
    pub fn new(resources: Resources) -> ProxySnapshot {
        let mut snapshot = ProxySnapshot {
            id: NEXT_SNAPSHOT_ID.fetch_add(1, Ordering::Relaxed),
            ..ProxySnapshot::default()
        };
        for l in resources.listeners {
            let hash = trellis_xds::listener_hash(&l);
            snapshot.insert(Kind::Listener, l.name.clone(), hash, &l);
        }
        for r in resources.routes {
            let hash = trellis_xds::route_hash(&r);
            snapshot.insert(Kind::Route, r.name.clone(), hash, &r);
        }
        for c in resources.clusters {
            let hash = trellis_xds::cluster_hash(&c);
            snapshot.insert(Kind::Cluster, c.name.clone(), hash, &c);
        }
        for a in resources.endpoints {
            let hash = trellis_xds::load_assignment_hash(&a);
            snapshot.insert(Kind::Endpoint, a.cluster_name.clone(), hash, &a);
        }
        for kind in Kind::ALL {
            snapshot.versions[kind.index()] = type_version(&snapshot.resources[kind.index()]);
        }
        snapshot
    }

    fn insert<M: Message + Name>(&mut self, kind: Kind, name: String, hash: u64, message: &M) {
        let any = Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        };
        self.resources[kind.index()].insert(name, Entry { hash, any });
    }

    pub fn resources(&self, kind: Kind) -> &BTreeMap<String, Entry> {
        &self.resources[kind.index()]
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records what changed since `previous`, per type (once per identity and revision).
    pub fn diff_from(&mut self, previous: &ProxySnapshot) {
        let names = Kind::ALL.map(|kind| {
            let (old, new) = (previous.resources(kind), self.resources(kind));
            let mut changed: Vec<String> = new
                .iter()
                .filter(|(name, e)| old.get(*name).map(|o| o.hash) != Some(e.hash))
                .map(|(name, _)| name.clone())
                .collect();
            changed.extend(old.keys().filter(|n| !new.contains_key(*n)).cloned());
            changed.sort();
            changed
        });
        self.changes = Some(Changes {
            since: previous.id,
            names,
        });
    }

    /// The names of `kind` that changed since snapshot `base`, if this snapshot knows them.
    pub fn changed_since(&self, base: Option<u64>, kind: Kind) -> Option<&[String]> {
        let changes = self.changes.as_ref()?;
        (base == Some(changes.since)).then(|| changes.names[kind.index()].as_slice())
    }

    /// A version of the whole type: changes whenever any resource of the type changes.
    pub fn version(&self, kind: Kind) -> &str {
        &self.versions[kind.index()]
    }
}

/// FNV-1a 64 over every (name, hash) pair, as 16 hex digits.
fn type_version(resources: &BTreeMap<String, Entry>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, entry) in resources {
        eat(name.as_bytes());
        eat(&[0]);
        eat(&entry.hash.to_le_bytes());
    }
    format!("{h:016x}")
}

/// A resource's delta version: its content hash in hex.
pub fn resource_version(hash: u64) -> String {
    format!("{hash:016x}")
}

impl CompileCache {
    /// The snapshot of `identity` for `generation`, compiled at most once per revision for all
    /// proxies that differ only by id.
    pub async fn get(
        &self,
        generation: &Generation,
        identity: &ProxyIdentity,
    ) -> Arc<ProxySnapshot> {
        let key = ProxyIdentity {
            id: String::new(),
            ..identity.clone()
        };
        let cell = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if generation.revision > inner.revision {
                inner.revision = generation.revision;
                inner.previous = std::mem::take(&mut inner.entries);
            }
            if generation.revision == inner.revision {
                let previous = inner.previous.get(&key).and_then(|c| c.get().cloned());
                Some((
                    inner.entries.entry(key.clone()).or_default().clone(),
                    previous,
                ))
            } else {
                None // a stream still on an older revision: compile without caching
            }
        };
        let previous = cell.as_ref().and_then(|(_, p)| p.clone());
        let compile = || {
            let loaded = generation.loaded.clone();
            async move {
                let compiled = tokio::task::spawn_blocking(move || {
                    let resources = trellis_xds::compile(&loaded.snapshot, &loaded.registry, &key);
                    let mut snapshot = ProxySnapshot::new(resources);
                    if let Some(previous) = previous {
                        snapshot.diff_from(&previous);
                    }
                    Arc::new(snapshot)
                })
                .await;
                // Compilation is pure and does not panic on valid input; a panic is a bug we
                // surface as an empty snapshot rather than taking the server down.
                compiled.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "compile task failed");
                    Arc::new(ProxySnapshot::default())
                })
            }
        };
        match cell {
            Some((cell, _)) => cell.get_or_init(compile).await.clone(),
            None => compile().await,
        }
    }

    /// How many distinct compilations the current revision holds.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_versions_follow_content() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_type_url(&kind.type_url()), Some(kind));
        }
        assert_eq!(
            Kind::Endpoint.type_url(),
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
        let cla = |port: u32| Resources {
            endpoints: vec![test_cla("c", port)],
            ..Default::default()
        };
        let (a, b, c) = (
            ProxySnapshot::new(cla(1)),
            ProxySnapshot::new(cla(1)),
            ProxySnapshot::new(cla(2)),
        );
        assert_eq!(a.version(Kind::Endpoint), b.version(Kind::Endpoint));
        assert_ne!(a.version(Kind::Endpoint), c.version(Kind::Endpoint));
        assert_eq!(a.version(Kind::Cluster), c.version(Kind::Cluster));
    }

    #[tokio::test]
    async fn proxies_differing_only_by_id_share_one_compilation() {
        let loaded = trellis_config::load_str(
            "t.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.1}]\n",
        )
        .unwrap();
        let state = crate::ConfigState {
            revision: 3,
            loaded: Arc::new(loaded),
        };
        let generation = Generation::new(&state, tokio::time::Instant::now());
        let cache = CompileCache::default();
        let sidecar = |id: &str, ns: &str| ProxyIdentity {
            id: id.into(),
            role: trellis_xds::Role::Sidecar,
            namespace: ns.into(),
            ..Default::default()
        };
        let a = cache.get(&generation, &sidecar("a-1", "default")).await;
        let b = cache.get(&generation, &sidecar("a-2", "default")).await;
        let c = cache.get(&generation, &sidecar("c-1", "other")).await;
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(cache.len(), 2);
        assert!(!a.resources(Kind::Cluster).is_empty());
        // A new revision starts a new cache.
        let next = Generation::new(
            &crate::ConfigState {
                revision: 4,
                ..state
            },
            tokio::time::Instant::now(),
        );
        let d = cache.get(&next, &sidecar("a-1", "default")).await;
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(cache.len(), 1);
        // ... whose snapshots know what changed since the previous revision's (nothing here).
        for kind in Kind::ALL {
            assert_eq!(d.changed_since(Some(a.id()), kind), Some(&[][..]));
            assert_eq!(d.changed_since(Some(c.id()), kind), None);
        }
    }

    pub(crate) fn test_cla(name: &str, port: u32) -> ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        let address = Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        };
        ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}
