//! Acceptance tests of the TLS-terminating ingress gateway, as Istio's ingress tasks run them:
//! HTTPS SIMPLE with a test CA (host-matched routes 200, unexposed paths 404), two hosts on one
//! port chosen by SNI with their own certificates, MUTUAL (no client certificate refused, one
//! signed by the CA accepted), SNI passthrough to a backend that terminates TLS itself,
//! `httpsRedirect`, ALPN h2, a TLS server terminated into a VirtualService `tcp` route, and
//! credential rotation (a Secret edited in the store, certificate files rewritten on disk)
//! switching the served certificate live while a connection opened before keeps working.
//! Needs `cargo build --workspace --bins`, `openssl`, `curl` and `python3`.

mod control_support;
mod e2e_support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use control_support::Control;
use e2e_support::*;
use trellis_testkit::{
    Process, TempDir, bin_path, free_port, sample_app, sample_app_on, wait_for_port, wait_until,
};

const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";
const ECHO: &str = "tcp-echo.default.svc.cluster.local";

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in `dir`: `(ca.pem, ca.key)`.
fn test_ca(dir: &Path) -> (String, String) {
    let cert = dir.join("ca.pem").to_string_lossy().into_owned();
    let key = dir.join("ca.key").to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/O=example Inc./CN=example.com",
        "-keyout",
        &key,
        "-out",
        &cert,
    ]);
    (cert, key)
}

/// A certificate for `cn` (also its DNS SAN) signed by the CA; `file` names the pair.
fn issue(dir: &Path, ca: &(String, String), cn: &str, file: &str) -> (String, String) {
    let cert = dir
        .join(format!("{file}.pem"))
        .to_string_lossy()
        .into_owned();
    let key = dir
        .join(format!("{file}.key"))
        .to_string_lossy()
        .into_owned();
    let csr = dir
        .join(format!("{file}.csr"))
        .to_string_lossy()
        .into_owned();
    let ext = dir.join(format!("{file}.ext"));
    std::fs::write(&ext, format!("subjectAltName=DNS:{cn}\n")).expect("write ext");
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/O=example organization/CN={cn}"),
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &csr,
        "-CA",
        &ca.0,
        "-CAkey",
        &ca.1,
        "-CAcreateserial",
        "-extfile",
        &ext.to_string_lossy(),
        "-out",
        &cert,
    ]);
    (cert, key)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).expect("read PEM")
}

/// A `kubernetes.io/tls` Secret (`data`, base64) in `istio-system`, as `kubectl create secret
/// tls` writes it.
fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    use base64::Engine as _;
    let b = |p: &str| base64::engine::general_purpose::STANDARD.encode(read(p));
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b(cert),
        b(key)
    )
}

/// A generic Secret with Istio's `cert`/`key`/`cacert` keys, in `stringData`.
fn generic_secret(name: &str, cert: &str, key: &str, ca: &str) -> String {
    let block = |p: &str| {
        read(p)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\nstringData:\n  cert: |\n{}  key: |\n{}  cacert: |\n{}",
        block(cert),
        block(key),
        block(ca)
    )
}

/// What curl saw: status (0: no response), HTTP version, headers, body; or its error.
#[derive(Debug)]
struct Curl {
    status: u16,
    version: String,
    headers: String,
    body: String,
}

/// `curl https://<host>:<port><path>` through the gateway at 127.0.0.1, trusting `ca`.
fn curl(host: &str, port: u16, path: &str, ca: &str, extra: &[&str]) -> Result<Curl, String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-D",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["--cacert", ca])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    if !out.status.success() {
        return Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = last.split_once(' ').unwrap_or((last, ""));
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    Ok(Curl {
        status: code.parse().unwrap_or(0),
        version: version.to_string(),
        headers: headers.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// The subject of the certificate the gateway serves for `sni` (openssl s_client).
fn served_subject(port: u16, sni: &str) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(s) = line.strip_prefix("subject=") {
                out = s.trim().to_string();
            }
        }
    }
    let _ = child.wait();
    out
}

