//! Bootstrap tokens: how a proxy proves which workload it is before it has a certificate.
//!
//! A token is a compact JWS (a JWT) signed ES256 with a key the control plane creates at first
//! start and keeps owner-only in its CA directory. Claims: `iss` (`trellis-control`), `aud`
//! (`trellis-ca`), `sub` (the SPIFFE id), `ns`, `sa`, `iat`, `exp`. The CA signs only the
//! identity the token names. Owns creation and verification; never logs a token.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use super::{CaError, files};

/// `iss` of every token.
pub const ISSUER: &str = "trellis-control";
/// `aud` a token must carry to be accepted by the CA.
pub const AUDIENCE: &str = "trellis-ca";
/// Longest lifetime a token may be created with.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest token accepted (a real one is about 400 bytes).
const MAX_TOKEN_BYTES: usize = 4096;

/// The workload a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapClaims {
    pub namespace: String,
    pub service_account: String,
    /// Seconds since the epoch.
    pub expires: u64,
}

/// Why a token was not accepted (or not created).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the bootstrap token is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "the bootstrap token's signature does not verify; was it created by this control plane?"
    )]
    BadSignature,
    #[error(
        "the bootstrap token expired at {0} (seconds since the epoch); create a new one with `trellis token create`"
    )]
    Expired(u64),
    #[error("the bootstrap token's {0}")]
    WrongClaim(String),
    #[error("{0}")]
    Invalid(String),
}

/// Creates and verifies bootstrap tokens with one ES256 key.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    public: UnparsedPublicKey<Vec<u8>>,
    rng: SystemRandom,
}

impl TokenSigner {
    /// Loads the key at `path` (PKCS#8 DER), or creates one there (mode 0600).
    pub fn load_or_create(path: &Path) -> Result<TokenSigner, CaError> {
        let rng = SystemRandom::new();
        let pkcs8 = match files::read_optional(path)? {
            Some(bytes) => bytes,
            None => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| CaError::Crypto("generate the token signing key".into()))?;
                files::write_private(path, doc.as_ref())?;
                doc.as_ref().to_vec()
            }
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| CaError::file(path, format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref().to_vec());
        Ok(TokenSigner { key, public, rng })
    }

    /// A token for `namespace`/`service_account` valid for `ttl`.
    pub fn create(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(TokenError::Invalid(format!(
                "ttl {}s: must be between 1s and {}s",
                ttl.as_secs(),
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let iat = seconds(now);
        let header = json!({"alg": "ES256", "typ": "JWT"});
        let claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"),
            "ns": namespace,
            "sa": service_account,
            "iat": iat,
            "exp": iat + ttl.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| TokenError::Invalid("signing failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The claims of `token` if its signature, audience, issuer and expiry check out at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<BootstrapClaims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("longer than 4096 bytes"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts"));
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed("a part is not base64url"))
        };
        let header: Value = serde_json::from_slice(&decode(header)?)
            .map_err(|_| TokenError::Malformed("the header is not JSON"))?;
        if header["alg"] != "ES256" {
            return Err(TokenError::Malformed("alg is not ES256"));
        }
        let signing_input = &token[..token.rfind('.').unwrap_or(0)];
        self.public
            .verify(signing_input.as_bytes(), &decode(signature)?)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Value = serde_json::from_slice(&decode(claims)?)
            .map_err(|_| TokenError::Malformed("the claims are not JSON"))?;
        if claims["iss"] != ISSUER {
            return Err(TokenError::WrongClaim(format!("iss is not {ISSUER:?}")));
        }
        if claims["aud"] != AUDIENCE {
            return Err(TokenError::WrongClaim(format!("aud is not {AUDIENCE:?}")));
        }
        let expires = claims["exp"]
            .as_u64()
            .ok_or(TokenError::Malformed("exp is missing"))?;
        if expires <= seconds(now) {
            return Err(TokenError::Expired(expires));
        }
        let text = |name: &'static str| {
            claims[name]
                .as_str()
                .map(str::to_owned)
                .ok_or(TokenError::Malformed("ns or sa is missing"))
        };
        let (namespace, service_account) = (text("ns")?, text("sa")?);
        check_name("namespace", &namespace)?;
        check_name("service account", &service_account)?;
        Ok(BootstrapClaims {
            namespace,
            service_account,
            expires,
        })
    }
}

/// Namespaces and service accounts are DNS-1123 labels (Kubernetes' rule for both).
fn check_name(what: &str, name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "{what} {name:?} is not a DNS-1123 label (lowercase letters, digits, '-', at most 63)"
        )))
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(dir: &Path) -> TokenSigner {
        TokenSigner::load_or_create(&dir.join("token-key.p8")).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer(dir.path());
        let now = SystemTime::now();
        let token = signer
            .create(
                "cluster.local",
                "shop",
                "reviews",
                Duration::from_secs(60),
                now,
            )
            .unwrap();
        let claims = signer.verify(&token, now).unwrap();
        assert_eq!(claims.namespace, "shop");
        assert_eq!(claims.service_account, "reviews");
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            signer.verify(&token, later),
            Err(TokenError::Expired(_))
        ));
        // The key persists: a second start verifies the same token.
        assert_eq!(
            self::signer(dir.path()).verify(&token, now).unwrap(),
            claims
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let token = signer(dir.path())
            .create(
                "cluster.local",
                "shop",
                "reviews",
                Duration::from_secs(60),
                now,
            )
            .unwrap();
        assert_eq!(
            signer(other.path()).verify(&token, now),
            Err(TokenError::BadSignature)
        );
        // Swap the claims for ones naming another service account, keep the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(
            json!({"iss": ISSUER, "aud": AUDIENCE, "ns": "shop", "sa": "admin", "exp": u64::MAX})
                .to_string(),
        );
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(
            signer(dir.path()).verify(&forged, now),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            signer(dir.path()).verify("abc", now),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn names_must_be_labels() {
        let dir = tempfile::tempdir().unwrap();
        let err = signer(dir.path())
            .create(
                "cluster.local",
                "Shop",
                "a",
                Duration::from_secs(60),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("namespace \"Shop\""), "{err}");
    }

    #[test]
    fn the_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        signer(dir.path());
        let mode = std::fs::metadata(dir.path().join("token-key.p8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
