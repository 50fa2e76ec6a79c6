//! Egress, replaying Istio's egress tasks on loopback: a sidecar whose `resolution: DNS`
//! ServiceEntry hosts are resolved by a tiny authoritative DNS server of the test's own
//! (`--dns-server`), answering test names with 127.0.6.x and short TTLs; "external" servers are
//! sample apps and TLS servers on those addresses. Covers `outboundTrafficPolicy` REGISTRY_ONLY
//! (502 `block_all`, unknown SNI closed) and ALLOW_ANY (`PassthroughCluster`), re-resolution
//! after a changed answer, TLS origination by DestinationRule SIMPLE (the proxy verifies the
//! server against `caCertificates`) and an egress gateway routed through by VirtualService.
//! Needs `cargo build --workspace --bins`, `curl` and `python3`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use trellis_testkit::{
    Process, TempDir, bin_path, free_port, http_request, sidecar, wait_for_port, wait_until,
};

type Answers = Arc<Mutex<HashMap<String, (Ipv4Addr, u32)>>>;

/// An authoritative DNS server on 127.0.0.1:<free port> (UDP): A records from `answers`,
/// NXDOMAIN for other names, no AAAA records.
struct TestDns {
    addr: SocketAddr,
    answers: Answers,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestDns {
    fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let answers: Answers = Arc::default();
        let queries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, q, s) = (
            Arc::clone(&answers),
            Arc::clone(&queries),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &a, &q) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        TestDns {
            addr,
            answers,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, name: &str, ip: [u8; 4], ttl: u32) {
        let mut a = self.answers.lock().expect("answers");
        a.insert(name.to_string(), (Ipv4Addr::from(ip), ttl));
    }

    fn queries(&self, name: &str) -> usize {
        let q = self.queries.lock().expect("queries");
        q.get(name).copied().unwrap_or(0)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query (RFC 1035 by hand: header, the question echoed, one A record).
fn answer(q: &[u8], answers: &Answers, queries: &Mutex<HashMap<String, usize>>) -> Option<Vec<u8>> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    let question_end = pos + 4;
    let name = labels.join(".");
    *queries.lock().ok()?.entry(name.clone()).or_default() += 1;
    let found = answers.lock().ok()?.get(&name).copied();
    let mut r = q.get(..question_end)?.to_vec();
    let rcode = if found.is_some() { 0 } else { 3 };
    r[2] = 0x81; // QR, RD
    r[3] = 0x80 | rcode; // RA
    let records = u8::from(found.is_some() && qtype == 1);
    r[4..12].copy_from_slice(&[0, 1, 0, records, 0, 0, 0, 0]);
    if let (Some((ip, ttl)), 1) = (found, records) {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// A CA and, per host, `(cert path, key path)` signed by it; plus the CA's PEM path.
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    ca: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem()).expect("write ca");
        Pki {
            issuer,
            ca: ca.to_string_lossy().into_owned(),
        }
    }

    fn server(&self, dir: &Path, host: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![host.to_string()]).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        let (c, k) = (
            dir.join(format!("{host}.pem")),
            dir.join(format!("{host}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (
            c.to_string_lossy().into_owned(),
            k.to_string_lossy().into_owned(),
        )
    }
}

/// An HTTPS server (python3's ssl module) on `ip:port` answering every GET with `body`.
fn https_server(ip: &str, port: u16, cert: &str, key: &str, body: &str) -> Process {
    const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (sys.argv[5] + " host=" + str(self.headers.get("host")) + " xff=" + str(self.headers.get("x-forwarded-for"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
    let args = ["-c", SERVER, ip, &port.to_string(), cert, key, body].map(String::from);
    let mut p = Process::spawn("python3", &args, &[]);
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
    assert!(
        wait_for_port(addr, Duration::from_secs(20)),
        "https server did not listen: {}",
        p.describe()
    );
    p
}

/// An `external` sample app `name/version` on `ip:port`.
fn external(ip: &str, port: u16, version: &str) -> Process {
    let port_arg = port.to_string();
    let args = [
        "sample-app",
        "--name",
        "external",
        "--version",
        version,
        "--port",
        &port_arg,
        "--address",
        ip,
    ];
    let mut p = Process::spawn(bin_path("trellis"), args, &[]);
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
    assert!(
        wait_for_port(addr, Duration::from_secs(20)),
        "sample-app did not listen on {addr}: {}",
        p.describe()
    );
    p
}

fn mesh_config(mode: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  outboundTrafficPolicy: {{mode: {mode}}}\n"
    )
}

/// A `resolution: DNS` MESH_EXTERNAL ServiceEntry for `host` with one port.
fn dns_service_entry(host: &str, number: u16, protocol: &str, target: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: {number}, name: port-{number}, protocol: {protocol}, targetPort: {target}}}
"#,
        name = host.replace('.', "-")
    )
}

