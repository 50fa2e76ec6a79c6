//! What a stream's client asked for, per type, and what a request means for the server:
//! wildcard or names, and whether it is the first request, an ACK, a NACK or stale.
//!
//! Shared by the SotW and delta bookkeeping; pure (no I/O).

use std::collections::BTreeSet;

use super::snapshot::{Kind, ProxySnapshot};

/// The resources of one type a client is subscribed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

/// What a request was, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The first request of this type on the stream.
    Initial,
    /// The client applied the response with this nonce.
    Ack { version: String, nonce: String },
    /// The client rejected the response with this nonce and kept its previous config.
    Nack { nonce: String, error: String },
    /// A reply to a response that has since been superseded (ignored).
    Stale,
}

/// Which resources a response must carry even if the client already has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Force {
    None,
    All,
    Names(BTreeSet<String>),
}

impl Subscription {
    /// Whether `name` is asked for.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Names of `kind` this subscription covers that exist in `snapshot`.
    pub fn existing<'a>(
        &'a self,
        kind: Kind,
        snapshot: &'a ProxySnapshot,
    ) -> impl Iterator<Item = (&'a String, &'a super::snapshot::Entry)> + 'a {
        snapshot
            .resources(kind)
            .iter()
            .filter(move |(name, _)| self.wants(name))
    }
}

impl Force {
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Force::None => false,
            Force::All => true,
            Force::Names(names) => names.contains(name),
        }
    }
}
