//! The upstream (client) side: an `UpstreamTlsContext` (a cluster's `transport_socket`, or the
//! one of its `transport_socket_matches` an endpoint's metadata selects) becomes a connector:
//! SNI, ALPN, the workload certificate (`default`) or files, and a verifier for the server
//! (`ROOTCA` with the SPIFFE trust domain check, or files with a host name check).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context,
};
use prost::{Message, Name};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use trellis_xds::mtls::{RAW_BUFFER_SOCKET, SDS_DEFAULT, SDS_ROOT, TLS_SOCKET};

use super::stream::Stream;
use super::verify::{IdentityResolver, Roots, UpstreamVerifier};
use crate::security::{IdentityStore, TrustBundle};

/// Where the client certificate and the roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// SDS `default` / `ROOTCA`: the workload identity and the mesh trust bundle.
    Mesh,
    /// Files (DestinationRule SIMPLE / MUTUAL): optional client certificate and key, optional CA
    /// (without one, the server certificate is not checked against any roots we hold).
    Files {
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    },
}

/// TLS toward one endpoint.
pub struct UpstreamTls {
    pub sni: String,
    pub alpn: Vec<String>,
    pub source: Source,
    /// `match_typed_subject_alt_names` URIs (exact).
    pub expected: Vec<String>,
    store: Arc<IdentityStore>,
    connector: OnceLock<TlsConnector>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("alpn", &self.alpn)
            .field("source", &self.source)
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, o: &UpstreamTls) -> bool {
        self.sni == o.sni
            && self.alpn == o.alpn
            && self.source == o.source
            && self.expected == o.expected
            && Arc::ptr_eq(&self.store, &o.store)
    }
}

impl UpstreamTls {
    /// A transport socket: `Ok(None)` for plaintext (raw buffer).
    pub fn from_socket(
        t: &TransportSocket,
        store: &Arc<IdentityStore>,
    ) -> Result<Option<Arc<UpstreamTls>>, (String, String)> {
        if t.name == RAW_BUFFER_SOCKET {
            return Ok(None);
        }
        if t.name != TLS_SOCKET {
            return Err((
                "name".into(),
                format!(
                    "{:?} is not supported; expected {TLS_SOCKET} or {RAW_BUFFER_SOCKET}",
                    t.name
                ),
            ));
        }
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &t.config_type else {
            return Err(("typed_config".into(), "missing".into()));
        };
        if any.type_url != UpstreamTlsContext::type_url() {
            return Err((
                "typed_config".into(),
                format!("{:?} is not an UpstreamTlsContext", any.type_url),
            ));
        }
        let ctx = UpstreamTlsContext::decode(any.value.as_slice())
            .map_err(|e| ("typed_config".into(), format!("does not decode: {e}")))?;
        let common = ctx.common_tls_context.unwrap_or_default();
        let file = |d: &Option<DataSource>| match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(data_source::Specifier::Filename(f)) => Ok(Some(PathBuf::from(f))),
            None => Ok(None),
            Some(_) => Err((
                "typed_config.common_tls_context".to_string(),
                "only filename data sources are supported".to_string(),
            )),
        };
        let sds_cert = common
            .tls_certificate_sds_secret_configs
            .first()
            .map(|s| s.name.as_str());
        let (mut expected, sds_root, ca) = match &common.validation_context_type {
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) => (
                v.default_validation_context
                    .as_ref()
                    .map(sans)
                    .unwrap_or_default(),
                v.validation_context_sds_secret_config
                    .as_ref()
                    .map(|s| s.name.clone()),
                None,
            ),
            Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
                (sans(v), None, file(&v.trusted_ca)?)
            }
            _ => (Vec::new(), None, None),
        };
        expected.sort();
        let source = match (sds_cert, sds_root.as_deref()) {
            (Some(SDS_DEFAULT), Some(SDS_ROOT) | None) if ca.is_none() => Source::Mesh,
            (None, None) => {
                let cert = common.tls_certificates.first();
                Source::Files {
                    cert: file(&cert.and_then(|c| c.certificate_chain.clone()))?,
                    key: file(&cert.and_then(|c| c.private_key.clone()))?,
                    ca,
                }
            }
            _ => {
                return Err((
                    "typed_config.common_tls_context".into(),
                    format!(
                        "SDS secrets other than {SDS_DEFAULT:?} and {SDS_ROOT:?} are not supported"
                    ),
                ));
            }
        };
        Ok(Some(Arc::new(UpstreamTls {
            sni: ctx.sni,
            alpn: common.alpn_protocols,
            source,
            expected,
            store: Arc::clone(store),
            connector: OnceLock::new(),
        })))
    }

    fn connector(&self) -> std::io::Result<TlsConnector> {
        if let Some(c) = self.connector.get() {
            return Ok(c.clone());
        }
        let config = self.build().map_err(std::io::Error::other)?;
        Ok(self
            .connector
            .get_or_init(|| TlsConnector::from(Arc::new(config)))
            .clone())
    }

    fn build(&self) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| e.to_string())?;
        let mut config = match &self.source {
            Source::Mesh => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UpstreamVerifier::new(
                    Roots::Mesh(Arc::clone(&self.store)),
                    self.expected.clone(),
                )))
                .with_client_cert_resolver(Arc::new(IdentityResolver::new(Arc::clone(
                    &self.store,
                )))),
            Source::Files { cert, key, ca } => {
                let roots = match ca {
                    Some(ca) => CertificateDer::pem_file_iter(ca)
                        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| format!("{}: {e}", ca.display()))?,
                    None => Vec::new(),
                };
                let b = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(UpstreamVerifier::new(
                        Roots::Fixed(Arc::new(TrustBundle {
                            roots,
                            trust_domains: Vec::new(),
                        })),
                        self.expected.clone(),
                    )));
                match (cert, key) {
                    (Some(cert), Some(key)) => {
                        let chain = CertificateDer::pem_file_iter(cert)
                            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                            .map_err(|e| format!("{}: {e}", cert.display()))?;
                        let key = PrivateKeyDer::from_pem_file(key)
                            .map_err(|e| format!("{}: {e}", key.display()))?;
                        b.with_client_auth_cert(chain, key)
                            .map_err(|e| e.to_string())?
                    }
                    _ => b.with_no_client_auth(),
                }
            }
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(config)
    }

    /// TLS over a connected `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let connector = self.connector()?;
        let name = match ServerName::try_from(self.sni.clone()) {
            Ok(n) if !self.sni.is_empty() => n,
            _ => ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
        };
        let tls = connector.connect(name, tcp).await?;
        Ok(Stream::Client(Box::new(tls)))
    }
}

