//! The file identity source (`trellis-proxy --identity-dir DIR`), in Istio's layout:
//! `cert-chain.pem` (leaf first), `key.pem` (PKCS#8, PKCS#1 or SEC1) and `root-cert.pem` (one or
//! more roots). The trust domain accepted from peers is the one of our own SPIFFE ID. The
//! directory is re-read when its content changes; a broken update is logged and the previous
//! identity keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsError, cert};
use crate::security::{Identity, IdentityStore, TrustBundle};

pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const KEY: &str = "key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
/// How often the directory is checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// Read the identity and the trust bundle from `dir`.
pub fn load(dir: &Path) -> Result<(Identity, TrustBundle), TlsError> {
    let (chain_pem, key_pem, roots_pem) = read_all(dir)?;
    parse(dir, &chain_pem, &key_pem, &roots_pem)
}

/// The three files' bytes: chain, key, roots.
type Files = (Vec<u8>, Vec<u8>, Vec<u8>);

fn read_all(dir: &Path) -> Result<Files, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            reason: format!("{e}; --identity-dir needs {CERT_CHAIN}, {KEY} and {ROOT_CERT}"),
        })
    };
    Ok((read(CERT_CHAIN)?, read(KEY)?, read(ROOT_CERT)?))
}

fn parse(
    dir: &Path,
    chain_pem: &[u8],
    key_pem: &[u8],
    roots_pem: &[u8],
) -> Result<(Identity, TrustBundle), TlsError> {
    let file_err = |name: &str, reason: String| TlsError::File {
        path: dir.join(name).display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(CERT_CHAIN, format!("not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_err(CERT_CHAIN, "holds no certificate".into()))?;
    let info = cert::read(leaf).map_err(|e| file_err(CERT_CHAIN, e.to_string()))?;
    let spiffe_id = info
        .spiffe
        .ok_or_else(|| file_err(CERT_CHAIN, "the leaf has no spiffe:// URI SAN".into()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| file_err(KEY, format!("not a PEM private key: {e}")))?;
    super::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| file_err(KEY, format!("unusable key: {e}")))?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(roots_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(ROOT_CERT, format!("not PEM certificates: {e}")))?;
    if roots.is_empty() {
        return Err(file_err(ROOT_CERT, "holds no certificate".into()));
    }
    let trust_domain = cert::trust_domain(&spiffe_id)
        .unwrap_or_default()
        .to_string();
    Ok((
        Identity {
            chain,
            key,
            spiffe_id,
            not_before: info.not_before,
            not_after: info.not_after,
        },
        TrustBundle {
            roots,
            trust_domains: vec![trust_domain],
        },
    ))
}

/// Load `dir` into `store` now (an error stops start-up), then re-read it whenever its content
/// changes.
pub fn install(dir: PathBuf, store: Arc<IdentityStore>) -> Result<(), TlsError> {
    let (identity, bundle) = load(&dir)?;
    tracing::info!(spiffe_id = %identity.spiffe_id, dir = %dir.display(), "identity loaded");
    store.set_identity(identity);
    store.set_bundle(bundle);
    let mut last = read_all(&dir).ok();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let Ok(now) = read_all(&dir) else { continue };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match parse(&dir, &now.0, &now.1, &now.2) {
                Ok((identity, bundle)) => {
                    tracing::info!(spiffe_id = %identity.spiffe_id, "identity reloaded");
                    store.set_identity(identity);
                    store.set_bundle(bundle);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "identity not reloaded; keeping the previous one")
                }
            }
            last = Some(now);
        }
    });
    Ok(())
}
