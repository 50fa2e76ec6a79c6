//! One JWT, strictly: `header.payload.signature` in base64url, a header whose `alg` we know
//! (RS256/384/512, PS256/384/512, ES256/384, EdDSA verify; HMAC is parsed but never verifies,
//! `none` is refused), `iss`, `exp`/`nbf` (with the provider's clock skew) and `aud`, then the
//! signature with `ring` against a JWKS key of the `kid`, whose own `alg` (if any) is the token's
//! and whose type and curve fit that `alg` (so an RSA key can never be an HMAC secret or an EC
//! key for RSA). Errors carry Envoy's messages (`Jwt is expired`, …), which become the body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};

use super::jwks::{Jwk, KeySet, PublicKey};

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Token<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`, the signed bytes.
    pub signed: &'a str,
    /// The payload's base64url text, as forwarded by `forward_payload_header`.
    pub payload_b64: &'a str,
    pub claims: Map<String, Value>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
    /// HMAC: parsed as Envoy does, but never verified (only public keys are used, so a public
    /// key can never serve as an HMAC secret).
    Hs256,
    Hs384,
    Hs512,
}

/// Why a token was refused; `Display` is Envoy's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    #[error("Jwt header [alg] is not supported")]
    AlgNotImplemented,
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadJson,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBase64,
    #[error("Jwt payload [{0}] field is not valid")]
    BadClaim(&'static str),
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    #[error("Jwt verification fails")]
    VerificationFail,
    #[error("Jwks remote fetch is failed")]
    JwksFetchFail,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
        }
    }

    /// `ring`'s algorithm for this `alg` and key, when the key's type fits it.
    fn verifier(self, key: &PublicKey) -> Option<&'static dyn VerificationAlgorithm> {
        Some(match (self, key) {
            (Alg::Rs256, PublicKey::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Alg::Rs384, PublicKey::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (Alg::Rs512, PublicKey::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (Alg::Ps256, PublicKey::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA256,
            (Alg::Ps384, PublicKey::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA384,
            (Alg::Ps512, PublicKey::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA512,
            (Alg::Es256, PublicKey::EcP256(_)) => &signature::ECDSA_P256_SHA256_FIXED,
            (Alg::Es384, PublicKey::EcP384(_)) => &signature::ECDSA_P384_SHA384_FIXED,
            (Alg::EdDsa, PublicKey::Ed25519(_)) => &signature::ED25519,
            _ => return None,
        })
    }
}

/// Splits and decodes a token; nothing is trusted yet.
pub fn parse(token: &str) -> Result<Token<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    // Envoy counts an empty section (as in an unsigned `alg: none` token) as a missing one.
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(JwtError::BadFormat);
    }
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwtError::HeaderBase64)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| JwtError::HeaderJson)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::HeaderBadAlg)?;
    let alg = Alg::parse(alg).ok_or(JwtError::AlgNotImplemented)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::HeaderBadKid),
    };
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| JwtError::PayloadBase64)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadJson)?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::SignatureBase64)?;
    for (claim, ok) in [
        ("iss", claims.get("iss").is_none_or(Value::is_string)),
        ("sub", claims.get("sub").is_none_or(Value::is_string)),
        ("exp", claims.get("exp").is_none_or(Value::is_number)),
        ("nbf", claims.get("nbf").is_none_or(Value::is_number)),
        (
            "aud",
            claims.get("aud").is_none_or(|a| {
                a.is_string() || a.as_array().is_some_and(|l| l.iter().all(Value::is_string))
            }),
        ),
    ] {
        if !ok {
            return Err(JwtError::BadClaim(claim));
        }
    }
    Ok(Token {
        alg,
        kid,
        signed: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        claims,
        signature,
    })
}

impl Token<'_> {
    pub fn issuer(&self) -> &str {
        self.claims.get("iss").and_then(Value::as_str).unwrap_or("")
    }

    /// `aud` as a list (a single string is a one-element list).
    pub fn audiences(&self) -> Vec<String> {
        match self.claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(l)) => l
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Issuer, then `exp`/`nbf` against `now` with `skew`, then audiences (Envoy's order).
    pub fn check_claims(
        &self,
        issuer: &str,
        audiences: &[String],
        now: SystemTime,
        skew: Duration,
    ) -> Result<(), JwtError> {
        if !issuer.is_empty() && self.issuer() != issuer {
            return Err(JwtError::UnknownIssuer);
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let skew = skew.as_secs_f64();
        let time = |c: &str| self.claims.get(c).and_then(Value::as_f64);
        if time("nbf").is_some_and(|nbf| now + skew < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if time("exp").is_some_and(|exp| now - skew > exp) {
            return Err(JwtError::Expired);
        }
        if !audiences.is_empty() {
            let allowed = |a: &String| audiences.iter().any(|x| same_audience(x, a));
            if !self.audiences().iter().any(allowed) {
                return Err(JwtError::AudienceNotAllowed);
            }
        }
        Ok(())
    }

    /// The signature against the keys that fit the `kid` (when the token has one) and whose own
    /// `alg` (when set) is the token's: `KidAlgMismatch` when there is none, else
    /// `VerificationFail` unless one of them, of the type and curve `alg` needs, verifies
    /// (Envoy's rules).
    pub fn verify(&self, keys: &KeySet) -> Result<(), JwtError> {
        let mut candidates = keys.keys.iter().filter(|k| self.fits(k)).peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::KidAlgMismatch);
        }
        let ok = candidates.any(|k| {
            let Some(alg) = self.alg.verifier(&k.key) else {
                return false;
            };
            let msg = self.signed.as_bytes();
            match &k.key {
                PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                    .verify(alg_params(self.alg), msg, &self.signature)
                    .is_ok(),
                PublicKey::EcP256(p) | PublicKey::EcP384(p) | PublicKey::Ed25519(p) => {
                    UnparsedPublicKey::new(alg, p)
                        .verify(msg, &self.signature)
                        .is_ok()
                }
            }
        });
        if ok {
            Ok(())
        } else {
            Err(JwtError::VerificationFail)
        }
    }

    /// Whether `k` is a candidate for this token (`kid` and the key's `alg`).
    pub fn fits(&self, k: &Jwk) -> bool {
        let kid_ok = match (&self.kid, &k.kid) {
            (Some(t), Some(k)) => t == k,
            _ => true,
        };
        kid_ok && k.alg.as_deref().is_none_or(|a| a == self.alg.name())
    }
}

/// RSA parameters for `alg` (only called for RSA algorithms).
fn alg_params(alg: Alg) -> &'static signature::RsaParameters {
    match alg {
        Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
        Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
        Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// Envoy compares audiences ignoring a scheme and a trailing slash.
fn same_audience(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s).to_string()
    };
    norm(a) == norm(b)
}
