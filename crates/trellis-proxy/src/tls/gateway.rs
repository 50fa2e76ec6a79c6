//! Gateway TLS termination: a filter chain's `DownstreamTlsContext` with its own certificate
//! (inline PEM or files), TLS versions and TLS 1.2 cipher suites, ALPN, and for MUTUAL the
//! client CA. Each handshake takes the chain's current `ServerConfig` from a swappable slot:
//! files are re-checked (modification time and size) at most once a second, on the handshake
//! path, and a change builds a new config for the handshakes that follow, while connections
//! already open keep theirs. An inline certificate changes with the listener (a new runtime
//! snapshot; the socket is not rebound). A reload that fails keeps the previous certificate.
//!
//! Owns certificate loading and the handshake of a connection whose ClientHello was already
//! read (`Replayed`); chain selection is `runtime/sni.rs`, serving `listeners/gateway.rs`.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context, tls_parameters::TlsProtocol,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::cert;
use super::inbound::HANDSHAKE_TIMEOUT;
use super::stream::Stream;
use crate::security::{Peer, PeerCertificate};

/// How often a handshake may look at the certificate files.
const FILE_CHECK_MS: u64 = 1000;

/// A terminating chain's TLS settings and its current server config.
pub struct ServerTls {
    settings: Settings,
    current: ArcSwap<Built>,
    /// Milliseconds since `epoch` of the last file check.
    checked_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("source", &self.settings.source)
            .field("alpn", &self.settings.alpn)
            .field(
                "require_client_certificate",
                &self.settings.require_client_certificate,
            )
            .finish_non_exhaustive()
    }
}

/// Where the PEM comes from: each of certificate chain, key, CA.
#[derive(Debug, Clone, PartialEq)]
enum Pem {
    Inline(Vec<u8>),
    File(PathBuf),
}

/// What a config is built from.
struct Settings {
    source: Source,
    versions: Vec<&'static SupportedProtocolVersion>,
    provider: Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
    require_client_certificate: bool,
}

#[derive(Debug)]
struct Source {
    chain: Pem,
    key: Pem,
    ca: Option<Pem>,
}

/// A built config and the file stamps it was built from.
struct Built {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// A stream whose first bytes (the ClientHello, already read to choose a chain) are served
/// again before the socket's.
pub struct Replayed {
    head: Vec<u8>,
    pos: usize,
    pub inner: TcpStream,
}

impl ServerTls {
    /// From a chain's context; loads the certificate now, so a bad one fails the config.
    pub fn compile(ctx: &DownstreamTlsContext) -> Result<ServerTls, (String, String)> {
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let [cert] = common.tls_certificates.as_slice() else {
            return Err((
                "common_tls_context.tls_certificates".into(),
                "exactly one certificate is supported".into(),
            ));
        };
        let pem = |d: Option<&DataSource>, field: &str| match d.and_then(|d| d.specifier.as_ref()) {
            Some(data_source::Specifier::Filename(f)) => Ok(Pem::File(PathBuf::from(f))),
            Some(data_source::Specifier::InlineString(s)) => Ok(Pem::Inline(s.as_bytes().to_vec())),
            Some(data_source::Specifier::InlineBytes(b)) => Ok(Pem::Inline(b.clone())),
            _ => Err((
                field.to_string(),
                "missing or unsupported data source".into(),
            )),
        };
        let chain = pem(
            cert.certificate_chain.as_ref(),
            "common_tls_context.tls_certificates[0].certificate_chain",
        )?;
        let key = pem(
            cert.private_key.as_ref(),
            "common_tls_context.tls_certificates[0].private_key",
        )?;
        let ca = match &common.validation_context_type {
            None => None,
            Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
                match &v.trusted_ca {
                    Some(ca) => Some(pem(
                        Some(ca),
                        "common_tls_context.validation_context.trusted_ca",
                    )?),
                    None => None,
                }
            }
            Some(_) => {
                return Err((
                    "common_tls_context.validation_context_type".into(),
                    "only an inline validation_context is supported".into(),
                ));
            }
        };
        let require_client_certificate = ctx.require_client_certificate.is_some_and(|b| b.value);
        if require_client_certificate && ca.is_none() {
            return Err((
                "require_client_certificate".into(),
                "needs a validation_context.trusted_ca to verify clients with".into(),
            ));
        }
        let params = common.tls_params.unwrap_or_default();
        let versions = versions(
            params.tls_minimum_protocol_version,
            params.tls_maximum_protocol_version,
        )
        .map_err(|why| ("common_tls_context.tls_params".to_string(), why))?;
        let provider = Arc::new(provider(&params.cipher_suites));
        let settings = Settings {
            source: Source { chain, key, ca },
            versions,
            provider,
            alpn: common
                .alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            require_client_certificate,
        };
        let built = settings
            .build()
            .map_err(|why| ("common_tls_context.tls_certificates[0]".to_string(), why))?;
        Ok(ServerTls {
            settings,
            current: ArcSwap::from_pointee(built),
            checked_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The config for a new handshake (rebuilt first when a certificate file changed).
    pub fn config(&self) -> Arc<ServerConfig> {
        if self.has_files() {
            let now = self.epoch.elapsed().as_millis() as u64;
            let last = self.checked_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= FILE_CHECK_MS
                && self
                    .checked_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.reload_if_changed();
            }
        }
        Arc::clone(&self.current.load().config)
    }

    fn has_files(&self) -> bool {
        let s = &self.settings.source;
        [Some(&s.chain), Some(&s.key), s.ca.as_ref()]
            .into_iter()
            .flatten()
            .any(|p| matches!(p, Pem::File(_)))
    }

    fn reload_if_changed(&self) {
        let settings = &self.settings;
        if settings.stamps() == self.current.load().stamps {
            return;
        }
        match settings.build() {
            Ok(built) => {
                tracing::info!(source = ?settings.source.chain, "gateway certificate reloaded");
                self.current.store(Arc::new(built));
            }
            Err(why) => {
                tracing::warn!(source = ?settings.source.chain, error = %why, "gateway certificate not reloaded; keeping the previous one");
            }
        }
    }
    /// Completes the handshake of a connection whose ClientHello (`head`) was read already.
    /// `None`: failed or timed out (logged), close the connection.
    pub async fn accept(&self, tcp: TcpStream, head: Vec<u8>) -> Option<(Stream, Peer)> {
        let remote = tcp.peer_addr().ok();
        let io = Replayed {
            head,
            pos: 0,
            inner: tcp,
        };
        let acceptor = TlsAcceptor::from(self.config());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(remote = ?remote, error = %e, "gateway TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(remote = ?remote, "gateway TLS handshake timed out");
                return None;
            }
        };
        let peer = peer_of(tls.get_ref().1);
        Some((Stream::Gateway(Box::new(tls)), peer))
    }
}

impl Settings {
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let s = &self.source;
        [Some(&s.chain), Some(&s.key), s.ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| match p {
                Pem::File(path) => std::fs::metadata(path)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len()))),
                Pem::Inline(_) => None,
            })
            .collect()
    }

    fn build(&self) -> Result<Built, String> {
        let stamps = self.stamps();
        let read = |p: &Pem| match p {
            Pem::Inline(b) => Ok(b.clone()),
            Pem::File(path) => {
                std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
            }
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&self.source.chain)?)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err("certificate chain: no PEM certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&self.source.key)?)
            .map_err(|e| format!("private key: {e}"))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&self.versions)
            .map_err(|e| format!("protocol versions: {e}"))?;
        let builder = match &self.source.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                    let c = c.map_err(|e| format!("CA certificates: {e}"))?;
                    roots.add(c).map_err(|e| format!("CA certificates: {e}"))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&self.provider),
                );
                let verifier = if self.require_client_certificate {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| format!("CA certificates: {e}"))?,
                )
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key: {e}"))?;
        config.alpn_protocols = self.alpn.clone();
        Ok(Built {
            config: Arc::new(config),
            stamps,
        })
    }
}

