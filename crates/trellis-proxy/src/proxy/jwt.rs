//! JWT authentication on the request path (Envoy's `jwt_authn` filter as Istio configures it):
//! find each provider's token (headers with a prefix, query parameters, cookies), verify it
//! (`verify.rs`, keys from `jwks.rs`), evaluate the listener's requirement (Istio: any provider,
//! or no token at all), then on success put a [`RequestAuth`] in the request's extensions for
//! authorization, write `forward_payload_header` / `claim_to_headers`, and remove the token
//! unless `forward`. A failure is a 401 (403 for a disallowed audience, as Envoy) with Envoy's
//! body (`Jwt is expired`, …) and `WWW-Authenticate: Bearer realm="<url>",
//! error="invalid_token"`. Runs before routing.
//! Configuration is `runtime/jwt.rs`; this module does not decide who may do what (authz does).

pub mod jwks;
pub mod metrics;
pub mod verify;

use std::time::SystemTime;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::Local;
use crate::runtime::jwt::{JwtAuthn, KeySource, Provider, Requirement, TokenLocation};
use crate::security::RequestAuth;
use verify::JwtError;

/// One provider's look at the request.
enum Outcome {
    /// No token in the provider's locations.
    Missing,
    Verified(Verified),
    Failed(JwtError),
}

struct Verified {
    location: TokenLocation,
    payload_b64: String,
    claims: serde_json::Map<String, Value>,
}

/// Authenticates the request in place; `Err` is the 401 to send. A listener without the filter,
/// a CORS preflight (when bypassed) and a path no rule covers pass untouched.
pub async fn authenticate(
    authn: Option<&JwtAuthn>,
    parts: &mut Parts,
    host: &str,
) -> Result<(), Local> {
    let Some(authn) = authn else {
        return Ok(());
    };
    for h in &authn.output_headers {
        parts.headers.remove(h);
    }
    if authn.bypass_cors_preflight && is_preflight(parts) {
        return Ok(());
    }
    let Some(requirement) = authn.requirement(parts.uri.path()) else {
        return Ok(());
    };
    let mut outcomes = Vec::with_capacity(authn.providers.len());
    for p in &authn.providers {
        let outcome = match find_token(p, parts) {
            None => Outcome::Missing,
            Some((token, location)) => match verify_token(p, &token).await {
                Ok((payload_b64, claims)) => Outcome::Verified(Verified {
                    location,
                    payload_b64,
                    claims,
                }),
                Err(e) => Outcome::Failed(e),
            },
        };
        let error = match &outcome {
            Outcome::Missing => Some(&JwtError::Missing),
            Outcome::Verified(_) => None,
            Outcome::Failed(e) => Some(e),
        };
        metrics::authn(&p.issuer, error);
        outcomes.push(outcome);
    }
    let any_token = outcomes.iter().any(|o| !matches!(o, Outcome::Missing));
    match evaluate(requirement, &outcomes, any_token) {
        Ok(first) => {
            apply_outputs(authn, &outcomes, parts);
            if let Some(Outcome::Verified(v)) = first.map(|i| &outcomes[i]) {
                parts.extensions.insert(request_auth(&v.claims));
            }
            Ok(())
        }
        Err(e) => Err(unauthorized(&e, parts, host)),
    }
}

/// `Ok(Some(i))`: satisfied by provider `i`'s token; `Ok(None)`: satisfied without a token.
fn evaluate(
    req: &Requirement,
    outcomes: &[Outcome],
    any_token: bool,
) -> Result<Option<usize>, JwtError> {
    match req {
        Requirement::Provider(i) => match &outcomes[*i] {
            Outcome::Verified(_) => Ok(Some(*i)),
            Outcome::Missing => Err(JwtError::Missing),
            Outcome::Failed(e) => Err(e.clone()),
        },
        Requirement::AllowMissing if !any_token => Ok(None),
        Requirement::AllowMissing => Err(JwtError::Missing),
        Requirement::AllowMissingOrFailed => Ok(None),
        Requirement::Any(list) => {
            let mut error: Option<JwtError> = None;
            let mut passed = false;
            for r in list {
                match evaluate(r, outcomes, any_token) {
                    Ok(Some(i)) => return Ok(Some(i)),
                    Ok(None) => passed = true,
                    Err(e) => {
                        if error.as_ref().is_none_or(|x| rank(x) < rank(&e)) {
                            error = Some(e);
                        }
                    }
                }
            }
            match error {
                _ if passed => Ok(None),
                Some(e) => Err(e),
                None => Ok(None),
            }
        }
        Requirement::All(list) => {
            let mut first = None;
            for r in list {
                first = first.or(evaluate(r, outcomes, any_token)?);
            }
            Ok(first)
        }
    }
}

/// Which failure explains a refused request best: no token < a token for another issuer <
/// anything else (expired, bad signature, …), so a token is judged by the provider it names.
fn rank(e: &JwtError) -> u8 {
    match e {
        JwtError::Missing => 0,
        JwtError::UnknownIssuer => 1,
        _ => 2,
    }
}

