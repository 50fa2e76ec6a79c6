//! The verifier with keys from `ring` (RSA from a fixed PKCS#8 test key, EC and Ed25519
//! generated): every algorithm, `none`, HMAC and key-type confusion, clock skew, issuer and
//! audience; the request side (token locations, outputs, 401s) through `authenticate`; and the
//! remote JWKS cache (refresh after its duration, unknown-`kid` refetch, rate limit, fail
//! closed) against a tiny HTTP server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::config::core::v3::{DataSource, HttpUri, data_source, http_uri};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use envoy_types::pb::google::protobuf::Empty;
use prost::Message;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

use super::jwks::{KeySet, RemoteJwks};
use super::verify::{self, JwtError};
use crate::runtime::jwt::JwtAuthn;
use crate::security::RequestAuth;

const RSA_PKCS8: &[u8] = include_bytes!("testdata/rsa2048.pk8");

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, &'static str),
    Ed(Ed25519KeyPair),
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn rsa() -> Key {
    Key::Rsa(RsaKeyPair::from_pkcs8(RSA_PKCS8).expect("test RSA key"))
}

fn ec(alg: &'static signature::EcdsaSigningAlgorithm, crv: &'static str) -> Key {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
    Key::Ec(
        EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("load"),
        crv,
    )
}

fn p256() -> Key {
    ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
}

fn p384() -> Key {
    ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
}

fn ed() -> Key {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
    Key::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("load"))
}

