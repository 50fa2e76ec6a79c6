//! Authorization end to end (Istio's `AuthorizationPolicy` tasks replayed): a sidecar
//! `trellis-proxy` in front of a sample app, policies written into its config directory, and
//! requests sent raw over TCP so every path variant reaches the proxy byte for byte. The sample
//! app's `/recent` says which requests arrived. Principals need mTLS, which the unit tests of
//! `runtime/rbac.rs` cover with constructed peers.
//! Needs `cargo build --workspace --bins`.

mod e2e_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use e2e_support::{
    Gateway, dest, docs, ep, gateway_yaml, service_entry_yaml, virtual_service_yaml, write_atomic,
};
use trellis_testkit::{
    Process, TempDir, free_port, http_get, proxy, sample_app, sample_app_on, wait_for_port,
    wait_until,
};

const RELOAD: Duration = Duration::from_secs(20);

/// One workload `httpbin` in namespace `foo` with its sidecar.
struct Workload {
    dir: TempDir,
    _app: Process,
    app_port: u16,
    sidecar: Process,
    inbound: u16,
    admin: u16,
}

fn service(app_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: foo}}
spec:
  selector: {{app: httpbin}}
  ports: [{{name: http, port: 8000, targetPort: {app_port}}}]
"#
    )
}

impl Workload {
    fn start(extra: &[(&str, &str)]) -> Workload {
        let (app, app_port) = sample_app("httpbin", "v1");
        let dir = TempDir::new().expect("temp dir");
        write(dir.path(), "service.yaml", &service(app_port));
        for (name, yaml) in extra {
            write(dir.path(), name, yaml);
        }
        let outbound = free_port().to_string();
        let inbound = free_port();
        let inbound_arg = inbound.to_string();
        let args = [
            "--role",
            "sidecar",
            "--namespace",
            "foo",
            "--labels",
            "app=httpbin,version=v1",
            "--outbound-port",
            &outbound,
            "--inbound-port",
            &inbound_arg,
            "--app-address",
            "127.0.0.1",
        ];
        let (sidecar, admin) = proxy(dir.path(), &args);
        Workload {
            dir,
            _app: app,
            app_port,
            sidecar,
            inbound,
            admin,
        }
    }

