//! The control plane's certificate authority: workload certificates for proxies, issued over
//! Istio's `IstioCertificateService/CreateCertificate` gRPC method ([`service`]) to a proxy that
//! presents a bootstrap token ([`bootstrap`]).
//!
//! The CA, not the CSR, decides what a certificate says: the URI SAN
//! `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` of the token's workload and nothing else, a lifetime
//! capped at `--max-workload-cert-ttl`, client and server auth. A CSR that asks for another
//! identity is refused. Keys and roots live in [`authority`]; this module owns the policy and
//! the counters, and must not know about listeners or the xDS server.

mod authority;
pub mod bootstrap;
mod files;
pub mod service;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use x509_parser::prelude::FromDer as _;

pub use authority::RotatePhase;
use authority::{Signer, Source};
use bootstrap::{BootstrapClaims, TokenError, TokenSigner};
pub use files::pem_blocks;

/// Default lifetime of a workload certificate (Istio's: 24 h).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// How `trellis control` runs its CA.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Where the self-signed root, its key and the token key live (created 0700).
    pub dir: PathBuf,
    /// An operator's CA in Istio's `cacerts` layout, instead of the self-signed root.
    pub cacerts: Option<PathBuf>,
    pub trust_domain: String,
    /// Lifetime when the CSR does not ask for one.
    pub workload_ttl: Duration,
    /// Longest lifetime a CSR may ask for.
    pub max_workload_ttl: Duration,
}

/// Why the CA could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Crypto(String),
    #[error("{0}")]
    Rotate(String),
}