/// A python3 client holding one TLS keep-alive connection: each line on stdin sends a GET of
/// that path; each response's status and served certificate's serial come back as a line.
struct KeepAlive {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl KeepAlive {
    fn open(port: u16, host: &str, ca: &str) -> KeepAlive {
        const CLIENT: &str = r#"
import http.client, socket, ssl, sys
real = socket.create_connection
socket.create_connection = lambda addr, *a, **k: real(("127.0.0.1", addr[1]), *a, **k)
ctx = ssl.create_default_context(cafile=sys.argv[3])
conn = http.client.HTTPSConnection(sys.argv[2], int(sys.argv[1]), context=ctx, timeout=10)
for line in sys.stdin:
    conn.request("GET", line.strip())
    r = conn.getresponse()
    r.read()
    print(r.status, conn.sock.getpeercert()["serialNumber"], flush=True)
"#;
        let mut child = Command::new("python3")
            .args(["-c", CLIENT, &port.to_string(), host, ca])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        KeepAlive { child, lines }
    }

    /// `(status, certificate serial)` of one more request on the same connection.
    fn get(&mut self, path: &str) -> (u16, String) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{path}").expect("write to client");
        let line = self.lines.next().and_then(Result::ok).unwrap_or_default();
        let (status, serial) = line.split_once(' ').unwrap_or(("0", ""));
        (status.parse().unwrap_or(0), serial.to_string())
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The serial number (upper-case hex) of a PEM certificate, as python's ssl prints it.
fn serial(cert: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", cert])
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_uppercase()
}

/// A real TLS server (python3's ssl module) answering every GET with `body`.
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
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20)
        ),
        "TLS backend did not listen: {}",
        p.describe()
    );
    (p, port)
}

/// One line over TLS to `port` (SNI `host`, trusting `ca`), and the first line back.
fn tls_line(port: u16, host: &str, ca: &str, line: &str) -> String {
    const CLIENT: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=sys.argv[2]) as s:
        s.sendall(sys.argv[4].encode() + b"\n")
        print(s.recv(4096).decode().strip())
"#;
    let out = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string(), host, ca, line])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn https_server(port: u16, name: &str, host: &str, tls: &str) -> String {
    format!(
        "  - port: {{number: {port}, name: {name}, protocol: HTTPS}}\n    hosts: [{host}]\n    tls: {tls}\n"
    )
}