fn sans(
    v: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext,
) -> Vec<String> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    v.match_typed_subject_alt_names
        .iter()
        .filter_map(|m| match m.matcher.as_ref()?.match_pattern.as_ref()? {
            MatchPattern::Exact(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// `(match fields, socket)` of one `transport_socket_matches` entry.
type SocketMatch = (Vec<(String, String)>, Option<Arc<UpstreamTls>>);

/// A cluster's `transport_socket_matches` and `transport_socket`: which TLS (if any) each
/// endpoint gets, chosen by its `filter_metadata["envoy.transport_socket_match"]`.
#[derive(Debug, Default)]
pub struct TransportSockets {
    /// `(match fields, socket)`, in order; an empty match matches every endpoint.
    matches: Vec<SocketMatch>,
    default: Option<Arc<UpstreamTls>>,
}

impl TransportSockets {
    pub fn compile(
        c: &envoy_types::pb::envoy::config::cluster::v3::Cluster,
        store: &Arc<IdentityStore>,
    ) -> Result<TransportSockets, (String, String)> {
        let default = match &c.transport_socket {
            Some(t) => UpstreamTls::from_socket(t, store)
                .map_err(|(f, why)| (format!("transport_socket.{f}"), why))?,
            None => None,
        };
        let mut matches = Vec::with_capacity(c.transport_socket_matches.len());
        for (i, m) in c.transport_socket_matches.iter().enumerate() {
            let fields = m
                .r#match
                .as_ref()
                .map(|s| {
                    s.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), string_of(v)))
                        .collect()
                })
                .unwrap_or_default();
            let socket = match &m.transport_socket {
                Some(t) => UpstreamTls::from_socket(t, store).map_err(|(f, why)| {
                    (
                        format!("transport_socket_matches[{i}].transport_socket.{f}"),
                        why,
                    )
                })?,
                None => None,
            };
            matches.push((fields, socket));
        }
        Ok(TransportSockets { matches, default })
    }

    /// The TLS toward an endpoint with this metadata (`None`: plaintext).
    pub fn for_endpoint(
        &self,
        metadata: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
    ) -> Option<Arc<UpstreamTls>> {
        let labels = metadata.and_then(|m| {
            m.filter_metadata
                .get(trellis_xds::mtls::TRANSPORT_SOCKET_MATCH)
        });
        for (fields, socket) in &self.matches {
            let all = fields.iter().all(|(k, v)| {
                labels
                    .and_then(|l| l.fields.get(k))
                    .is_some_and(|have| string_of(have) == *v)
            });
            if all {
                return socket.clone();
            }
        }
        self.default.clone()
    }
}

fn string_of(v: &envoy_types::pb::google::protobuf::Value) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use trellis_config::load_str;
    use trellis_xds::mtls::TRANSPORT_SOCKET_MATCH;

    use super::*;

    fn cluster() -> Cluster {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: default, labels: {app: a}}\nspec: {address: 10.0.0.1, labels: {app: a, security.istio.io/tlsMode: istio}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: default}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  workloadSelector: {labels: {app: a}}\n  resolution: STATIC\n";
        let loaded = load_str("a.yaml", yaml).expect("valid");
        let registry = trellis_config::Registry::from_snapshot(&loaded.snapshot);
        let proxy = trellis_xds::ProxyIdentity {
            role: trellis_xds::Role::Sidecar,
            ..Default::default()
        };
        let res = trellis_xds::compile(&loaded.snapshot, &registry, &proxy);
        res.clusters
            .into_iter()
            .find(|c| c.name == "outbound|80||a.example.com")
            .expect("cluster")
    }

    fn marked(tls_mode: &str) -> Metadata {
        Metadata {
            filter_metadata: [(
                TRANSPORT_SOCKET_MATCH.to_string(),
                tls_mode_struct(tls_mode),
            )]
            .into(),
            ..Default::default()
        }
    }

    fn tls_mode_struct(v: &str) -> envoy_types::pb::google::protobuf::Struct {
        use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
        Struct {
            fields: [(
                "tlsMode".to_string(),
                Value {
                    kind: Some(Kind::StringValue(v.into())),
                },
            )]
            .into(),
        }
    }

    #[test]
    fn endpoints_marked_istio_get_istio_mutual_and_others_plaintext() {
        let store = Arc::new(IdentityStore::default());
        let sockets = TransportSockets::compile(&cluster(), &store).expect("compiles");
        let tls = sockets.for_endpoint(Some(&marked("istio"))).expect("tls");
        assert_eq!(tls.sni, "outbound_.80_._.a.example.com");
        assert_eq!(tls.alpn, ["istio-peer-exchange", "istio"]);
        assert_eq!(tls.source, Source::Mesh);
        assert!(sockets.for_endpoint(Some(&marked("disabled"))).is_none());
        assert!(sockets.for_endpoint(None).is_none());
    }
}
