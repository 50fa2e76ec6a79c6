//! Gateway API acceptance tests, in the spirit of the API's own conformance suite: real
//! `trellis sample-app`s behind a gateway `trellis-proxy` labelled
//! `gateway.networking.k8s.io/gateway-name` and compiled from Gateway API YAML — by itself
//! (`--config-dir`) and from `trellis control` over xDS, with `trellis get` showing status —
//! plus a mesh (GAMMA) route on a sidecar. Needs `cargo build --workspace --bins`.

mod control_support;
mod e2e_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use control_support::Control;
use e2e_support::*;
use trellis_testkit::{
    Process, TempDir, bin_path, free_port, http_get, http_request, proxy, sample_app,
    sample_app_on, wait_for_port, wait_until,
};

/// A STATIC ServiceEntry standing in for Kubernetes Service `name.ns` on `port`, with one
/// endpoint on 127.0.0.1:`app_port`.
fn service(name: &str, ns: &str, port: u16, protocol: &str, app_port: u16) -> String {
    let port_name = protocol.to_ascii_lowercase();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: {port_name}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, ports: {{{port_name}: {app_port}}}}}]
"#
    )
}

/// Gateway `web` in `infra`: HTTP on `http` for routes of namespace `apps` (by the namespace
/// name label), TCP on `tcp` for any namespace.
fn gateway(http: u16, tcp: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: infra}}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: {http}
    protocol: HTTP
    allowedRoutes:
      namespaces: {{from: Selector, selector: {{matchLabels: {{kubernetes.io/metadata.name: apps}}}}}}
  - {{name: tcp, port: {tcp}, protocol: TCP, allowedRoutes: {{namespaces: {{from: All}}}}}}
"#
    )
}

/// An HTTPRoute `name` in `ns` on the `http` listener of `infra/web` for `host`.
fn http_route(name: &str, ns: &str, host: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{name: web, namespace: infra, sectionName: http}}]
  hostnames: [{host}]
  rules:
{rules}"#
    )
}

const ROUTES: &str = r#"  - matches: [{path: {type: PathPrefix, value: /anything/match}}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: Exact, value: /get}}]
    backendRefs: [{name: echo-v2, port: 80}]
"#;

const SPLIT: &str = r#"  - backendRefs:
    - {name: echo, port: 80, weight: 3}
    - {name: echo-v2, port: 80, weight: 1}
"#;

const HEADERS: &str = r#"  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-gw, value: set-by-gateway}]
        add: [{name: x-added, value: "yes"}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-resp, value: from-gateway}]}
    backendRefs: [{name: echo, port: 80}]
"#;

const REDIRECT: &str = r#"  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.example.com, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}
  - matches: [{path: {type: Exact, value: /temp}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: temp.example.com}}]
"#;

const REWRITE: &str = r#"  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /anything/v2}}
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /anything/replaced}}}
    backendRefs: [{name: echo, port: 80}]
"#;

const MIRROR: &str = r#"  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}
    backendRefs: [{name: echo, port: 80}]
"#;

const CROSS: &str = r#"  - backendRefs: [{name: billing, namespace: billing, port: 80}]
"#;

const GRANT: &str = r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-apps, namespace: billing}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]
  to: [{group: "", kind: Service, name: billing}]
"#;

fn grpc_route() -> String {
    r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{name: web, namespace: infra, sectionName: http}]
  rules:
  - matches: [{method: {service: trellis.sample.v1.Echo}}]
    backendRefs: [{name: grpc-echo, port: 50051}]
"#
    .into()
}

fn tcp_route() -> String {
    r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: tcp-echo, namespace: apps}
spec:
  parentRefs: [{name: web, namespace: infra, sectionName: tcp}]
  rules: [{backendRefs: [{name: tcp-echo, port: 9000}]}]
"#
    .into()
}

/// The sample apps and the whole configuration of the gateway tests.
struct Mesh {
    apps: Apps,
    _tcp: Process,
    yaml: String,
}

