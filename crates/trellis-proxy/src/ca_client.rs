//! The proxy's certificate client: gets the workload's certificate from the control plane's CA
//! (Istio's `IstioCertificateService/CreateCertificate`) with a bootstrap token, and keeps it
//! fresh.
//!
//! The private key is generated here (ECDSA P-256), lives only in memory and never leaves the
//! process; the CSR asks for no names (the CA decides them from the token). Renewal happens at
//! half the lifetime minus a random jitter of up to a tenth; a failed renewal keeps the current
//! certificate and retries with backoff. A new certificate is swapped into the
//! [`IdentityStore`]: handshakes after the swap use it, established connections are untouched.
//! Owns the renewal loop and its metrics; must not build TLS configs (that is the consumers').

mod issued;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trellis_xds::istio_ca::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};

use crate::security::IdentityStore;
pub use issued::{Issued, parse_response};

/// First and largest delay between attempts while no certificate could be had.
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// How long one CreateCertificate call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the CA is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `host:port` of the control plane's CA (its xDS port).
    pub address: String,
    /// File holding the bootstrap token (re-read before every request that needs it, so it can
    /// be replaced; over TLS, renewals present the current certificate instead).
    pub token_file: PathBuf,
    /// Lifetime to ask for (0: the CA's default).
    pub requested_ttl: Duration,
    /// TLS to the control plane (its port 15012), verified with `--ca-root`; plaintext if none.
    pub tls: Option<tls::ControlPlaneTls>,
}

/// Certificate metrics of the proxy (`trellis_cert_*`).
#[derive(Debug, Clone, Default)]
pub struct CertMetrics {
    expiry: Gauge,
    renewals: Counter,
    failures: Counter,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("read the bootstrap token {path}: {message}")]
    Token { path: String, message: String },
    #[error("connect to the CA at {address}: {message}")]
    Connect { address: String, message: String },
    #[error("the CA refused the request ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the CA's answer is unusable: {0}")]
    BadResponse(String),
    #[error("generate the key or CSR: {0}")]
    Key(String),
}

/// The renewal loop of one proxy.
pub struct CaClient {
    config: CaClientConfig,
    store: Arc<IdentityStore>,
    metrics: CertMetrics,
}

impl CertMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> CertMetrics {
        let m = CertMetrics::default();
        registry.register(
            "trellis_cert_expiry_timestamp_seconds",
            "When the workload certificate in use expires (seconds since the epoch; 0 before the first)",
            m.expiry.clone(),
        );
        registry.register(
            "trellis_cert_renewals",
            "Workload certificates obtained from the CA (the first one included)",
            m.renewals.clone(),
        );
        registry.register(
            "trellis_cert_renewal_failures",
            "Attempts to obtain a workload certificate that failed (the current one kept serving)",
            m.failures.clone(),
        );
        m
    }
}

impl CaClient {
    pub fn new(
        config: CaClientConfig,
        store: Arc<IdentityStore>,
        metrics: CertMetrics,
    ) -> CaClient {
        CaClient {
            config,
            store,
            metrics,
        }
    }

