//! State-of-the-World xDS on the ADS stream: `DiscoveryRequest`s out, decoded
//! `DiscoveryResponse`s in. LDS/CDS are wildcard (no resource names) and each response is the
//! whole set; RDS/EDS name what they want and a response updates the named resources. An ACK
//! repeats the response's `version_info` and nonce; a NACK carries the last accepted version,
//! the nonce and `error_detail`. Every request carries the type's full subscription.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc::UnboundedSender;

use super::cache::{Cache, Kind};
use super::delta::INVALID_ARGUMENT;
use super::engine::{Change, Outbox, Undecodable, Update};

pub(crate) struct SotwOutbox {
    tx: UnboundedSender<DiscoveryRequest>,
    node: Option<Node>,
    /// Per type (in `Kind::ALL` order): last accepted version, last nonce seen, names.
    accepted: [String; 4],
    nonce: [String; 4],
    names: [Vec<String>; 4],
}

impl SotwOutbox {
    pub fn new(tx: UnboundedSender<DiscoveryRequest>, node: Node, cache: &Cache) -> SotwOutbox {
        // On a new stream the versions last applied are announced again, as Envoy does.
        let accepted = Kind::ALL.map(|k| {
            cache
                .get(k)
                .values()
                .next()
                .map(|e| e.version.clone())
                .unwrap_or_default()
        });
        SotwOutbox {
            tx,
            node: Some(node),
            accepted,
            nonce: Default::default(),
            names: Default::default(),
        }
    }

    fn send(&mut self, kind: Kind, error: Option<&str>) {
        let i = index(kind);
        let req = DiscoveryRequest {
            version_info: self.accepted[i].clone(),
            node: self.node.take(),
            resource_names: self.names[i].clone(),
            type_url: kind.type_url().to_owned(),
            response_nonce: self.nonce[i].clone(),
            error_detail: error.map(|e| Status {
                code: INVALID_ARGUMENT,
                message: e.to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        };
        // The stream is gone when this fails; the session notices on its receive side.
        let _ = self.tx.send(req);
    }
}

impl Outbox for SotwOutbox {
    fn open(&mut self, _cache: &Cache, named: &[(Kind, BTreeSet<String>)]) {
        for kind in Kind::ALL {
            if !kind.is_wildcard() {
                match named.iter().find(|(k, _)| *k == kind) {
                    Some((_, names)) if !names.is_empty() => {
                        self.names[index(kind)] = names.iter().cloned().collect();
                    }
                    // An empty name list would mean wildcard to an older server.
                    _ => continue,
                }
            }
            self.send(kind, None);
        }
    }

    fn seen(&mut self, kind: Kind, nonce: &str) {
        nonce.clone_into(&mut self.nonce[index(kind)]);
    }

    fn ack(&mut self, kind: Kind, version: &str, nonce: &str) {
        let i = index(kind);
        version.clone_into(&mut self.accepted[i]);
        nonce.clone_into(&mut self.nonce[i]);
        self.send(kind, None);
    }

    fn nack(&mut self, kind: Kind, nonce: &str, error: &str) {
        nonce.clone_into(&mut self.nonce[index(kind)]);
        self.send(kind, Some(error));
    }

    fn resubscribe(&mut self, kind: Kind, _old: &BTreeSet<String>, new: &BTreeSet<String>) {
        self.names[index(kind)] = new.iter().cloned().collect();
        self.send(kind, None);
    }
}

fn index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Decodes a response; any bad resource makes the whole response undecodable.
pub(crate) fn decode(resp: DiscoveryResponse) -> Result<Update, Undecodable> {
    let Some(kind) = Kind::from_type_url(&resp.type_url) else {
        return Err(Undecodable {
            kind: None,
            type_url: resp.type_url,
            nonce: resp.nonce,
            error: "type not subscribed to".into(),
        });
    };
    let mut entries = Vec::with_capacity(resp.resources.len());
    for (i, any) in resp.resources.iter().enumerate() {
        match kind.decode(i, any, None, &resp.version_info) {
            Ok(e) => entries.push(e),
            Err(e) => {
                return Err(Undecodable {
                    kind: Some(kind),
                    type_url: resp.type_url,
                    nonce: resp.nonce,
                    error: e.to_string(),
                });
            }
        }
    }
    let change = if kind.is_wildcard() {
        Change::Replace(entries)
    } else {
        Change::Upsert {
            entries,
            removed: Vec::new(),
        }
    };
    Ok(Update {
        kind,
        version: resp.version_info,
        nonce: resp.nonce,
        change,
    })
}