impl Key {
    fn jwk(&self, kid: &str) -> Value {
        match self {
            Key::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": kid, "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec(k, crv) => {
                let point = k.public_key().as_ref();
                let size = (point.len() - 1) / 2;
                json!({"kty": "EC", "crv": crv, "kid": kid,
                       "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..])})
            }
            Key::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k.public_key().as_ref())})
            }
        }
    }

    fn sign(&self, alg: &str, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Key::Rsa(k) => {
                let enc: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(enc, &rng, signed.as_bytes(), &mut sig)
                    .expect("sign");
                sig
            }
            Key::Ec(k, _) => k
                .sign(&rng, signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Key::Ed(k) => k.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": "issuer-1", "sub": "alice", "aud": ["app"], "exp": now() + 600, "group": "admins"})
}

fn keyset(jwks: &[Value]) -> KeySet {
    KeySet::parse(json!({ "keys": jwks }).to_string().as_bytes()).expect("jwks")
}

fn check(token: &str, keys: &KeySet) -> Result<(), JwtError> {
    let t = verify::parse(token)?;
    t.check_claims(
        "issuer-1",
        &["app".into()],
        SystemTime::now(),
        Duration::from_secs(60),
    )?;
    t.verify(keys)
}

#[test]
fn every_supported_algorithm_verifies_and_a_tampered_token_does_not() {
    let cases: Vec<(&str, Key)> = vec![
        ("RS256", rsa()),
        ("RS384", rsa()),
        ("RS512", rsa()),
        ("PS256", rsa()),
        ("PS384", rsa()),
        ("PS512", rsa()),
        ("ES256", p256()),
        ("ES384", p384()),
        ("EdDSA", ed()),
    ];
    for (alg, key) in cases {
        let keys = keyset(&[key.jwk("k1")]);
        let token = key.sign(alg, "k1", &claims());
        assert_eq!(check(&token, &keys), Ok(()), "{alg}");
        // Same header and signature, another payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(json!({"iss": "issuer-1", "sub": "mallory", "aud": "app"})
            .to_string()
            .as_bytes());
        parts[1] = &forged;
        assert_eq!(
            check(&parts.join("."), &keys),
            Err(JwtError::VerificationFail),
            "{alg}"
        );
    }
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let key = rsa();
    let keys = keyset(&[key.jwk("k1")]);
    let payload = b64(claims().to_string().as_bytes());
    // Unsigned (Envoy: not three sections), and with a signature anyway.
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none"}"#));
    assert_eq!(check(&none, &keys), Err(JwtError::BadFormat));
    let none = format!("{}.{payload}.AAAA", b64(br#"{"alg":"none"}"#));
    assert_eq!(check(&none, &keys), Err(JwtError::AlgNotImplemented));
    // The classic confusion: HS256 with the RSA public key (as published) as the HMAC secret.
    let header = b64(br#"{"alg":"HS256","kid":"k1"}"#);
    let signed = format!("{header}.{payload}");
    let secret = key.jwk("k1").to_string();
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        signed.as_bytes(),
    );
    let hs = format!("{signed}.{}", b64(tag.as_ref()));
    // Known to Envoy, but only public keys are used: it never verifies.
    assert_eq!(check(&hs, &keys), Err(JwtError::VerificationFail));
    let missing_alg = format!("{}.{payload}.AAAA", b64(br#"{"typ":"JWT"}"#));
    assert_eq!(check(&missing_alg, &keys), Err(JwtError::HeaderBadAlg));
}

#[test]
fn a_key_whose_type_curve_or_alg_does_not_fit_the_token_is_never_used() {
    let (r, e256, e384) = (rsa(), p256(), p384());
    // ES256 token, but the kid names an RSA key (Envoy: the kid matched, verification fails).
    let token = e256.sign("ES256", "k1", &claims());
    assert_eq!(
        check(&token, &keyset(&[r.jwk("k1")])),
        Err(JwtError::VerificationFail)
    );
    // ES256 token, a P-384 key under that kid.
    assert_eq!(
        check(&token, &keyset(&[e384.jwk("k1")])),
        Err(JwtError::VerificationFail)
    );
    // RS256 token, the key says it is for RS384 only.
    let mut jwk = r.jwk("k1");
    jwk["alg"] = json!("RS384");
    let token = r.sign("RS256", "k1", &claims());
    assert_eq!(
        check(&token, &keyset(&[jwk])),
        Err(JwtError::KidAlgMismatch)
    );
    // Unknown kid.
    assert_eq!(
        check(&token, &keyset(&[r.jwk("other")])),
        Err(JwtError::KidAlgMismatch)
    );
    // The right key among others.
    let keys = keyset(&[e256.jwk("k0"), r.jwk("k1"), e384.jwk("k2")]);
    assert_eq!(check(&token, &keys), Ok(()));
}

#[test]
fn exp_and_nbf_allow_sixty_seconds_of_skew() {
    let key = p256();
    let keys = keyset(&[key.jwk("k1")]);
    let with = |field: &str, at: u64| {
        let mut c = claims();
        c[field] = json!(at);
        check(&key.sign("ES256", "k1", &c), &keys)
    };
    assert_eq!(with("exp", now() - 30), Ok(()));
    assert_eq!(with("exp", now() - 120), Err(JwtError::Expired));
    assert_eq!(with("nbf", now() + 30), Ok(()));
    assert_eq!(with("nbf", now() + 120), Err(JwtError::NotYetValid));
}

#[test]
fn issuer_audience_and_format_are_checked() {
    let key = ed();
    let keys = keyset(&[key.jwk("k1")]);
    let mut c = claims();
    c["iss"] = json!("someone-else");
    assert_eq!(
        check(&key.sign("EdDSA", "k1", &c), &keys),
        Err(JwtError::UnknownIssuer)
    );
    let mut c = claims();
    c["aud"] = json!("other-app");
    assert_eq!(
        check(&key.sign("EdDSA", "k1", &c), &keys),
        Err(JwtError::AudienceNotAllowed)
    );
    c["aud"] = json!(["other-app", "https://app/"]);
    assert_eq!(check(&key.sign("EdDSA", "k1", &c), &keys), Ok(()));
    assert_eq!(check("abc.def", &keys), Err(JwtError::BadFormat));
    assert_eq!(check("a.b.c.d", &keys), Err(JwtError::BadFormat));
    assert_eq!(check("!!.e30.AA", &keys), Err(JwtError::HeaderBase64));
    assert_eq!(
        JwtError::Expired.to_string(),
        "Jwt is expired",
        "Envoy's wording is the 401 body"
    );
}

#[test]
fn a_jwks_keeps_only_public_signing_keys() {
    let e = p256();
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        e.jwk("sig"),
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
    ]});
    let keys = KeySet::parse(doc.to_string().as_bytes()).expect("one usable key");
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(keys.keys[0].kid.as_deref(), Some("sig"));
    assert!(KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "AA"}]}"#).is_err());
    assert!(KeySet::parse(b"not json").is_err());
}