fn mesh(http: u16, tcp: u16) -> Mesh {
    let apps = Apps::start(&[("echo", "v1"), ("echo", "v2"), ("billing", "v1")]);
    let tcp_port = free_port();
    let tcp_app = sample_app_on(tcp_port, "tcp-echo", "v1", &["--tcp-echo"]);
    let yaml = docs(&[
        gateway(http, tcp),
        service("echo", "apps", 80, "HTTP", apps.port("echo/v1")),
        service("echo-v2", "apps", 80, "HTTP", apps.port("echo/v2")),
        service("grpc-echo", "apps", 50051, "GRPC", apps.port("echo/v1")),
        service("billing", "billing", 80, "HTTP", apps.port("billing/v1")),
        service("tcp-echo", "apps", 9000, "TCP", tcp_port),
        http_route("basic", "apps", "basic.example.com", ROUTES),
        http_route("split", "apps", "split.example.com", SPLIT),
        http_route("headers", "apps", "headers.example.com", HEADERS),
        http_route("redirect", "apps", "redirect.example.com", REDIRECT),
        http_route("rewrite", "apps", "rewrite.example.com", REWRITE),
        http_route("mirror", "apps", "mirror.example.com", MIRROR),
        http_route("cross", "apps", "cross.example.com", CROSS),
        http_route("refused", "other", "other.example.com", ROUTES),
        grpc_route(),
        tcp_route(),
    ]);
    Mesh {
        apps,
        _tcp: tcp_app,
        yaml,
    }
}

/// Flags of a gateway proxy serving Gateway `infra/web`.
const WEB_ARGS: [&str; 6] = [
    "--role",
    "gateway",
    "--labels",
    "gateway.networking.k8s.io/gateway-name=web",
    "--namespace",
    "infra",
];

/// `(status, who answered or the body)` of GET `path` with `host` through the gateway.
fn get(
    port: u16,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, BTreeMap<String, String>, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args = vec!["-H".to_string(), format!("host: {host}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    http_request(&url, &args)
}

fn served_by(headers: &BTreeMap<String, String>) -> &str {
    headers.get("x-sample-service").map_or("", String::as_str)
}

/// Sends `line` to the TCP listener and reads one line back.
fn tcp_line(port: u16, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out)?;
    Ok(out.trim().to_string())
}

/// Requests the sample app at `port` has seen: `(method, host, path)`.
fn recent(port: u16) -> Vec<(String, String, String)> {
    let (status, _, body) = http_get(&format!("http://127.0.0.1:{port}/recent"));
    assert_eq!(status, 200, "/recent: {body}");
    json(&body)["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("method"), s("host"), s("path"))
        })
        .collect()
}

