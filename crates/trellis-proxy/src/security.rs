//! Security state shared by the request path: the workload's own identity (certificate + key,
//! trust bundle), who the downstream peer is (from its verified mTLS certificate), and who the
//! request's end user is (from a verified JWT). The producers are `identity` sources (files or the
//! control plane's CA), the TLS listener, and JWT authentication; the consumers are the TLS
//! client/server configs and authorization. This module owns only the shapes and the swap points.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One workload certificate with its key, as issued (leaf first, then intermediates).
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` from the leaf's URI SAN.
    pub spiffe_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The roots a peer's chain must lead to (several during a root rotation).
#[derive(Default)]
pub struct TrustBundle {
    pub roots: Vec<CertificateDer<'static>>,
    /// Trust domains accepted from peers (the local one first).
    pub trust_domains: Vec<String>,
}

/// The proxy's current identity and trust bundle. Readers take a snapshot per handshake; a
/// rotation swaps in a new one and never touches connections already established.
#[derive(Default)]
pub struct IdentityStore {
    identity: ArcSwapOption<Identity>,
    bundle: ArcSwap<TrustBundle>,
}

impl IdentityStore {
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.load_full()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.load_full()
    }

    pub fn set_identity(&self, identity: Identity) {
        self.identity.store(Some(Arc::new(identity)));
    }

    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let identity = self.identity.load();
        f.debug_struct("IdentityStore")
            .field(
                "spiffe_id",
                &identity.as_ref().map(|i| i.spiffe_id.as_str()),
            )
            .field("roots", &self.bundle.load().roots.len())
            .finish()
    }
}

/// The downstream peer of one connection, as its verified mTLS certificate says (all `None` on a
/// plaintext connection).
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The connection was mutual TLS with a verified client certificate.
    pub mtls: bool,
    /// Istio's principal form: `<trust-domain>/ns/<ns>/sa/<sa>` (the URI SAN without `spiffe://`).
    pub principal: Option<Arc<str>>,
    pub namespace: Option<Arc<str>>,
    /// SNI the client sent (`connection.sni`).
    pub sni: Option<Arc<str>>,
    /// The verified client certificate's details (for `x-forwarded-client-cert`).
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// What `x-forwarded-client-cert` reports about a verified client certificate.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificate {
    /// Lower-case hex SHA-256 of the DER certificate.
    pub hash: String,
    pub subject: String,
    /// The URI SAN (the SPIFFE ID).
    pub uri: Option<String>,
    pub dns: Vec<String>,
    /// Our own certificate's URI SAN on that connection (`By`).
    pub local_uri: Option<String>,
}

/// The request's end user, from a JWT that verified. Put in the request's `http::Extensions` by
/// JWT authentication; read by authorization (`requestPrincipals`, `request.auth.*`).
#[derive(Clone, Debug)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`, when present.
    pub presenter: Option<String>,
    /// The whole payload (`request.auth.claims[...]`, nested with `][` as Istio does).
    pub claims: serde_json::Map<String, serde_json::Value>,
}