async fn verify_token(
    p: &Provider,
    token: &str,
) -> Result<(String, serde_json::Map<String, Value>), JwtError> {
    let t = verify::parse(token)?;
    t.check_claims(&p.issuer, &p.audiences, SystemTime::now(), p.clock_skew)?;
    match &p.keys {
        KeySource::Local(keys) => t.verify(keys)?,
        KeySource::Remote(remote) => {
            let keys = remote.keys().await.map_err(|_| JwtError::JwksFetchFail)?;
            match t.verify(&keys) {
                Err(JwtError::KidAlgMismatch) if t.kid.is_some() => {
                    // A key rotated in since the last fetch: look again (rate-limited).
                    let fresh = remote
                        .refetch_for_unknown_kid(&keys)
                        .await
                        .ok_or(JwtError::KidAlgMismatch)?;
                    t.verify(&fresh)?;
                }
                r => r?,
            }
        }
    }
    Ok((t.payload_b64.to_string(), t.claims))
}

/// The first token in the provider's locations.
fn find_token(p: &Provider, parts: &Parts) -> Option<(String, TokenLocation)> {
    for loc in &p.locations {
        let found = match loc {
            TokenLocation::Header(name, prefix) => {
                parts.headers.get_all(name).iter().find_map(|v| {
                    let v = v.to_str().ok()?.trim();
                    let rest = if prefix.is_empty() {
                        v
                    } else {
                        let head = v.get(..prefix.len())?;
                        head.eq_ignore_ascii_case(prefix)
                            .then(|| &v[prefix.len()..])?
                    };
                    let rest = rest.trim();
                    (!rest.is_empty()).then(|| rest.to_string())
                })
            }
            TokenLocation::Param(name) => parts.uri.query().and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == name && !v.is_empty()).then(|| v.to_string())
                })
            }),
            TokenLocation::Cookie(name) => cookie(&parts.headers, name),
        };
        if let Some(token) = found {
            return Some((token, loc.clone()));
        }
    }
    None
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.trim_matches('"').to_string())
        })
}

fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts.headers.contains_key(http::header::ORIGIN)
        && parts
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Outputs of every provider that verified its token, and token removal unless `forward`.
fn apply_outputs(authn: &JwtAuthn, outcomes: &[Outcome], parts: &mut Parts) {
    for (p, outcome) in authn.providers.iter().zip(outcomes) {
        let Outcome::Verified(v) = outcome else {
            continue;
        };
        if let Some(h) = &p.forward_payload_header
            && let Ok(value) = HeaderValue::from_str(&v.payload_b64)
        {
            parts.headers.insert(h, value);
        }
        for (h, claim) in &p.claim_to_headers {
            if let Some(value) =
                claim_value(&v.claims, claim).and_then(|s| HeaderValue::from_str(&s).ok())
            {
                parts.headers.insert(h, value);
            }
        }
        if !p.forward {
            remove_token(&v.location, parts);
        }
    }
}

/// A claim (nested with `.`) as a header value: strings as they are, numbers and booleans
/// printed, lists of those joined with `,`.
fn claim_value(claims: &serde_json::Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Value::Array(l) => l
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|l| l.join(",")),
        v => scalar(v),
    }
}

fn remove_token(location: &TokenLocation, parts: &mut Parts) {
    match location {
        TokenLocation::Header(name, _) => {
            parts.headers.remove(name);
        }
        TokenLocation::Param(name) => {
            let Some(pq) = parts.uri.path_and_query() else {
                return;
            };
            let kept: Vec<&str> = pq
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(name.as_str()))
                .collect();
            let new = if kept.is_empty() {
                pq.path().to_string()
            } else {
                format!("{}?{}", pq.path(), kept.join("&"))
            };
            let mut uri = parts.uri.clone().into_parts();
            if let Ok(pq) = new.parse() {
                uri.path_and_query = Some(pq);
                if let Ok(u) = http::Uri::from_parts(uri) {
                    parts.uri = u;
                }
            }
        }
        // Envoy leaves cookies in place.
        TokenLocation::Cookie(_) => {}
    }
}

fn request_auth(claims: &serde_json::Map<String, Value>) -> RequestAuth {
    let s = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    let audiences = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(l)) => l
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    RequestAuth {
        principal: format!("{}/{}", s("iss"), s("sub")),
        audiences,
        presenter: claims.get("azp").and_then(Value::as_str).map(String::from),
        claims: claims.clone(),
    }
}

/// Envoy's answer: 403 for a token whose audience is not allowed, else 401; the body is the
/// reason; the challenge's realm is the request URL as received (query included).
fn unauthorized(e: &JwtError, parts: &Parts, host: &str) -> Local {
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut challenge = format!("Bearer realm=\"{scheme}://{host}{path}\"");
    if *e != JwtError::Missing {
        challenge.push_str(", error=\"invalid_token\"");
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        headers.insert(http::header::WWW_AUTHENTICATE, v);
    }
    let status = if *e == JwtError::AudienceNotAllowed {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    Local {
        status,
        flag: "-",
        message: String::new(),
        body: Some(bytes::Bytes::from(e.to_string())),
        headers: Some(Box::new(headers)),
    }
}

#[cfg(test)]
mod tests;