    fn apply(&self, file: &str, yaml: &str) {
        write(self.dir.path(), file, yaml);
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.path().join(file)).expect("remove policy");
    }

    /// `METHOD target` on the inbound listener: (status, body).
    fn send(&self, method: &str, target: &str) -> (u16, String) {
        self.send_with(method, target, &[])
    }

    fn send_with(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
        raw_request(
            SocketAddr::from(([127, 0, 0, 1], self.inbound)),
            method,
            target,
            headers,
        )
    }

    /// Waits until `method target` answers `status` (a config change has been applied).
    fn await_status(&mut self, method: &str, target: &str, status: u16) {
        let mut last = (0, String::new());
        let ok = wait_until(RELOAD, || {
            last = self.send(method, target);
            last.0 == status
        });
        assert!(
            ok,
            "{method} {target}: wanted {status}, last answer {last:?}\n{}",
            self.sidecar.describe()
        );
    }

    /// The sum of a Prometheus series of the sidecar whose labels include `want`.
    fn metric(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let (status, _, text) =
            http_get(&format!("http://127.0.0.1:{}/stats/prometheus", self.admin));
        assert_eq!(status, 200, "{text}");
        e2e_support::metric_sum(&text, name, want)
    }

    /// The paths the application saw, in order.
    fn arrived(&self) -> Vec<String> {
        let (status, _, body) = http_get(&format!("http://127.0.0.1:{}/recent", self.app_port));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("recent is JSON");
        v["requests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["path"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn write(dir: &Path, file: &str, yaml: &str) {
    // Write then rename, so the proxy never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

/// One HTTP/1.1 request written byte for byte (no client-side path cleanup); `(0, why)` when
/// the connection fails.
fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, "connect failed".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nhost: httpbin.foo.svc.cluster.local:8000\r\nconnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("content-length: 0\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, "write failed".into());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn policy(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// Istio's "Authorization for HTTP traffic" task: allow-nothing, then allow by method; a
/// root-namespace DENY applies mesh-wide; a policy selecting other workloads does not apply.
#[test]
fn allow_nothing_then_allow_by_method_and_mesh_wide_deny() {
    let mut w = Workload::start(&[]);
    assert_eq!(w.send("GET", "/get").0, 200);

    w.apply(
        "allow-nothing.yaml",
        &policy("allow-nothing", "foo", "  {}\n"),
    );
    w.await_status("GET", "/get", 403);
    let (status, body) = w.send("GET", "/status/200?first");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(w.send("POST", "/post").0, 403);
    assert!(
        !w.arrived()
            .iter()
            .any(|p| p.starts_with("/status/200?first")),
        "a denied request reached the app: {:?}",
        w.arrived()
    );

    // `ports` are the workload's (target) ports, as on a captured connection.
    let viewer = format!(
        "  selector: {{matchLabels: {{app: httpbin}}}}\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{methods: [GET], ports: ['{}']}}}}]\n",
        w.app_port
    );
    w.apply("viewer.yaml", &policy("httpbin-viewer", "foo", &viewer));
    w.await_status("GET", "/get", 200);
    assert_eq!(w.send("GET", "/status/200").0, 200);
    assert_eq!(w.send("POST", "/post").0, 403, "only GET is allowed");
    assert_eq!(w.send("HEAD", "/get").0, 403, "only GET is allowed");

    // Mesh-wide (root namespace, no selector) DENY of /admin*.
    w.apply(
        "deny-admin.yaml",
        &policy(
            "deny-admin",
            "istio-system",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: ['/admin*']}}]\n",
        ),
    );
    w.await_status("GET", "/admin/users", 403);
    assert_eq!(w.send("GET", "/get").0, 200);

    // A policy for other workloads, or in another namespace, does not apply here.
    w.apply(
        "others.yaml",
        &format!(
            "{}---\n{}",
            policy(
                "deny-get-other-app",
                "foo",
                "  selector: {matchLabels: {app: other}}\n  action: DENY\n  rules: [{}]\n"
            ),
            policy("deny-all-bar", "bar", "  action: DENY\n  rules: [{}]\n"),
        ),
    );
    // Wait until the file is certainly applied: a marker DENY that does apply.
    w.apply(
        "marker.yaml",
        &policy(
            "marker",
            "foo",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/marker]}}]\n",
        ),
    );
    w.await_status("GET", "/marker", 403);
    assert_eq!(w.send("GET", "/get").0, 200);

    // Removing the ALLOW policy falls back to allow-nothing.
    w.remove("viewer.yaml");
    w.await_status("GET", "/get", 403);
    w.remove("allow-nothing.yaml");
    w.await_status("GET", "/get", 200);
}

/// Istio's "deny" task: DENY GET unless `x-token: admin` (`notValues`), and DENY `/ip` from
/// any namespace but `foo` (a plaintext client has none, so it is denied).
#[test]
fn deny_with_not_values() {
    let mut w = Workload::start(&[]);
    w.apply(
        "deny.yaml",
        &policy(
            "deny-method-get",
            "foo",
            "  selector: {matchLabels: {app: httpbin}}\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n    when: [{key: 'request.headers[x-token]', notValues: [admin]}]\n  - from: [{source: {notNamespaces: [foo]}}]\n    to: [{operation: {paths: [/ip]}}]\n",
        ),
    );
    w.await_status("GET", "/get", 403);
    assert_eq!(w.send_with("GET", "/get", &[("x-token", "guest")]).0, 403);
    assert_eq!(w.send_with("GET", "/get", &[("x-token", "admin")]).0, 200);
    assert_eq!(w.send("POST", "/post").0, 200, "only GET is denied");
    assert_eq!(w.send_with("POST", "/ip", &[("x-token", "admin")]).0, 403);
    // A method that is not upper case is rejected before any rule sees it (Istio).
    assert_eq!(w.send_with("get", "/get", &[("x-token", "guest")]).0, 400);
    // Header names compare case-insensitively, values exactly.
    assert_eq!(w.send_with("GET", "/get", &[("X-Token", "admin")]).0, 200);
    assert_eq!(w.send_with("GET", "/get", &[("x-token", "ADMIN")]).0, 403);
}

