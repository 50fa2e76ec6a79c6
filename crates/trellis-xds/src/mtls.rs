//! Mutual TLS between sidecars, shaped as Istio emits it for Envoy (auto mTLS):
//! - endpoints of workloads with a sidecar (label `security.istio.io/tlsMode: istio`) carry
//!   `filter_metadata["envoy.transport_socket_match"] = {tlsMode: istio}`;
//! - outbound clusters with such endpoints get `transport_socket_matches`: `tlsMode-istio`
//!   (an `UpstreamTlsContext` with the SDS secrets `default` and `ROOTCA`, SNI
//!   `outbound_.<port>_._.<host>`, ALPN `istio-peer-exchange`, `istio`) and `tlsMode-disabled`
//!   (plaintext);
//! - a sidecar whose bind address is its own workload address (not the app's) captures inbound
//!   traffic by binding each target port of its services: listener `inbound_0.0.0.0_<port>` with
//!   a TLS filter chain (`transport_protocol: tls`, `DownstreamTlsContext` requiring a client
//!   certificate, XFCC `SANITIZE_SET`) and, unless PeerAuthentication says STRICT, a plaintext
//!   chain (`raw_buffer`).
//!
//! Owns these shapes only; which services a sidecar serves is `sidecar.rs`, PeerAuthentication
//! modes are `peer_authentication.rs`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::TransportSocketMatch};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::core::v3::{
    Metadata, TrafficDirection, TransportSocket, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, Struct};
use envoy_types::util::pack_any;
use trellis_config::{ClientTlsMode, ClientTlsSettings, DestinationRule, Subset};

use crate::cluster::inbound_name;
use crate::cluster::string_struct;
use crate::listener::{HCM_FILTER, HcmSpec, ads, http_connection_manager, socket_address};
use crate::route::{default_route, route_config, virtual_host};
use crate::{Context, Listener, RouteConfiguration};

pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// SDS secret names of the workload certificate and the trust bundle (Istio's).
pub const SDS_DEFAULT: &str = "default";
pub const SDS_ROOT: &str = "ROOTCA";
/// ALPN a sidecar offers to another sidecar.
pub const ISTIO_ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];
/// ALPN an inbound HTTP TLS chain offers.
pub const INBOUND_HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// How one captured inbound port accepts connections (PeerAuthentication's mode, resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMode {
    /// mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
    /// Plaintext only.
    Disable,
}

/// `filter_metadata["envoy.transport_socket_match"] = {tlsMode: istio}` for an endpoint whose
/// workload has a sidecar.
pub fn mark_endpoint(labels: &BTreeMap<String, String>, metadata: &mut Metadata) {
    if labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio") {
        metadata.filter_metadata.insert(
            TRANSPORT_SOCKET_MATCH.to_string(),
            string_struct(&[("tlsMode", "istio")]),
        );
    }
}

/// The DestinationRule `tls` for cluster `port`/`subset`, layered as the rest of the traffic
/// policy: top level, replaced by its matching `portLevelSettings`, then the subset's, replaced
/// by the subset's matching `portLevelSettings`.
pub fn client_tls<'a>(
    dr: Option<&'a DestinationRule>,
    subset: Option<&'a Subset>,
    port: u32,
) -> Option<&'a ClientTlsSettings> {
    let mut tls = None;
    let layers = [
        dr.and_then(|d| d.traffic_policy.as_ref()),
        subset.and_then(|s| s.traffic_policy.as_ref()),
    ];
    for layer in layers.into_iter().flatten() {
        if layer.tls.is_some() {
            tls = layer.tls.as_ref();
        }
        let port_level = layer
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == port));
        if let Some(p) = port_level {
            tls = p.tls.as_ref();
        }
    }
    tls
}

/// TLS toward an outbound cluster: the DestinationRule's `tls` when it sets a mode, else auto
/// mTLS (Istio's two transport socket matches, when any endpoint is marked `tlsMode: istio`),
/// unless the service's namespace or the mesh has PeerAuthentication DISABLE
/// (`mtls_disabled`, Istio's best-effort inference).
pub fn apply_client_tls(
    cluster: &mut Cluster,
    assignment: Option<&ClusterLoadAssignment>,
    host: &str,
    port: u32,
    tls: Option<&ClientTlsSettings>,
    mtls_disabled: bool,
) {
    if let Some(t) = tls
        && let Some(mode) = t.mode
    {
        cluster.transport_socket = match mode {
            ClientTlsMode::Disable => None,
            ClientTlsMode::IstioMutual => {
                let mut ctx = istio_mutual(host, port);
                if !t.sni.is_empty() {
                    ctx.sni = t.sni.clone();
                }
                if let Some(common) = ctx.common_tls_context.as_mut()
                    && let Some(
                        common_tls_context::ValidationContextType::CombinedValidationContext(v),
                    ) = common.validation_context_type.as_mut()
                {
                    v.default_validation_context = Some(san_matchers(&t.subject_alt_names));
                }
                Some(tls_socket(&ctx))
            }
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                let mut ctx = file_context(t, mode);
                // Istio's auto SNI names the host the client asked for; a cluster is one host.
                if ctx.sni.is_empty() && !host.starts_with('*') {
                    ctx.sni = host.to_string();
                }
                Some(tls_socket(&ctx))
            }
        };
        return;
    }
    if !mtls_disabled {
        apply_auto_mtls(cluster, assignment, host, port);
    }
}

