//! Reading X.509 certificates (x509-parser): the SPIFFE URI SAN, DNS SANs, subject, validity,
//! and the SHA-256 hash Envoy puts in `x-forwarded-client-cert`. Never verifies anything.

use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::TlsError;

/// What a certificate says about its holder.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The first `spiffe://` URI SAN.
    pub spiffe: Option<String>,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// RFC 4514 rendering (empty for Istio's workload certificates).
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Default for CertInfo {
    fn default() -> Self {
        CertInfo {
            spiffe: None,
            uris: Vec::new(),
            dns: Vec::new(),
            subject: String::new(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        }
    }
}

pub fn read(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| TlsError::Certificate(format!("does not parse: {e}")))?;
    let mut info = CertInfo {
        spiffe: None,
        uris: Vec::new(),
        dns: Vec::new(),
        subject: cert.subject().to_string(),
        not_before: to_system(cert.validity().not_before.timestamp()),
        not_after: to_system(cert.validity().not_after.timestamp()),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => info.uris.push((*u).to_string()),
                GeneralName::DNSName(d) => info.dns.push((*d).to_string()),
                _ => {}
            }
        }
    }
    info.spiffe = info
        .uris
        .iter()
        .find(|u| u.starts_with("spiffe://"))
        .cloned();
    Ok(info)
}

fn to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `td/ns/N/sa/S` from `spiffe://td/ns/N/sa/S` (Istio's principal form).
pub fn principal(spiffe: &str) -> &str {
    spiffe.strip_prefix("spiffe://").unwrap_or(spiffe)
}

/// The trust domain of a SPIFFE ID.
pub fn trust_domain(spiffe: &str) -> Option<&str> {
    let rest = spiffe.strip_prefix("spiffe://")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|td| !td.is_empty())
}

/// The namespace of `spiffe://td/ns/<ns>/sa/<sa>`.
pub fn namespace(spiffe: &str) -> Option<&str> {
    let mut parts = principal(spiffe).split('/').skip(1);
    (parts.next()? == "ns").then(|| parts.next()).flatten()
}

/// Lower-case hex SHA-256 of a DER certificate (XFCC `Hash`).
pub fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_parts() {
        let id = "spiffe://cluster.local/ns/foo/sa/sleep";
        assert_eq!(principal(id), "cluster.local/ns/foo/sa/sleep");
        assert_eq!(trust_domain(id), Some("cluster.local"));
        assert_eq!(namespace(id), Some("foo"));
        assert_eq!(trust_domain("https://x"), None);
        assert_eq!(namespace("spiffe://td/other/x"), None);
    }
}
