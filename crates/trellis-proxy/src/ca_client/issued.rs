//! Turning the CA's answer (`cert_chain`: leaf first, the last entry one or more roots) into the
//! proxy's [`Identity`] and [`TrustBundle`], checking it on the way: the leaf must carry a
//! `spiffe://` URI SAN, hold the key we generated, and be currently valid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

use super::CaClientError;
use crate::security::{Identity, TrustBundle};

/// What was installed (for logs and `/certs`).
#[derive(Debug, Clone)]
pub struct Issued {
    pub spiffe_id: String,
    /// Hex, as `openssl x509 -serial` prints it (lowercase).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Parses a `cert_chain` answer for the key `pkcs8` (DER) whose public key is `public_key`.
pub fn parse_response(
    chain: &[String],
    pkcs8: Vec<u8>,
    public_key: &[u8],
) -> Result<(Issued, Identity, TrustBundle), CaClientError> {
    let bad = |m: String| CaClientError::BadResponse(m);
    if chain.len() < 2 {
        return Err(bad(format!(
            "{} certificate(s); expected the leaf and the root",
            chain.len()
        )));
    }
    let mut certs = Vec::new();
    for (i, pem) in chain[..chain.len() - 1].iter().enumerate() {
        let mut ders = pem_ders(pem);
        if ders.len() != 1 {
            return Err(bad(format!(
                "cert_chain[{i}] holds {} certificates, expected 1",
                ders.len()
            )));
        }
        certs.push(ders.remove(0));
    }
    let roots = pem_ders(&chain[chain.len() - 1]);
    if roots.is_empty() {
        return Err(bad(
            "the last cert_chain entry holds no root certificate".into()
        ));
    }
    let issued = read_leaf(&certs[0], public_key)?;
    let trust_domain = issued
        .spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let identity = Identity {
        chain: certs.into_iter().map(CertificateDer::from).collect(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
        spiffe_id: issued.spiffe_id.clone(),
        not_before: issued.not_before,
        not_after: issued.not_after,
    };
    let bundle = TrustBundle {
        roots: roots.into_iter().map(CertificateDer::from).collect(),
        trust_domains: vec![trust_domain],
    };
    Ok((issued, identity, bundle))
}

fn read_leaf(der: &[u8], public_key: &[u8]) -> Result<Issued, CaClientError> {
    let bad = |m: String| CaClientError::BadResponse(m);
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("the leaf does not parse: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(bad(
            "the leaf is not for the key this proxy generated".into()
        ));
    }
    let spiffe_id = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
                _ => None,
            })
        })
        .ok_or_else(|| bad("the leaf carries no spiffe:// URI SAN".into()))?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let (not_before, not_after) = (
        time(cert.validity().not_before.timestamp()),
        time(cert.validity().not_after.timestamp()),
    );
    if not_after <= SystemTime::now() {
        return Err(bad(format!("the leaf for {spiffe_id} has already expired")));
    }
    let serial = cert
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Issued {
        spiffe_id,
        serial,
        not_before,
        not_after,
    })
}

/// The DER of every CERTIFICATE block in `pem`.
fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A root and a leaf for `key` with `uri` as its SAN: (leaf PEM, root PEM).
    fn issue(key: &KeyPair, uri: &str) -> (String, String) {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.to_owned().try_into().unwrap())];
        let leaf = params.signed_by(key, &issuer).unwrap();
        (leaf.pem(), root.pem())
    }

    #[test]
    fn a_good_answer_becomes_identity_and_bundle() {
        let key = KeyPair::generate().unwrap();
        let (leaf, root) = issue(&key, "spiffe://example.org/ns/a/sa/b");
        let (issued, identity, bundle) = parse_response(
            &[leaf, format!("{root}{root}")],
            key.serialize_der(),
            key.public_key_raw(),
        )
        .unwrap();
        assert_eq!(issued.spiffe_id, "spiffe://example.org/ns/a/sa/b");
        assert_eq!(identity.chain.len(), 1);
        assert_eq!(bundle.roots.len(), 2, "every root of the last entry");
        assert_eq!(bundle.trust_domains, ["example.org"]);
    }

    #[test]
    fn answers_for_another_key_without_roots_or_spiffe_ids_are_refused() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let (leaf, root) = issue(&other, "spiffe://example.org/ns/a/sa/b");
        let err = |chain: &[String]| {
            parse_response(chain, key.serialize_der(), key.public_key_raw())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(&[leaf.clone(), root]).contains("not for the key"));
        assert!(err(std::slice::from_ref(&leaf)).contains("expected the leaf and the root"));
        let (mine, root) = issue(&key, "https://example.org/");
        assert!(err(&[mine.clone(), root]).contains("no spiffe:// URI SAN"));
        assert!(err(&[mine, "junk".into()]).contains("no root certificate"));
    }
}
