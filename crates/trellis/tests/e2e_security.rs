//! The security features together, as Istio's authorization tasks use them: sidecars with SPIFFE
//! identities (`--identity-dir`, a throwaway mesh CA), mutual TLS between them, and on the
//! server's inbound side AuthorizationPolicy by principal and method, then JWT authentication
//! (RequestAuthentication) with an ALLOW on `requestPrincipals` and a claim condition.
//! Workloads get their own loopback addresses (127.0.0.N); the server sidecar captures
//! 127.0.0.N:P in front of an app on 127.0.0.1:P. Needs `cargo build --workspace --bins` and
//! python3 with PyJWT + cryptography (the identity provider that mints the token).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_testkit::certs::MeshCa;
use trellis_testkit::{Process, TempDir, http_request, sample_app, wait_until};

const SERVICE_PORT: u16 = 8000;
const ISSUER: &str = "https://idp.trellis.test";

fn write_config(dir: &Path, text: &str) {
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, dir.join("mesh.yaml")).expect("rename config");
}

/// An EC P-256 key pair made by PyJWT/cryptography: the JWKS (public key) and a token for
/// `sub: alice` with `groups: [group1]`, signed with it.
fn idp_token() -> (String, String) {
    let script = format!(
        r#"
import json, time, jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
jwk.update(kid="k1", alg="ES256", use="sig")
claims = {{"iss": "{ISSUER}", "sub": "alice", "groups": ["group1"], "exp": int(time.time()) + 3600}}
token = jwt.encode(claims, key, algorithm="ES256", headers={{"kid": "k1"}})
print(json.dumps({{"jwks": json.dumps({{"keys": [jwk]}}), "token": token}}))
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "minting the token failed (are PyJWT and cryptography installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("idp json");
    (
        v["jwks"].as_str().expect("jwks").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
}

struct Mesh {
    dir: TempDir,
    base: String,
    /// (namespace of the `sleep` client, its sidecar's outbound address).
    clients: Vec<(&'static str, String)>,
    /// httpbin's workload address and port (for clients without a sidecar).
    server: String,
    _procs: Vec<Process>,
    _certs: TempDir,
}

impl Mesh {
    fn start() -> Mesh {
        let ca = MeshCa::new("cluster.local");
        let dir = TempDir::new().expect("temp dir");
        let certs = TempDir::new().expect("cert dir");
        let (app, port) = sample_app("httpbin", "v1");
        let base = format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: bar}}
spec:
  selector: {{app: httpbin}}
  ports:
  - {{name: http, port: {SERVICE_PORT}, targetPort: {port}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin, namespace: bar}}
spec:
  address: 127.0.0.72
  serviceAccount: httpbin
  labels: {{app: httpbin, security.istio.io/tlsMode: istio}}
"#
        );
        write_config(dir.path(), &base);
        let mut procs = vec![app];
        let (server, _) = ca.sidecar(dir.path(), certs.path(), "bar", "httpbin", "127.0.0.72");
        procs.push(server);
        let mut clients = Vec::new();
        for (ns, addr) in [("foo", "127.0.0.71"), ("bar", "127.0.0.73")] {
            let (p, outbound) = ca.sidecar(dir.path(), certs.path(), ns, "sleep", addr);
            procs.push(p);
            clients.push((ns, format!("{addr}:{outbound}")));
        }
        Mesh {
            dir,
            base,
            clients,
            server: format!("127.0.0.72:{port}"),
            _procs: procs,
            _certs: certs,
        }
    }

    fn apply(&self, policies: &str) {
        write_config(self.dir.path(), &format!("{}---\n{policies}", self.base));
    }

    /// `sleep.<ns>` → `httpbin.bar` through its sidecar (mTLS): status and body.
    fn call_from_sleep(&self, ns: &str, method: &str) -> (u16, String) {
        let outbound = &self
            .clients
            .iter()
            .find(|(n, _)| *n == ns)
            .expect("client")
            .1;
        let url = format!("http://{outbound}/headers");
        let (status, _, body) = http_request(
            &url,
            &[
                "-X",
                method,
                "-H",
                &format!("Host: httpbin.bar:{SERVICE_PORT}"),
            ],
        );
        (status, body)
    }

    /// A client without a sidecar, straight at the workload (plaintext, PERMISSIVE).
    fn call_from_outside(&self, extra: &[&str]) -> (u16, String) {
        let url = format!("http://{}/headers", self.server);
        let (status, _, body) = http_request(&url, extra);
        (status, body)
    }

    /// Every caller's status: sleep.foo GET and POST, sleep.bar GET, outside GET.
    fn matrix(&self) -> String {
        format!(
            "foo GET {} | foo POST {} | bar GET {} | outside GET {}",
            self.call_from_sleep("foo", "GET").0,
            self.call_from_sleep("foo", "POST").0,
            self.call_from_sleep("bar", "GET").0,
            self.call_from_outside(&[]).0
        )
    }

    fn wait_for(&self, want: &str) {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(20), || {
            last = self.matrix();
            last == want
        });
        assert!(ok, "want: {want}\ngot:  {last}");
    }
}