/// SIMPLE / MUTUAL with files: `caCertificates` as the trusted CA (none: the server is not
/// verified, as Envoy without a validation context), `subjectAltNames`, and for MUTUAL the
/// client certificate and key. `credentialName` (SDS from a Kubernetes secret) is for gateways
/// and not read here.
fn file_context(t: &ClientTlsSettings, mode: ClientTlsMode) -> UpstreamTlsContext {
    let file = |f: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(f.to_string())),
        ..Default::default()
    };
    let mut validation = san_matchers(&t.subject_alt_names);
    if !t.ca_certificates.is_empty() {
        validation.trusted_ca = Some(file(&t.ca_certificates));
    }
    let has_validation = validation != CertificateValidationContext::default();
    let tls_certificates = if mode == ClientTlsMode::Mutual
        && !t.client_certificate.is_empty()
        && !t.private_key.is_empty()
    {
        vec![TlsCertificate {
            certificate_chain: Some(file(&t.client_certificate)),
            private_key: Some(file(&t.private_key)),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates,
            validation_context_type: has_validation.then_some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            ..Default::default()
        }),
        sni: t.sni.clone(),
        ..Default::default()
    }
}

/// `match_typed_subject_alt_names`: each name exact, as a URI SAN when it looks like one
/// (`spiffe://…`), else a DNS SAN.
fn san_matchers(names: &[String]) -> CertificateValidationContext {
    CertificateValidationContext {
        match_typed_subject_alt_names: names
            .iter()
            .map(|n| SubjectAltNameMatcher {
                san_type: if n.contains("://") {
                    subject_alt_name_matcher::SanType::Uri as i32
                } else {
                    subject_alt_name_matcher::SanType::Dns as i32
                },
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(n.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Auto mTLS on an outbound cluster: when any endpoint is marked `tlsMode: istio`, add Istio's
/// two transport socket matches.
fn apply_auto_mtls(
    cluster: &mut Cluster,
    assignment: Option<&ClusterLoadAssignment>,
    host: &str,
    port: u32,
) {
    let assignment = assignment.or(cluster.load_assignment.as_ref());
    let marked = assignment.is_some_and(|a| {
        a.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
            e.metadata
                .as_ref()
                .is_some_and(|m| m.filter_metadata.contains_key(TRANSPORT_SOCKET_MATCH))
        })
    });
    if !marked {
        return;
    }
    cluster.transport_socket_matches = vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(string_struct(&[("tlsMode", "istio")])),
            transport_socket: Some(tls_socket(&istio_mutual(host, port))),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer_socket()),
        },
    ];
}

/// Istio's `ISTIO_MUTUAL` client context toward `host:port`.
pub fn istio_mutual(host: &str, port: u32) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(common_context(
            ISTIO_ALPN.iter().map(|s| s.to_string()).collect(),
        )),
        sni: format!("outbound_.{port}_._.{host}"),
        ..Default::default()
    }
}

/// The workload certificate (`default`) and the roots (`ROOTCA`), both over SDS.
fn common_context(alpn: Vec<String>) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(SDS_DEFAULT)],
        alpn_protocols: alpn,
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext::default()),
                    validation_context_sds_secret_config: Some(sds(SDS_ROOT)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

pub fn tls_socket(ctx: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            ctx.clone(),
        ))),
    }
}

fn raw_buffer_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            RawBuffer::default(),
        ))),
    }
}

