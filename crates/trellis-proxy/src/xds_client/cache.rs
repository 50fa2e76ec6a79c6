//! What the xDS client has received, per resource type, protocol-independent (SotW and Delta
//! both feed it): each resource kept protobuf-encoded with its version and the names it depends
//! on (a listener's RDS route configuration, an EDS cluster's load assignment). From this state
//! it derives the RDS and EDS subscriptions, tells whether those dependencies have arrived, and
//! assembles a whole `trellis_xds::Resources` for the runtime. It remembers the last applied
//! state so a rejected update can be rolled back. No sockets and no clocks here.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use trellis_xds::{Listener, Resources};

/// The four resource types the proxy subscribes to, in the order Envoy applies them
/// (CDS, then EDS, then LDS, then RDS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

/// One received resource: its version and its protobuf encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub version: String,
    pub body: Bytes,
    /// Names of the resources of the dependent type it needs (RDS names of a listener, the
    /// EDS name of an EDS cluster).
    pub needs: Vec<String>,
}

/// Why a received resource was not accepted into the cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("resource {index}: type {got:?} where {want} was expected")]
    TypeUrl {
        index: usize,
        got: String,
        want: &'static str,
    },
    #[error("resource {index}: does not decode as {want}: {reason}")]
    Decode {
        index: usize,
        want: &'static str,
        reason: String,
    },
    #[error("resource {index}: named {name:?} but its message is named {inner:?}")]
    Name {
        index: usize,
        name: String,
        inner: String,
    },
    #[error("resource {index}: has no name")]
    Unnamed { index: usize },
}

/// The received state of all four types, and the state last applied.
#[derive(Debug, Default, Clone)]
pub struct Cache {
    current: [BTreeMap<String, Entry>; 4],
    applied: [BTreeMap<String, Entry>; 4],
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Envoy's short name (`cds`, `eds`, `lds`, `rds`), used in metrics and `/xds`.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
        }
    }

    /// LDS and CDS are wildcard subscriptions; RDS and EDS are by name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    /// The type whose resources name what this type subscribes to (RDS ← LDS, EDS ← CDS).
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Endpoint => Some(Kind::Cluster),
            Kind::Route => Some(Kind::Listener),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn message_name(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::Endpoint => "ClusterLoadAssignment",
            Kind::Listener => "Listener",
            Kind::Route => "RouteConfiguration",
        }
    }

    /// Checks that `any` is a resource of this type, decodes it and returns its name and entry.
    /// `name` is the name the response gave (Delta), if any; it must match the message's.
    pub fn decode(
        self,
        index: usize,
        any: &Any,
        name: Option<&str>,
        version: &str,
    ) -> Result<(String, Entry), DecodeError> {
        if any.type_url != self.type_url() {
            return Err(DecodeError::TypeUrl {
                index,
                got: any.type_url.clone(),
                want: self.type_url(),
            });
        }
        let bad = |e: prost::DecodeError| DecodeError::Decode {
            index,
            want: self.message_name(),
            reason: e.to_string(),
        };
        let body = any.value.as_slice();
        // Only what the client needs now (name, dependencies) is decoded here; the whole message
        // is decoded, and checked, once, when the snapshot is assembled for the runtime.
        let (inner, needs) = match self {
            Kind::Cluster => {
                let c = ClusterHead::decode(body).map_err(bad)?;
                let needs = c.eds_dependency().into_iter().collect();
                (c.name, needs)
            }
            Kind::Endpoint => (NameHead::decode(body).map_err(bad)?.name, Vec::new()),
            Kind::Listener => {
                let l = Listener::decode(body).map_err(bad)?;
                let needs = rds_dependencies(&l);
                (l.name, needs)
            }
            Kind::Route => (NameHead::decode(body).map_err(bad)?.name, Vec::new()),
        };
        if inner.is_empty() {
            return Err(DecodeError::Unnamed { index });
        }
        if let Some(name) = name
            && name != inner
        {
            return Err(DecodeError::Name {
                index,
                name: name.to_owned(),
                inner,
            });
        }
        Ok((
            inner,
            Entry {
                version: version.to_owned(),
                body: Bytes::copy_from_slice(body),
                needs,
            },
        ))
    }
}

impl Cache {
    /// The resources of `kind` received so far.
    pub fn get(&self, kind: Kind) -> &BTreeMap<String, Entry> {
        &self.current[kind.index()]
    }

    /// Versions of what is held for `kind` (Delta's `initial_resource_versions`).
    pub fn versions(&self, kind: Kind) -> BTreeMap<String, String> {
        self.get(kind)
            .iter()
            .map(|(n, e)| (n.clone(), e.version.clone()))
            .collect()
    }