// ---------------------------------------------------------------- the request side

fn provider(jwks: pb::jwt_provider::JwksSourceSpecifier) -> pb::JwtProvider {
    pb::JwtProvider {
        issuer: "issuer-1".into(),
        audiences: vec!["app".into()],
        forward_payload_header: "x-jwt-payload".into(),
        claim_to_headers: vec![pb::JwtClaimToHeader {
            header_name: "x-jwt-group".into(),
            claim_name: "group".into(),
            ..Default::default()
        }],
        jwks_source_specifier: Some(jwks),
        ..Default::default()
    }
}

/// Istio's shape: `requires_any [origins-0, allow_missing]` on prefix `/`.
fn filter(p: pb::JwtProvider) -> JwtAuthn {
    let req = |t| pb::JwtRequirement {
        requires_type: Some(t),
    };
    use pb::jwt_requirement::RequiresType as R;
    let config = pb::JwtAuthentication {
        providers: [("origins-0".to_string(), p)].into(),
        rules: vec![pb::RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(pb::requirement_rule::RequirementType::Requires(req(
                R::RequiresAny(pb::JwtRequirementOrList {
                    requirements: vec![
                        req(R::ProviderName("origins-0".into())),
                        req(R::AllowMissing(Empty {})),
                    ],
                }),
            ))),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    JwtAuthn::compile(&config.encode_to_vec()).expect("compiles")
}

fn local(key: &Key) -> JwtAuthn {
    let jwks = json!({"keys": [key.jwk("k1")]}).to_string();
    filter(provider(pb::jwt_provider::JwksSourceSpecifier::LocalJwks(
        DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks)),
            ..Default::default()
        },
    )))
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request").into_parts().0
}

