//! JSON Web Key Sets: parsing keys into the forms `ring` verifies with, and the cache of a
//! remote JWKS (fetched over plain HTTP on first use, reused for `cache_duration`, fetched again
//! after that; a token with an unknown `kid` triggers an early refetch at most once per
//! [`KID_REFETCH_INTERVAL`]). A failed fetch fails closed: the caller refuses the token. One
//! [`RemoteJwks`] per (URL, timeout, cache duration) is shared by every snapshot that names it,
//! so a config reload keeps the cache. Verification itself is `verify.rs`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::time::Instant;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// An unknown `kid` refetches the JWKS at most this often.
pub const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// The usable keys of one JWKS (keys of unknown or unsupported types are skipped).
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one.
    pub alg: Option<String>,
    pub key: PublicKey,
}

#[derive(Debug)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point `04 || x || y`.
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("the JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("the JWKS has no `keys` array")]
    NoKeys,
    #[error("the JWKS has no usable key (RSA, EC P-256/P-384 or Ed25519)")]
    NoValidKeys,
    #[error("fetch {uri}: {reason}")]
    Fetch { uri: String, reason: String },
    #[error("{0:?} is not an http:// or https:// URL with a host")]
    Uri(String),
}

/// A JWKS fetched over HTTP and cached.
#[derive(Debug)]
pub struct RemoteJwks {
    pub uri: http::Uri,
    pub timeout: Duration,
    pub cache_duration: Duration,
    state: Mutex<State>,
    /// One fetch at a time; a request waiting for it then reads the fresh state.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    /// Last fetch attempt (success or not), for the unknown-`kid` rate limit.
    attempted_at: Option<Instant>,
}

type SharedKey = (String, Duration, Duration);

static SHARED: LazyLock<Mutex<HashMap<SharedKey, Weak<RemoteJwks>>>> =
    LazyLock::new(Default::default);

impl KeySet {
    pub fn parse(text: &[u8]) -> Result<KeySet, JwksError> {
        let doc: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| JwksError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or(JwksError::NoKeys)?;
        let keys: Vec<Jwk> = keys.iter().filter_map(Jwk::parse).collect();
        if keys.is_empty() {
            return Err(JwksError::NoValidKeys);
        }
        Ok(KeySet { keys })
    }
}

impl Jwk {
    /// A public key we can verify with, or `None` (private-only, symmetric, unknown curve, …).
    fn parse(v: &serde_json::Value) -> Option<Jwk> {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let b = |k: &str| s(k).and_then(|x| URL_SAFE_NO_PAD.decode(x.trim_end_matches('=')).ok());
        if s("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let key = match (s("kty")?, s("crv")) {
            ("RSA", _) => {
                let n = b("n")?;
                let e = b("e")?;
                PublicKey::Rsa {
                    n: strip_zeros(n),
                    e: strip_zeros(e),
                }
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let size = if crv == "P-256" { 32 } else { 48 };
                let (x, y) = (b("x")?, b("y")?);
                if x.len() != size || y.len() != size {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if crv == "P-256" {
                    PublicKey::EcP256(point)
                } else {
                    PublicKey::EcP384(point)
                }
            }
            ("OKP", Some("Ed25519")) => {
                let x = b("x")?;
                if x.len() != 32 {
                    return None;
                }
                PublicKey::Ed25519(x)
            }
            _ => return None,
        };
        Some(Jwk {
            kid: s("kid").map(str::to_owned),
            alg: s("alg").map(str::to_owned),
            key,
        })
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros.min(v.len().saturating_sub(1)));
    v
}

impl RemoteJwks {
    /// The shared cache for this URL and timings (created on first use).
    pub fn shared(
        uri: &str,
        timeout: Duration,
        cache_duration: Duration,
    ) -> Result<Arc<RemoteJwks>, JwksError> {
        let parsed: http::Uri = uri.parse().map_err(|_| JwksError::Uri(uri.into()))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(JwksError::Uri(uri.into()));
        }
        let key = (uri.to_string(), timeout, cache_duration);
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        shared.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = shared.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let jwks = Arc::new(RemoteJwks {
            uri: parsed,
            timeout,
            cache_duration,
            state: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        });
        shared.insert(key, Arc::downgrade(&jwks));
        Ok(jwks)
    }

