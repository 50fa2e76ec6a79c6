//! The CA's part of the management API: `GET /api/v1/ca` (trust domain, roots, rotation state),
//! `POST /api/v1/ca/tokens` (a bootstrap token for one workload; a write, so it needs the admin
//! token) and `POST /api/v1/ca/rotate?phase=add|activate|retire`. Owns only the HTTP shapes.

use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Reply, error, param, parse_query};
use crate::ca::{CertificateAuthority, RotatePhase};

/// Largest token-request body.
const MAX_BODY: usize = 4096;

pub(super) async fn route(
    ca: Option<&CertificateAuthority>,
    method: &Method,
    rest: &[&str],
    req: Request<Incoming>,
) -> Reply {
    let Some(ca) = ca else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this control plane runs no CA",
        );
    };
    match (method, rest) {
        (&Method::GET, [] | [""]) => Reply::ok(ca.describe()),
        (&Method::POST, ["tokens"]) => create_token(ca, req).await,
        (&Method::POST, ["rotate"]) => {
            let query = parse_query(req.uri().query().unwrap_or(""));
            let phase = match param(&query, "phase").unwrap_or("add") {
                "add" => RotatePhase::Add,
                "activate" => RotatePhase::Activate,
                "retire" => RotatePhase::Retire,
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("phase {other:?}: expected add, activate or retire"),
                    );
                }
            };
            match ca.rotate(phase) {
                Ok(state) => Reply::ok(state),
                Err(e) => error(StatusCode::CONFLICT, "Conflict", &e.to_string()),
            }
        }
        (_, [] | [""] | ["tokens" | "rotate"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("method {method} is not allowed here; see /openapi.json"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such CA endpoint; see /openapi.json",
        ),
    }
}

/// `{"namespace": "shop", "serviceAccount": "reviews", "ttlSeconds": 3600}` → a token.
async fn create_token(ca: &CertificateAuthority, req: Request<Incoming>) -> Reply {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "BadRequest", m);
    let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
        return bad("cannot read the body (at most 4096 bytes)");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return bad(
            r#"the body must be JSON: {"namespace": "...", "serviceAccount": "...", "ttlSeconds": 3600}"#,
        );
    };
    let text = |name: &str| body[name].as_str().unwrap_or("").to_owned();
    let (namespace, service_account) = (text("namespace"), text("serviceAccount"));
    let ttl = match &body["ttlSeconds"] {
        Value::Null => Duration::from_secs(3600),
        v => match v.as_u64() {
            Some(s) => Duration::from_secs(s),
            None => return bad("ttlSeconds must be a positive whole number"),
        },
    };
    match ca.create_token(&namespace, &service_account, ttl) {
        Ok(token) => Reply::ok(json!({
            "token": token,
            "namespace": namespace,
            "serviceAccount": service_account,
            "spiffeId": format!("spiffe://{}/ns/{namespace}/sa/{service_account}", ca.trust_domain()),
            "ttlSeconds": ttl.as_secs(),
        })),
        Err(e) => bad(&e.to_string()),
    }
}