#[test]
fn authorization_by_mtls_principal_and_by_jwt_request_principal() {
    let mesh = Mesh::start();
    mesh.wait_for("foo GET 200 | foo POST 200 | bar GET 200 | outside GET 200");

    // Istio's HTTP authorization task: allow-nothing first…
    let allow_nothing = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: bar}
spec: {}
"#;
    mesh.apply(allow_nothing);
    mesh.wait_for("foo GET 403 | foo POST 403 | bar GET 403 | outside GET 403");
    assert_eq!(mesh.call_from_sleep("foo", "GET").1, "RBAC: access denied");

    // …then GET for the foo/sleep identity that mTLS proved, and nothing else.
    let allow_sleep = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-viewer, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"]}}]
"#;
    mesh.apply(&format!("{allow_nothing}---\n{allow_sleep}"));
    mesh.wait_for("foo GET 200 | foo POST 403 | bar GET 403 | outside GET 403");
    // The app saw the verified identity, not anything a client claimed.
    let body = mesh.call_from_sleep("foo", "GET").1;
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/foo/sa/sleep"),
        "{body}"
    );

    // A namespace-wide DENY on source.namespace wins over the ALLOW.
    let deny_foo = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-foo-posts, namespace: bar}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["foo"]}}]
    to: [{operation: {paths: ["/headers"]}}]
    when: [{key: "request.headers[x-audit]", notValues: ["allowed"]}]
"#;
    mesh.apply(&format!("{allow_nothing}---\n{allow_sleep}---\n{deny_foo}"));
    mesh.wait_for("foo GET 403 | foo POST 403 | bar GET 403 | outside GET 403");

    // JWT: a RequestAuthentication and an ALLOW on the token's principal and claim let a
    // client without a sidecar in when it shows a valid token from the identity provider.
    let (jwks, token) = idp_token();
    let jwt = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: bar}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: bar}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: ["group1"]}}]
"#
    );
    mesh.apply(&format!("{allow_nothing}---\n{allow_sleep}---\n{jwt}"));
    let bearer = format!("Authorization: Bearer {token}");
    let ok = wait_until(Duration::from_secs(20), || {
        mesh.call_from_outside(&["-H", &bearer]).0 == 200
    });
    assert!(
        ok,
        "a valid token was not let in: {:?}",
        mesh.call_from_outside(&["-H", &bearer])
    );
    // The mTLS rule still holds, a missing token is 403 (no principal), a bad one 401.
    assert_eq!(
        mesh.matrix(),
        "foo GET 200 | foo POST 403 | bar GET 403 | outside GET 403"
    );
    let (status, body) = mesh.call_from_outside(&["-H", "Authorization: Bearer YQ.e30.AA"]);
    assert_eq!(status, 401, "{body}");
    // Change one character in the middle of the signature.
    let sig = token.rfind('.').expect("signature") + 10;
    let swap = if &token[sig..=sig] == "A" { "B" } else { "A" };
    let forged = format!("{}{swap}{}", &token[..sig], &token[sig + 1..]);
    let (status, _) = mesh.call_from_outside(&["-H", &format!("Authorization: Bearer {forged}")]);
    assert_eq!(status, 401, "a token with a broken signature");
}
