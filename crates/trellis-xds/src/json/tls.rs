//! Rendering of the TLS fields `mtls.rs` sets: transport sockets (`DownstreamTlsContext`,
//! `UpstreamTlsContext`, `RawBuffer`), a cluster's `transport_socket_matches` and the HCM's
//! client-certificate forwarding.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context, tls_parameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde_json::{Value, json};

use super::{Obj, config_source, pb_struct};

/// A `TransportSocket`'s JSON.
pub fn transport_socket(t: &TransportSocket) -> Value {
    let typed = t
        .config_type
        .as_ref()
        .map(|transport_socket::ConfigType::TypedConfig(any)| super::any_value(any));
    Obj::default()
        .str("name", &t.name)
        .opt("typedConfig", typed)
        .done()
}

pub fn transport_socket_match(m: &TransportSocketMatch) -> Value {
    Obj::default()
        .str("name", &m.name)
        .opt("match", m.r#match.as_ref().map(pb_struct))
        .opt(
            "transportSocket",
            m.transport_socket.as_ref().map(transport_socket),
        )
        .done()
}

/// The TLS messages we pack into `Any`s, or `None` for another type.
pub fn any_value(any: &Any) -> Option<Option<Value>> {
    let bytes = any.value.as_slice();
    Some(if any.type_url == DownstreamTlsContext::type_url() {
        DownstreamTlsContext::decode(bytes).ok().map(|d| {
            Obj::typed(&DownstreamTlsContext::type_url())
                .opt(
                    "commonTlsContext",
                    d.common_tls_context.as_ref().map(common),
                )
                .opt(
                    "requireClientCertificate",
                    d.require_client_certificate.map(|b| json!(b.value)),
                )
                .done()
        })
    } else if any.type_url == UpstreamTlsContext::type_url() {
        UpstreamTlsContext::decode(bytes).ok().map(|u| {
            Obj::typed(&UpstreamTlsContext::type_url())
                .opt(
                    "commonTlsContext",
                    u.common_tls_context.as_ref().map(common),
                )
                .str("sni", &u.sni)
                .done()
        })
    } else if any.type_url == RawBuffer::type_url() {
        RawBuffer::decode(bytes)
            .ok()
            .map(|_| Obj::typed(&RawBuffer::type_url()).done())
    } else {
        return None;
    })
}

fn common(c: &CommonTlsContext) -> Value {
    let validation = match &c.validation_context_type {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) => Some((
            "combinedValidationContext",
            Obj::default()
                .opt(
                    "defaultValidationContext",
                    v.default_validation_context
                        .as_ref()
                        .map(validation_context),
                )
                .opt(
                    "validationContextSdsSecretConfig",
                    v.validation_context_sds_secret_config.as_ref().map(sds),
                )
                .done(),
        )),
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
            Some(("validationContext", validation_context(v)))
        }
        _ => None,
    };
    let o = Obj::default()
        .opt("tlsParams", c.tls_params.as_ref().map(tls_params))
        .list(
            "tlsCertificates",
            c.tls_certificates.iter().map(tls_certificate).collect(),
        )
        .list(
            "tlsCertificateSdsSecretConfigs",
            c.tls_certificate_sds_secret_configs
                .iter()
                .map(sds)
                .collect(),
        )
        .list(
            "alpnProtocols",
            c.alpn_protocols.iter().map(|p| json!(p)).collect(),
        );
    match validation {
        Some((k, v)) => o.opt(k, Some(v)).done(),
        None => o.done(),
    }
}

fn validation_context(v: &CertificateValidationContext) -> Value {
    Obj::default()
        .opt("trustedCa", v.trusted_ca.as_ref().map(data))
        .list(
            "matchTypedSubjectAltNames",
            v.match_typed_subject_alt_names
                .iter()
                .map(|m| {
                    let exact = match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
                        Some(string_matcher::MatchPattern::Exact(e)) => json!({ "exact": e }),
                        _ => json!({}),
                    };
                    json!({ "sanType": m.san_type().as_str_name(), "matcher": exact })
                })
                .collect(),
        )
        .done()
}

fn tls_params(p: &TlsParameters) -> Value {
    let version = |v: i32| {
        tls_parameters::TlsProtocol::try_from(v)
            .ok()
            .filter(|v| *v != tls_parameters::TlsProtocol::TlsAuto)
            .map(|v| json!(v.as_str_name()))
    };
    Obj::default()
        .opt(
            "tlsMinimumProtocolVersion",
            version(p.tls_minimum_protocol_version),
        )
        .opt(
            "tlsMaximumProtocolVersion",
            version(p.tls_maximum_protocol_version),
        )
        .list(
            "cipherSuites",
            p.cipher_suites.iter().map(|c| json!(c)).collect(),
        )
        .done()
}

/// As Envoy's config dump: an inline private key is `[redacted]` (a file name is shown).
/// Versions hash this rendering; a new key always comes with a new certificate.
fn tls_certificate(t: &TlsCertificate) -> Value {
    let key = t.private_key.as_ref().map(|k| match &k.specifier {
        Some(data_source::Specifier::Filename(_)) => data(k),
        _ => json!({ "inlineString": REDACTED }),
    });
    Obj::default()
        .opt("certificateChain", t.certificate_chain.as_ref().map(data))
        .opt("privateKey", key)
        .done()
}

/// What an inline private key renders as.
pub const REDACTED: &str = "[redacted]";

fn data(d: &DataSource) -> Value {
    match &d.specifier {
        Some(data_source::Specifier::Filename(f)) => json!({ "filename": f }),
        Some(data_source::Specifier::InlineString(s)) => json!({ "inlineString": s }),
        Some(data_source::Specifier::InlineBytes(b)) => {
            json!({ "inlineBytes": trellis_config::base64_encode(b) })
        }
        _ => json!({}),
    }
}

fn sds(s: &SdsSecretConfig) -> Value {
    Obj::default()
        .str("name", &s.name)
        .opt("sdsConfig", s.sds_config.as_ref().map(config_source))
        .done()
}

/// `forwardClientCertDetails` and `setCurrentClientCertDetails` of an HCM.
pub fn client_cert_fields(h: &HttpConnectionManager) -> (Option<Value>, Option<Value>) {
    let forward =
        http_connection_manager::ForwardClientCertDetails::try_from(h.forward_client_cert_details)
            .ok()
            .filter(|f| *f != http_connection_manager::ForwardClientCertDetails::Sanitize)
            .map(|f| json!(f.as_str_name()));
    let set = h.set_current_client_cert_details.as_ref().map(|s| {
        Obj::default()
            .opt("subject", s.subject.map(|b| json!(b.value)))
            .flag("cert", s.cert)
            .flag("chain", s.chain)
            .flag("dns", s.dns)
            .flag("uri", s.uri)
            .done()
    });
    (forward, set)
}