#[test]
fn ingress_https_tasks() {
    let certs = TempDir::new().expect("temp dir");
    let dir = certs.path();
    let ca = test_ca(dir);
    let bookinfo = issue(dir, &ca, "bookinfo.example.com", "bookinfo");
    let helloworld = issue(dir, &ca, "helloworld.example.com", "helloworld");
    let client = issue(dir, &ca, "client.example.com", "client");
    let files = issue(dir, &ca, "files.example.com", "files");
    let pass = issue(dir, &ca, "pass.example.com", "pass");
    let (_pass_backend, pass_port) = tls_backend(&pass.0, &pass.1, "backend terminated TLS");
    let (_app, app_port) = sample_app("productpage", "v1");
    let echo_port = free_port();
    let _echo = sample_app_on(echo_port, "tcp-echo", "v1", &["--tcp-echo"]);

    let (http, https, tcp) = (free_port(), free_port(), free_port());
    let gw_files = free_port();
    let gateway = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {http}, name: http, protocol: HTTP}}\n    hosts: [bookinfo.example.com]\n    tls: {{httpsRedirect: true}}\n{}{}{}  - port: {{number: {https}, name: tls-pass, protocol: TLS}}\n    hosts: [pass.example.com]\n    tls: {{mode: PASSTHROUGH}}\n  - port: {{number: {tcp}, name: tls-echo, protocol: TLS}}\n    hosts: [\"*\"]\n    tls: {{mode: SIMPLE, credentialName: bookinfo-credential}}\n",
        https_server(
            https,
            "https-bookinfo",
            "bookinfo.example.com",
            "{mode: SIMPLE, credentialName: bookinfo-credential}"
        ),
        https_server(
            https,
            "https-helloworld",
            "helloworld.example.com",
            "{mode: MUTUAL, credentialName: helloworld-credential}"
        ),
        https_server(
            gw_files,
            "https-files",
            "files.example.com",
            &format!(
                "{{mode: SIMPLE, serverCertificate: {dir}/served.pem, privateKey: {dir}/served.key}}",
                dir = dir.display()
            ),
        ),
    );
    std::fs::copy(&files.0, dir.join("served.pem")).expect("copy cert");
    std::fs::copy(&files.1, dir.join("served.key")).expect("copy key");
    let routes = "  http:\n  - match: [{uri: {prefix: /productpage}}, {uri: {exact: /headers}}]\n    route: [{destination: {host: productpage.default.svc.cluster.local, port: {number: 9080}}}]\n";
    let yaml = docs(&[
        gateway,
        tls_secret("bookinfo-credential", &bookinfo.0, &bookinfo.1),
        generic_secret("helloworld-credential", &helloworld.0, &helloworld.1, &ca.0),
        service_entry_yaml(
            "productpage",
            PRODUCTPAGE,
            9080,
            "HTTP",
            &[ep(app_port, "v1")],
        ),
        service_entry_yaml("tcp-echo", ECHO, 9000, "TCP", &[ep(echo_port, "v1")]),
        service_entry_yaml(
            "pass",
            "pass.example.com",
            443,
            "TLS",
            &[ep(pass_port, "v1")],
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bookinfo, namespace: default}}\nspec:\n  hosts: [bookinfo.example.com, helloworld.example.com, files.example.com]\n  gateways: [gw]\n{routes}"
        ),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: pass, namespace: default}\nspec:\n  hosts: [pass.example.com]\n  gateways: [gw]\n  tls:\n  - match: [{sniHosts: [pass.example.com]}]\n    route: [{destination: {host: pass.example.com, port: {number: 443}}}]\n".to_string(),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tcp:\n  - match: [{{port: {tcp}}}]\n    route: [{{destination: {{host: {ECHO}, port: {{number: 9000}}}}}}]\n"
        ),
    ]);
    let gw = Gateway::start(https, &yaml);
    for p in [http, tcp, gw_files] {
        assert!(wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], p)),
            Duration::from_secs(10)
        ));
    }

    // HTTPS SIMPLE: the exposed paths answer 200, others 404, with Istio's gateway headers.
    let ok = curl("bookinfo.example.com", https, "/productpage", &ca.0, &[]).expect("https");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.headers.contains("server: istio-envoy"), "{ok:?}");
    assert!(
        ok.headers.contains("x-envoy-upstream-service-time: "),
        "{ok:?}"
    );
    let missing = curl("bookinfo.example.com", https, "/unexposed", &ca.0, &[]).expect("https");
    assert_eq!(missing.status, 404, "{missing:?}");
    // The upstream saw the request as https.
    let echo = curl("bookinfo.example.com", https, "/headers", &ca.0, &[]).expect("https");
    let seen = echo.body.to_ascii_lowercase();
    assert!(
        seen.contains("x-forwarded-proto") && seen.contains("https"),
        "{echo:?}"
    );

    // ALPN: h2 when the client offers it, HTTP/1.1 when it does not.
    let h2 = curl(
        "bookinfo.example.com",
        https,
        "/productpage",
        &ca.0,
        &["--http2"],
    )
    .expect("h2");
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{h2:?}");
    let h1 = curl(
        "bookinfo.example.com",
        https,
        "/productpage",
        &ca.0,
        &["--http1.1"],
    )
    .expect("h1");
    assert_eq!((h1.status, h1.version.as_str()), (200, "1.1"), "{h1:?}");

    // Two hosts on one port, each with its own certificate, chosen by SNI.
    assert!(served_subject(https, "bookinfo.example.com").contains("CN = bookinfo.example.com"));
    assert!(
        served_subject(https, "helloworld.example.com").contains("CN = helloworld.example.com")
    );

    // MUTUAL: no client certificate is refused; one the CA signed is accepted.
    let anonymous = curl("helloworld.example.com", https, "/productpage", &ca.0, &[]);
    assert!(
        anonymous.is_err() || anonymous.as_ref().is_ok_and(|c| c.status == 0),
        "{anonymous:?}"
    );
    let mutual = curl(
        "helloworld.example.com",
        https,
        "/productpage",
        &ca.0,
        &["--cert", &client.0, "--key", &client.1],
    )
    .expect("mutual TLS");
    assert_eq!(mutual.status, 200, "{mutual:?}");

    // PASSTHROUGH beside them: the backend's own TLS reaches the client.
    let passed = curl("pass.example.com", https, "/", &ca.0, &[]).expect("passthrough");
    assert_eq!(passed.body, "backend terminated TLS", "{passed:?}");
    assert!(served_subject(https, "pass.example.com").contains("CN = pass.example.com"));

    // httpsRedirect: 301 to https on the plaintext server.
    let (status, headers, _) = trellis_testkit::http_request(
        &format!("http://127.0.0.1:{http}/productpage?x=1"),
        &["-H", "host: bookinfo.example.com"],
    );
    assert_eq!(status, 301);
    assert_eq!(
        headers.get("location").map(String::as_str),
        Some("https://bookinfo.example.com/productpage?x=1")
    );

    // A TLS server terminated into a VirtualService `tcp` route.
    assert_eq!(
        tls_line(tcp, "bookinfo.example.com", &ca.0, "hello"),
        "tcp-echo/v1 hello"
    );

    // Rotation through the store: a connection opened before keeps working, new handshakes
    // see the new certificate, the listener was not rebound.
    let mut before = KeepAlive::open(https, "bookinfo.example.com", &ca.0);
    assert_eq!(before.get("/productpage"), (200, serial(&bookinfo.0)));
    let rotated = issue(dir, &ca, "bookinfo.example.com", "bookinfo-rotated");
    let mut yaml_rotated = yaml.replace(
        &tls_secret("bookinfo-credential", &bookinfo.0, &bookinfo.1),
        &tls_secret("bookinfo-credential", &rotated.0, &rotated.1),
    );
    yaml_rotated.push('\n');
    write_atomic(gw.dir.path(), "mesh.yaml", &yaml_rotated);
    let new_serial = serial(&rotated.0);
    assert!(
        wait_until(Duration::from_secs(20), || {
            KeepAlive::open(https, "bookinfo.example.com", &ca.0).get("/productpage")
                == (200, new_serial.clone())
        }),
        "the rotated certificate is not served"
    );
    assert_eq!(before.get("/productpage"), (200, serial(&bookinfo.0)));

    // Rotation on disk: rewriting the files switches the certificate of new handshakes.
    let files_rotated = issue(dir, &ca, "files.example.com", "files-rotated");
    let first = KeepAlive::open(gw_files, "files.example.com", &ca.0).get("/productpage");
    assert_eq!(first, (200, serial(&files.0)));
    let mut files_conn = KeepAlive::open(gw_files, "files.example.com", &ca.0);
    assert_eq!(files_conn.get("/productpage").0, 200);
    std::fs::write(dir.join("served.key.tmp"), read(&files_rotated.1)).expect("write");
    std::fs::write(dir.join("served.pem.tmp"), read(&files_rotated.0)).expect("write");
    std::fs::rename(dir.join("served.key.tmp"), dir.join("served.key")).expect("rename");
    std::fs::rename(dir.join("served.pem.tmp"), dir.join("served.pem")).expect("rename");
    let want = serial(&files_rotated.0);
    assert!(
        wait_until(Duration::from_secs(20), || {
            KeepAlive::open(gw_files, "files.example.com", &ca.0).get("/productpage")
                == (200, want.clone())
        }),
        "the rewritten certificate files are not served"
    );
    assert_eq!(files_conn.get("/productpage"), (200, serial(&files.0)));
}