    /// The cached keys while fresh, else freshly fetched ones.
    pub async fn keys(&self) -> Result<Arc<KeySet>, JwksError> {
        if let Some(keys) = self.fresh() {
            return Ok(keys);
        }
        let _one = self.fetching.lock().await;
        if let Some(keys) = self.fresh() {
            return Ok(keys);
        }
        self.fetch().await
    }

    /// Fetches again for a token whose `kid` the cached keys lack, unless a fetch was tried
    /// within [`KID_REFETCH_INTERVAL`]; `None` when rate-limited.
    pub async fn refetch_for_unknown_kid(&self, had: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let _one = self.fetching.lock().await;
        {
            let state = self.lock();
            if let Some(keys) = &state.keys
                && !Arc::ptr_eq(keys, had)
            {
                // Someone else refetched while we waited.
                return Some(Arc::clone(keys));
            }
            if state
                .attempted_at
                .is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL)
            {
                return None;
            }
        }
        self.fetch().await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self) -> Option<Arc<KeySet>> {
        let state = self.lock();
        let at = state.fetched_at?;
        (at.elapsed() < self.cache_duration)
            .then(|| state.keys.clone())
            .flatten()
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, JwksError> {
        self.lock().attempted_at = Some(Instant::now());
        let result = match tokio::time::timeout(self.timeout, get(&self.uri)).await {
            Ok(r) => r.and_then(|body| KeySet::parse(&body)),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)).map_err(|reason| {
                JwksError::Fetch {
                    uri: self.uri.to_string(),
                    reason,
                }
            }),
        };
        match result {
            Ok(keys) => {
                let keys = Arc::new(keys);
                let mut state = self.lock();
                state.keys = Some(Arc::clone(&keys));
                state.fetched_at = Some(Instant::now());
                Ok(keys)
            }
            Err(e) => {
                super::metrics::jwks_fetch_failed(&self.uri.to_string());
                tracing::warn!(uri = %self.uri, error = %e, "jwks fetch failed");
                // Keys still within their cache duration stay (a failed unknown-`kid` refetch
                // must not lose them); expired ones are never used (`fresh`), so a failed
                // refresh fails closed.
                Err(e)
            }
        }
    }
}

async fn get(uri: &http::Uri) -> Result<Bytes, JwksError> {
    let err = |reason: String| JwksError::Fetch {
        uri: uri.to_string(),
        reason,
    };
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| err(format!("connect: {e}")))?;
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| err(e.to_string()))?;
    let resp = if https {
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| err(format!("server name: {e}")))?;
        let config = tls_config().ok_or_else(|| err("tls: no client configuration".into()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| err(format!("tls: {e}")))?;
        send(TokioIo::new(tls), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
    .map_err(err)?;
    if !resp.status().is_success() {
        return Err(err(format!("status {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| err(format!("reading body: {e}")))?;
    Ok(body.to_bytes())
}

async fn send<T>(
    io: TokioIo<T>,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// Client TLS with the system's roots (`SSL_CERT_FILE`, else the usual bundle paths), built once.
fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: LazyLock<Option<Arc<rustls::ClientConfig>>> = LazyLock::new(|| {
        let mut roots = rustls::RootCertStore::empty();
        let env = std::env::var("SSL_CERT_FILE").ok();
        let paths = env.iter().map(String::as_str).chain([
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]);
        for path in paths {
            let Ok(certs) = CertificateDer::pem_file_iter(path) else {
                continue;
            };
            let (added, _) = roots.add_parsable_certificates(certs.filter_map(Result::ok));
            if added > 0 {
                break;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .inspect_err(|e| tracing::error!(error = %e, "jwks client tls configuration"))
            .ok()
    });
    CONFIG.clone()
}
