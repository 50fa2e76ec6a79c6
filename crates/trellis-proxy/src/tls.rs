//! Mutual TLS between proxies: the workload's identity from files (`identity_dir`), reading
//! certificates (`cert`), SPIFFE-aware certificate resolution and verification against the
//! `IdentityStore` (`verify`), the inbound server side (`inbound`), the upstream client side
//! (`upstream`), one stream type for both (`stream`) and the `x-forwarded-client-cert` header
//! (`xfcc`), and gateway termination with per-chain certificates that rotate live
//! (`gateway`). Crypto is rustls with the ring provider only.
//!
//! Owns TLS and identity checks; which listener or cluster uses TLS is decided by xDS (`runtime`).

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub mod cert;
pub mod gateway;
pub mod identity_dir;
pub mod inbound;
pub mod stream;
pub mod upstream;
pub mod verify;
pub mod xfcc;

/// Errors of identity loading and TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring crypto provider, shared by every TLS config of the process.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}
