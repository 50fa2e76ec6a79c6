//! State of the World ADS (`StreamAggregatedResources`): per type, what the client asked for
//! and what it was last sent, and the stream loop that answers requests and pushes changes.
//!
//! LDS and CDS responses carry the full set (a missing resource is removed); RDS and EDS
//! responses carry only the named resources that changed. A NACK is recorded and the same
//! version is not sent again; only new content or new names produce a response.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use trellis_xds::ProxyIdentity;

use super::XdsServer;
use super::follow::{Follower, Next};
use super::snapshot::{Entry, Kind, ProxySnapshot};
use super::status::Sent;
use super::subscription::{Force, Received, Subscription};

/// One type's bookkeeping on one SotW stream.
#[derive(Debug, Default)]
pub struct SotwType {
    requested: bool,
    subscription: Subscription,
    /// What the client was last sent, by name (content hash).
    sent: BTreeMap<String, u64>,
    /// Nonce of the last response of this type.
    nonce: String,
    /// The snapshot `sent` was last brought up to date with, while the subscription has not
    /// changed since: the next build then only looks at the names its successor changed.
    base: Option<u64>,
}

/// A response to send: the type's version, the resources, and the names whose content the
/// client did not have (the changed ones).
#[derive(Debug)]
pub struct Built {
    pub version: String,
    pub resources: Vec<Any>,
    pub changed: BTreeSet<String>,
}

impl SotwType {
    /// Applies a request of `kind`: returns what it was and, when a response is owed right
    /// away, which resources it must carry.
    pub fn on_request(&mut self, kind: Kind, req: &DiscoveryRequest) -> (Received, Option<Force>) {
        let stale = !self.nonce.is_empty() && req.response_nonce != self.nonce;
        if self.requested && stale {
            return (Received::Stale, None);
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = names.contains("*") || (kind.is_full_set() && names.is_empty());
        let added: BTreeSet<String> = names
            .difference(&self.subscription.names)
            .cloned()
            .collect();
        let widened = wildcard && !self.subscription.wildcard;
        let subscription = Subscription { wildcard, names };
        if subscription != self.subscription || !self.requested {
            self.subscription = subscription;
            self.base = None;
            let subscription = &self.subscription;
            self.sent.retain(|name, _| subscription.wants(name));
        }
        if !self.requested {
            self.requested = true;
            return (Received::Initial, Some(Force::All));
        }
        let received = match &req.error_detail {
            Some(status) => Received::Nack {
                nonce: req.response_nonce.clone(),
                error: status.message.clone(),
            },
            None => Received::Ack {
                version: req.version_info.clone(),
                nonce: req.response_nonce.clone(),
            },
        };
        let respond = if widened {
            Some(Force::None)
        } else if !added.is_empty() {
            Some(Force::Names(added))
        } else {
            None
        };
        (received, respond)
    }

    /// Builds the response the client needs now, if any, and records it as sent. `initial`
    /// responses go out even when empty (LDS/CDS) so the client can finish initializing.
    pub fn build(&mut self, kind: Kind, snapshot: &ProxySnapshot, force: &Force) -> Option<Built> {
        if !self.requested {
            return None;
        }
        let mut changed = BTreeSet::new();
        let since_base = snapshot.changed_since(self.base, kind);
        self.base = Some(snapshot.id());
        if kind.is_full_set() {
            // Nothing of this type changed since the snapshot the client holds.
            if since_base.is_some_and(|names| names.is_empty()) && *force != Force::All {
                return None;
            }
            let set: BTreeMap<&String, &super::snapshot::Entry> =
                self.subscription.existing(kind, snapshot).collect();
            for (name, entry) in &set {
                if self.sent.get(*name) != Some(&entry.hash) {
                    changed.insert((*name).clone());
                }
            }
            let removed = self.sent.keys().any(|name| !set.contains_key(name));
            if changed.is_empty() && !removed && *force != Force::All {
                return None;
            }
            self.sent = set.iter().map(|(n, e)| ((*n).clone(), e.hash)).collect();
            let resources = set.values().map(|e| e.any.clone()).collect();
            return Some(Built {
                version: snapshot.version(kind).to_string(),
                resources,
                changed,
            });
        }
        let mut resources = Vec::new();
        let existing = snapshot.resources(kind);
        let mut offer = |sent: &mut BTreeMap<String, u64>, name: &String, entry: &Entry| {
            let differs = sent.get(name) != Some(&entry.hash);
            if differs || force.covers(name) {
                if differs {
                    changed.insert(name.clone());
                }
                resources.push(entry.any.clone());
                sent.insert(name.clone(), entry.hash);
            }
        };
        match (since_base, force) {
            // Only names changed since the snapshot `sent` reflects (and forced ones) can
            // differ: O(changes) rather than O(resources) per stream and push.
            (Some(names), Force::None | Force::Names(_)) => {
                let mut candidates: BTreeSet<&String> = names.iter().collect();
                if let Force::Names(forced) = force {
                    candidates.extend(forced);
                }
                for name in candidates {
                    if let Some((name, entry)) = existing.get_key_value(name)
                        && self.subscription.wants(name)
                    {
                        offer(&mut self.sent, name, entry);
                    }
                }
            }
            _ => {
                for (name, entry) in self.subscription.existing(kind, snapshot) {
                    offer(&mut self.sent, name, entry);
                }
            }
        }
        if resources.is_empty() {
            return None;
        }
        Some(Built {
            version: snapshot.version(kind).to_string(),
            resources,
            changed,
        })
    }

    pub fn set_nonce(&mut self, nonce: String) {
        self.nonce = nonce;
    }
}

/// One SotW stream: answers requests, pushes each new generation, until either side ends.
pub(super) async fn run(
    server: Arc<XdsServer>,
    conn: u64,
    identity: ProxyIdentity,
    first: DiscoveryRequest,
    requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut stream = SotwStream {
        server: server.clone(),
        conn,
        types: Default::default(),
        sent: 0,
        tx,
    };
    let mut follow = Follower::new(server.clone(), conn, identity, first, requests).await;
    loop {
        let req = match follow.next().await {
            Next::Request(req) => req,
            Next::Generation => {
                if !stream.push(&follow.snapshot, &follow.generation).await {
                    break;
                }
                continue;
            }
            Next::End => break,
        };
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            tracing::debug!(conn, type_url = %req.type_url, "ignoring a request for an unserved type");
            continue;
        };
        let (received, respond) = stream.types[kind as usize].on_request(kind, &req);
        server.record(conn, kind, &received, &follow.identity().id);
        if let Some(force) = respond
            && !stream.send(kind, &follow.snapshot, None, &force).await
        {
            break;
        }
    }
}