/// rustls speaks TLS 1.2 and 1.3: an older minimum means 1.2.
fn versions(min: i32, max: i32) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |v: i32, auto: u8| match TlsProtocol::try_from(v).unwrap_or(TlsProtocol::TlsAuto) {
        TlsProtocol::TlsAuto => auto,
        TlsProtocol::TlSv10 | TlsProtocol::TlSv11 | TlsProtocol::TlSv12 => 2,
        TlsProtocol::TlSv13 => 3,
    };
    let (min, max) = (rank(min, 2), rank(max, 3));
    let out: Vec<_> = [(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(r, _)| (min..=max).contains(r))
        .map(|(_, v)| v)
        .collect();
    if out.is_empty() {
        return Err("the minimum protocol version is above the maximum".into());
    }
    Ok(out)
}

/// The ring provider with the TLS 1.2 suites named (OpenSSL names, `[a|b]` groups as Envoy
/// writes them); TLS 1.3 suites are always on, as in Envoy. Names rustls does not implement
/// are left out; no list keeps every suite.
fn provider(names: &[String]) -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    let base = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return base;
    }
    let known: [(&str, SupportedCipherSuite); 6] = [
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    let mut suites: Vec<SupportedCipherSuite> = base
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    for name in names
        .iter()
        .flat_map(|n| n.trim_matches(|c| c == '[' || c == ']').split('|'))
    {
        match known
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.trim()))
        {
            Some((_, s)) if !suites.contains(s) => suites.push(*s),
            Some(_) => {}
            None => tracing::debug!(cipher = name, "cipher suite not available; left out"),
        }
    }
    CryptoProvider {
        cipher_suites: suites,
        ..base
    }
}

/// The client, from its verified certificate (MUTUAL) and its SNI.
fn peer_of(conn: &rustls::ServerConnection) -> Peer {
    let sni = conn.server_name().map(Arc::from);
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Peer {
            sni,
            ..Peer::default()
        };
    };
    let info = cert::read(leaf).unwrap_or_default();
    Peer {
        mtls: true,
        principal: info.spiffe.as_deref().map(cert::principal).map(Arc::from),
        namespace: info
            .spiffe
            .as_deref()
            .and_then(cert::namespace)
            .map(Arc::from),
        sni,
        certificate: Some(Arc::new(PeerCertificate {
            hash: cert::sha256_hex(leaf),
            subject: info.subject,
            uri: info.spiffe.or_else(|| info.uris.first().cloned()),
            dns: info.dns,
            local_uri: None,
        })),
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = (this.head.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_clamp_to_what_rustls_speaks() {
        let v = |min, max| versions(min as i32, max as i32).map(|v| v.len());
        assert_eq!(v(TlsProtocol::TlsAuto, TlsProtocol::TlsAuto), Ok(2));
        assert_eq!(v(TlsProtocol::TlSv10, TlsProtocol::TlSv12), Ok(1));
        assert_eq!(v(TlsProtocol::TlSv13, TlsProtocol::TlsAuto), Ok(1));
        assert!(v(TlsProtocol::TlSv13, TlsProtocol::TlSv12).is_err());
    }

    #[test]
    fn cipher_names_pick_tls12_suites_and_keep_tls13() {
        let p = provider(&[
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]".into(),
            "AES128-SHA".into(),
        ]);
        let tls12 = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .count();
        assert_eq!(tls12, 2);
        assert!(
            p.cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS13)
        );
    }
}