    /// Replaces everything of `kind` (a State-of-the-World LDS/CDS response).
    pub fn replace(&mut self, kind: Kind, entries: Vec<(String, Entry)>) {
        self.current[kind.index()] = entries.into_iter().collect();
    }

    /// Adds or updates resources and removes others (Delta, and SotW RDS/EDS responses).
    pub fn upsert(&mut self, kind: Kind, entries: Vec<(String, Entry)>, removed: &[String]) {
        let map = &mut self.current[kind.index()];
        for name in removed {
            map.remove(name);
        }
        map.extend(entries);
    }

    /// Names of `kind` the held resources of its parent type need (empty for LDS/CDS).
    pub fn wanted(&self, kind: Kind) -> BTreeSet<String> {
        let Some(parent) = kind.parent() else {
            return BTreeSet::new();
        };
        self.get(parent)
            .values()
            .flat_map(|e| e.needs.iter().cloned())
            .collect()
    }

    /// Drops held RDS/EDS resources nothing needs any more (Envoy forgets unsubscribed names).
    pub fn forget_unwanted(&mut self) {
        for kind in [Kind::Endpoint, Kind::Route] {
            let wanted = self.wanted(kind);
            self.current[kind.index()].retain(|n, _| wanted.contains(n));
        }
    }

    /// Needed RDS/EDS names that have not arrived yet.
    pub fn missing(&self) -> Vec<(Kind, String)> {
        let mut out = Vec::new();
        for kind in [Kind::Endpoint, Kind::Route] {
            let have = self.get(kind);
            out.extend(
                self.wanted(kind)
                    .into_iter()
                    .filter(|n| !have.contains_key(n))
                    .map(|n| (kind, n)),
            );
        }
        out
    }

    /// Everything held, decoded, as one snapshot for the runtime. `version` is a hash of every
    /// resource's type, name and version.
    pub fn assemble(&self) -> Result<Resources, String> {
        fn all<M: Message + Default>(map: &BTreeMap<String, Entry>) -> Result<Vec<M>, String> {
            map.iter()
                .map(|(n, e)| M::decode(e.body.clone()).map_err(|err| format!("{n:?}: {err}")))
                .collect()
        }
        Ok(Resources {
            version: self.version(),
            listeners: all(self.get(Kind::Listener))?,
            routes: all(self.get(Kind::Route))?,
            clusters: all(self.get(Kind::Cluster))?,
            endpoints: all(self.get(Kind::Endpoint))?,
        })
    }

    /// FNV-1a over (type, name, version) of everything held, as 16 hex digits.
    pub fn version(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes.iter().chain([&0xffu8]) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for kind in Kind::ALL {
            eat(kind.short().as_bytes());
            for (n, e) in self.get(kind) {
                eat(n.as_bytes());
                eat(e.version.as_bytes());
            }
        }
        format!("{h:016x}")
    }

    /// Each type's resources length-delimited back to back in name order (the `/config_dump`
    /// encoding), in `Kind::ALL` order. The held entries are re-pointed into these buffers, so
    /// the bytes are held once, and the per-response buffers they came from are freed.
    pub fn pack(&mut self) -> [Bytes; 4] {
        Kind::ALL.map(|kind| {
            let map = &mut self.current[kind.index()];
            let len: usize = map
                .values()
                .map(|e| e.body.len() + prost::length_delimiter_len(e.body.len()))
                .sum();
            let mut buf = BytesMut::with_capacity(len);
            let mut spans = Vec::with_capacity(map.len());
            for e in map.values() {
                // Cannot fail: the buffer grows as needed.
                let _ = prost::encode_length_delimiter(e.body.len(), &mut buf);
                let start = buf.len();
                buf.extend_from_slice(&e.body);
                spans.push(start..buf.len());
            }
            let packed = buf.freeze();
            for (e, span) in map.values_mut().zip(spans) {
                e.body = packed.slice(span);
            }
            packed
        })
    }

    /// The current state was applied: it becomes the state to roll back to.
    pub fn commit(&mut self) {
        self.applied.clone_from(&self.current);
    }

    /// Forget everything received since the last [`Cache::commit`].
    pub fn rollback(&mut self) {
        self.current.clone_from(&self.applied);
    }
}

/// RDS names an LDS listener reads (`rds.route_config_name` of its HTTP connection managers).
fn rds_dependencies(l: &Listener) -> Vec<String> {
    let mut out = Vec::new();
    for chain in &l.filter_chains {
        for f in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if !any.type_url.ends_with(".HttpConnectionManager") {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                && !rds.route_config_name.is_empty()
                && !out.contains(&rds.route_config_name)
            {
                out.push(rds.route_config_name);
            }
        }
    }
    out
}