struct SotwStream {
    server: Arc<XdsServer>,
    conn: u64,
    types: [SotwType; 4],
    sent: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl SotwStream {
    /// Sends every type whose content changed, CDS then EDS then LDS then RDS; the load
    /// assignments of changed clusters and the routes of changed listeners go again so that
    /// warming clusters and listeners complete.
    async fn push(&mut self, snapshot: &ProxySnapshot, generation: &super::Generation) -> bool {
        let mut eds = Force::None;
        let mut rds = Force::None;
        for kind in Kind::ALL {
            let force = match kind {
                Kind::Endpoint => eds.clone(),
                Kind::Route => rds.clone(),
                _ => Force::None,
            };
            let Some(changed) = self
                .send_built(kind, snapshot, Some(generation), &force)
                .await
            else {
                continue;
            };
            let Ok(changed) = changed else {
                return false;
            };
            match kind {
                Kind::Cluster if !changed.is_empty() => eds = Force::Names(changed),
                Kind::Listener if !changed.is_empty() => rds = Force::All,
                _ => {}
            }
        }
        true
    }

    async fn send(
        &mut self,
        kind: Kind,
        snapshot: &ProxySnapshot,
        pushed: Option<&super::Generation>,
        force: &Force,
    ) -> bool {
        !matches!(
            self.send_built(kind, snapshot, pushed, force).await,
            Some(Err(()))
        )
    }

    /// `None`: nothing to send; `Some(Err)`: the client is gone; `Some(Ok(changed))`: sent.
    async fn send_built(
        &mut self,
        kind: Kind,
        snapshot: &ProxySnapshot,
        pushed: Option<&super::Generation>,
        force: &Force,
    ) -> Option<Result<BTreeSet<String>, ()>> {
        let built = self.types[kind as usize].build(kind, snapshot, force)?;
        self.sent += 1;
        let nonce = format!("{}-{}", self.conn, self.sent);
        self.types[kind as usize].set_nonce(nonce.clone());
        let count = built.resources.len();
        let response = DiscoveryResponse {
            version_info: built.version.clone(),
            resources: built.resources,
            type_url: kind.type_url(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        let bytes = response.encoded_len();
        self.server.status.sent(
            self.conn,
            kind,
            Sent {
                version: &built.version,
                nonce: &nonce,
                resources: count,
                bytes,
                pushed: pushed.map(|g| (g.accepted_at, g.published_at)),
            },
        );
        if self.tx.send(Ok(response)).await.is_err() {
            return Some(Err(()));
        }
        Some(Ok(built.changed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::snapshot::tests::test_cla;
    use envoy_types::pb::google::rpc;
    use trellis_xds::Resources;

    fn request(kind: Kind, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: kind.type_url(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn snapshot(ports: &[(&str, u32)]) -> ProxySnapshot {
        split(ports, ports)
    }

    /// Clusters (connect timeout `c` seconds) and load assignments (port `e`) apart.
    fn split(clusters: &[(&str, u32)], endpoints: &[(&str, u32)]) -> ProxySnapshot {
        ProxySnapshot::new(Resources {
            endpoints: endpoints.iter().map(|(n, p)| test_cla(n, *p)).collect(),
            clusters: clusters
                .iter()
                .map(|(n, p)| trellis_xds::Cluster {
                    name: n.to_string(),
                    connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                        seconds: i64::from(*p),
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn names(built: &Built) -> Vec<String> {
        built
            .resources
            .iter()
            .map(|any| {
                if any.type_url == Kind::Cluster.type_url() {
                    trellis_xds::Cluster::decode(any.value.as_slice())
                        .unwrap()
                        .name
                } else {
                    trellis_xds::ClusterLoadAssignment::decode(any.value.as_slice())
                        .unwrap()
                        .cluster_name
                }
            })
            .collect()
    }

    #[test]
    fn cds_is_wildcard_and_carries_the_full_set() {
        let mut t = SotwType::default();
        let (received, force) = t.on_request(Kind::Cluster, &request(Kind::Cluster, &[], "", ""));
        assert_eq!(received, Received::Initial);
        let s1 = snapshot(&[("a", 1), ("b", 2)]);
        let built = t.build(Kind::Cluster, &s1, &force.unwrap()).unwrap();
        assert_eq!(names(&built), ["a", "b"]);
        t.set_nonce("n1".into());
        let (received, force) = t.on_request(
            Kind::Cluster,
            &request(Kind::Cluster, &[], &built.version, "n1"),
        );
        assert!(matches!(received, Received::Ack { ref nonce, .. } if nonce == "n1"));
        assert_eq!(force, None);
        // Same content: nothing to send.
        assert!(
            t.build(
                Kind::Cluster,
                &snapshot(&[("a", 1), ("b", 2)]),
                &Force::None
            )
            .is_none()
        );
        // `b` removed and `a` changed: the full remaining set, `a` reported as changed.
        let built = t
            .build(Kind::Cluster, &snapshot(&[("a", 9)]), &Force::None)
            .unwrap();
        assert_eq!(names(&built), ["a"]);
        assert_eq!(built.changed, BTreeSet::from(["a".to_string()]));
        // Only `b` removed: still a response (omission is removal).
        t.build(
            Kind::Cluster,
            &snapshot(&[("a", 9), ("b", 2)]),
            &Force::None,
        )
        .unwrap();
        let built = t
            .build(Kind::Cluster, &snapshot(&[("a", 9)]), &Force::None)
            .unwrap();
        assert!(built.changed.is_empty());
        assert_eq!(names(&built), ["a"]);
    }

    #[test]
    fn a_push_after_a_diffed_revision_sends_what_a_full_scan_would() {
        let mut cds = SotwType::default();
        let mut eds = SotwType::default();
        cds.on_request(Kind::Cluster, &request(Kind::Cluster, &[], "", ""));
        eds.on_request(
            Kind::Endpoint,
            &request(Kind::Endpoint, &["a", "b"], "", ""),
        );
        let s1 = split(
            &[("a", 1), ("b", 2), ("c", 3)],
            &[("a", 1), ("b", 2), ("c", 3)],
        );
        cds.build(Kind::Cluster, &s1, &Force::All).unwrap();
        eds.build(Kind::Endpoint, &s1, &Force::All).unwrap();
        // Endpoints of `b` and `c` change; the clusters do not.
        let mut s2 = split(
            &[("a", 1), ("b", 2), ("c", 3)],
            &[("a", 1), ("b", 20), ("c", 30)],
        );
        s2.diff_from(&s1);
        assert!(cds.build(Kind::Cluster, &s2, &Force::None).is_none());
        let built = eds.build(Kind::Endpoint, &s2, &Force::None).unwrap();
        assert_eq!(names(&built), ["b"]);
        // Cluster `c` removed: the full remaining set goes; no endpoint changed.
        let mut s3 = split(&[("a", 1), ("b", 2)], &[("a", 1), ("b", 20), ("c", 30)]);
        s3.diff_from(&s2);
        let built = cds.build(Kind::Cluster, &s3, &Force::None).unwrap();
        assert_eq!(names(&built), ["a", "b"]);
        assert!(eds.build(Kind::Endpoint, &s3, &Force::None).is_none());
        // A new EDS name is answered even though nothing changed.
        eds.set_nonce("n1".into());
        let (_, force) = eds.on_request(
            Kind::Endpoint,
            &request(Kind::Endpoint, &["a", "b", "c"], "v", "n1"),
        );
        let mut s4 = split(&[("a", 1), ("b", 2)], &[("a", 1), ("b", 20), ("c", 30)]);
        s4.diff_from(&s3);
        let built = eds.build(Kind::Endpoint, &s4, &force.unwrap()).unwrap();
        assert_eq!(names(&built), ["c"]);
    }

    #[test]
    fn eds_is_by_name_and_sends_only_what_changed() {
        let mut t = SotwType::default();
        let (_, force) = t.on_request(Kind::Endpoint, &request(Kind::Endpoint, &["a"], "", ""));
        let s1 = snapshot(&[("a", 1), ("b", 2), ("c", 3)]);
        let built = t.build(Kind::Endpoint, &s1, &force.unwrap()).unwrap();
        assert_eq!(names(&built), ["a"]);
        t.set_nonce("n1".into());
        // The client adds `b`: only `b` is owed.
        let (_, force) = t.on_request(
            Kind::Endpoint,
            &request(Kind::Endpoint, &["a", "b"], &built.version, "n1"),
        );
        let built = t.build(Kind::Endpoint, &s1, &force.unwrap()).unwrap();
        assert_eq!(names(&built), ["b"]);
        t.set_nonce("n2".into());
        // `c` changes (not subscribed) and `b` changes: only `b`.
        let s2 = snapshot(&[("a", 1), ("b", 5), ("c", 6)]);
        let built = t.build(Kind::Endpoint, &s2, &Force::None).unwrap();
        assert_eq!(names(&built), ["b"]);
        // A forced name goes again even though unchanged.
        let built = t
            .build(
                Kind::Endpoint,
                &s2,
                &Force::Names(BTreeSet::from(["a".to_string()])),
            )
            .unwrap();
        assert_eq!(names(&built), ["a"]);
        assert!(built.changed.is_empty());
    }

    #[test]
    fn a_nack_is_recorded_and_the_same_version_is_not_resent() {
        let mut t = SotwType::default();
        let (_, force) = t.on_request(Kind::Cluster, &request(Kind::Cluster, &[], "", ""));
        let s1 = snapshot(&[("a", 1)]);
        t.build(Kind::Cluster, &s1, &force.unwrap()).unwrap();
        t.set_nonce("n1".into());
        let mut nack = request(Kind::Cluster, &[], "", "n1");
        nack.error_detail = Some(rpc::Status {
            code: 3,
            message: "cluster a: bad".into(),
            details: vec![],
        });
        let (received, force) = t.on_request(Kind::Cluster, &nack);
        assert_eq!(
            received,
            Received::Nack {
                nonce: "n1".into(),
                error: "cluster a: bad".into()
            }
        );
        assert_eq!(force, None);
        assert!(t.build(Kind::Cluster, &s1, &Force::None).is_none());
        // A request answering an older nonce is stale and ignored.
        let (received, force) = t.on_request(Kind::Cluster, &request(Kind::Cluster, &[], "", "n0"));
        assert_eq!((received, force), (Received::Stale, None));
        // New content is sent again.
        assert!(
            t.build(Kind::Cluster, &snapshot(&[("a", 2)]), &Force::None)
                .is_some()
        );
    }
}
