use super::*;
use rcgen::KeyPair;
use x509_parser::extensions::GeneralName;

fn ca(dir: &Path, ttl: Duration) -> Arc<CertificateAuthority> {
    CertificateAuthority::open(CaConfig {
        dir: dir.to_owned(),
        workload_ttl: ttl,
        max_workload_ttl: Duration::from_secs(48 * 3600),
        ..CaConfig::default()
    })
    .unwrap()
}

fn csr(sans: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI((*s).to_owned().try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn leaf_of(chain: &[String]) -> Vec<u8> {
    authority::pem_der(&chain[0]).unwrap()
}

#[test]
fn issues_the_tokens_identity_with_the_default_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path(), Duration::from_secs(3600));
    let token = ca
        .create_token("shop", "reviews", Duration::from_secs(60))
        .unwrap();
    let chain = ca.create_certificate(Some(&token), &csr(&[]), 0).unwrap();
    assert_eq!(chain.len(), 2, "leaf + root");
    assert_eq!(pem_blocks(&chain[1]), ca.roots());
    let der = leaf_of(&chain);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other}"),
        })
        .collect();
    assert_eq!(sans, ["spiffe://cluster.local/ns/shop/sa/reviews"]);
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600);
    // The root verifies the leaf.
    let root_der = authority::pem_der(&ca.roots()[0]).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    assert!(verifies(&cert, &root));
}

#[test]
fn refuses_other_identities_bad_tokens_and_long_lifetimes_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path(), Duration::from_secs(3600));
    let token = ca
        .create_token("shop", "reviews", Duration::from_secs(60))
        .unwrap();
    let other = csr(&["spiffe://cluster.local/ns/shop/sa/admin"]);
    assert!(matches!(
        ca.create_certificate(Some(&token), &other, 0),
        Err(SignError::PermissionDenied(_))
    ));
    assert!(matches!(
        ca.create_certificate(None, &csr(&[]), 0),
        Err(SignError::Unauthenticated(_))
    ));
    assert!(matches!(
        ca.create_certificate(Some("x.y.z"), &csr(&[]), 0),
        Err(SignError::Unauthenticated(_))
    ));
    assert!(matches!(
        ca.create_certificate(Some(&token), "not a csr", 0),
        Err(SignError::InvalidArgument(_))
    ));
    let asked = csr(&["spiffe://cluster.local/ns/shop/sa/reviews"]);
    let chain = ca
        .create_certificate(Some(&token), &asked, 365 * 24 * 3600)
        .unwrap();
    let der = leaf_of(&chain);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 48 * 3600, "capped at the maximum");
    let mut text = String::new();
    ca.encode_metrics(&mut text);
    assert!(
        text.contains("trellis_ca_certificates_issued_total 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_ca_certificates_refused_total{reason=\"permission_denied\"} 1"),
        "{text}"
    );
}

#[test]
fn the_root_persists_with_a_private_key_and_rotates_with_overlap() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let first = ca(dir.path(), Duration::from_secs(3600)).roots();
    let mode = std::fs::metadata(dir.path().join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ca = ca(dir.path(), Duration::from_secs(3600));
    assert_eq!(ca.roots(), first, "a restart keeps the root");
    let token = ca.create_token("a", "b", Duration::from_secs(60)).unwrap();
    let signing_root = |ca: &CertificateAuthority| {
        let chain = ca.create_certificate(Some(&token), &csr(&[]), 0).unwrap();
        let der = leaf_of(&chain);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        let roots: Vec<String> = pem_blocks(chain.last().unwrap());
        roots
            .into_iter()
            .find(|r| {
                let der = authority::pem_der(r).unwrap();
                let (_, root) = x509_parser::parse_x509_certificate(&der).unwrap();
                verifies(&leaf, &root)
            })
            .unwrap()
    };
    assert_eq!(signing_root(&ca), first[0]);
    ca.rotate(RotatePhase::Add).unwrap();
    let both = ca.roots();
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], first[0]);
    assert_eq!(
        signing_root(&ca),
        first[0],
        "still signing with the old root"
    );
    assert!(
        ca.rotate(RotatePhase::Add).is_err(),
        "one rotation at a time"
    );
    ca.rotate(RotatePhase::Activate).unwrap();
    assert_eq!(ca.roots(), both);
    assert_eq!(signing_root(&ca), both[1], "now signing with the new root");
    ca.rotate(RotatePhase::Retire).unwrap();
    assert_eq!(ca.roots(), vec![both[1].clone()]);
}

/// Whether `issuer`'s key signed `cert` (ECDSA P-256 / SHA-256).
fn verifies(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        issuer.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(
        cert.tbs_certificate.as_ref(),
        cert.signature_value.data.as_ref(),
    )
    .is_ok()
}