/// The same gateway on xDS from `trellis control`: the `credentialName` Secret comes from the
/// control plane's store, and `trellis apply` of a new Secret rotates the served certificate
/// while a connection opened before keeps working.
#[test]
fn xds_gateway_rotates_a_credential_applied_to_the_store() {
    let certs = TempDir::new().expect("temp dir");
    let dir = certs.path();
    let ca = test_ca(dir);
    let first = issue(dir, &ca, "bookinfo.example.com", "bookinfo");
    let (_app, app_port) = sample_app("productpage", "v1");
    let https = free_port();
    let yaml = docs(&[
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{}",
            https_server(https, "https", "bookinfo.example.com", "{mode: SIMPLE, credentialName: bookinfo-credential}")
        ),
        tls_secret("bookinfo-credential", &first.0, &first.1),
        service_entry_yaml("productpage", PRODUCTPAGE, 9080, "HTTP", &[ep(app_port, "v1")]),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bookinfo, namespace: default}\nspec:\n  hosts: [bookinfo.example.com]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /productpage}}]\n    route: [{destination: {host: productpage.default.svc.cluster.local, port: {number: 9080}}}]\n".to_string(),
    ]);
    let control = Control::start(&yaml);
    let admin = free_port().to_string();
    let xds = format!("127.0.0.1:{}", control.xds);
    let mut args = vec![
        "--xds-address",
        &xds,
        "--xds-mode",
        "delta",
        "--bind-address",
        "127.0.0.1",
        "--admin-port",
        &admin,
    ];
    args.extend_from_slice(&GATEWAY_ARGS);
    let mut proxy = Process::spawn(bin_path("trellis-proxy"), &args, &[]);
    assert!(
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], https)),
            Duration::from_secs(20)
        ),
        "no gateway listener: {}",
        proxy.describe()
    );
    let ok = curl("bookinfo.example.com", https, "/productpage", &ca.0, &[]).expect("https");
    assert_eq!(ok.status, 200, "{ok:?}");
    let mut before = KeepAlive::open(https, "bookinfo.example.com", &ca.0);
    assert_eq!(before.get("/productpage"), (200, serial(&first.0)));

    let rotated = issue(dir, &ca, "bookinfo.example.com", "bookinfo-rotated");
    let file = dir.join("secret.yaml");
    std::fs::write(
        &file,
        tls_secret("bookinfo-credential", &rotated.0, &rotated.1),
    )
    .expect("write secret");
    let out = Command::new(bin_path("trellis"))
        .args(["apply", "-f", &file.to_string_lossy()])
        .args(["--server", &format!("http://127.0.0.1:{}", control.api)])
        .arg("--token-file")
        .arg(control.dir.path().join(".trellis-token"))
        .env_remove("TRELLIS_TOKEN")
        .env_remove("TRELLIS_SERVER")
        .output()
        .expect("run trellis apply");
    assert!(
        out.status.success(),
        "trellis apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = serial(&rotated.0);
    assert!(
        wait_until(Duration::from_secs(20), || {
            KeepAlive::open(https, "bookinfo.example.com", &ca.0).get("/productpage")
                == (200, want.clone())
        }),
        "the applied credential is not served: {}",
        proxy.describe()
    );
    assert_eq!(before.get("/productpage"), (200, serial(&first.0)));
    // The config dump shows the certificate, never the private key.
    let (code, _, dump) =
        trellis_testkit::http_get(&format!("http://127.0.0.1:{admin}/config_dump"));
    assert_eq!(code, 200);
    assert!(
        dump.contains("[redacted]") && !dump.contains("PRIVATE KEY"),
        "{dump}"
    );
}