const ECHO: &str = "tcp-echo.istio-system.svc.cluster.local";

/// A gateway (namespace `istio-system`, `istio: ingressgateway`) with TCP servers on `ports`,
/// each routed to the echo service.
fn tcp_gateway(ports: &[u16], echo_port: u16) -> String {
    let mut gw = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n",
    );
    let mut routes = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo, namespace: istio-system}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  tcp:\n",
    );
    for p in ports {
        gw.push_str(&format!(
            "  - port: {{number: {p}, name: tcp-{p}, protocol: TCP}}\n    hosts: ['*']\n"
        ));
        routes.push_str(&format!(
            "  - match: [{{port: {p}}}]\n    route: [{{destination: {}}}]\n",
            dest(ECHO, None, 9000)
        ));
    }
    let entry = service_entry_yaml("tcp-echo", ECHO, 9000, "TCP", &[ep(echo_port, "v1")])
        .replace("namespace: default", "namespace: istio-system");
    docs(&[gw, entry, routes])
}

/// `hi` through the gateway port: the echo's `name/version` prefix, or why not.
fn echo_via(port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let reply = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"hi\n")?;
        s.shutdown(Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match reply {
        Ok(r) => r
            .strip_suffix(" hi\n")
            .map_or(format!("closed: {r:?}"), str::to_string),
        Err(e) => format!("closed: {e}"),
    }
}

fn await_echo(port: u16, want_open: bool, gw: &mut Gateway) {
    let mut last = String::new();
    let ok = wait_until(RELOAD, || {
        last = echo_via(port);
        (last == "tcp-echo/v1") == want_open
    });
    assert!(
        ok,
        "port {port}: wanted open={want_open}, last {last:?}\n{}",
        gw.proxy.describe()
    );
}

/// Istio's "Authorization for TCP traffic" task on a gateway: ALLOW by port, then the two
/// fail-closed cases (an ALLOW rule with an HTTP-only field is dropped, so nothing is allowed;
/// a DENY rule's HTTP-only field is ignored, so the rule denies the whole port).
#[test]
fn tcp_authorization_by_port_and_fail_closed_rules() {
    let echo_port = free_port();
    let _echo = sample_app_on(echo_port, "tcp-echo", "v1", &["--tcp-echo"]);
    let (a, b) = (free_port(), free_port());
    let mut gw = Gateway::start(a, &tcp_gateway(&[a, b], echo_port));
    assert!(wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], b)),
        Duration::from_secs(10)
    ));
    assert_eq!(echo_via(a), "tcp-echo/v1");
    assert_eq!(echo_via(b), "tcp-echo/v1");
    let dir = gw.dir.path().to_path_buf();
    let write = |spec: &str| {
        write_atomic(
            &dir,
            "policy.yaml",
            &policy("tcp-policy", "istio-system", spec),
        )
    };

    write(&format!(
        "  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{ports: ['{a}']}}}}]\n"
    ));
    await_echo(b, false, &mut gw);
    assert_eq!(echo_via(a), "tcp-echo/v1");

    // ALLOW with `methods` on a TCP port: the rule is dropped, nothing is allowed.
    write(&format!(
        "  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{methods: [GET], ports: ['{a}']}}}}]\n"
    ));
    await_echo(a, false, &mut gw);
    assert_ne!(echo_via(b), "tcp-echo/v1");

    // DENY with `methods` on a TCP port: the method is ignored, the whole port is denied.
    write(&format!(
        "  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules:\n  - to: [{{operation: {{methods: [GET], ports: ['{a}']}}}}]\n"
    ));
    await_echo(b, true, &mut gw);
    assert_ne!(echo_via(a), "tcp-echo/v1");
}

/// What one path variant must do under a normalization mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 403 from RBAC: the path normalized to `/admin`.
    Denied,
    /// 400: the path cannot be normalized safely.
    Rejected,
    /// Forwarded, and the application saw exactly this path.
    Arrives(&'static str),
}

use Expect::{Arrives, Denied, Rejected};