impl CaError {
    fn file(path: &Path, message: impl Into<String>) -> CaError {
        CaError::File {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Why a certificate was not issued; maps onto a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    Unauthenticated(#[from] TokenError),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Internal(String),
}

/// The certificate authority of one control plane.
pub struct CertificateAuthority {
    config: CaConfig,
    signer: RwLock<Arc<Signer>>,
    tokens: TokenSigner,
    metrics: CaMetrics,
}

#[derive(Default)]
struct CaMetrics {
    registry: Registry,
    issued: Counter,
    refused: Family<ReasonLabel, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl CertificateAuthority {
    /// Opens (creating at first start) the CA `config` describes.
    pub fn open(config: CaConfig) -> Result<Arc<CertificateAuthority>, CaError> {
        let tokens = TokenSigner::load_or_create(&config.dir.join("token-key.p8"))?;
        let signer = load_signer(&config)?;
        let mut metrics = CaMetrics::default();
        metrics.registry.register(
            "trellis_ca_certificates_issued",
            "Workload certificates the CA signed",
            metrics.issued.clone(),
        );
        metrics.registry.register(
            "trellis_ca_certificates_refused",
            "Certificate requests the CA refused, by reason (unauthenticated, permission_denied, invalid_argument, internal)",
            metrics.refused.clone(),
        );
        Ok(Arc::new(CertificateAuthority {
            config,
            signer: RwLock::new(Arc::new(signer)),
            tokens,
            metrics,
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// A bootstrap token for `namespace`/`service_account`, valid for `ttl`.
    pub fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.tokens.create(
            &self.config.trust_domain,
            namespace,
            service_account,
            ttl,
            SystemTime::now(),
        )
    }

    /// Signs `csr_pem` for the workload `token` names: the certificate chain, leaf first, the
    /// last entry holding every trusted root (Istio's `cert_chain` shape).
    pub fn create_certificate(
        &self,
        token: Option<&str>,
        csr_pem: &str,
        requested_seconds: i64,
    ) -> Result<Vec<String>, SignError> {
        let caller = match token {
            Some(token) => self
                .tokens
                .verify(token, SystemTime::now())
                .map_err(SignError::from),
            None => Err(SignError::Unauthenticated(TokenError::Malformed(
                "missing; send `authorization: Bearer <token>` (create one with `trellis token create`)",
            ))),
        };
        self.issue(caller, csr_pem, requested_seconds)
    }

    /// Signs `csr_pem` for the workload whose certificate (`leaf`, DER) the TLS layer verified
    /// against the trust bundle: renewal over mTLS, without a token.
    pub fn create_certificate_for_peer(
        &self,
        leaf: &[u8],
        csr_pem: &str,
        requested_seconds: i64,
    ) -> Result<Vec<String>, SignError> {
        let caller = self.peer_claims(leaf);
        self.issue(caller, csr_pem, requested_seconds)
    }

    /// The workload a verified client certificate names (its SPIFFE URI SAN in our domain).
    fn peer_claims(&self, leaf: &[u8]) -> Result<BootstrapClaims, SignError> {
        use x509_parser::extensions::GeneralName;
        let denied = |m: &str| SignError::PermissionDenied(format!("client certificate: {m}"));
        let (_, cert) =
            x509_parser::parse_x509_certificate(leaf).map_err(|_| denied("does not parse"))?;
        let prefix = format!("spiffe://{}/ns/", self.config.trust_domain);
        let uri = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) if u.starts_with(&prefix) => Some(u.to_string()),
                    _ => None,
                })
            })
            .ok_or_else(|| denied(&format!("no URI SAN starting {prefix}")))?;
        let rest = &uri[prefix.len()..];
        let (namespace, service_account) = rest
            .split_once("/sa/")
            .filter(|(ns, sa)| !ns.contains('/') && !sa.contains('/'))
            .ok_or_else(|| denied(&format!("{uri} is not .../ns/<ns>/sa/<sa>")))?;
        Ok(BootstrapClaims {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            expires: cert.validity().not_after.timestamp().max(0) as u64,
        })
    }

    fn issue(
        &self,
        caller: Result<BootstrapClaims, SignError>,
        csr_pem: &str,
        requested_seconds: i64,
    ) -> Result<Vec<String>, SignError> {
        let result = caller.and_then(|claims| self.sign(&claims, csr_pem, requested_seconds));
        match &result {
            Ok(_) => {
                self.metrics.issued.inc();
            }
            Err(e) => {
                let reason = match e {
                    SignError::Unauthenticated(_) => "unauthenticated",
                    SignError::PermissionDenied(_) => "permission_denied",
                    SignError::InvalidArgument(_) => "invalid_argument",
                    SignError::Internal(_) => "internal",
                };
                self.metrics
                    .refused
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
        };
        result
    }

    fn sign(
        &self,
        claims: &BootstrapClaims,
        csr_pem: &str,
        requested_seconds: i64,
    ) -> Result<Vec<String>, SignError> {
        let spiffe_id = self.spiffe_id(claims);
        let csr = check_csr(csr_pem, &spiffe_id)?;
        let ttl = self.lifetime(requested_seconds)?;
        let (params, _) = self.leaf_params(&spiffe_id, &[], &[], ttl)?;
        let signer = self.current();
        let cert = params
            .signed_by(&csr.public_key, &signer.issuer)
            .map_err(|e| SignError::Internal(format!("sign the certificate: {e}")))?;
        let mut chain = vec![cert.pem()];
        chain.extend(signer.intermediates.iter().cloned());
        chain.push(signer.roots.concat());
        tracing::info!(spiffe_id, ttl_seconds = ttl.as_secs(), "certificate issued");
        Ok(chain)
    }

    /// The control plane's own serving certificate (for the TLS port): chain (DER), PKCS#8 key,
    /// validity.
    #[allow(clippy::type_complexity)]
    pub fn issue_serving(
        &self,
        ips: &[std::net::IpAddr],
    ) -> Result<
        (
            Vec<rustls_pki_types::CertificateDer<'static>>,
            Vec<u8>,
            SystemTime,
            SystemTime,
        ),
        String,
    > {
        let spiffe_id = format!(
            "spiffe://{}/ns/istio-system/sa/istiod",
            self.config.trust_domain
        );
        let dns = ["istiod.istio-system.svc", "localhost"];
        let ttl = self.config.workload_ttl;
        let (params, (not_before, not_after)) = self
            .leaf_params(&spiffe_id, &dns, ips, ttl)
            .map_err(|e| e.to_string())?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let signer = self.current();
        let cert = params
            .signed_by(&key, &signer.issuer)
            .map_err(|e| e.to_string())?;
        let mut chain = vec![cert.der().clone()];
        for pem in &signer.intermediates {
            chain.push(
                authority::pem_der(pem)
                    .ok_or("bad intermediate PEM")?
                    .into(),
            );
        }
        Ok((chain, key.serialize_der(), not_before, not_after))
    }

    /// What every certificate the CA issues says: the SANs, no subject, client and server
    /// auth, not a CA, a random serial, valid from now for `ttl`.
    fn leaf_params(
        &self,
        spiffe_id: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(CertificateParams, (SystemTime, SystemTime)), SignError> {
        let now = SystemTime::now();
        let internal = |what: &str, e: rcgen::Error| SignError::Internal(format!("{what}: {e}"));
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .to_owned()
                .try_into()
                .map_err(|e| internal(spiffe_id, e))?,
        )];
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(
                (*name)
                    .to_owned()
                    .try_into()
                    .map_err(|e| internal(name, e))?,
            ));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(now);
        params.not_after = to_offset(now + ttl);
        params.serial_number =
            Some(authority::random_serial().map_err(|e| SignError::Internal(e.to_string()))?);
        Ok((params, (now, now + ttl)))
    }

    fn spiffe_id(&self, claims: &BootstrapClaims) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.config.trust_domain, claims.namespace, claims.service_account
        )
    }

    /// The lifetime to issue: the CSR's request capped at the maximum, or the default.
    fn lifetime(&self, requested_seconds: i64) -> Result<Duration, SignError> {
        match requested_seconds {
            0 => Ok(self.config.workload_ttl.min(self.config.max_workload_ttl)),
            s if s < 0 => Err(SignError::InvalidArgument(format!(
                "validity_duration {s}: must not be negative"
            ))),
            s => Ok(Duration::from_secs(s as u64).min(self.config.max_workload_ttl)),
        }
    }

    fn current(&self) -> Arc<Signer> {
        Arc::clone(&self.signer.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every trusted root (PEM blocks).
    pub fn roots(&self) -> Vec<String> {
        self.current().roots.clone()
    }

    /// Takes one step of a root rotation and starts using the result at once.
    pub fn rotate(&self, phase: RotatePhase) -> Result<Value, CaError> {
        let current = self.current();
        let Source::SelfSigned { dir, .. } = &current.source else {
            return Err(CaError::Rotate(
                "this CA signs with plugged-in cacerts; rotate by replacing those files and restarting"
                    .into(),
            ));
        };
        authority::rotate(dir, &self.config.trust_domain, phase)?;
        let signer = load_signer(&self.config)?;
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        tracing::info!(?phase, "root rotation step taken");
        Ok(self.describe())
    }

    /// What `GET /api/v1/ca` shows: source, trust domain, roots, the signing root.
    pub fn describe(&self) -> Value {
        let signer = self.current();
        let (source, dir, rotating) = match &signer.source {
            Source::SelfSigned { dir, rotating } => ("self-signed", dir, *rotating),
            Source::Plugged { dir } => ("cacerts", dir, false),
        };
        json!({
            "source": source,
            "dir": dir.display().to_string(),
            "trustDomain": self.config.trust_domain,
            "rotationPending": rotating,
            "signingRoot": signer.root,
            "roots": signer.roots,
        })
    }

    /// Appends the CA's counters in Prometheus text format.
    pub fn encode_metrics(&self, out: &mut String) {
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(out, &self.metrics.registry)
        {
            tracing::error!(error = %e, "encoding CA metrics");
        }
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            dir: PathBuf::from(".trellis-ca"),
            cacerts: None,
            trust_domain: "cluster.local".into(),
            workload_ttl: DEFAULT_WORKLOAD_TTL,
            max_workload_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

impl CaConfig {
    /// Where a store's CA lives by default: `<dir>/.trellis-ca` for a directory store (hidden,
    /// so never loaded as config), `./.trellis-ca` for etcd.
    pub fn default_dir(store_spec: &str) -> PathBuf {
        if store_spec.starts_with("etcd://") {
            PathBuf::from(".trellis-ca")
        } else {
            Path::new(store_spec).join(".trellis-ca")
        }
    }
}

fn load_signer(config: &CaConfig) -> Result<Signer, CaError> {
    match &config.cacerts {
        Some(dir) => Signer::plugged(dir),
        None => Signer::self_signed(&config.dir, &config.trust_domain),
    }
}

/// Parses and checks a CSR: a valid signature, an ECDSA P-256 key, and no identity other than
/// `spiffe_id` asked for.
fn check_csr(csr_pem: &str, spiffe_id: &str) -> Result<CertificateSigningRequestParams, SignError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(SignError::InvalidArgument(format!(
            "csr: longer than {MAX_CSR_BYTES} bytes"
        )));
    }
    let invalid = |what: String| SignError::InvalidArgument(format!("csr: {what}"));
    let der = authority::pem_der(csr_pem)
        .filter(|_| csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----"))
        .ok_or_else(|| invalid("not a PEM CERTIFICATE REQUEST".into()))?;
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("cannot parse: {e}")))?;
    let spki = &parsed.certification_request_info.subject_pki;
    let p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid == x509_parser::oid_registry::OID_EC_P256);
    if !p256 {
        return Err(invalid("the key must be ECDSA P-256".into()));
    }
    for extension in parsed.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                let allowed = matches!(name, GeneralName::URI(uri) if *uri == spiffe_id);
                if !allowed {
                    return Err(SignError::PermissionDenied(format!(
                        "the CSR asks for {name}, but the bootstrap token names {spiffe_id}; the CA signs only that identity"
                    )));
                }
            }
        }
    }
    CertificateSigningRequestParams::from_der(&der.into())
        .map_err(|e| invalid(format!("rejected: {e}")))
}

/// `SystemTime` as rcgen's time type.
fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