#[tokio::test]
async fn missing_valid_and_invalid_tokens_on_the_request_path() {
    let key = rsa();
    let authn = local(&key);
    let token = key.sign("RS256", "k1", &claims());

    // No token: passes, no RequestAuth; a spoofed output header is removed.
    let mut parts = request("/get", &[("x-jwt-group", "spoofed")]);
    assert!(
        super::authenticate(Some(&authn), &mut parts, "app")
            .await
            .is_ok()
    );
    assert!(parts.extensions.get::<RequestAuth>().is_none());
    assert!(parts.headers.get("x-jwt-group").is_none());

    // A valid token: RequestAuth, outputs, token removed.
    let bearer = format!("Bearer {token}");
    let mut parts = request("/get", &[("authorization", &bearer)]);
    assert!(
        super::authenticate(Some(&authn), &mut parts, "app")
            .await
            .is_ok()
    );
    let auth = parts.extensions.get::<RequestAuth>().expect("request auth");
    assert_eq!(auth.principal, "issuer-1/alice");
    assert_eq!(auth.audiences, ["app"]);
    assert_eq!(parts.headers["x-jwt-group"], "admins");
    assert_eq!(
        parts.headers["x-jwt-payload"],
        token.split('.').nth(1).expect("payload")
    );
    assert!(parts.headers.get("authorization").is_none());

    // The query parameter `access_token` is the other default location; it is removed too.
    let uri = format!("/get?a=1&access_token={token}&b=2");
    let mut parts = request(&uri, &[]);
    assert!(
        super::authenticate(Some(&authn), &mut parts, "app")
            .await
            .is_ok()
    );
    assert_eq!(parts.uri.to_string(), "/get?a=1&b=2");

    // An invalid token: 401, Envoy's body and challenge.
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    let expired = format!("Bearer {}", key.sign("RS256", "k1", &c));
    let mut parts = request("/get?x=1", &[("authorization", &expired)]);
    let local = super::authenticate(Some(&authn), &mut parts, "app.example:8080")
        .await
        .expect_err("401");
    assert_eq!(local.status, 401);
    assert_eq!(local.body.as_deref(), Some(&b"Jwt is expired"[..]));
    let h = local.headers.expect("headers");
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="http://app.example:8080/get?x=1", error="invalid_token""#
    );
    let mut parts = request("/get", &[("authorization", "Bearer not-a-jwt")]);
    let local = super::authenticate(Some(&authn), &mut parts, "app")
        .await
        .expect_err("401");
    assert!(
        String::from_utf8_lossy(local.body.as_deref().unwrap_or_default())
            .starts_with("Jwt is not in the form")
    );

    // A CORS preflight is not checked.
    let mut parts = request(
        "/get",
        &[
            ("authorization", "Bearer junk"),
            ("origin", "http://x"),
            ("access-control-request-method", "GET"),
        ],
    );
    parts.method = http::Method::OPTIONS;
    assert!(
        super::authenticate(Some(&authn), &mut parts, "app")
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------- remote JWKS

/// Serves `body()` as JSON to every request, counting them, until dropped.
struct JwksServer {
    uri: String,
    hits: Arc<AtomicUsize>,
    body: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let uri = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(std::sync::Mutex::new(body));
        let (h, b) = (Arc::clone(&hits), Arc::clone(&body));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                h.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().expect("body").clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        JwksServer {
            uri,
            hits,
            body,
            task,
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_remote_jwks_is_cached_refreshed_and_refetched_for_an_unknown_kid() {
    let (old, new) = (p256(), p256());
    let server = JwksServer::start(json!({"keys": [old.jwk("old")]}).to_string()).await;
    let cache = Duration::from_millis(600);
    let remote = RemoteJwks::shared(&server.uri, Duration::from_secs(5), cache).expect("uri");
    let first = remote.keys().await.expect("fetch");
    let again = remote.keys().await.expect("cached");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );

    // Rotation: the server now publishes `new`. A token with the new kid refetches once...
    *server.body.lock().expect("body") = json!({"keys": [new.jwk("new")]}).to_string();
    let rotated = remote.refetch_for_unknown_kid(&first).await;
    // ...unless a fetch was tried within the rate-limit interval (it was: just now).
    assert!(
        rotated.is_none(),
        "rate-limited right after the first fetch"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // After the cache duration the next use fetches the new set.
    tokio::time::sleep(cache + Duration::from_millis(100)).await;
    let fresh = remote.keys().await.expect("refresh");
    assert_eq!(fresh.keys[0].kid.as_deref(), Some("new"));
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // The same URL and timings share one cache.
    let same = RemoteJwks::shared(&server.uri, Duration::from_secs(5), cache).expect("uri");
    assert!(Arc::ptr_eq(&same, &remote));

    // The server goes away: keys past their cache duration are not used (fail closed).
    drop(server);
    tokio::time::sleep(cache + Duration::from_millis(100)).await;
    assert!(
        remote.keys().await.is_err(),
        "expired keys must not be served"
    );
}

#[tokio::test]
async fn a_jwks_that_cannot_be_fetched_fails_closed() {
    let key = p256();
    // Nothing listens on this port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let authn = filter(provider(pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(
        pb::RemoteJwks {
            http_uri: Some(HttpUri {
                uri: format!("http://127.0.0.1:{port}/jwks.json"),
                timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("jwks".into())),
            }),
            ..Default::default()
        },
    )));
    let bearer = format!("Bearer {}", key.sign("ES256", "k1", &claims()));
    let mut parts = request("/", &[("authorization", &bearer)]);
    let local = super::authenticate(Some(&authn), &mut parts, "app")
        .await
        .expect_err("401");
    assert_eq!(local.status, 401);
    assert_eq!(
        local.body.as_deref(),
        Some(&b"Jwks remote fetch is failed"[..])
    );
    // Without a token the request still passes (no JWKS needed).
    let mut parts = request("/", &[]);
    assert!(
        super::authenticate(Some(&authn), &mut parts, "app")
            .await
            .is_ok()
    );
}