/// The fields of a `Cluster` the client reads on receipt (prost skips the others).
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    /// `cluster_discovery_type.type`.
    #[prost(int32, optional, tag = "2")]
    r#type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    eds_cluster_config: Option<EdsHead>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EdsHead {
    #[prost(string, tag = "2")]
    service_name: String,
}

/// Field 1 of `ClusterLoadAssignment` (`cluster_name`) and `RouteConfiguration` (`name`).
#[derive(Clone, PartialEq, prost::Message)]
struct NameHead {
    #[prost(string, tag = "1")]
    name: String,
}

impl ClusterHead {
    /// The EDS name an EDS cluster reads (`eds_cluster_config.service_name`, else its name).
    fn eds_dependency(&self) -> Option<String> {
        if self.r#type != Some(DiscoveryType::Eds as i32) {
            return None;
        }
        let service = self
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty());
        Some(service.unwrap_or(&self.name).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::util::pack_any;
    use trellis_xds::{Cluster, ClusterLoadAssignment};

    fn eds_cluster(name: &str, service: &str) -> Any {
        pack_any(Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn rds_listener(name: &str, route: &str) -> Any {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        pack_any(Listener {
            name: name.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn entry(kind: Kind, any: &Any) -> (String, Entry) {
        kind.decode(0, any, None, "1").unwrap()
    }

    #[test]
    fn dependencies_drive_wanted_and_missing() {
        let mut cache = Cache::default();
        cache.replace(
            Kind::Cluster,
            vec![
                entry(Kind::Cluster, &eds_cluster("a", "")),
                entry(Kind::Cluster, &eds_cluster("b", "svc-b")),
                entry(
                    Kind::Cluster,
                    &pack_any(Cluster {
                        name: "static".into(),
                        ..Default::default()
                    }),
                ),
            ],
        );
        cache.replace(
            Kind::Listener,
            vec![entry(Kind::Listener, &rds_listener("l", "http.8080"))],
        );
        assert_eq!(
            cache.wanted(Kind::Endpoint),
            ["a", "svc-b"].map(String::from).into()
        );
        assert_eq!(cache.wanted(Kind::Route), ["http.8080".to_string()].into());
        assert_eq!(cache.missing().len(), 3);
        let cla = pack_any(ClusterLoadAssignment {
            cluster_name: "a".into(),
            ..Default::default()
        });
        cache.upsert(Kind::Endpoint, vec![entry(Kind::Endpoint, &cla)], &[]);
        assert_eq!(
            cache.missing(),
            vec![
                (Kind::Endpoint, "svc-b".to_string()),
                (Kind::Route, "http.8080".to_string())
            ]
        );
        let res = cache.assemble().unwrap();
        assert_eq!(res.clusters.len(), 3);
        assert_eq!(res.endpoints[0].cluster_name, "a");
    }

    #[test]
    fn rollback_restores_the_committed_state_and_forget_drops_unneeded() {
        let mut cache = Cache::default();
        cache.replace(
            Kind::Cluster,
            vec![entry(Kind::Cluster, &eds_cluster("a", ""))],
        );
        let cla = pack_any(ClusterLoadAssignment {
            cluster_name: "a".into(),
            ..Default::default()
        });
        cache.upsert(Kind::Endpoint, vec![entry(Kind::Endpoint, &cla)], &[]);
        cache.commit();
        let v = cache.version();
        cache.replace(Kind::Cluster, Vec::new());
        assert_ne!(cache.version(), v);
        cache.forget_unwanted();
        assert!(cache.get(Kind::Endpoint).is_empty());
        cache.rollback();
        assert_eq!(cache.version(), v);
        assert_eq!(cache.get(Kind::Endpoint).len(), 1);
    }

    #[test]
    fn decode_checks_type_and_name() {
        let any = eds_cluster("a", "");
        assert!(matches!(
            Kind::Listener.decode(3, &any, None, "1"),
            Err(DecodeError::TypeUrl { index: 3, .. })
        ));
        assert!(matches!(
            Kind::Cluster.decode(0, &any, Some("b"), "1"),
            Err(DecodeError::Name { .. })
        ));
        let garbage = Any {
            type_url: Kind::Cluster.type_url().into(),
            value: vec![0xff, 0xff],
        };
        let err = Kind::Cluster.decode(1, &garbage, None, "1").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("resource 1: does not decode as Cluster"),
            "{err}"
        );
    }
}