/// Every variant from Istio's normalization docs and security bulletins, against a DENY of
/// `/admin`, with what Istio documents for NONE, BASE, MERGE_SLASHES and
/// DECODE_AND_MERGE_SLASHES.
const BYPASS: &[(&str, [Expect; 4])] = &[
    ("/admin", [Denied, Denied, Denied, Denied]),
    ("/admin?x=1", [Denied, Denied, Denied, Denied]),
    (
        "//admin",
        [Arrives("//admin"), Arrives("//admin"), Denied, Denied],
    ),
    (
        "/%2Fadmin",
        [
            Arrives("/%2Fadmin"),
            Arrives("/%2Fadmin"),
            Arrives("/%2Fadmin"),
            Denied,
        ],
    ),
    (
        "/%2fadmin",
        [
            Arrives("/%2fadmin"),
            Arrives("/%2fadmin"),
            Arrives("/%2fadmin"),
            Denied,
        ],
    ),
    (
        "/%5Cadmin",
        [
            Arrives("/%5Cadmin"),
            Arrives("/%5Cadmin"),
            Arrives("/%5Cadmin"),
            Denied,
        ],
    ),
    ("/%61dmin", [Arrives("/%61dmin"), Denied, Denied, Denied]),
    (
        "/%61%64%6D%69%6E",
        [Arrives("/%61%64%6D%69%6E"), Denied, Denied, Denied],
    ),
    ("/./admin", [Arrives("/./admin"), Denied, Denied, Denied]),
    (
        "/a/../admin",
        [Arrives("/a/../admin"), Denied, Denied, Denied],
    ),
    (
        "/%2e/admin",
        [Arrives("/%2e/admin"), Denied, Denied, Denied],
    ),
    (
        "/x/%2E%2E/admin",
        [Arrives("/x/%2E%2E/admin"), Denied, Denied, Denied],
    ),
    (
        "/./a/..//admin",
        [
            Arrives("/./a/..//admin"),
            Arrives("//admin"),
            Denied,
            Denied,
        ],
    ),
    (
        "/\\admin",
        [Arrives("/\\admin"), Arrives("//admin"), Denied, Denied],
    ),
    ("\\admin", [Rejected; 4]),
    // The HTTP parser drops a fragment before anything sees the path (Envoy answers 400): the
    // path authorized and forwarded is `/admin`, so it is denied.
    ("/admin#frag", [Denied; 4]),
    // Case is not normalized (Istio: paths compare case-sensitively).
    ("/ADMIN", [Arrives("/ADMIN"); 4]),
    // Path parameters are not stripped: `/admin;x` is another path to Istio and to us.
    ("/admin;x", [Arrives("/admin;x"); 4]),
    ("/admin%00", [Rejected; 4]),
    (
        "/adm%zzin",
        [Arrives("/adm%zzin"), Rejected, Rejected, Rejected],
    ),
];

const MODES: [&str; 4] = ["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"];

fn mesh_config(mode: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  pathNormalization: {{normalization: {mode}}}\n"
    )
}

/// The bypass suite: for each mode, every variant is denied, rejected or arrives exactly as
/// the table says, and `/admin` itself never reaches the application.
#[test]
fn path_normalization_modes_close_the_documented_bypasses() {
    let deny = policy(
        "deny-admin",
        "foo",
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n",
    );
    let w = Workload::start(&[("deny.yaml", &deny), ("mesh.yaml", &mesh_config("NONE"))]);
    // A probe per mode that behaves differently from the previous mode.
    let probes = ["/./admin", "/./admin", "//admin", "/%2Fadmin"];
    for (m, mode) in MODES.iter().enumerate() {
        w.apply("mesh.yaml", &mesh_config(mode));
        let want = BYPASS
            .iter()
            .find(|(p, _)| *p == probes[m])
            .map(|(_, e)| e[m])
            .expect("probe in table");
        let mut last = (0, String::new());
        let applied = wait_until(RELOAD, || {
            last = w.send("GET", probes[m]);
            (last.0 == 403) == (want == Denied)
        });
        assert!(applied, "mode {mode} never applied: {last:?}");
        for (variant, expects) in BYPASS {
            let before = w.arrived();
            let (status, body) = w.send("GET", variant);
            let after = w.arrived();
            let arrived: Vec<&String> = after.iter().skip(before.len()).collect();
            match expects[m] {
                Denied => {
                    assert_eq!(
                        (status, body.as_str()),
                        (403, "RBAC: access denied"),
                        "{mode} {variant}"
                    );
                    assert!(
                        arrived.is_empty(),
                        "{mode} {variant} arrived as {arrived:?}"
                    );
                }
                Rejected => {
                    assert_eq!(status, 400, "{mode} {variant}: {body}");
                    assert!(
                        arrived.is_empty(),
                        "{mode} {variant} arrived as {arrived:?}"
                    );
                }
                Arrives(path) => {
                    assert!(
                        status != 403 && status != 400 && status != 0,
                        "{mode} {variant}: {status} {body}"
                    );
                    assert_eq!(arrived, [path], "{mode} {variant}");
                }
            }
        }
        assert!(
            !w.arrived()
                .iter()
                .any(|p| p == "/admin" || p.starts_with("/admin?")),
            "{mode}: /admin reached the application: {:?}",
            w.arrived()
        );
    }
}

