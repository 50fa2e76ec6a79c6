//! `x-forwarded-client-cert` as Envoy's HCM handles it (`forward_client_cert_details`,
//! `set_current_client_cert_details`): sanitize (the default: drop what the client sent),
//! forward, append or set `By=<our URI>;Hash=<sha256>;Subject="<subject>";URI=<peer URI>;DNS=…`
//! for a client that presented a verified certificate.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::security::{Peer, PeerCertificate};

pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forward {
    #[default]
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// An HCM's XFCC policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XfccPolicy {
    pub forward: Forward,
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

impl XfccPolicy {
    pub fn from_hcm(h: &HttpConnectionManager) -> XfccPolicy {
        let forward = match ForwardClientCertDetails::try_from(h.forward_client_cert_details) {
            Ok(ForwardClientCertDetails::ForwardOnly) => Forward::ForwardOnly,
            Ok(ForwardClientCertDetails::AppendForward) => Forward::AppendForward,
            Ok(ForwardClientCertDetails::SanitizeSet) => Forward::SanitizeSet,
            Ok(ForwardClientCertDetails::AlwaysForwardOnly) => Forward::AlwaysForwardOnly,
            _ => Forward::Sanitize,
        };
        let set = h.set_current_client_cert_details.as_ref();
        XfccPolicy {
            forward,
            subject: set.is_some_and(|s| s.subject.is_some_and(|b| b.value)),
            uri: set.is_some_and(|s| s.uri),
            dns: set.is_some_and(|s| s.dns),
        }
    }

    /// Rewrite `headers` for a request that arrived from `peer`.
    pub fn apply(&self, peer: &Peer, headers: &mut HeaderMap) {
        let cert = peer.certificate.as_deref().filter(|_| peer.mtls);
        match (self.forward, cert) {
            (Forward::AlwaysForwardOnly, _) | (Forward::ForwardOnly, Some(_)) => {}
            (Forward::AppendForward, Some(c)) => {
                let mine = self.element(c);
                let value = match headers.get(&XFCC).and_then(|v| v.to_str().ok()) {
                    Some(prev) if !prev.is_empty() => format!("{prev},{mine}"),
                    _ => mine,
                };
                set(headers, value);
            }
            (Forward::SanitizeSet, Some(c)) => set(headers, self.element(c)),
            _ => {
                headers.remove(&XFCC);
            }
        }
    }

    /// One XFCC element, keys in Envoy's order.
    fn element(&self, c: &PeerCertificate) -> String {
        let mut parts = Vec::new();
        if let Some(by) = &c.local_uri {
            parts.push(format!("By={by}"));
        }
        parts.push(format!("Hash={}", c.hash));
        if self.subject {
            parts.push(format!("Subject=\"{}\"", c.subject.replace('"', "\\\"")));
        }
        if self.uri {
            parts.push(format!("URI={}", c.uri.as_deref().unwrap_or("")));
        }
        if self.dns {
            parts.extend(c.dns.iter().map(|d| format!("DNS={d}")));
        }
        parts.join(";")
    }
}

fn set(headers: &mut HeaderMap, value: String) {
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(XFCC, v);
        }
        Err(_) => {
            headers.remove(&XFCC);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn mtls_peer() -> Peer {
        Peer {
            mtls: true,
            certificate: Some(Arc::new(PeerCertificate {
                hash: "ab12".into(),
                subject: String::new(),
                uri: Some("spiffe://cluster.local/ns/foo/sa/sleep".into()),
                dns: vec![],
                local_uri: Some("spiffe://cluster.local/ns/bar/sa/httpbin".into()),
            })),
            ..Peer::default()
        }
    }

    fn policy(forward: Forward) -> XfccPolicy {
        XfccPolicy {
            forward,
            subject: true,
            uri: true,
            dns: true,
        }
    }

    #[test]
    fn sanitize_set_replaces_a_spoofed_header_with_the_verified_peer() {
        let mut h = HeaderMap::new();
        h.insert(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/y"),
        );
        policy(Forward::SanitizeSet).apply(&mtls_peer(), &mut h);
        assert_eq!(
            h[&XFCC],
            "By=spiffe://cluster.local/ns/bar/sa/httpbin;Hash=ab12;Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/sleep"
        );
        let mut h = HeaderMap::new();
        h.insert(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/y"),
        );
        policy(Forward::SanitizeSet).apply(&Peer::default(), &mut h);
        assert!(h.get(&XFCC).is_none());
    }

    #[test]
    fn append_forward_keeps_the_previous_hops() {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("Hash=00"));
        policy(Forward::AppendForward).apply(&mtls_peer(), &mut h);
        assert!(h[&XFCC].to_str().unwrap().starts_with("Hash=00,By="));
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("Hash=00"));
        XfccPolicy::default().apply(&mtls_peer(), &mut h);
        assert!(h.get(&XFCC).is_none(), "the default sanitizes");
    }
}
