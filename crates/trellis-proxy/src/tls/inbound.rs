//! The inbound (server) side: a listener whose filter chains carry a `DownstreamTlsContext`
//! terminates TLS with the workload certificate, checks the client's certificate (SPIFFE, trust
//! domain) and records who the peer is. Each connection is classified by its first byte (a TLS
//! handshake record starts with 0x16), as Envoy's TLS inspector and `transport_protocol`
//! matching do; a connection no chain accepts is closed.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context,
};
use prost::{Message, Name};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use trellis_xds::mtls::{ISTIO_ALPN, RAW_BUFFER_SOCKET, SDS_DEFAULT, SDS_ROOT, TLS_SOCKET};

use super::cert;
use super::stream::Stream;
use super::verify::{IdentityResolver, PeerVerifier};
use crate::security::{IdentityStore, Peer, PeerCertificate};

/// How long a connection may take to send its first byte, and then to finish the handshake
/// (Envoy's `listener_filters_timeout` default).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(15);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's TLS termination (from its filter chains).
#[derive(Debug)]
pub struct InboundTls {
    /// A chain accepts plaintext connections too (PERMISSIVE).
    pub plaintext: bool,
    pub require_client_certificate: bool,
    pub alpn: Vec<Vec<u8>>,
    config: OnceLock<Arc<ServerConfig>>,
}

/// What the first bytes of a connection were.
pub enum Accepted {
    Tls(Stream, Peer),
    Plain(Stream),
}

impl InboundTls {
    /// `None` when no chain terminates TLS (a plaintext listener).
    pub fn from_chains(chains: &[FilterChain]) -> Result<Option<InboundTls>, (String, String)> {
        let mut tls: Option<InboundTls> = None;
        let mut plaintext = false;
        for (i, chain) in chains.iter().enumerate() {
            let at = |f: &str| format!("filter_chains[{i}].{f}");
            let protocol = chain
                .filter_chain_match
                .as_ref()
                .map_or("", |m| m.transport_protocol.as_str());
            let socket = chain.transport_socket.as_ref();
            match socket {
                Some(s) if s.name == TLS_SOCKET => {
                    if !matches!(protocol, "" | "tls") {
                        return Err((
                            at("filter_chain_match.transport_protocol"),
                            format!("{protocol:?} with a TLS transport socket"),
                        ));
                    }
                    let Some(transport_socket::ConfigType::TypedConfig(any)) = &s.config_type
                    else {
                        return Err((at("transport_socket.typed_config"), "missing".into()));
                    };
                    if any.type_url != DownstreamTlsContext::type_url() {
                        return Err((
                            at("transport_socket.typed_config"),
                            format!("{:?} is not a DownstreamTlsContext", any.type_url),
                        ));
                    }
                    let ctx = DownstreamTlsContext::decode(any.value.as_slice()).map_err(|e| {
                        (
                            at("transport_socket.typed_config"),
                            format!("does not decode: {e}"),
                        )
                    })?;
                    tls = Some(InboundTls::from_context(&ctx).map_err(|(f, why)| {
                        (at(&format!("transport_socket.typed_config.{f}")), why)
                    })?);
                }
                Some(s) if s.name != RAW_BUFFER_SOCKET => {
                    return Err((
                        at("transport_socket.name"),
                        format!("{:?} is not supported; expected {TLS_SOCKET}", s.name),
                    ));
                }
                _ => {
                    if !matches!(protocol, "" | "raw_buffer") {
                        return Err((
                            at("filter_chain_match.transport_protocol"),
                            format!("{protocol:?} without a TLS transport socket"),
                        ));
                    }
                    plaintext = true;
                }
            }
        }
        Ok(tls.map(|t| InboundTls { plaintext, ..t }))
    }

    fn from_context(ctx: &DownstreamTlsContext) -> Result<InboundTls, (String, String)> {
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        if !common.tls_certificates.is_empty()
            || common
                .tls_certificate_sds_secret_configs
                .iter()
                .any(|s| s.name != SDS_DEFAULT)
        {
            return Err((
                "common_tls_context.tls_certificate_sds_secret_configs".into(),
                format!(
                    "only the SDS secret {SDS_DEFAULT:?} (the workload certificate) is supported"
                ),
            ));
        }
        if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
            &common.validation_context_type
            && let Some(sds) = &v.validation_context_sds_secret_config
            && sds.name != SDS_ROOT
        {
            return Err((
                "common_tls_context.combined_validation_context".into(),
                format!("only the SDS secret {SDS_ROOT:?} (the trust bundle) is supported"),
            ));
        }
        let mut alpn: Vec<Vec<u8>> = common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        // Envoy carries on when ALPN does not overlap; rustls refuses. A sidecar client offers
        // Istio's ALPN, so accept it too (HTTP/1 vs HTTP/2 is detected from the bytes anyway).
        if !alpn.is_empty() {
            alpn.extend(ISTIO_ALPN.iter().map(|p| p.as_bytes().to_vec()));
        }
        Ok(InboundTls {
            plaintext: false,
            require_client_certificate: ctx.require_client_certificate.is_some_and(|b| b.value),
            alpn,
            config: OnceLock::new(),
        })
    }

