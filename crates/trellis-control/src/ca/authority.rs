//! The signing side of the CA: which key signs, which chain goes with it, which roots are
//! trusted. Two sources: a self-signed root the control plane creates in its CA directory, or
//! an operator's intermediate plugged in from Istio's `cacerts` layout (read-only to us).
//!
//! Files of the self-signed mode (in the CA directory): `root-cert.pem` and `root-key.pem` (the
//! signing root, key mode 0600), `roots.pem` (every trusted root, the bundle), and during a
//! rotation `next-root-cert.pem` / `next-root-key.pem` (trusted, not yet signing).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::{CaError, files};

/// Lifetime of a root the control plane creates (Istio's self-signed default: 10 years).
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What signs workload certificates right now; replaced whole on rotation.
pub(super) struct Signer {
    pub issuer: Issuer<'static, KeyPair>,
    /// PEM certificates between the leaf and the root: the signing certificate first when it is
    /// an intermediate; empty when the root signs.
    pub intermediates: Vec<String>,
    /// Every trusted root, one PEM block each (the signing chain's root among them).
    pub roots: Vec<String>,
    /// The signing chain's root (PEM).
    pub root: String,
    /// Where the material came from (for `/api/v1/ca`).
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    SelfSigned { dir: PathBuf, rotating: bool },
    Plugged { dir: PathBuf },
}

/// Which step of a root rotation to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotatePhase {
    /// Create a new root and trust it next to the current one; signing stays with the current.
    Add,
    /// Sign with the new root (both stay trusted).
    Activate,
    /// Trust only the signing root.
    Retire,
}

impl Signer {
    /// The self-signed root in `dir`, created (with `roots.pem`) at first start.
    pub fn self_signed(dir: &Path, trust_domain: &str) -> Result<Signer, CaError> {
        let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        if files::read_optional(&key_path)?.is_none() {
            let (cert, key) = new_root(trust_domain)?;
            files::write_private(&key_path, key.as_bytes())?;
            files::write_public(&cert_path, &cert)?;
            files::write_public(&dir.join("roots.pem"), &cert)?;
        }
        let key = load_key(&key_path)?;
        let root = files::read_text(&cert_path)?;
        let root = first_cert(&cert_path, &root)?;
        let roots_path = dir.join("roots.pem");
        let roots = match files::read_optional(&roots_path)? {
            Some(bytes) => files::split_pem_certs(&roots_path, &String::from_utf8_lossy(&bytes))?,
            None => vec![root.clone()],
        };
        let issuer = Issuer::from_ca_cert_pem(&root, key)
            .map_err(|e| CaError::file(&cert_path, format!("not a CA certificate: {e}")))?;
        let rotating = dir.join("next-root-key.pem").exists();
        Ok(Signer {
            issuer,
            intermediates: Vec::new(),
            roots: with(roots, &root),
            root,
            source: Source::SelfSigned {
                dir: dir.to_owned(),
                rotating,
            },
        })
    }

    /// An operator's CA from Istio's `cacerts` files in `dir`: `ca-cert.pem` and `ca-key.pem`
    /// sign, `cert-chain.pem` leads from `ca-cert.pem` to the root, `root-cert.pem` holds the
    /// trusted root(s).
    pub fn plugged(dir: &Path) -> Result<Signer, CaError> {
        let cert_path = dir.join("ca-cert.pem");
        let ca_cert = first_cert(&cert_path, &files::read_text(&cert_path)?)?;
        let key = load_key(&dir.join("ca-key.pem"))?;
        let roots_path = dir.join("root-cert.pem");
        let roots = files::split_pem_certs(&roots_path, &files::read_text(&roots_path)?)?;
        let chain_path = dir.join("cert-chain.pem");
        let mut intermediates = match files::read_optional(&chain_path)? {
            Some(bytes) => files::split_pem_certs(&chain_path, &String::from_utf8_lossy(&bytes))?,
            None => Vec::new(),
        };
        // The chain may or may not repeat ca-cert.pem first and the root last (both are seen).
        intermediates.retain(|c| !roots.contains(c) && *c != ca_cert);
        intermediates.insert(0, ca_cert.clone());
        check_key_matches(&cert_path, &ca_cert, &key)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key)
            .map_err(|e| CaError::file(&cert_path, format!("not a CA certificate: {e}")))?;
        let root = roots[0].clone();
        Ok(Signer {
            issuer,
            intermediates,
            roots,
            root,
            source: Source::Plugged {
                dir: dir.to_owned(),
            },
        })
    }
}

