//! Incremental (Delta) xDS on the ADS stream: `DeltaDiscoveryRequest`s out, decoded
//! `DeltaDiscoveryResponse`s in. Wildcard subscriptions are the explicit `"*"`; a new stream
//! sends what the cache holds as `initial_resource_versions`; an ACK is the response's nonce, a
//! NACK adds `error_detail`.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc::UnboundedSender;

use super::cache::{Cache, Kind};
use super::engine::{Change, Outbox, Undecodable, Update};

/// gRPC `INVALID_ARGUMENT`, the code NACKs carry.
pub(crate) const INVALID_ARGUMENT: i32 = 3;

pub(crate) struct DeltaOutbox {
    tx: UnboundedSender<DeltaDiscoveryRequest>,
    node: Option<Node>,
}

impl DeltaOutbox {
    pub fn new(tx: UnboundedSender<DeltaDiscoveryRequest>, node: Node) -> DeltaOutbox {
        DeltaOutbox {
            tx,
            node: Some(node),
        }
    }

    fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        // The node goes on the stream's first request only (as Envoy sends it).
        req.node = self.node.take();
        // The stream is gone when this fails; the session notices on its receive side.
        let _ = self.tx.send(req);
    }
}

impl Outbox for DeltaOutbox {
    fn open(&mut self, cache: &Cache, named: &[(Kind, BTreeSet<String>)]) {
        for kind in Kind::ALL {
            let subscribe: Vec<String> = if kind.is_wildcard() {
                vec!["*".to_owned()]
            } else {
                match named.iter().find(|(k, _)| *k == kind) {
                    Some((_, names)) if !names.is_empty() => names.iter().cloned().collect(),
                    _ => continue,
                }
            };
            self.send(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: subscribe,
                initial_resource_versions: cache.versions(kind).into_iter().collect(),
                ..Default::default()
            });
        }
    }

    fn seen(&mut self, _kind: Kind, _nonce: &str) {}

    fn ack(&mut self, kind: Kind, _version: &str, nonce: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        });
    }

    fn nack(&mut self, kind: Kind, nonce: &str, error: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: Some(Status {
                code: INVALID_ARGUMENT,
                message: error.to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        });
    }

    fn resubscribe(&mut self, kind: Kind, old: &BTreeSet<String>, new: &BTreeSet<String>) {
        self.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().to_owned(),
            resource_names_subscribe: new.difference(old).cloned().collect(),
            resource_names_unsubscribe: old.difference(new).cloned().collect(),
            ..Default::default()
        });
    }
}

/// Decodes a response; any bad resource makes the whole response undecodable.
pub(crate) fn decode(resp: DeltaDiscoveryResponse) -> Result<Update, Undecodable> {
    let Some(kind) = Kind::from_type_url(&resp.type_url) else {
        return Err(Undecodable {
            kind: None,
            type_url: resp.type_url,
            nonce: resp.nonce,
            error: "type not subscribed to".into(),
        });
    };
    let mut entries = Vec::with_capacity(resp.resources.len());
    for (i, r) in resp.resources.iter().enumerate() {
        let Some(any) = &r.resource else {
            // A name the server knows nothing about (on-demand xDS); treated as absent.
            continue;
        };
        match kind.decode(i, any, Some(&r.name), &r.version) {
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
    Ok(Update {
        kind,
        version: resp.system_version_info,
        nonce: resp.nonce,
        change: Change::Upsert {
            entries,
            removed: resp.removed_resources,
        },
    })
}