/// Istio's dry-run annotation: a DENY-all policy with `istio.io/dry-run: "true"` never denies
/// but counts what it would have denied; an AUDIT policy never denies and counts the requests
/// it matches; CUSTOM (no external authorizer yet) fails closed.
#[test]
fn dry_run_and_audit_only_count_and_custom_fails_closed() {
    let mut w = Workload::start(&[]);
    let dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-all-dry-run\n  namespace: foo\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n";
    let audit = policy(
        "audit-post",
        "foo",
        "  action: AUDIT\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n",
    );
    let marker = policy(
        "marker",
        "foo",
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/marker]}}]\n",
    );
    w.apply("policies.yaml", &format!("{dry}---\n{audit}---\n{marker}"));
    w.await_status("GET", "/marker", 403);
    let hcm = format!("inbound_0.0.0.0_{}", w.inbound);
    let prefix = [("envoy_http_conn_manager_prefix", hcm.as_str())];
    let shadow = [
        ("envoy_http_conn_manager_prefix", hcm.as_str()),
        ("shadow_rules_prefix", "istio_dry_run_deny_"),
    ];
    let denied_before = w.metric("envoy_http_rbac_shadow_denied_total", &shadow);
    let logged_before = w.metric("envoy_http_rbac_logged_total", &prefix);
    for _ in 0..3 {
        assert_eq!(w.send("GET", "/get").0, 200, "dry-run never denies");
    }
    assert_eq!(w.send("POST", "/post").0, 200, "audit never denies");
    assert_eq!(
        w.metric("envoy_http_rbac_shadow_denied_total", &shadow) - denied_before,
        4.0,
        "every request would have been denied"
    );
    assert_eq!(
        w.metric("envoy_http_rbac_logged_total", &prefix) - logged_before,
        1.0
    );
    let denied = w.metric("envoy_http_rbac_denied_total", &prefix);
    assert!(denied >= 1.0, "the marker request was denied: {denied}");

    w.apply(
        "custom.yaml",
        &policy(
            "ext-authz",
            "foo",
            "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules:\n  - to: [{operation: {paths: ['/headers']}}]\n",
        ),
    );
    w.await_status("GET", "/headers", 403);
    assert_eq!(
        w.send("GET", "/get").0,
        200,
        "only what the CUSTOM rules match"
    );
}

/// Istio's sample HTTP external authorizer: allows a request carrying `x-ext-authz: allow`
/// (only on paths under its `/check` prefix), answers `x-ext-authz-check-result` either way.
const AUTHORIZER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def check(self):
        ok = self.path.startswith("/check/") and self.headers.get("x-ext-authz") == "allow"
        body = b"" if ok else b"denied by ext_authz for not found header `x-ext-authz: allow` in the request"
        self.send_response(200 if ok else 403)
        self.send_header("x-ext-authz-check-result", "allowed" if ok else "denied")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = check
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn ext_authz_config(port: u16) -> String {
    format!(
        r#"apiVersion: trellis.dev/v1alpha1
kind: MeshConfig
metadata: {{name: mesh, namespace: istio-system}}
spec:
  extensionProviders:
  - name: sample-ext-authz-http
    envoyExtAuthzHttp:
      service: ext-authz.foo.svc.cluster.local
      port: 8000
      pathPrefix: /check
      timeout: 5s
      includeRequestHeadersInCheck: [x-ext-authz]
      headersToUpstreamOnAllow: [x-ext-authz-check-result]
      headersToDownstreamOnDeny: [x-ext-authz-check-result]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: foo}}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"#
    )
}

