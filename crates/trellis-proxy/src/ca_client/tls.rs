//! TLS to the control plane (its port 15012): the server's certificate must chain to the roots
//! given with `--ca-root` and name the host dialled (DNS or IP SAN); the proxy presents its
//! current workload certificate when it has one (mutual TLS), so renewals need no token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::security::IdentityStore;

/// The control plane's roots and the certificate to present, shared by every connection.
#[derive(Clone)]
pub struct ControlPlaneTrust {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ControlPlaneTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlPlaneTrust")
    }
}

/// A tonic connector that dials `address` and speaks TLS (ALPN h2) to it.
#[derive(Clone)]
pub struct ControlPlaneTls {
    config: Arc<rustls::ClientConfig>,
    address: String,
    server_name: ServerName<'static>,
}

/// Presents the workload certificate in the [`IdentityStore`] (none before the first).
struct WorkloadCert(Arc<IdentityStore>);

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadCert")
    }
}

impl std::fmt::Debug for ControlPlaneTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneTls")
            .field("address", &self.address)
            .finish()
    }
}

impl ControlPlaneTrust {
    /// `roots_pem`: the PEM file of the roots the control plane's certificate must chain to;
    /// `identity`: the workload certificate to present.
    pub fn load(
        roots_pem: &std::path::Path,
        identity: Arc<IdentityStore>,
    ) -> Result<ControlPlaneTrust, String> {
        let text = std::fs::read(roots_pem)
            .map_err(|e| format!("--ca-root {}: {e}", roots_pem.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for pem in x509_parser::pem::Pem::iter_from_buffer(&text).filter_map(Result::ok) {
            if pem.label == "CERTIFICATE" {
                roots
                    .add(CertificateDer::from(pem.contents))
                    .map_err(|e| format!("--ca-root {}: {e}", roots_pem.display()))?;
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "--ca-root {}: no PEM CERTIFICATE in it",
                roots_pem.display()
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(WorkloadCert(identity)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ControlPlaneTrust {
            config: Arc::new(config),
        })
    }

    /// A connector to `address` (`host:port`; the host must be in the server's certificate).
    pub fn connector(&self, address: &str) -> Result<ControlPlaneTls, String> {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{address}: {host:?} is not a server name: {e}"))?;
        Ok(ControlPlaneTls {
            config: Arc::clone(&self.config),
            address: address.to_owned(),
            server_name,
        })
    }
}

impl tonic::codegen::Service<http::Uri> for ControlPlaneTls {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(this.config);
            let tls = connector.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

impl ResolvesClientCert for WorkloadCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let identity = self.0.identity()?;
        let provider = rustls::crypto::ring::default_provider();
        let key = provider
            .key_provider
            .load_private_key(identity.key.clone_key())
            .ok()?;
        Some(Arc::new(CertifiedKey::new(identity.chain.clone(), key)))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
