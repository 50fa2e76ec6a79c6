//! Delta ADS (`DeltaAggregatedResources`): per type, the client's subscription and the version
//! of every resource it holds, and the stream loop that sends only changed resources and
//! names removed ones in `removed_resources`.
//!
//! A reconnecting client announces what it holds in `initial_resource_versions`; only what
//! differs is sent. Subscription changes apply on every request, even one answering an older
//! nonce; ACK/NACK bookkeeping follows the nonce the request names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use trellis_xds::ProxyIdentity;

use super::XdsServer;
use super::follow::{Follower, Next};
use super::snapshot::{Entry, Kind, ProxySnapshot, resource_version};
use super::status::Sent;
use super::subscription::{Force, Received, Subscription};

/// One type's bookkeeping on one delta stream.
#[derive(Debug, Default)]
pub struct DeltaType {
    requested: bool,
    subscription: Subscription,
    /// What the client holds, by name (content hash; 0 when its version is not one of ours).
    held: BTreeMap<String, u64>,
    /// Names newly subscribed that did not exist: answered as removed so the client stops
    /// waiting for them.
    absent: BTreeSet<String>,
    nonce: String,
    /// The snapshot `held` was last brought up to date with, while the subscription has not
    /// changed since: the next build then only looks at the names that snapshot's successor
    /// changed.
    base: Option<u64>,
}

/// A delta response: resources to add or update, names to remove, and the names whose
/// content changed.
#[derive(Debug)]
pub struct DeltaBuilt {
    pub version: String,
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
    pub changed: BTreeSet<String>,
}

impl DeltaType {
    /// Applies a request of `kind`: returns what it was and whether a response is owed now.
    pub fn on_request(&mut self, kind: Kind, req: &DeltaDiscoveryRequest) -> (Received, bool) {
        let first = !self.requested;
        let mut added = false;
        if first {
            self.requested = true;
            self.subscription.wildcard = (kind.is_full_set()
                && req.resource_names_subscribe.is_empty())
                || req.resource_names_subscribe.iter().any(|n| n == "*");
            for (name, version) in &req.initial_resource_versions {
                let hash = u64::from_str_radix(version, 16).unwrap_or(0);
                self.held.insert(name.clone(), hash);
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                added |= !self.subscription.wildcard;
                self.subscription.wildcard = true;
            } else if self.subscription.names.insert(name.clone()) {
                added = true;
                self.absent.insert(name.clone());
            }
        }
        let mut narrowed = false;
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                narrowed |= self.subscription.wildcard;
                self.subscription.wildcard = false;
            } else {
                narrowed |= self.subscription.names.remove(name);
                self.absent.remove(name);
            }
        }
        if first || narrowed {
            let subscription = &self.subscription;
            self.held.retain(|name, _| subscription.wants(name));
        }
        if first || added || narrowed {
            self.base = None;
        }
        let received = if first {
            Received::Initial
        } else if req.response_nonce.is_empty() {
            // A subscription change with no nonce: nothing to acknowledge.
            Received::Stale
        } else if req.response_nonce != self.nonce {
            Received::Stale
        } else if let Some(status) = &req.error_detail {
            Received::Nack {
                nonce: req.response_nonce.clone(),
                error: status.message.clone(),
            }
        } else {
            Received::Ack {
                version: String::new(),
                nonce: req.response_nonce.clone(),
            }
        };
        (received, first || added)
    }

    /// Builds the response the client needs now, if any, and records what it then holds.
    /// `always` sends even an empty response (the first one of a type, so the client can
    /// finish initializing).
    pub fn build(
        &mut self,
        kind: Kind,
        snapshot: &ProxySnapshot,
        force: &Force,
        always: bool,
    ) -> Option<DeltaBuilt> {
        if !self.requested {
            return None;
        }
        let mut resources = Vec::new();
        let mut changed = BTreeSet::new();
        let existing = snapshot.resources(kind);
        let mut removed: Vec<String> = Vec::new();
        let mut offer = |held: &mut BTreeMap<String, u64>, name: &String, entry: &Entry| {
            let differs = held.get(name) != Some(&entry.hash);
            if differs || force.covers(name) {
                if differs {
                    changed.insert(name.clone());
                }
                resources.push(Resource {
                    name: name.clone(),
                    version: resource_version(entry.hash),
                    resource: Some(entry.any.clone()),
                    ..Default::default()
                });
                held.insert(name.clone(), entry.hash);
            }
        };
        let since_base = snapshot.changed_since(self.base, kind);
        match (since_base, force) {
            // Only the names changed since the snapshot `held` reflects (and forced ones)
            // can differ: O(changes) rather than O(resources) per stream and push.
            (Some(names), Force::None | Force::Names(_)) => {
                let mut candidates: BTreeSet<&String> = names.iter().collect();
                if let Force::Names(forced) = force {
                    candidates.extend(forced);
                }
                for name in candidates {
                    match existing.get_key_value(name) {
                        Some((name, entry)) if self.subscription.wants(name) => {
                            offer(&mut self.held, name, entry)
                        }
                        Some(_) => {}
                        None => {
                            if self.held.remove(name).is_some() {
                                removed.push(name.clone());
                            }
                        }
                    }
                }
            }
            _ => {
                for (name, entry) in self.subscription.existing(kind, snapshot) {
                    offer(&mut self.held, name, entry);
                }
                removed = self
                    .held
                    .keys()
                    .filter(|name| !existing.contains_key(*name))
                    .cloned()
                    .collect();
                for name in &removed {
                    self.held.remove(name);
                }
            }
        }
        self.base = Some(snapshot.id());
        for name in std::mem::take(&mut self.absent) {
            if !existing.contains_key(&name) && !removed.contains(&name) {
                removed.push(name);
            }
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        Some(DeltaBuilt {
            version: snapshot.version(kind).to_string(),
            resources,
            removed,
            changed,
        })
    }

    pub fn set_nonce(&mut self, nonce: String) {
        self.nonce = nonce;
    }
}

