//! Certificates chosen and checked per handshake from the `IdentityStore`: `IdentityResolver`
//! presents the workload certificate (server and client side); `PeerVerifier` checks a client's
//! chain against the bundle's roots and its SPIFFE trust domain; `UpstreamVerifier` does the
//! same for a server (SNI is not a name in Istio's certificates, so it is not checked; optional
//! SPIFFE IDs are). Parsed keys and root stores are cached per identity / bundle snapshot.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{cert, provider};
use crate::security::{Identity, IdentityStore, TrustBundle};

/// Presents the store's current certificate.
pub struct IdentityResolver {
    store: Arc<IdentityStore>,
    cache: ArcSwapOption<(Arc<Identity>, Arc<CertifiedKey>)>,
}

impl IdentityResolver {
    pub fn new(store: Arc<IdentityStore>) -> IdentityResolver {
        IdentityResolver {
            store,
            cache: ArcSwapOption::empty(),
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let identity = self.store.identity()?;
        if let Some(c) = self.cache.load().as_ref()
            && Arc::ptr_eq(&c.0, &identity)
        {
            return Some(Arc::clone(&c.1));
        }
        let key = match provider()
            .key_provider
            .load_private_key(identity.key.clone_key())
        {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "workload key unusable");
                return None;
            }
        };
        let certified = Arc::new(CertifiedKey::new(identity.chain.clone(), key));
        self.cache
            .store(Some(Arc::new((identity, Arc::clone(&certified)))));
        Some(certified)
    }
}

impl fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityResolver")
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.store.identity().is_some()
    }
}

/// The SPIFFE checks both verifiers share: a `spiffe://` URI SAN whose trust domain the bundle
/// accepts (and, when `expected` is not empty, one of those IDs).
fn check_spiffe(end_entity: &[u8], bundle: &TrustBundle, expected: &[String]) -> Result<(), Error> {
    let info = cert::read(end_entity)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let Some(id) = info.spiffe else {
        tracing::debug!("peer certificate has no spiffe:// URI SAN");
        return Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
    };
    let td = cert::trust_domain(&id).unwrap_or("");
    if !bundle.trust_domains.is_empty() && !bundle.trust_domains.iter().any(|t| t == td) {
        tracing::debug!(peer = %id, "peer trust domain is not trusted");
        return Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
    }
    if !expected.is_empty() && !expected.contains(&id) {
        tracing::debug!(peer = %id, "peer is not one of the expected identities");
        return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
    }
    Ok(())
}

fn roots(bundle: &TrustBundle) -> RootCertStore {
    let mut store = RootCertStore::empty();
    let (_added, _ignored) = store.add_parsable_certificates(bundle.roots.iter().cloned());
    store
}

fn schemes(p: &CryptoProvider) -> Vec<SignatureScheme> {
    p.signature_verification_algorithms.supported_schemes()
}

/// Verifies client certificates (server side).
pub struct PeerVerifier {
    store: Arc<IdentityStore>,
    mandatory: bool,
    cache: ArcSwapOption<(Arc<TrustBundle>, Arc<dyn ClientCertVerifier>)>,
}

impl PeerVerifier {
    pub fn new(store: Arc<IdentityStore>, mandatory: bool) -> PeerVerifier {
        PeerVerifier {
            store,
            mandatory,
            cache: ArcSwapOption::empty(),
        }
    }

    fn chain_verifier(
        &self,
        bundle: &Arc<TrustBundle>,
    ) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        if let Some(c) = self.cache.load().as_ref()
            && Arc::ptr_eq(&c.0, bundle)
        {
            return Ok(Arc::clone(&c.1));
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(bundle)), provider())
                .build()
                .map_err(|e| Error::General(format!("trust bundle unusable: {e}")))?;
        self.cache
            .store(Some(Arc::new((Arc::clone(bundle), Arc::clone(&verifier)))));
        Ok(verifier)
    }
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerVerifier")
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let bundle = self.store.bundle();
        self.chain_verifier(&bundle)?
            .verify_client_cert(end_entity, intermediates, now)?;
        check_spiffe(end_entity, &bundle, &[])?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&provider())
    }
}

/// Where an upstream verifier takes its roots from.
pub enum Roots {
    /// The store's trust bundle (`ROOTCA`), with its trust domains.
    Mesh(Arc<IdentityStore>),
    /// Fixed roots (a DestinationRule's `caCertificates`); no SPIFFE check.
    Fixed(Arc<TrustBundle>),
}

/// Verifies server certificates (client side).
pub struct UpstreamVerifier {
    roots: Roots,
    /// SPIFFE IDs the server must have (empty: any in the trust domain).
    expected: Vec<String>,
    cache: ArcSwapOption<(Arc<TrustBundle>, Arc<RootCertStore>)>,
}

impl UpstreamVerifier {
    pub fn new(roots: Roots, expected: Vec<String>) -> UpstreamVerifier {
        UpstreamVerifier {
            roots,
            expected,
            cache: ArcSwapOption::empty(),
        }
    }

    fn root_store(&self, bundle: &Arc<TrustBundle>) -> Arc<RootCertStore> {
        if let Some(c) = self.cache.load().as_ref()
            && Arc::ptr_eq(&c.0, bundle)
        {
            return Arc::clone(&c.1);
        }
        let store = Arc::new(roots(bundle));
        self.cache
            .store(Some(Arc::new((Arc::clone(bundle), Arc::clone(&store)))));
        store
    }
}

impl UpstreamVerifier {
    fn verify_chain(
        &self,
        parsed: &ParsedCertificate<'_>,
        bundle: &Arc<TrustBundle>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        verify_server_cert_signed_by_trust_anchor(
            parsed,
            &self.root_store(bundle),
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
    }
}

/// One of `expected` is a URI or DNS SAN of the certificate (nothing expected: any).
fn check_sans(end_entity: &[u8], expected: &[String]) -> Result<(), Error> {
    if expected.is_empty() {
        return Ok(());
    }
    let info = cert::read(end_entity)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let found = info
        .uris
        .iter()
        .chain(&info.dns)
        .any(|name| expected.contains(name));
    if found {
        Ok(())
    } else {
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    }
}

impl fmt::Debug for UpstreamVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamVerifier")
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let (bundle, mesh) = match &self.roots {
            Roots::Mesh(store) => (store.bundle(), true),
            Roots::Fixed(b) => (Arc::clone(b), false),
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        if mesh {
            self.verify_chain(&parsed, &bundle, intermediates, now)?;
            check_spiffe(end_entity, &bundle, &self.expected)?;
        } else if bundle.roots.is_empty() {
            // No `trusted_ca`: like Envoy without a validation context, the chain is not
            // verified; listed SANs still are.
            check_sans(end_entity, &self.expected)?;
        } else {
            self.verify_chain(&parsed, &bundle, intermediates, now)?;
            if self.expected.is_empty() {
                // SIMPLE / MUTUAL toward a non-mesh server: the usual host name check.
                rustls::client::verify_server_name(&parsed, server_name)?;
            } else {
                check_sans(end_entity, &self.expected)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&provider())
    }
}