/// Istio's "External authorization" task with the HTTP provider: a CUSTOM policy on `/headers`
/// sends those requests to the authorizer, which decides by header; other paths never reach
/// it; an unreachable authorizer denies (403, `statusOnError`'s default).
#[test]
fn custom_action_with_an_http_external_authorizer() {
    let authz_port = free_port();
    let port_arg = authz_port.to_string();
    let mut authorizer = Process::spawn("python3", ["-c", AUTHORIZER, &port_arg], &[]);
    assert!(
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], authz_port)),
            Duration::from_secs(10)
        ),
        "authorizer did not start: {}",
        authorizer.describe()
    );
    let custom = policy(
        "ext-authz",
        "foo",
        "  selector: {matchLabels: {app: httpbin}}\n  action: CUSTOM\n  provider: {name: sample-ext-authz-http}\n  rules:\n  - to: [{operation: {paths: [/headers]}}]\n",
    );
    let mut w = Workload::start(&[
        ("ext-authz.yaml", &ext_authz_config(authz_port)),
        ("custom.yaml", &custom),
    ]);
    w.await_status("GET", "/headers", 403);
    let (status, body) = w.send_with("GET", "/headers", &[("x-ext-authz", "deny")]);
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "denied by ext_authz for not found header `x-ext-authz: allow` in the request"
    );
    let (status, body) = w.send_with("GET", "/headers", &[("x-ext-authz", "allow")]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("headers JSON");
    assert_eq!(
        seen["headers"]["x-ext-authz-check-result"], "allowed",
        "the authorizer's header reaches the app: {body}"
    );
    assert_eq!(
        w.send("GET", "/get").0,
        200,
        "/get is not under the CUSTOM rule"
    );

    drop(authorizer);
    w.await_status("GET", "/headers", 403);
    let (status, _) = w.send_with("GET", "/headers", &[("x-ext-authz", "allow")]);
    assert_eq!(status, 403, "an unreachable authorizer denies");
    assert_eq!(w.send("GET", "/get").0, 200);
}

/// `remoteIpBlocks` on a gateway behind one trusted proxy (MeshConfig
/// `defaultConfig.gatewayTopology.numTrustedProxies: 1`): the client address is the last
/// `x-forwarded-for` entry; `ipBlocks` still sees the direct peer.
#[test]
fn remote_ip_blocks_trust_the_configured_proxies() {
    let (_app, app_port) = sample_app("web", "v1");
    let port = free_port();
    let host = "web.example.com";
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("web", host, 80, "HTTP", &[ep(app_port, "v1")]),
        virtual_service_yaml("web", &["*"], &format!("  - route: [{{destination: {}}}]\n", dest(host, None, 80))),
        "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n".to_string(),
        policy(
            "allow-office",
            "istio-system",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  rules:\n  - from: [{source: {remoteIpBlocks: [203.0.113.0/24], ipBlocks: [127.0.0.0/8]}}]\n",
        ),
    ]);
    let gw = Gateway::start(port, &yaml);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let get = |xff: Option<&str>| {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
        raw_request(addr, "GET", "/get", &headers).0
    };
    let mut last = 0;
    let ok = wait_until(RELOAD, || {
        last = get(Some("203.0.113.5"));
        last == 200
    });
    assert!(ok, "office client never allowed: {last}");
    assert_eq!(
        get(Some("198.51.100.1, 203.0.113.5")),
        200,
        "the last hop is trusted"
    );
    assert_eq!(get(Some("203.0.113.5, 198.51.100.1")), 403);
    assert_eq!(
        get(None),
        403,
        "no x-forwarded-for: the client is the peer 127.0.0.1"
    );
    drop(gw);
}