#[test]
fn gateway_api_routes_filters_and_attachment_on_a_gateway_proxy() {
    let (http, tcp) = (free_port(), free_port());
    let m = mesh(http, tcp);
    let dir = TempDir::new().expect("temp dir");
    write_atomic(dir.path(), "mesh.yaml", &m.yaml);
    let (mut gw, _admin) = proxy(dir.path(), &WEB_ARGS);
    assert!(wait_for_port(
        ([127, 0, 0, 1], http).into(),
        Duration::from_secs(10)
    ));
    let mut failures: Vec<String> = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{what}: {detail}"));
        }
    };

    // Host and path matches; PathPrefix matches whole segments; unmatched is 404.
    for (host, path, want) in [
        ("basic.example.com", "/anything/match", Some("echo/v1")),
        (
            "basic.example.com",
            "/anything/match/deeper",
            Some("echo/v1"),
        ),
        ("basic.example.com", "/get", Some("echo/v2")),
        ("basic.example.com", "/anything/matchless", None),
        ("basic.example.com", "/get/no", None),
        ("basic.example.com", "/anything", None),
        ("unknown.example.com", "/anything/match", None),
    ] {
        let (status, headers, body) = get(http, host, path, &[]);
        let got = (status, served_by(&headers).to_string());
        let expected = match want {
            Some(who) => (200, who.to_string()),
            None => (404, String::new()),
        };
        check(
            &format!("{host}{path}"),
            got == expected,
            format!("{got:?} {body}"),
        );
    }

    // Weights 3:1 over 200 requests on one connection.
    let mut client = H1Client::new(([127, 0, 0, 1], http).into());
    let split = tally(&mut client, "split.example.com", "/get", &[], 200);
    let v1 = split.get("echo/v1").copied().unwrap_or(0);
    let v2 = split.get("echo/v2").copied().unwrap_or(0);
    check(
        "3:1 split",
        v1 + v2 == 200 && (120..=180).contains(&v1),
        format!("{split:?}"),
    );

    // Header modifiers: the app sees the request changes, the client the response change.
    let (status, headers, body) = get(
        http,
        "headers.example.com",
        "/anything/h",
        &["-H", "x-remove: gone", "-H", "x-gw: client"],
    );
    let seen = if status == 200 {
        json(&body)["headers"].clone()
    } else {
        Default::default()
    };
    check(
        "request header modifier",
        seen["x-gw"] == "set-by-gateway" && seen["x-added"] == "yes" && seen["x-remove"].is_null(),
        format!("{status} {seen}"),
    );
    check(
        "response header modifier",
        headers.get("x-resp").map(String::as_str) == Some("from-gateway"),
        format!("{headers:?}"),
    );

    // Redirects: 301 with the configured path, 302 by default, on the listener's port.
    let (status, headers, _) = get(http, "redirect.example.com", "/old", &[]);
    check(
        "301 redirect",
        status == 301
            && headers.get("location").map(String::as_str)
                == Some(format!("http://new.example.com:{http}/new").as_str()),
        format!("{status} {headers:?}"),
    );
    let (status, headers, _) = get(http, "redirect.example.com", "/temp", &[]);
    check(
        "302 redirect",
        status == 302
            && headers
                .get("location")
                .is_some_and(|l| l.starts_with(&format!("http://temp.example.com:{http}/temp"))),
        format!("{status} {headers:?}"),
    );

    // URL rewrites: prefix and full path, and the host.
    let (status, _, body) = get(http, "rewrite.example.com", "/v1/x?q=1", &[]);
    let v = if status == 200 {
        json(&body)
    } else {
        Default::default()
    };
    check(
        "prefix rewrite",
        v["path"] == "/anything/v2/x" && v["headers"]["host"] == "rewritten.example.com",
        format!("{status} {body}"),
    );
    let (status, _, body) = get(http, "rewrite.example.com", "/full/a/b", &[]);
    let v = if status == 200 {
        json(&body)
    } else {
        Default::default()
    };
    check(
        "full path rewrite",
        v["path"] == "/anything/replaced",
        format!("{status} {body}"),
    );

    // Mirror: the client sees v1; v2 gets the copy (Envoy's `-shadow` host).
    let (status, headers, _) = get(http, "mirror.example.com", "/get?mirror=1", &[]);
    check(
        "mirror answer",
        status == 200 && served_by(&headers) == "echo/v1",
        format!("{status}"),
    );
    let v2_port = m.apps.port("echo/v2");
    let shadow = (
        "GET".to_string(),
        "mirror.example.com-shadow".to_string(),
        "/get?mirror=1".to_string(),
    );
    let mirrored = wait_until(Duration::from_secs(10), || {
        recent(v2_port).contains(&shadow)
    });
    check("mirror copy", mirrored, format!("{:?}", recent(v2_port)));

    // allowedRoutes: the route from namespace `other` is not attached.
    let (status, _, body) = get(http, "other.example.com", "/anything/match", &[]);
    check(
        "refused namespace",
        status == 404,
        format!("{status} {body}"),
    );

    // gRPC through the GRPCRoute.
    let v = grpc(&format!("127.0.0.1:{http}"), &["echo", "hello"]);
    check(
        "grpc",
        v["code"] == "OK" && v["responses"][0]["message"] == "hello",
        format!("{v}"),
    );

    // TCPRoute through the TCP listener.
    let line = tcp_line(tcp, "ping");
    check(
        "tcp",
        line.as_ref().is_ok_and(|l| l == "tcp-echo/v1 ping"),
        format!("{line:?}"),
    );

    // A cross-namespace backend needs a ReferenceGrant: 500 without, 200 with.
    let (status, _, body) = get(http, "cross.example.com", "/get", &[]);
    check("no grant: 500", status == 500, format!("{status} {body}"));
    write_atomic(dir.path(), "grant.yaml", GRANT);
    let granted = wait_until(Duration::from_secs(10), || {
        let (status, headers, _) = get(http, "cross.example.com", "/get", &[]);
        status == 200 && served_by(&headers) == "billing/v1"
    });
    check(
        "grant: 200",
        granted,
        get(http, "cross.example.com", "/get", &[]).2,
    );

    assert!(failures.is_empty(), "{failures:#?}\n{}", gw.describe());
}