/// The inbound server context: the workload certificate, a required client certificate
/// checked against `ROOTCA`.
pub fn inbound_tls_context() -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(common_context(
            INBOUND_HTTP_ALPN.iter().map(|s| s.to_string()).collect(),
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// One captured inbound HTTP port: listener `inbound_0.0.0.0_<port>` on `bind:<port>` whose
/// chains (by `mode`) serve the inbound route config `routes` over mTLS and/or plaintext.
pub fn capture_listener(
    bind: &str,
    port: u32,
    mode: InboundMode,
    routes: &RouteConfiguration,
) -> Listener {
    let hcm = |tls: bool| {
        let mut h: HttpConnectionManager = http_connection_manager(HcmSpec {
            stat_prefix: format!("inbound_0.0.0.0_{port}"),
            routes: crate::listener::Routes::Inline(Box::new(routes.clone())),
            use_remote_address: true,
        });
        // Clients may not choose what the app believes about them: any XFCC they send is
        // replaced, and only a verified peer certificate sets one.
        h.forward_client_cert_details =
            http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32;
        if tls {
            h.set_current_client_cert_details =
                Some(http_connection_manager::SetCurrentClientCertDetails {
                    subject: Some(BoolValue { value: true }),
                    dns: true,
                    uri: true,
                    ..Default::default()
                });
        }
        Filter {
            name: HCM_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(h))),
        }
    };
    let mut chains = Vec::new();
    if mode != InboundMode::Disable {
        chains.push(FilterChain {
            name: format!("inbound_tls_{port}"),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters: vec![hcm(true)],
            transport_socket: Some(TransportSocket {
                name: TLS_SOCKET.into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                    inbound_tls_context(),
                ))),
            }),
            ..Default::default()
        });
    }
    if mode != InboundMode::Strict {
        chains.push(FilterChain {
            name: format!("inbound_plaintext_{port}"),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            }),
            filters: vec![hcm(false)],
            ..Default::default()
        });
    }
    Listener {
        name: format!("inbound_0.0.0.0_{port}"),
        address: Some(socket_address(bind, port)),
        filter_chains: chains,
        listener_filters: vec![ListenerFilter {
            name: TLS_INSPECTOR.into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// A sidecar's capture listeners, one per inbound HTTP target port (when it captures at all):
/// every request goes to `inbound|<port>||`.
pub(crate) fn sidecar_capture(ctx: &Context<'_>, target_ports: &[u32]) -> Vec<Listener> {
    let proxy = ctx.proxy;
    if !captures_inbound(&proxy.bind_address, &proxy.app_address) {
        return Vec::new();
    }
    target_ports
        .iter()
        .map(|&port| {
            let cluster = inbound_name(port);
            let routes = route_config(
                &cluster,
                vec![virtual_host(
                    &cluster,
                    vec!["*".into()],
                    vec![default_route(cluster.clone())],
                )],
            );
            let mode = crate::peer_authentication::inbound_mode(ctx, port);
            capture_listener(&proxy.bind_address, port, mode, &routes)
        })
        .collect()
}

/// Whether a sidecar captures inbound traffic by binding its workload address: only when that
/// address is a specific IP that is not the app's (else the app's own ports would collide).
pub fn captures_inbound(bind: &str, app: &str) -> bool {
    bind.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_unspecified() && bind != app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_has_only_the_tls_chain_and_disable_only_plaintext() {
        let rc = RouteConfiguration::default();
        let strict = capture_listener("127.0.0.5", 9080, InboundMode::Strict, &rc);
        let protocols = |l: &Listener| -> Vec<String> {
            l.filter_chains
                .iter()
                .map(|c| {
                    c.filter_chain_match
                        .clone()
                        .unwrap_or_default()
                        .transport_protocol
                })
                .collect()
        };
        assert_eq!(protocols(&strict), vec!["tls"]);
        let disable = capture_listener("127.0.0.5", 9080, InboundMode::Disable, &rc);
        assert_eq!(protocols(&disable), vec!["raw_buffer"]);
        let permissive = capture_listener("127.0.0.5", 9080, InboundMode::Permissive, &rc);
        assert_eq!(protocols(&permissive), vec!["tls", "raw_buffer"]);
    }

    #[test]
    fn mutual_uses_the_files_and_simple_presents_no_certificate() {
        let t = ClientTlsSettings {
            mode: Some(ClientTlsMode::Mutual),
            client_certificate: "/c.pem".into(),
            private_key: "/k.pem".into(),
            ca_certificates: "/ca.pem".into(),
            sni: "api.example.com".into(),
            ..Default::default()
        };
        let mutual = file_context(&t, ClientTlsMode::Mutual);
        let common = mutual.common_tls_context.clone().unwrap_or_default();
        assert_eq!(common.tls_certificates.len(), 1);
        assert_eq!(mutual.sni, "api.example.com");
        let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
            &common.validation_context_type
        else {
            panic!("no validation context: {common:?}");
        };
        assert_eq!(
            v.trusted_ca.as_ref().and_then(|d| d.specifier.clone()),
            Some(data_source::Specifier::Filename("/ca.pem".into()))
        );
        let simple = file_context(&t, ClientTlsMode::Simple);
        assert!(
            simple
                .common_tls_context
                .unwrap_or_default()
                .tls_certificates
                .is_empty()
        );
    }

    #[test]
    fn capture_needs_a_workload_address_of_its_own() {
        assert!(captures_inbound("127.0.0.5", "127.0.0.1"));
        assert!(!captures_inbound("127.0.0.1", "127.0.0.1"));
        assert!(!captures_inbound("0.0.0.0", "127.0.0.1"));
    }
}