/// Takes one step of a root rotation in `dir` (self-signed mode only); the caller reloads.
pub(super) fn rotate(dir: &Path, trust_domain: &str, phase: RotatePhase) -> Result<(), CaError> {
    let next_cert = dir.join("next-root-cert.pem");
    let next_key = dir.join("next-root-key.pem");
    let roots_path = dir.join("roots.pem");
    let roots = files::split_pem_certs(&roots_path, &files::read_text(&roots_path)?)?;
    match phase {
        RotatePhase::Add => {
            if next_key.exists() {
                return Err(CaError::Rotate(
                    "a new root is already trusted and waiting; run `trellis ca rotate --activate`"
                        .into(),
                ));
            }
            let (cert, key) = new_root(trust_domain)?;
            // Trust first, then keep the key: a crash in between leaves a harmless extra root.
            files::write_public(&roots_path, &with(roots, &cert).concat())?;
            files::write_private(&next_key, key.as_bytes())?;
            files::write_public(&next_cert, &cert)?;
        }
        RotatePhase::Activate => {
            if !next_key.exists() {
                return Err(CaError::Rotate(
                    "no new root is waiting; run `trellis ca rotate` first".into(),
                ));
            }
            let cert = first_cert(&next_cert, &files::read_text(&next_cert)?)?;
            files::write_public(&roots_path, &with(roots, &cert).concat())?;
            std::fs::rename(&next_key, dir.join("root-key.pem"))
                .map_err(|e| CaError::file(&next_key, format!("rename: {e}")))?;
            std::fs::rename(&next_cert, dir.join("root-cert.pem"))
                .map_err(|e| CaError::file(&next_cert, format!("rename: {e}")))?;
        }
        RotatePhase::Retire => {
            if next_key.exists() {
                return Err(CaError::Rotate(
                    "a new root is waiting; activate it first (`trellis ca rotate --activate`)"
                        .into(),
                ));
            }
            let cert_path = dir.join("root-cert.pem");
            let current = first_cert(&cert_path, &files::read_text(&cert_path)?)?;
            files::write_public(&roots_path, &current)?;
        }
    }
    Ok(())
}

/// A new self-signed root: ECDSA P-256, `O=<trust domain>`, 10 years. Returns (cert, key) PEM.
fn new_root(trust_domain: &str) -> Result<(String, String), CaError> {
    let crypto = |what: &str, e: rcgen::Error| CaError::Crypto(format!("{what}: {e}"));
    let key = KeyPair::generate().map_err(|e| crypto("generate the root key", e))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, "trellis root CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = super::to_offset(now - Duration::from_secs(60));
    params.not_after = super::to_offset(now + ROOT_TTL);
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .map_err(|e| crypto("sign the root", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 16 random bytes with the top bit clear (a positive serial, as RFC 5280 wants).
pub(super) fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Crypto("no randomness for a serial number".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn load_key(path: &Path) -> Result<KeyPair, CaError> {
    let text = files::read_text(path)?;
    KeyPair::from_pem(&text).map_err(|e| CaError::file(path, format!("not a PEM private key: {e}")))
}

fn first_cert(path: &Path, text: &str) -> Result<String, CaError> {
    Ok(files::split_pem_certs(path, text)?.remove(0))
}

/// `roots` with `cert` appended unless already there.
fn with(mut roots: Vec<String>, cert: &str) -> Vec<String> {
    if !roots.iter().any(|r| r == cert) {
        roots.push(cert.to_owned());
    }
    roots
}

/// The key must be the certificate's (else every certificate signed would fail to verify).
fn check_key_matches(path: &Path, cert_pem: &str, key: &KeyPair) -> Result<(), CaError> {
    use rcgen::PublicKeyData as _;
    let der = pem_der(cert_pem).ok_or_else(|| CaError::file(path, "bad PEM"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::file(path, format!("not a certificate: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(CaError::file(
            path,
            "does not match ca-key.pem (the public keys differ)",
        ));
    }
    Ok(())
}

/// The DER bytes of one PEM block.
pub(super) fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}