#[test]
fn a_gamma_route_splits_a_sidecars_outbound_traffic() {
    let (_v1, p1) = sample_app("reviews", "v1");
    let (_v2, p2) = sample_app("reviews", "v2");
    let yaml = docs(&[
        service("reviews", "apps", 9080, "HTTP", p1),
        service("reviews-v2", "apps", 9080, "HTTP", p2),
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: reviews, port: 9080}]
"#
        .into(),
    ]);
    let dir = TempDir::new().expect("temp dir");
    write_atomic(dir.path(), "mesh.yaml", &yaml);
    let outbound = free_port();
    let out = outbound.to_string();
    let args = [
        "--role",
        "sidecar",
        "--namespace",
        "apps",
        "--labels",
        "app=client",
        "--outbound-port",
        &out,
        "--app-address",
        "127.0.0.1",
    ];
    let (mut sidecar, _admin) = proxy(dir.path(), &args);
    let url = format!("http://127.0.0.1:{outbound}/get");
    for _ in 0..5 {
        let (status, headers, body) = http_request(
            &url,
            &[
                "-H",
                "host: reviews.apps.svc.cluster.local:9080",
                "-H",
                "end-user: jason",
            ],
        );
        assert_eq!(
            (status, served_by(&headers)),
            (200, "reviews/v2"),
            "{body}\n{}",
            sidecar.describe()
        );
        let (status, headers, body) = http_request(&url, &["-H", "host: reviews.apps:9080"]);
        assert_eq!((status, served_by(&headers)), (200, "reviews/v1"), "{body}");
    }
}

/// `trellis ARGS --server http://127.0.0.1:API` (reads need no token on loopback).
fn trellis(api: u16, args: &[&str]) -> String {
    let out = Command::new(bin_path("trellis"))
        .args(args)
        .arg("--server")
        .arg(format!("http://127.0.0.1:{api}"))
        .output()
        .expect("run trellis");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "trellis {args:?}: {text}");
    text
}

#[test]
fn trellis_control_programs_the_gateway_over_xds_and_get_shows_status() {
    let (http, tcp) = (free_port(), free_port());
    let m = mesh(http, tcp);
    let mut control = Control::start(&m.yaml);
    let admin = free_port();
    let (admin_arg, xds) = (admin.to_string(), format!("127.0.0.1:{}", control.xds));
    let mut args = vec![
        "--xds-address",
        &xds,
        "--bind-address",
        "127.0.0.1",
        "--admin-port",
        &admin_arg,
    ];
    args.extend_from_slice(&WEB_ARGS);
    let mut gw = Process::spawn(bin_path("trellis-proxy"), &args, &[]);
    let served = wait_until(Duration::from_secs(30), || {
        let (status, headers, _) = get(http, "basic.example.com", "/anything/match", &[]);
        status == 200 && served_by(&headers) == "echo/v1"
    });
    assert!(served, "{}\n{}", gw.describe(), control.process.describe());
    let (status, _, _) = get(http, "cross.example.com", "/get", &[]);
    assert_eq!(status, 500);

    let routes = trellis(control.api, &["get", "httproutes", "-n", "apps"]);
    let line = |name: &str| {
        routes
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{routes}"))
            .to_string()
    };
    assert!(routes.starts_with("NAMESPACE"), "{routes}");
    assert!(
        routes.lines().next().unwrap().contains("STATUS"),
        "{routes}"
    );
    assert!(
        line("basic").contains("infra/web: Accepted=True ResolvedRefs=True"),
        "{routes}"
    );
    assert!(
        line("cross").contains("ResolvedRefs=False(RefNotPermitted)"),
        "{routes}"
    );
    let other = trellis(control.api, &["get", "httproute", "refused", "-n", "other"]);
    assert!(
        other.contains("Accepted=False(NotAllowedByListeners)"),
        "{other}"
    );
    let gateways = trellis(control.api, &["get", "gtw", "-n", "infra"]);
    assert!(
        gateways.contains("web") && gateways.contains("Programmed=True"),
        "{gateways}"
    );
    // `gateway` still means Istio's kind: there are none.
    let istio = trellis(control.api, &["get", "gateway", "-A"]);
    assert!(istio.contains("no gateways found"), "{istio}");

    // The API serves the whole status object, with reasons and messages.
    let (status, _, body) = http_get(&format!(
        "http://127.0.0.1:{}/api/v1/resources/httproutes/apps/cross",
        control.api
    ));
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let resolved = &v["status"]["parents"][0]["conditions"][1];
    assert_eq!(resolved["type"], "ResolvedRefs");
    assert_eq!(resolved["reason"], "RefNotPermitted");
    assert!(
        resolved["message"]
            .as_str()
            .unwrap_or("")
            .contains("ReferenceGrant"),
        "{v}"
    );

    // Granting the reference through the store fixes the route live.
    control.write(&docs(&[m.yaml.clone(), GRANT.into()]));
    let fixed = wait_until(Duration::from_secs(20), || {
        get(http, "cross.example.com", "/get", &[]).0 == 200
    });
    assert!(fixed, "{}", control.process.describe());
    let routes = trellis(control.api, &["get", "httproute", "cross", "-n", "apps"]);
    assert!(routes.contains("ResolvedRefs=True"), "{routes}");
}