/// DestinationRule `tls.mode: SIMPLE` for `host` trusting `ca`.
fn simple_tls(host: &str, ca: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {ca}}}\n",
        name = host.replace('.', "-")
    )
}

fn write(dir: &Path, docs: &[String]) {
    std::fs::write(dir.join("egress.yaml"), docs.join("---\n")).expect("write config");
}

/// A sidecar in `default` bound to `bind`, resolving through `dns`.
fn client_sidecar(dir: &Path, bind: &str, dns: &TestDns) -> trellis_testkit::Sidecar {
    let (d, server) = (dir.to_string_lossy(), dns.addr.to_string());
    let extra = ["--config-dir", d.as_ref(), "--dns-server", server.as_str()];
    sidecar("default", "sleep", bind, &extra, |_| true)
}

/// `GET /headers` through the sidecar's outbound listener with `Host: host` (+ `extra`).
fn via(sc: &trellis_testkit::Sidecar, bind: &str, host: &str, extra: &[&str]) -> Resp {
    let url = format!("http://{bind}:{}/headers", sc.outbound);
    let h = format!("Host: {host}");
    let mut args = vec!["-H", h.as_str()];
    args.extend_from_slice(extra);
    let (status, headers, body) = http_request(&url, &args);
    Resp {
        status,
        headers,
        body,
    }
}

struct Resp {
    status: u16,
    headers: trellis_testkit::Headers,
    body: String,
}

impl Resp {
    fn served_by(&self) -> &str {
        self.headers
            .get("x-sample-service")
            .map_or("", String::as_str)
    }
}

/// The first access-log line (JSON on stdout) with every `(field, value)` of `want`.
fn log_line(p: &Process, want: &[(&str, &str)]) -> serde_json::Value {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(10), || {
        found = p
            .stdout_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                want.iter().all(|(k, v)| match &l[*k] {
                    serde_json::Value::String(s) => s == v,
                    other => other.to_string().as_str() == *v,
                })
            });
        found.is_some()
    });
    assert!(ok, "no access-log line with {want:?}:\n{}", p.stdout_text());
    found.unwrap_or_default()
}

