//! The control plane's TLS endpoint (Istio's port 15012): ADS and the CA over TLS with the
//! control plane's own certificate, issued by its CA (`spiffe://<td>/ns/istio-system/sa/istiod`,
//! DNS `istiod.istio-system.svc` and `localhost`, the bind address and 127.0.0.1 as IP SANs) and
//! re-issued at half its lifetime. Client certificates are asked for and verified against the
//! current trust bundle but optional (a proxy's first request has only its bootstrap token); a
//! verified one is handed to the CA as the caller's identity.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::CertificateAuthority;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPT_QUEUE: usize = 64;

/// The verified client certificate chain of a TLS connection (in each request's extensions).
#[derive(Clone, Debug, Default)]
pub struct TlsPeer {
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// One accepted TLS connection, as tonic's server wants it.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

/// The serving certificate, issued by the CA and renewed at half-life.
struct ServingCert {
    ca: Arc<CertificateAuthority>,
    ips: Vec<IpAddr>,
    current: Mutex<Option<(Arc<CertifiedKey>, SystemTime)>>,
}

/// Accepts TLS connections on `listener` for a tonic server: a stream of handshaken
/// connections (each handshake on its own task, bounded in time).
pub fn incoming(
    listener: TcpListener,
    ca: Arc<CertificateAuthority>,
    bind: IpAddr,
) -> ReceiverStream<Result<TlsConnection, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if !bind.is_unspecified() && !ips.contains(&bind) {
        ips.push(bind);
    }
    let serving = Arc::new(ServingCert {
        ca: Arc::clone(&ca),
        ips,
        current: Mutex::new(None),
    });
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "secure xds accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let config = match server_config(&ca, Arc::clone(&serving)) {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!(error = %e, "secure xds: no TLS configuration");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConnection(tls))).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "secure xds handshake failed"),
                    Err(_) => tracing::info!(%peer, "secure xds handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A server config for one connection: the serving certificate and a client verifier over the
/// current trust bundle (so a root rotation applies to the next connection).
fn server_config(
    ca: &CertificateAuthority,
    serving: Arc<ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca.roots() {
        let der = super::authority::pem_der(&pem).ok_or("a root is not PEM")?;
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| format!("a root is unusable: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

impl ServingCert {
    fn issue(&self) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
        let (chain, key, not_before, not_after) = self.ca.issue_serving(&self.ips)?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.into()))
            .map_err(|e| e.to_string())?;
        let renew_at = not_before + not_after.duration_since(not_before).unwrap_or_default() / 2;
        Ok((Arc::new(CertifiedKey::new(chain, signing)), renew_at))
    }
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("ips", &self.ips)
            .finish()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = current
            .as_ref()
            .is_some_and(|(_, renew_at)| SystemTime::now() < *renew_at);
        if !fresh {
            match self.issue() {
                Ok(issued) => *current = Some(issued),
                Err(e) => {
                    tracing::error!(error = %e, "issue the control plane's serving certificate")
                }
            }
        }
        current.as_ref().map(|(key, _)| Arc::clone(key))
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        TlsPeer {
            certificates: self
                .0
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