    fn config(&self, store: &Arc<IdentityStore>) -> Option<Arc<ServerConfig>> {
        if let Some(c) = self.config.get() {
            return Some(Arc::clone(c));
        }
        let builder = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| tracing::error!(error = %e, "TLS server config"))
            .ok()?;
        let verifier = PeerVerifier::new(Arc::clone(store), self.require_client_certificate);
        let mut config = builder
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(IdentityResolver::new(Arc::clone(store))));
        config.alpn_protocols = self.alpn.clone();
        Some(Arc::clone(self.config.get_or_init(|| Arc::new(config))))
    }

    /// Classify `tcp` and, for TLS, complete the handshake. `None`: close the connection (no
    /// chain for it, a silent client, or a failed handshake — logged).
    pub async fn accept(&self, store: &Arc<IdentityStore>, tcp: TcpStream) -> Option<Accepted> {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(DETECT_TIMEOUT, tcp.peek(&mut first)).await;
        let is_tls = match peeked {
            Ok(Ok(1)) => first[0] == 0x16,
            _ => return None,
        };
        if !is_tls {
            return self
                .plaintext
                .then_some(Accepted::Plain(Stream::Plain(tcp)));
        }
        let remote = tcp.peer_addr().ok();
        let acceptor = TlsAcceptor::from(self.config(store)?);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(remote = ?remote, error = %e, "inbound TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(remote = ?remote, "inbound TLS handshake timed out");
                return None;
            }
        };
        let peer = peer_of(tls.get_ref().1, store);
        Some(Accepted::Tls(Stream::Server(Box::new(tls)), peer))
    }
}

/// Who the client is, from its verified certificate.
fn peer_of(conn: &rustls::ServerConnection, store: &IdentityStore) -> Peer {
    let sni = conn.server_name().map(Arc::from);
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let Some(leaf) = leaf else {
        return Peer {
            sni,
            ..Peer::default()
        };
    };
    let info = cert::read(leaf).unwrap_or_default();
    let principal = info.spiffe.as_deref().map(cert::principal).map(Arc::from);
    let namespace = info
        .spiffe
        .as_deref()
        .and_then(cert::namespace)
        .map(Arc::from);
    Peer {
        mtls: true,
        principal,
        namespace,
        sni,
        certificate: Some(Arc::new(PeerCertificate {
            hash: cert::sha256_hex(leaf),
            subject: info.subject,
            uri: info.spiffe.or_else(|| info.uris.first().cloned()),
            dns: info.dns,
            local_uri: store.identity().map(|i| i.spiffe_id.clone()),
        })),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
    use envoy_types::util::pack_any;
    use trellis_xds::mtls::{InboundMode, capture_listener, inbound_tls_context};

    use super::*;

    fn chains(mode: InboundMode) -> Vec<FilterChain> {
        let rc = Default::default();
        capture_listener("127.0.0.5", 9080, mode, &rc).filter_chains
    }

    #[test]
    fn modes_map_to_plaintext_and_tls_acceptance() {
        let permissive = InboundTls::from_chains(&chains(InboundMode::Permissive));
        let permissive = permissive.expect("valid").expect("tls");
        assert!(permissive.plaintext && permissive.require_client_certificate);
        let strict = InboundTls::from_chains(&chains(InboundMode::Strict));
        assert!(!strict.expect("valid").expect("tls").plaintext);
        let disable = InboundTls::from_chains(&chains(InboundMode::Disable));
        assert!(
            disable.expect("valid").is_none(),
            "no TLS chain: a plaintext listener"
        );
    }

    #[test]
    fn an_unknown_sds_secret_is_rejected_with_its_path() {
        let mut ctx = inbound_tls_context();
        if let Some(c) = ctx.common_tls_context.as_mut() {
            c.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
                name: "kubernetes://my-secret".into(),
                ..Default::default()
            }];
        }
        let mut chains = chains(InboundMode::Strict);
        chains[0].transport_socket = Some(TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
        });
        let (field, why) = InboundTls::from_chains(&chains).expect_err("rejected");
        assert_eq!(
            field,
            "filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs"
        );
        assert!(why.contains("\"default\""), "{why}");
    }
}