/// `curl https://host:port/` connecting to `connect` (SNI `host`), trusting `ca`.
fn curl_tls(host: &str, port: u16, connect: &str, ca: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:{connect}"))
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
fn registry_only_blocks_unknown_hosts_and_admits_service_entries_following_dns() {
    let dir = TempDir::new().expect("temp dir");
    let dns = TestDns::start();
    let port = free_port();
    let _v1 = external("127.0.6.11", port, "v1");
    let _v2 = external("127.0.6.12", port, "v2");
    dns.set("api.example.test", [127, 0, 6, 11], 1);
    // A TLS host on an unprivileged port, so the sidecar listens for it (no capture).
    let pki = Pki::new(dir.path(), "tls");
    let (cert, key) = pki.server(dir.path(), "tls.example.test");
    let tls_port = free_port();
    let _tls = https_server("127.0.6.13", tls_port, &cert, &key, "tls-backend");
    dns.set("tls.example.test", [127, 0, 6, 13], 30);
    write(
        dir.path(),
        &[
            mesh_config("REGISTRY_ONLY"),
            dns_service_entry("api.example.test", 80, "HTTP", port),
            dns_service_entry("tls.example.test", tls_port, "TLS", tls_port),
        ],
    );
    let bind = "127.0.6.1";
    let sc = client_sidecar(dir.path(), bind, &dns);

    // An unknown HTTP host: Istio's `block_all` virtual host answers 502 itself.
    let r = via(&sc, bind, "unknown.example.test", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    let line = log_line(
        &sc.process,
        &[
            ("authority", "unknown.example.test"),
            ("response_code", "502"),
        ],
    );
    assert_eq!(line["route_name"], "block_all", "{line}");
    assert_eq!(line["response_flags"], "-", "{line}");
    assert_eq!(line["upstream_host"], serde_json::Value::Null, "{line}");
    // The ServiceEntry host is admitted, at the address the DNS server gave.
    let r = via(&sc, bind, "api.example.test", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.served_by(), "external/v1");
    let line = log_line(
        &sc.process,
        &[("authority", "api.example.test"), ("response_code", "200")],
    );
    assert_eq!(line["upstream_cluster"], "outbound|80||api.example.test");
    assert_eq!(
        line["upstream_host"],
        format!("127.0.6.11:{port}"),
        "{line}"
    );

    // The answer changes; after its 1 s TTL the proxy asks again and follows it.
    let asked = dns.queries("api.example.test");
    dns.set("api.example.test", [127, 0, 6, 12], 1);
    let followed = wait_until(Duration::from_secs(20), || {
        via(&sc, bind, "api.example.test", &[]).served_by() == "external/v2"
    });
    assert!(followed, "still not v2: {}", sc.process.stderr_text());
    assert!(dns.queries("api.example.test") > asked);

    // TLS: the registered SNI name reaches its server (whose certificate the client checks);
    // an unknown one has no filter chain and is closed.
    let body = curl_tls("tls.example.test", tls_port, bind, &pki.ca).expect("known SNI");
    assert!(body.starts_with("tls-backend"), "{body}");
    let refused = curl_tls("other.example.test", tls_port, bind, &pki.ca);
    assert!(refused.is_err(), "unknown SNI got through: {refused:?}");
}

#[test]
fn allow_any_passes_through_and_destination_rules_originate_tls() {
    let dir = TempDir::new().expect("temp dir");
    let dns = TestDns::start();
    let port = free_port();
    let _app = external("127.0.6.21", port, "v1");
    dns.set("unlisted.example.test", [127, 0, 6, 21], 5);
    // Istio's TLS origination task: the app sends HTTP to port 80, the sidecar speaks TLS to
    // the server's port; `wrong` trusts another CA.
    let pki = Pki::new(dir.path(), "right");
    let other = Pki::new(dir.path(), "other");
    let https_port = free_port();
    let (cert, key) = pki.server(dir.path(), "secure.example.test");
    let _secure = https_server("127.0.6.22", https_port, &cert, &key, "secure-backend");
    dns.set("secure.example.test", [127, 0, 6, 22], 30);
    let (cert, key) = pki.server(dir.path(), "wrong.example.test");
    let _wrong = https_server("127.0.6.23", https_port, &cert, &key, "wrong-backend");
    dns.set("wrong.example.test", [127, 0, 6, 23], 30);
    // A TLS port the sidecar listens on (for `listed`); other SNI names pass through.
    let tls_port = free_port();
    let (cert, key) = pki.server(dir.path(), "unlisted-tls.example.test");
    let _unlisted = https_server("127.0.6.24", tls_port, &cert, &key, "unlisted-tls");
    dns.set("unlisted-tls.example.test", [127, 0, 6, 24], 30);
    write(
        dir.path(),
        &[
            dns_service_entry("listed-tls.example.test", tls_port, "TLS", tls_port),
            dns_service_entry("secure.example.test", 80, "HTTP", https_port),
            simple_tls("secure.example.test", &pki.ca),
            dns_service_entry("wrong.example.test", 80, "HTTP", https_port),
            simple_tls("wrong.example.test", &other.ca),
        ],
    );
    let bind = "127.0.6.2";
    let sc = client_sidecar(dir.path(), bind, &dns);

    // ALLOW_ANY (the default): hosts outside the registry go where the client meant.
    let by_ip = format!("127.0.6.21:{port}");
    let r = via(&sc, bind, &by_ip, &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "external/v1"),
        "{}",
        r.body
    );
    let line = log_line(&sc.process, &[("authority", by_ip.as_str())]);
    assert_eq!(line["upstream_cluster"], "PassthroughCluster", "{line}");
    assert_eq!(line["route_name"], "allow_any", "{line}");
    let (_, _, metrics) =
        trellis_testkit::http_get(&format!("http://127.0.0.1:{}/stats/prometheus", sc.admin));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("destination_service_name=\"PassthroughCluster\"")
                && l.contains("response_code=\"200\"")),
        "{metrics}"
    );
    let by_name = format!("unlisted.example.test:{port}");
    let r = via(&sc, bind, &by_name, &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "external/v1"),
        "{}",
        r.body
    );
    // Envoy's header naming the original destination wins over the host.
    let header = format!("x-envoy-original-dst-host: {by_ip}");
    let r = via(&sc, bind, "nowhere.invalid", &["-H", header.as_str()]);
    assert_eq!(r.status, 200, "{}", r.body);
    // A name that does not resolve: 503 with Envoy's DNS-failure flag.
    let r = via(&sc, bind, "nxdomain.example.test", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.headers.get("x-trellis-flags").map(String::as_str),
        Some("DF")
    );

    // TLS to an unlisted SNI name goes where the name resolves, still end to end TLS.
    let body = curl_tls("unlisted-tls.example.test", tls_port, bind, &pki.ca).expect("passthrough");
    assert!(body.starts_with("unlisted-tls"), "{body}");

    // TLS origination: verified against caCertificates, SNI and Host the ServiceEntry host.
    let r = via(&sc, bind, "secure.example.test", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .starts_with("secure-backend host=secure.example.test"),
        "{}",
        r.body
    );
    // A server whose certificate the configured CA did not sign is refused.
    let r = via(&sc, bind, "wrong.example.test", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    // Istio's default retry policy retries the failed connect once more (`URX`).
    let flags = r
        .headers
        .get("x-trellis-flags")
        .cloned()
        .unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UF"), "{flags}: {}", r.body);
    assert!(r.body.contains("invalid peer certificate"), "{}", r.body);
}

