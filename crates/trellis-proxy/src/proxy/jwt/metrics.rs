//! JWT authentication counters: `trellis_jwt_authn_total{provider, result}` (one per provider
//! and request that reached it; `provider` is the issuer) and
//! `trellis_jwks_fetch_failures_total{uri}`. Registered by `telemetry.rs`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::verify::JwtError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    provider: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Uri {
    uri: String,
}

static AUTHN: LazyLock<Family<Outcome, Counter>> = LazyLock::new(Family::default);
static FETCH_FAILURES: LazyLock<Family<Uri, Counter>> = LazyLock::new(Family::default);

pub fn register(registry: &mut Registry) {
    registry.register(
        "trellis_jwt_authn",
        "JWT verifications by provider (issuer) and result: success, missing, expired, not_yet_valid, issuer_mismatch, audience_mismatch, no_matching_key, signature_invalid, jwks_fetch_failed, malformed",
        AUTHN.clone(),
    );
    registry.register(
        "trellis_jwks_fetch_failures",
        "JWKS fetches that failed (connect, status, timeout, bad document), by URL",
        FETCH_FAILURES.clone(),
    );
}

/// One provider's outcome for one request (`None`: verified).
pub fn authn(issuer: &str, error: Option<&JwtError>) {
    let result = match error {
        None => "success",
        Some(JwtError::Missing) => "missing",
        Some(JwtError::Expired) => "expired",
        Some(JwtError::NotYetValid) => "not_yet_valid",
        Some(JwtError::UnknownIssuer) => "issuer_mismatch",
        Some(JwtError::AudienceNotAllowed) => "audience_mismatch",
        Some(JwtError::KidAlgMismatch) => "no_matching_key",
        Some(JwtError::VerificationFail) => "signature_invalid",
        Some(JwtError::JwksFetchFail) => "jwks_fetch_failed",
        Some(_) => "malformed",
    };
    AUTHN
        .get_or_create(&Outcome {
            provider: issuer.to_string(),
            result,
        })
        .inc();
}

pub fn jwks_fetch_failed(uri: &str) {
    FETCH_FAILURES
        .get_or_create(&Uri {
            uri: uri.to_string(),
        })
        .inc();
}