/// A throwaway self-signed certificate for `host`: `(cert.pem, key.pem)` in `dir`.
fn self_signed(dir: &std::path::Path, host: &str) -> (String, String) {
    let cert = dir.join(format!("{host}.pem"));
    let key = dir.join(format!("{host}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// A TLS server of its own (python3's ssl module) answering every GET with `body`.
fn tls_backend(cert: &str, key: &str, body: &str) -> (Process, u16) {
    const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[4].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
    let port = free_port();
    let args = ["-c", SERVER, &port.to_string(), cert, key, body].map(String::from);
    let mut p = Process::spawn("python3", &args, &[]);
    assert!(
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20)),
        "TLS backend did not listen: {}",
        p.describe()
    );
    (p, port)
}

/// `curl https://<host>:<port>/` trusting only `ca`: the body, or the curl error.
fn curl_tls(host: &str, port: u16, ca: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["--cacert", ca])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn tls_routes_pass_tls_through_by_sni() {
    let certs = TempDir::new().expect("temp dir");
    let (a_cert, a_key) = self_signed(certs.path(), "a.example.com");
    let (b_cert, b_key) = self_signed(certs.path(), "b.example.com");
    let (_a, pa) = tls_backend(&a_cert, &a_key, "backend A");
    let (_b, pb) = tls_backend(&b_cert, &b_key, "backend B");
    let port = free_port();
    let tls_route = |name: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: {name}, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{name}.example.com]
  rules: [{{backendRefs: [{{name: {name}, port: 443}}]}}]
"#
        )
    };
    let yaml = docs(&[
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: tls, port: {port}, protocol: TLS, tls: {{mode: Passthrough}}}}
"#
        ),
        service("a", "infra", 443, "TLS", pa),
        service("b", "infra", 443, "TLS", pb),
        tls_route("a"),
        tls_route("b"),
    ]);
    let dir = TempDir::new().expect("temp dir");
    write_atomic(dir.path(), "mesh.yaml", &yaml);
    let args = [
        "--role",
        "gateway",
        "--labels",
        "gateway.networking.k8s.io/gateway-name=edge",
        "--namespace",
        "infra",
    ];
    let (mut gw, _admin) = proxy(dir.path(), &args);
    assert!(wait_for_port(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(10)
    ));
    // Each name reaches its own backend, whose own certificate the client verified.
    assert_eq!(
        curl_tls("a.example.com", port, &a_cert).as_deref(),
        Ok("backend A"),
        "{}",
        gw.describe()
    );
    assert_eq!(
        curl_tls("b.example.com", port, &b_cert).as_deref(),
        Ok("backend B")
    );
    assert!(curl_tls("b.example.com", port, &a_cert).is_err());
}

#[test]
fn an_https_listener_terminates_with_its_certificate_ref() {
    let certs = TempDir::new().expect("temp dir");
    let (cert, key) = self_signed(certs.path(), "secure.example.com");
    let indent = |path: &str| {
        std::fs::read_to_string(path)
            .expect("read pem")
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let (_app, app_port) = sample_app("echo", "v1");
    let port = free_port();
    let yaml = docs(&[
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    port: {port}
    protocol: HTTPS
    hostname: secure.example.com
    tls: {{certificateRefs: [{{name: secure-cert}}]}}
"#
        ),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: secure-cert, namespace: infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&cert),
            indent(&key)
        ),
        service("echo", "infra", 80, "HTTP", app_port),
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
"#
        .into(),
    ]);
    let dir = TempDir::new().expect("temp dir");
    write_atomic(dir.path(), "mesh.yaml", &yaml);
    let args = [
        "--role",
        "gateway",
        "--labels",
        "gateway.networking.k8s.io/gateway-name=edge",
        "--namespace",
        "infra",
    ];
    let (mut gw, _admin) = proxy(dir.path(), &args);
    assert!(wait_for_port(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(10)
    ));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--resolve")
        .arg(format!("secure.example.com:{port}:127.0.0.1"))
        .args(["--cacert", &cert])
        .arg(format!("https://secure.example.com:{port}/get"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "200 2",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.describe()
    );
}
