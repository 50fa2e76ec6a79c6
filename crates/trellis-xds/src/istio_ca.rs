//! Istio's certificate service (`istio.v1.auth.IstioCertificateService`, from Istio's
//! `security/proto/istioca.proto`), hand-written as prost messages: the control plane serves
//! it and the proxy calls it. Only the wire shapes live here; signing and the gRPC service are
//! the control plane's, the renewal loop the proxy's.

use envoy_types::pb::google::protobuf::Struct;

/// The gRPC path of `CreateCertificate`.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The service's full name (for gRPC reflection-free routing).
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";

/// A certificate signing request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds (the CA may shorten it).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional metadata (Istio uses it for impersonation; Trellis ignores it).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

/// The signed certificate chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, leaf first; the last entry is the trust bundle (one or more roots).
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn field_numbers_match_istios_proto() {
        let request = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 60,
            metadata: None,
        };
        // Field 1 (string, wire type 2) then field 3 (varint, wire type 0).
        assert_eq!(request.encode_to_vec(), vec![0x0a, 1, b'x', 0x18, 60]);
        let response = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(response.encode_to_vec(), vec![0x0a, 1, b'a', 0x0a, 1, b'b']);
    }
}