/// One delta stream: answers requests, pushes each new generation, until either side ends.
pub(super) async fn run(
    server: Arc<XdsServer>,
    conn: u64,
    identity: ProxyIdentity,
    first: DeltaDiscoveryRequest,
    requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut stream = DeltaStream {
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
        let always = received == Received::Initial;
        server.record(conn, kind, &received, &follow.identity().id);
        if respond
            && stream
                .send(kind, &follow.snapshot, None, &Force::None, always)
                .await
                .is_err()
        {
            break;
        }
    }
}

struct DeltaStream {
    server: Arc<XdsServer>,
    conn: u64,
    types: [DeltaType; 4],
    sent: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl DeltaStream {
    /// Sends what changed, CDS then EDS then LDS then RDS; load assignments of changed
    /// clusters and routes of changed listeners go again so that warming completes.
    async fn push(&mut self, snapshot: &ProxySnapshot, generation: &super::Generation) -> bool {
        let mut eds = Force::None;
        let mut rds = Force::None;
        for kind in Kind::ALL {
            let force = match kind {
                Kind::Endpoint => eds.clone(),
                Kind::Route => rds.clone(),
                _ => Force::None,
            };
            match self
                .send(kind, snapshot, Some(generation), &force, false)
                .await
            {
                Err(()) => return false,
                Ok(Some(changed)) if !changed.is_empty() => match kind {
                    Kind::Cluster => eds = Force::Names(changed),
                    Kind::Listener => rds = Force::All,
                    _ => {}
                },
                Ok(_) => {}
            }
        }
        true
    }

    /// `Ok(None)`: nothing to send; `Err`: the client is gone.
    async fn send(
        &mut self,
        kind: Kind,
        snapshot: &ProxySnapshot,
        pushed: Option<&super::Generation>,
        force: &Force,
        always: bool,
    ) -> Result<Option<BTreeSet<String>>, ()> {
        let Some(built) = self.types[kind as usize].build(kind, snapshot, force, always) else {
            return Ok(None);
        };
        self.sent += 1;
        let nonce = format!("{}-{}", self.conn, self.sent);
        self.types[kind as usize].set_nonce(nonce.clone());
        let count = built.resources.len() + built.removed.len();
        let response = DeltaDiscoveryResponse {
            system_version_info: built.version.clone(),
            resources: built.resources,
            type_url: kind.type_url(),
            removed_resources: built.removed,
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
        self.tx.send(Ok(response)).await.map_err(|_| ())?;
        Ok(Some(built.changed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::snapshot::tests::test_cla;
    use trellis_xds::Resources;

    fn snapshot(ports: &[(&str, u32)]) -> ProxySnapshot {
        ProxySnapshot::new(Resources {
            endpoints: ports.iter().map(|(n, p)| test_cla(n, *p)).collect(),
            ..Default::default()
        })
    }

    fn req(subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: Kind::Endpoint.type_url(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(b: &DeltaBuilt) -> Vec<&str> {
        b.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn only_changed_resources_and_removals_are_sent() {
        let mut t = DeltaType::default();
        let (received, respond) = t.on_request(Kind::Endpoint, &req(&["a", "b", "x"], &[], ""));
        assert_eq!((received, respond), (Received::Initial, true));
        let s1 = snapshot(&[("a", 1), ("b", 2), ("c", 3)]);
        let built = t.build(Kind::Endpoint, &s1, &Force::None, true).unwrap();
        assert_eq!(names(&built), ["a", "b"]);
        // `x` does not exist: the client is told so.
        assert_eq!(built.removed, ["x"]);
        t.set_nonce("n1".into());
        let (received, respond) = t.on_request(Kind::Endpoint, &req(&[], &[], "n1"));
        assert!(matches!(received, Received::Ack { .. }));
        assert!(!respond);
        // Only `b` changes; `c` is not subscribed.
        let s2 = snapshot(&[("a", 1), ("b", 7), ("c", 9)]);
        let built = t.build(Kind::Endpoint, &s2, &Force::None, false).unwrap();
        assert_eq!(names(&built), ["b"]);
        assert!(built.removed.is_empty());
        assert!(t.build(Kind::Endpoint, &s2, &Force::None, false).is_none());
        // `a` disappears: removed.
        let built = t
            .build(Kind::Endpoint, &snapshot(&[("b", 7)]), &Force::None, false)
            .unwrap();
        assert!(built.resources.is_empty());
        assert_eq!(built.removed, ["a"]);
        // Unsubscribing `b` forgets it: its later change is not sent.
        t.on_request(Kind::Endpoint, &req(&[], &["b"], "n1"));
        assert!(
            t.build(Kind::Endpoint, &snapshot(&[("b", 8)]), &Force::None, false)
                .is_none()
        );
    }

    #[test]
    fn a_push_after_a_diffed_revision_sends_what_a_full_scan_would() {
        let mut t = DeltaType::default();
        t.on_request(Kind::Endpoint, &req(&["a", "b", "c"], &[], ""));
        let s1 = snapshot(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        t.build(Kind::Endpoint, &s1, &Force::None, true).unwrap();
        t.set_nonce("n1".into());
        t.on_request(Kind::Endpoint, &req(&[], &[], "n1"));
        // `b` changes, `c` goes away, `d` (not subscribed) changes.
        let mut s2 = snapshot(&[("a", 1), ("b", 7), ("d", 8)]);
        s2.diff_from(&s1);
        assert_eq!(
            s2.changed_since(Some(s1.id()), Kind::Endpoint),
            Some(&["b".to_string(), "c".to_string(), "d".to_string()][..])
        );
        let built = t.build(Kind::Endpoint, &s2, &Force::None, false).unwrap();
        assert_eq!(names(&built), ["b"]);
        assert_eq!(built.removed, ["c"]);
        // A forced name goes again although unchanged.
        let mut s3 = snapshot(&[("a", 1), ("b", 7), ("d", 8)]);
        s3.diff_from(&s2);
        let force = Force::Names(BTreeSet::from(["a".to_string()]));
        let built = t.build(Kind::Endpoint, &s3, &force, false).unwrap();
        assert_eq!(names(&built), ["a"]);
        assert!(built.changed.is_empty());
        // A new subscription falls back to a full scan: `d` did not change in s4, yet is sent.
        t.set_nonce("n2".into());
        let (_, respond) = t.on_request(Kind::Endpoint, &req(&["d"], &[], "n2"));
        assert!(respond);
        let mut s4 = snapshot(&[("a", 1), ("b", 7), ("d", 8)]);
        s4.diff_from(&s3);
        let built = t.build(Kind::Endpoint, &s4, &Force::None, false).unwrap();
        assert_eq!(names(&built), ["d"]);
        // Nothing changed and nothing new: nothing to send.
        let mut s5 = snapshot(&[("a", 1), ("b", 7), ("d", 8)]);
        s5.diff_from(&s4);
        assert!(t.build(Kind::Endpoint, &s5, &Force::None, false).is_none());
    }

    #[test]
    fn a_reconnect_with_initial_versions_gets_only_what_differs() {
        let s1 = snapshot(&[("a", 1), ("b", 2)]);
        let mut first = DeltaType::default();
        first.on_request(Kind::Endpoint, &req(&["a", "b"], &[], ""));
        let built = first
            .build(Kind::Endpoint, &s1, &Force::None, true)
            .unwrap();
        let versions: std::collections::HashMap<String, String> = built
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        // Reconnect while `b` changed and a stale `gone` is held.
        let mut again = DeltaType::default();
        let mut r = req(&["a", "b", "gone"], &[], "");
        r.initial_resource_versions = versions;
        r.initial_resource_versions
            .insert("gone".into(), "00000000000000aa".into());
        again.on_request(Kind::Endpoint, &r);
        let s2 = snapshot(&[("a", 1), ("b", 5)]);
        let built = again
            .build(Kind::Endpoint, &s2, &Force::None, true)
            .unwrap();
        assert_eq!(names(&built), ["b"]);
        assert_eq!(built.removed, ["gone"]);
    }

    #[test]
    fn cds_first_request_is_a_wildcard() {
        let mut t = DeltaType::default();
        let mut r = req(&[], &[], "");
        r.type_url = Kind::Cluster.type_url();
        t.on_request(Kind::Cluster, &r);
        let s = ProxySnapshot::new(Resources {
            clusters: vec![trellis_xds::Cluster {
                name: "c1".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let built = t.build(Kind::Cluster, &s, &Force::None, true).unwrap();
        assert_eq!(names(&built), ["c1"]);
        // An empty snapshot later: c1 removed.
        let built = t
            .build(
                Kind::Cluster,
                &ProxySnapshot::default(),
                &Force::None,
                false,
            )
            .unwrap();
        assert_eq!(built.removed, ["c1"]);
    }
}