#[test]
fn egress_gateway_carries_sidecar_traffic_and_originates_tls() {
    let dir = TempDir::new().expect("temp dir");
    let dns = TestDns::start();
    let port = free_port();
    let _app = external("127.0.6.31", port, "v1");
    dns.set("api.example.test", [127, 0, 6, 31], 30);
    let pki = Pki::new(dir.path(), "gw");
    let https_port = free_port();
    let (cert, key) = pki.server(dir.path(), "secure.example.test");
    let _secure = https_server("127.0.6.32", https_port, &cert, &key, "secure-backend");
    dns.set("secure.example.test", [127, 0, 6, 32], 30);
    // `trellis_testkit::proxy` binds the gateway to 127.0.0.1.
    let (gw_bind, gw_port) = ("127.0.0.1", free_port());
    // Istio's "Egress Gateways" task: the mesh routes both hosts to the egress gateway, the
    // gateway to the external hosts (originating TLS for `secure`).
    let gateway = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  ports:
  - {{name: http, port: 80, targetPort: {gw_port}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  address: {gw_bind}
  labels: {{istio: egressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [api.example.test, secure.example.test]
"#
    );
    let mut docs = vec![
        mesh_config("REGISTRY_ONLY"),
        gateway,
        dns_service_entry("api.example.test", 80, "HTTP", port),
        dns_service_entry("secure.example.test", 80, "HTTP", https_port),
        simple_tls("secure.example.test", &pki.ca),
    ];
    for host in ["api.example.test", "secure.example.test"] {
        docs.push(format!(
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}-through-egress, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}
  - match: [{{gateways: [istio-egressgateway], port: {gw_port}}}]
    route:
    - destination: {{host: {host}, port: {{number: 80}}}}
"#,
            name = host.replace('.', "-")
        ));
    }
    write(dir.path(), &docs);
    let server = dns.addr.to_string();
    let (gw, _) = trellis_testkit::proxy(
        dir.path(),
        &[
            "--namespace",
            "istio-system",
            "--labels",
            "istio=egressgateway",
            "--dns-server",
            &server,
        ],
    );
    let bind = "127.0.6.3";
    let sc = client_sidecar(dir.path(), bind, &dns);

    let r = via(&sc, bind, "api.example.test", &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "external/v1"),
        "{}",
        r.body
    );
    // The sidecar sent it to the egress gateway, the gateway to the external host; the server
    // sees the gateway's x-forwarded-for (a sidecar's outbound listener adds none).
    let line = log_line(&sc.process, &[("authority", "api.example.test")]);
    assert_eq!(
        line["upstream_cluster"], "outbound|80||istio-egressgateway.istio-system.svc.cluster.local",
        "{line}"
    );
    let line = log_line(&gw, &[("authority", "api.example.test")]);
    assert_eq!(
        line["upstream_cluster"], "outbound|80||api.example.test",
        "{line}"
    );
    assert!(
        r.body.contains("x-forwarded-for") || r.body.contains("X-Forwarded-For"),
        "{}",
        r.body
    );
    // TLS origination at the gateway: plain HTTP from the app, TLS from the gateway on.
    let r = via(&sc, bind, "secure.example.test", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .starts_with("secure-backend host=secure.example.test xff=127.0.0.1"),
        "{}",
        r.body
    );
    let line = log_line(&gw, &[("authority", "secure.example.test")]);
    assert_eq!(
        line["upstream_host"],
        format!("127.0.6.32:{https_port}"),
        "{line}"
    );
}