    /// Obtains a certificate, then renews it for as long as the proxy runs.
    pub async fn run(self) {
        let mut failures = 0u32;
        loop {
            let wait = match self.renew().await {
                Ok(issued) => {
                    failures = 0;
                    let wait = renewal_delay(
                        issued.not_before,
                        issued.not_after,
                        SystemTime::now(),
                        fastrand::f64(),
                    );
                    tracing::info!(
                        spiffe_id = %issued.spiffe_id,
                        serial = %issued.serial,
                        renew_in_seconds = wait.as_secs(),
                        "workload certificate installed"
                    );
                    wait
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.failures.inc();
                    let wait = self.retry_delay(failures);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "workload certificate not renewed; keeping the current one");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: new key, CSR, call, install.
    async fn renew(&self) -> Result<Issued, CaClientError> {
        // Over TLS a current certificate proves who we are (mutual TLS); else the token does.
        let by_certificate = self.config.tls.is_some()
            && self
                .store
                .identity()
                .is_some_and(|i| i.not_after > SystemTime::now());
        let token = if by_certificate {
            None
        } else {
            let token = std::fs::read_to_string(&self.config.token_file).map_err(|e| {
                CaClientError::Token {
                    path: self.config.token_file.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            Some(token.trim().to_owned())
        };
        let key = rcgen::KeyPair::generate().map_err(|e| CaClientError::Key(e.to_string()))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| CaClientError::Key(e.to_string()))?;
        let chain = tokio::time::timeout(CALL_TIMEOUT, self.call(token.as_deref(), csr))
            .await
            .map_err(|_| CaClientError::Connect {
                address: self.config.address.clone(),
                message: format!("no answer within {CALL_TIMEOUT:?}"),
            })??;
        let (issued, identity, bundle) =
            parse_response(&chain, key.serialize_der(), key.public_key_raw())?;
        self.store.set_bundle(bundle);
        self.store.set_identity(identity);
        self.metrics.renewals.inc();
        let expiry = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics.expiry.set(expiry as i64);
        Ok(issued)
    }

    async fn call(&self, token: Option<&str>, csr: String) -> Result<Vec<String>, CaClientError> {
        let address = &self.config.address;
        let connect_error = |message: String| CaClientError::Connect {
            address: address.clone(),
            message,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = match &self.config.tls {
            Some(tls) => endpoint.connect_with_connector(tls.clone()).await,
            None => endpoint.connect().await,
        }
        .map_err(|e| connect_error(format!("{e}: {}", source_chain(&e))))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: self.config.requested_ttl.as_secs() as i64,
            metadata: None,
        });
        if let Some(token) = token {
            let bearer = format!("Bearer {token}")
                .parse()
                .map_err(|_| CaClientError::Token {
                    path: self.config.token_file.display().to_string(),
                    message: "not a valid header value".into(),
                })?;
            request.metadata_mut().insert("authorization", bearer);
        }
        let response: tonic::Response<IstioCertificateResponse> = grpc
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(|s| CaClientError::Refused {
                code: s.code(),
                message: s.message().to_owned(),
            })?;
        Ok(response.into_inner().cert_chain)
    }

    /// Backoff after `failures` failed attempts in a row: doubling from [`RETRY_BASE`], capped at
    /// [`RETRY_CAP`] and, while a certificate is held, at a tenth of its lifetime (so a short-lived
    /// certificate gets several retries before it expires).
    fn retry_delay(&self, failures: u32) -> Duration {
        let mut cap = RETRY_CAP;
        if let Some(identity) = self.store.identity()
            && let Ok(lifetime) = identity.not_after.duration_since(identity.not_before)
        {
            cap = cap.min(lifetime / 10).max(RETRY_BASE);
        }
        let exp = RETRY_BASE.saturating_mul(1 << failures.min(16).saturating_sub(1));
        exp.min(cap).mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// The causes under a transport error (where TLS failures are explained).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push(cause.to_string());
        next = cause.source();
    }
    out.join(": ")
}

/// How long to wait before renewing a certificate valid from `not_before` to `not_after`: until
/// half its lifetime, minus `jitter` (0..1) times a tenth of the lifetime.
pub fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let at = not_before + lifetime / 2 - (lifetime / 10).mul_f64(jitter.clamp(0.0, 1.0));
    at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_half_life_with_up_to_a_tenth_of_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(100);
        assert_eq!(
            renewal_delay(start, end, start, 0.0),
            Duration::from_secs(50)
        );
        assert_eq!(
            renewal_delay(start, end, start, 1.0),
            Duration::from_secs(40)
        );
        let later = start + Duration::from_secs(45);
        assert_eq!(
            renewal_delay(start, end, later, 0.0),
            Duration::from_secs(5)
        );
        // Past the renewal point: at once.
        assert_eq!(renewal_delay(start, end, end, 0.5), Duration::ZERO);
    }
}
